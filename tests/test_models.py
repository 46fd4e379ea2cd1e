"""The two victim models: shapes, the last convolution, parameter counts against the references."""
from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from ftsam.config import ConfigError, ModelConfig
from ftsam.data import DatasetInfo
from ftsam.models import build_model, last_conv_name

SHAPES = [(1, 16, 10), (3, 32, 43), (3, 64, 200)]


def info(channels, size, classes) -> DatasetInfo:
    return DatasetInfo("test", channels, size, classes, (0.5,) * channels, (0.25,) * channels)


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("name", ["preactresnet18", "vgg19_bn"])
@pytest.mark.parametrize("channels, size, classes", SHAPES)
def test_logits_shape(name, channels, size, classes):
    torch.manual_seed(0)
    model = build_model(ModelConfig(name=name, width=8), info(channels, size, classes)).eval()
    x = torch.rand(2, channels, size, size)
    with torch.no_grad():
        out = model(x)
        feats = model.penultimate(x)
    assert out.shape == (2, classes)
    assert torch.isfinite(out).all()
    hidden = 8 * 8 if name == "preactresnet18" else 4096 * 8 // 64
    assert feats.shape == (2, hidden)


@pytest.mark.parametrize("channels, size, classes", SHAPES)
def test_preact_last_conv(channels, size, classes):
    model = build_model(ModelConfig(width=8), info(channels, size, classes))
    name = last_conv_name(model)
    assert name == "layer4.1.conv2"
    conv = model.get_submodule(name)
    assert isinstance(conv, nn.Conv2d) and conv.out_channels == 64
    assert model.conv1.in_channels == channels


def test_preact_penultimate_feeds_the_linear_layer():
    model = build_model(ModelConfig(width=8), info(3, 32, 10)).eval()
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(x), model.linear(model.penultimate(x)))


def test_vgg_last_conv_is_the_last_feature_conv():
    model = build_model(ModelConfig(name="vgg19_bn", width=8), info(3, 32, 10))
    assert last_conv_name(model) == "features.49"
    assert model.get_submodule("features.49").out_channels == 64


def test_models_normalize_inputs_themselves():
    model = build_model(ModelConfig(width=8), info(3, 32, 10))
    torch.testing.assert_close(model.normalize(torch.full((1, 3, 2, 2), 0.75)), torch.ones(1, 3, 2, 2))
    assert not any(k.startswith("normalize") for k in model.state_dict())


def test_preact_full_width_parameter_count():
    # BackdoorBench's PreActResNet18 on CIFAR-10: 11,171,146 parameters
    with torch.device("meta"):
        model = build_model(ModelConfig(width=64), info(3, 32, 10))
    assert n_params(model) == 11_171_146


def test_vgg_matches_torchvision():
    with torch.device("meta"):
        ours = build_model(ModelConfig(name="vgg19_bn", width=64), info(3, 32, 10))
        ref = torchvision.models.vgg19_bn(weights=None, num_classes=10)
    assert n_params(ours) == n_params(ref) == 139_622_218
    ref_sd, our_sd = ref.state_dict(), ours.state_dict()
    assert list(our_sd) == list(ref_sd)
    assert all(our_sd[k].shape == ref_sd[k].shape for k in ref_sd)


def test_vgg_small_images_do_not_crash():
    # five 2x2 pools need 32 pixels; smaller maps pass through a pool once down to one pixel
    model = build_model(ModelConfig(name="vgg19_bn", width=8), info(1, 8, 10)).eval()
    with torch.no_grad():
        assert model(torch.rand(2, 1, 8, 8)).shape == (2, 10)
        assert model(torch.rand(2, 1, 28, 28)).shape == (2, 10)


def test_vgg_pools_like_torchvision_where_torchvision_works():
    pool = build_model(ModelConfig(name="vgg19_bn", width=8), info(3, 32, 10)).features[6]
    x = torch.rand(1, 2, 7, 7)
    torch.testing.assert_close(pool(x), nn.MaxPool2d(2, 2)(x))


def test_unknown_model():
    with pytest.raises(ConfigError, match="resnet50"):
        build_model(ModelConfig(name="resnet50"), info(3, 32, 10))
