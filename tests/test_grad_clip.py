"""``train.max_grad_norm``: the gradient an update uses is clipped to that L2 norm (FT-SAM: the
gradient at w + eps), for the plain and the SAM step alike; off (0) it changes nothing, not even
the cache keys of runs made before the option existed."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from ftsam.config import ConfigError, SAMConfig, TrainConfig, load_config, stable_hash
from ftsam.data import ImageSet
from ftsam.defenses.ft_sam import sam_step
from ftsam.train import fit


def one_update(max_grad_norm: float, sam: bool, seen: list | None = None) -> torch.Tensor:
    """The change of all weights after one full-batch update at lr 1 (no momentum, no decay)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(2 * 6 * 6, 3))
    g = torch.Generator().manual_seed(1)
    data = ImageSet(torch.randint(0, 256, (8, 1, 8, 8), dtype=torch.uint8, generator=g),
                    torch.randint(0, 3, (8,), generator=g))
    cfg = TrainConfig(epochs=1, batch_size=8, lr=1.0, momentum=0.0, weight_decay=0.0, crop_padding=0,
                      hflip=False, schedule="constant", max_grad_norm=max_grad_norm)
    before = torch.cat([p.detach().flatten().clone() for p in model.parameters()])
    step = sam_step(model, cfg, SAMConfig(rho=1.0)) if sam else None
    on_update = None if seen is None else (lambda e, i, m: seen.append(
        torch.cat([p.grad.flatten() for p in m.parameters()]).norm().item()))
    fit(model, data, cfg, step, seed=0, progress=False, on_update=on_update)
    return torch.cat([p.detach().flatten() for p in model.parameters()]) - before


@pytest.mark.parametrize("sam", [False, True])
def test_the_update_is_the_unclipped_one_scaled_to_max_grad_norm(sam):
    free = one_update(0.0, sam)
    c = 0.5 * free.norm().item()                  # half the norm this update has unclipped
    clipped = one_update(c, sam)
    assert clipped.norm().item() == pytest.approx(c, rel=1e-4)
    torch.testing.assert_close(clipped, free * (c / free.norm()), rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("sam", [False, True])
def test_a_bound_above_the_gradient_norm_changes_nothing(sam):
    free = one_update(0.0, sam)
    assert torch.equal(one_update(10.0 * free.norm().item(), sam), free)


def test_on_update_sees_the_clipped_gradient():
    free, clipped = [], []
    one_update(0.0, True, free)
    one_update(0.25 * free[0], True, clipped)
    assert clipped[0] == pytest.approx(0.25 * free[0], rel=1e-4)


def test_off_leaves_cache_keys_as_they_were_before_the_option():
    cfg = load_config("params/offline.yaml")
    d = cfg.to_dict()
    assert d["defense"]["train"]["max_grad_norm"] == 0.0
    del d["defense"]["train"]["max_grad_norm"], d["attack_train"]["max_grad_norm"]
    assert stable_hash(cfg.to_dict()) == stable_hash(d)
    on = load_config("params/offline.yaml", {"defense.train.max_grad_norm": 5.0})
    assert stable_hash(on.to_dict()) != stable_hash(cfg.to_dict())


def test_a_negative_bound_is_rejected_naming_the_key():
    with pytest.raises(ConfigError, match="defense.train.max_grad_norm"):
        load_config("params/offline.yaml", {"defense.train.max_grad_norm": -1.0})
