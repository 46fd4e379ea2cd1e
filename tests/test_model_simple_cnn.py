"""The small CNN without BatchNorm: shapes, no BatchNorm, normalisation inside the model."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from ftsam.config import Config, ModelConfig
from ftsam.data import DatasetInfo
from ftsam.models import build_model, last_conv_name


def info(channels, size, classes, mean=0.5, std=0.25) -> DatasetInfo:
    return DatasetInfo("test", channels, size, classes, (mean,) * channels, (std,) * channels)


@pytest.mark.parametrize("channels, size, classes", [(1, 16, 10), (1, 28, 10), (3, 32, 43), (3, 18, 5)])
def test_shapes(channels, size, classes):
    torch.manual_seed(0)
    model = build_model(ModelConfig(name="simple_cnn", width=8), info(channels, size, classes)).eval()
    x = torch.rand(2, channels, size, size)
    with torch.no_grad():
        out, feats = model(x), model.penultimate(x)
    assert out.shape == (2, classes) and torch.isfinite(out).all()
    assert feats.shape == (2, 32)
    torch.testing.assert_close(out, model.linear(feats))
    assert last_conv_name(model) == "features.7"
    assert model.get_submodule("features.7").out_channels == 16


def test_no_batchnorm_and_width_scales_channels():
    model = build_model(ModelConfig(name="simple_cnn", width=16), info(1, 16, 10))
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [16, 16, 32, 32]


def test_the_model_normalises_its_inputs():
    """Inputs in [0, 1]: the model subtracts the dataset's mean and divides by its std itself."""
    torch.manual_seed(0)
    a = build_model(ModelConfig(name="simple_cnn", width=4), info(1, 16, 10, mean=0.5, std=0.25)).eval()
    b = build_model(ModelConfig(name="simple_cnn", width=4), info(1, 16, 10, mean=0.0, std=1.0)).eval()
    b.load_state_dict(a.state_dict())
    x = torch.rand(3, 1, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(a(x), b((x - 0.5) / 0.25))


def test_config_accepts_simple_cnn():
    cfg = Config().with_overrides({"model.name": "simple_cnn", "model.width": 8})
    assert cfg.model.name == "simple_cnn"
