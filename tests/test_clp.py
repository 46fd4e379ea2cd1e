"""CLP: a planted high-Lipschitz channel is pruned and nothing else; each conv is paired with the
BatchNorm that consumes its output (in a pre-activation block conv1 with bn2, not bn1); a model
without BatchNorm is refused."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from ftsam import experiment
from ftsam.config import ConfigError, from_dict
from ftsam.defenses import Context, Given, build_defense
from ftsam.defenses.clp import CLP, channel_bounds, conv_bn_pairs
from ftsam.models.preact_resnet import PreActResNet18
from ftsam.models.vgg import VGG19BN


def equalise(model: nn.Module) -> None:
    """Every output channel of every conv gets the same kernel, every BN the same parameters and
    statistics: all bounds within a layer are equal, so CLP has nothing to prune."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Conv2d):
                m.weight.copy_(torch.randn(m.weight.shape[1:], generator=g).expand_as(m.weight))
            elif isinstance(m, nn.BatchNorm2d):
                m.weight.fill_(1.3)
                m.bias.fill_(0.2)
                m.running_var.fill_(2.0)


def clp(model, u=3.0):
    impl = build_defense("clp", from_dict({"defense": {"clp": {"u": u}}}).defense)
    return impl.run(Given("clp", ("model",), model=model), Context(seed=0))


def bn_output(model, bn, x):
    seen = {}
    handle = bn.register_forward_hook(lambda m, i, o: seen.update(out=o))
    model.eval()
    model(x)
    handle.remove()
    return seen["out"]


def vgg_like() -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                         nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 3))


def test_prunes_a_planted_channel_of_a_vgg_like_model_and_nothing_else():
    model = vgg_like()
    equalise(model)
    assert clp(copy.deepcopy(model)).found["pruned"] == {"0": [], "3": []}
    with torch.no_grad():
        model[3].weight[5] *= 4.0
    out = clp(model)
    assert out.found["pairs"] == {"0": "1", "3": "4"}
    assert out.found["pruned"] == {"0": [], "3": [5]}
    bn = model[4]
    assert bn.weight[5] == 0 and bn.bias[5] == 0 and (bn.weight[torch.arange(16) != 5] == 1.3).all()
    y = bn_output(model, bn, torch.rand(4, 1, 8, 8))
    assert y[:, 5].abs().max() == 0 and y[:, 4].abs().max() > 0     # the pruned channel outputs exactly zero


def test_the_bound_is_the_kernel_spectral_norm_times_the_bn_scale():
    conv, bn = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([1.0, -2.0, 0.5, 3.0]))
        bn.running_var.copy_(torch.tensor([1.0, 4.0, 4.0, 1.0]) - bn.eps)
    scale = [1.0, 1.0, 0.25, 3.0]                                 # |gamma| / sqrt(var + eps)
    expected = [torch.linalg.svdvals(conv.weight[k].detach().reshape(3, 9))[0] * s for k, s in enumerate(scale)]
    torch.testing.assert_close(channel_bounds(conv, bn), torch.stack(expected))


def test_prunes_a_planted_channel_of_preact_resnet_at_the_bn_that_normalises_it():
    model = PreActResNet18(1, 10, (0.5,), (0.5,), width=16)    # layer2 has 32 channels
    equalise(model)
    with torch.no_grad():
        model.layer2[1].conv1.weight[7] *= 4.0
        model.layer3[0].conv2.weight[3] *= 4.0                   # summed with the shortcut: no conv-BN channel
    before = copy.deepcopy(model.state_dict())
    out = clp(model)
    assert {k: v for k, v in out.found["pruned"].items() if v} == {"layer2.1.conv1": [7]}
    assert "layer3.0.conv2" in out.found["unpaired"]
    changed = [k for k, v in model.state_dict().items() if not torch.equal(before[k], v)]
    assert changed == ["layer2.1.bn2.weight", "layer2.1.bn2.bias"]
    y = bn_output(model, model.layer2[1].bn2, torch.rand(2, 1, 16, 16))
    assert y[:, 7].abs().max() == 0 and y[:, 6].abs().max() > 0


def test_a_pre_activation_block_pairs_conv1_with_bn2_and_leaves_summed_convs_unpaired():
    model = PreActResNet18(1, 10, (0.5,), (0.5,), width=2)
    pairs = conv_bn_pairs(model)
    assert pairs["layer1.0.conv1"] == "layer1.0.bn2" and pairs["layer3.1.conv1"] == "layer3.1.bn2"
    assert pairs["conv1"] == "layer1.0.bn1"                      # the stem feeds the first block's bn1 directly
    # module order would pair layer2.0.bn1 with layer1.1.conv2 and layer3.0.bn1 with a shortcut conv
    for conv in ("layer1.1.conv2", "layer2.0.shortcut.0", "layer4.1.conv2"):
        assert conv not in pairs
    assert set(pairs.values()) == {n for n, m in model.named_modules()
                                   if isinstance(m, nn.BatchNorm2d) and (n.endswith("bn2") or n == "layer1.0.bn1")}


def test_vgg19_bn_pairs_each_conv_with_the_bn_after_it():
    model = VGG19BN(1, 4, (0.5,), (0.5,), width=4)
    pairs = conv_bn_pairs(model)
    convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    assert list(pairs) == convs and all(pairs[c] == f"features.{int(c.split('.')[1]) + 1}" for c in convs)


def test_a_model_without_batchnorm_is_refused():
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.LazyLinear(2))
    with pytest.raises(ValueError, match="BatchNorm"):
        clp(model)
    after_relu = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.BatchNorm2d(4))
    with pytest.raises(ValueError, match="normalises a convolution"):
        conv_bn_pairs(after_relu)


def test_u_is_checked():
    with pytest.raises(ConfigError, match=r"defense\.clp\.u"):
        from_dict({"defense": {"clp": {"u": float("nan")}}})


def test_defend_runs_data_free_and_caches(tmp_path, monkeypatch):
    cfg = from_dict({"data": {"name": "digits", "train_per_class": 10, "test_per_class": 5},
                     "model": {"width": 16}, "attack_train": {"epochs": 1, "batch_size": 32}})
    run = experiment.train_backdoor(cfg, cache_dir=tmp_path, device="cpu", progress=False)
    first = experiment.defend(run, "clp", {"u": 2.0}, progress=False)
    assert set(first.found) == {"pruned", "bounds", "pairs", "unpaired"}
    assert first.history == [{"epoch": 0, **run.metrics}]         # nothing trained
    monkeypatch.setattr(CLP, "run", lambda *a: pytest.fail("the cached result should have been reused"))
    again = experiment.defend(run, "clp", {"u": 2.0}, progress=False)
    assert again.metrics == first.metrics and again.found == first.found
    for (k, a), b in zip(first.model.state_dict().items(), again.model.state_dict().values()):
        assert torch.equal(a, b), k
