"""``train.warmup_epochs``: the learning rate rises linearly over the first epochs' updates,
multiplying the schedule; off (0) it changes nothing, not even the cache keys of runs made
before the option existed."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from ftsam.config import ConfigError, TrainConfig, load_config, stable_hash
from ftsam.data import ImageSet
from ftsam.train import fit, lr_at


@pytest.mark.parametrize("schedule", ["constant", "cosine"])
def test_the_rate_rises_linearly_then_follows_the_schedule(schedule):
    cfg = TrainConfig(epochs=10, lr=0.3, schedule=schedule, warmup_epochs=2)
    plain = TrainConfig(epochs=10, lr=0.3, schedule=schedule)
    n = 4                                               # updates per epoch: 8 warmup updates
    for k in range(8):
        e, i = divmod(k, n)
        assert lr_at(cfg, e, i, n) == pytest.approx((k + 1) / 8 * lr_at(plain, e, i, n))
    assert lr_at(cfg, 1, 3, n) == pytest.approx(lr_at(plain, 1, 3, n))     # the last warmup update: full
    for e in range(2, 10):
        assert lr_at(cfg, e, 0, n) == lr_at(plain, e, 0, n)
    if schedule == "cosine":
        assert lr_at(cfg, 5, 0, n) == pytest.approx(0.5 * 0.3 * (1 + math.cos(math.pi * 5 / 10)))


class _Stop(Exception):
    pass


def _stop_in_the_second_epoch(epoch, it, model):
    if epoch > 0:              # called before the update: the run stops after epoch 0's only update
        raise _Stop


def first_update(warmup_epochs: int) -> torch.Tensor:
    """The change of all weights after the first update of a 4-epoch run (one full-batch SGD update
    an epoch at lr 1, no momentum, no decay)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(2 * 6 * 6, 3))
    g = torch.Generator().manual_seed(1)
    data = ImageSet(torch.randint(0, 256, (8, 1, 8, 8), dtype=torch.uint8, generator=g),
                    torch.randint(0, 3, (8,), generator=g))
    cfg = TrainConfig(epochs=4, batch_size=8, lr=1.0, momentum=0.0, weight_decay=0.0, crop_padding=0,
                      hflip=False, schedule="constant", warmup_epochs=warmup_epochs)
    before = torch.cat([p.detach().flatten().clone() for p in model.parameters()])
    with pytest.raises(_Stop):
        fit(model, data, cfg, seed=0, progress=False, on_update=_stop_in_the_second_epoch)
    return torch.cat([p.detach().flatten() for p in model.parameters()]) - before


def test_the_first_update_is_the_full_one_times_the_warmup_factor():
    full = first_update(0)
    assert full.norm() > 0
    torch.testing.assert_close(first_update(4), full / 4, rtol=1e-5, atol=1e-8)   # update 1 of 4: 1/4
    torch.testing.assert_close(first_update(1), full, rtol=0, atol=0)               # update 1 of 1: full


def test_off_leaves_cache_keys_as_they_were_before_the_option():
    cfg = load_config("params/offline.yaml")
    d = cfg.to_dict()
    assert d["defense"]["train"]["warmup_epochs"] == 0
    del d["defense"]["train"]["warmup_epochs"], d["attack_train"]["warmup_epochs"]
    assert stable_hash(cfg.to_dict()) == stable_hash(d)
    on = load_config("params/offline.yaml", {"defense.train.warmup_epochs": 5})
    assert stable_hash(on.to_dict()) != stable_hash(cfg.to_dict())


@pytest.mark.parametrize("value", [-1, 10_000])
def test_a_warmup_outside_the_run_is_rejected_naming_the_key(value):
    with pytest.raises(ConfigError, match="defense.train.warmup_epochs"):
        load_config("params/offline.yaml", {"defense.train.warmup_epochs": value})
