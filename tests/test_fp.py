"""FP (fine-pruning): the least active channels of the last conv layer's map go first, pruning
stops at the (relative) held-out tolerance, and the mask outlives fine-tuning and a cached reload."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from ftsam import experiment
from ftsam.config import ConfigError, from_dict
from ftsam.data import ImageSet
from ftsam.defenses import Context, Given, build_defense
from ftsam.defenses.fp import FP, attach_mask, feature_layer, prune_until
from ftsam.models.preact_resnet import PreActResNet18

# Channel k of the planted model's conv is w_k * x + b_k on a constant image x in {0, 1}. The first
# four are input-independent with mean activations 0.4, 0.1, 0.3, 0.2 (least active first: 1, 3, 2,
# 0) and read by nothing; channel 4 (mean 1.0) decides the class; channel 5 (mean 1.4) is unused.
W = [0.0, 0.0, 0.0, 0.0, 1.0, 1.0]
B = [0.4, 0.1, 0.3, 0.2, 0.5, 0.9]


def planted_model() -> nn.Sequential:
    conv = nn.Conv2d(1, 6, 1)
    head = nn.Linear(6, 2)
    with torch.no_grad():
        conv.weight.copy_(torch.tensor(W).view(6, 1, 1, 1))
        conv.bias.copy_(torch.tensor(B))
        head.weight.zero_()
        head.bias.copy_(torch.tensor([0.0, -2.0]))
        head.weight[1, 4] = 2.0          # logit 1 - logit 0 = 2 a_4 - 2: class 1 iff a_4 > 1
    return nn.Sequential(conv, nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), head)


def constant_images(per_class: int) -> ImageSet:
    y = torch.arange(2 * per_class) % 2
    return ImageSet((y * 255).to(torch.uint8).view(-1, 1, 1, 1).expand(-1, 1, 4, 4).contiguous(), y)


def fp(**opts):
    cfg = from_dict({"defense": {"fp": opts, "train": {"epochs": 2, "batch_size": 8, "lr": 0.1}}}).defense
    return build_defense("fp", cfg)


def test_prunes_least_active_first_and_keeps_the_mask_through_fine_tuning():
    torch.manual_seed(0)
    model, data = planted_model(), constant_images(20)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    out = fp(acc_drop=0.1, holdout=0.25).run(Given("fp", ("model", "clean"), model=model, clean=data), Context(seed=0))
    found = out.found
    assert found["layer"] == "1"                                # the ReLU after the last conv
    torch.testing.assert_close(found["activations"], torch.tensor([0.4, 0.1, 0.3, 0.2, 1.0, 1.4]))
    assert found["pruned"] == [1, 3, 2, 0]                      # ascending activation; channel 4 breaks accuracy
    assert found["holdout_acc"] == [100.0] * 5 + [50.0]
    assert any(not torch.equal(before[k], v) for k, v in out.model.state_dict().items() if k != "1.fp_mask")
    maps = {}
    out.model[1].register_forward_hook(lambda m, i, o: maps.update(relu=o))
    out.model(data.x.float() / 255)
    assert maps["relu"][:, [1, 3, 2, 0]].abs().max() == 0       # pruned channels still output nothing
    assert maps["relu"][:, 4].abs().max() > 0
    assert out.model[1].fp_mask.tolist() == [0, 0, 0, 0, 1, 1]


@pytest.mark.parametrize("drop, n", [(0.1, 2), (0.05, 1), (0.2, 5), (0.0, 0)])
def test_stops_before_held_out_accuracy_falls_more_than_the_relative_tolerance(drop, n):
    """Accuracy 50 - 2k with k channels pruned: a relative 10% drop allows 45 (k <= 2); an absolute
    one of 10 points would allow k <= 5, so a wrong reading of the tolerance fails here."""
    mask = torch.ones(8)
    order = [5, 2, 7, 0, 1, 3, 4, 6]
    pruned, curve = prune_until(mask, order, lambda: 50.0 - 2.0 * float((mask == 0).sum()), drop)
    assert pruned == order[:n]
    assert curve == [50.0 - 2.0 * k for k in range(n + 2)]      # up to the count that broke it
    assert mask.tolist() == [0.0 if i in order[:n] else 1.0 for i in range(8)]


def test_the_pruned_map_of_preact_resnet_is_the_last_block_output():
    model = PreActResNet18(1, 10, (0.5,), (0.5,), width=2)
    assert feature_layer(model, torch.rand(2, 1, 16, 16)) == "layer4"
    mask = attach_mask(model, "layer4", 16)
    mask[[3, 7]] = 0
    seen = {}
    model.avgpool.register_forward_hook(lambda m, i, o: seen.update({"in": i[0]}))
    model(torch.rand(2, 1, 16, 16))
    assert seen["in"][:, [3, 7]].abs().max() == 0 and seen["in"][:, 0].abs().max() > 0   # shortcut included
    assert "layer4.fp_mask" in model.state_dict()


def test_options_are_checked():
    with pytest.raises(ConfigError, match=r"defense\.fp\.acc_drop"):
        from_dict({"defense": {"fp": {"acc_drop": 1.5}}})
    with pytest.raises(ConfigError, match=r"defense\.fp\.holdout"):
        from_dict({"defense": {"fp": {"holdout": 0.0}}})


def test_defend_caches_the_pruned_fine_tuned_model_and_restores_its_mask(tmp_path, monkeypatch):
    cfg = from_dict({"data": {"name": "digits", "train_per_class": 10, "test_per_class": 5},
                     "model": {"width": 2}, "attack_train": {"epochs": 1, "batch_size": 32},
                     "defense": {"clean_ratio": 0.5, "train": {"epochs": 1, "batch_size": 16}}})
    run = experiment.train_backdoor(cfg, cache_dir=tmp_path, device="cpu", progress=False)
    first = experiment.defend(run, "fp", {"acc_drop": 0.5}, progress=False)
    assert set(first.found) == {"pruned", "activations", "layer", "holdout_acc"}
    assert first.found["layer"] == "layer4" and len(first.found["pruned"]) > 0
    monkeypatch.setattr(FP, "run", lambda *a: pytest.fail("the cached result should have been reused"))
    again = experiment.defend(run, "fp", {"acc_drop": 0.5}, progress=False)
    assert again.metrics == first.metrics and again.found["pruned"] == first.found["pruned"]
    for (k, a), b in zip(first.model.state_dict().items(), again.model.state_dict().values()):
        assert torch.equal(a, b), k
    seen = {}
    again.model.layer4.register_forward_hook(lambda m, i, o: seen.update(out=o))
    x = run.test.x.float() / 255
    assert torch.equal(again.model(x), first.model(x))
    assert seen["out"][:, first.found["pruned"]].abs().max() == 0


def test_a_model_without_convolutions_is_refused():
    with pytest.raises(ValueError, match="no nn.Conv2d"):
        feature_layer(nn.Sequential(nn.Flatten(), nn.Linear(16, 2)), torch.rand(2, 1, 4, 4))
