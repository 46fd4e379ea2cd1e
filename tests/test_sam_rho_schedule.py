"""Dynamic rho (defense.ft_sam.rho_schedule: lr): rho follows the learning rate; "constant" is today's FT-SAM."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from ftsam.config import Config, ConfigError, SAMConfig, TrainConfig
from ftsam.data import ImageSet
from ftsam.sam import rho_at
from ftsam.defenses.ft_sam import sam_step
from ftsam.train import fit


def test_rho_at():
    assert rho_at(5.0, 0.3) == 5.0
    assert rho_at(10.0, 1.0, "lr", 2.0) == 10.0
    assert rho_at(10.0, 0.5, "lr", 2.0) == 6.0
    assert rho_at(10.0, 0.0, "lr", 2.0) == 2.0
    assert rho_at(8.0, 0.25, "lr") == 2.0
    with pytest.raises(ValueError):
        rho_at(1.0, 1.0, "step")


def test_config_checks():
    cfg = Config().with_overrides({"defense.ft_sam.rho_schedule": "lr", "defense.ft_sam.rho_min": 2.0,
                                   "defense.ft_sam.rho": 10.0})
    assert cfg.defense.ft_sam.rho_schedule == "lr"
    with pytest.raises(ConfigError, match="defense.ft_sam.rho_schedule"):
        Config().with_overrides({"defense.ft_sam.rho_schedule": "cosine"})
    with pytest.raises(ConfigError, match="defense.ft_sam.rho_min"):
        Config().with_overrides({"defense.ft_sam.rho_min": 3.0, "defense.ft_sam.rho": 2.0})


def _fit(sam: SAMConfig, schedule: str):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 3))
    g = torch.Generator().manual_seed(1)
    data = ImageSet(torch.randint(0, 256, (24, 1, 4, 4), dtype=torch.uint8, generator=g),
                    torch.randint(0, 3, (24,), generator=g))
    cfg = TrainConfig(epochs=3, batch_size=8, lr=0.1, schedule=schedule)
    fit(model, data, cfg, sam_step(model, cfg, sam), seed=0, progress=False)
    return [p.detach().clone() for p in model.parameters()]


def test_lr_schedule_with_constant_lr_is_constant_rho():
    a = _fit(SAMConfig(rho=0.5), "constant")
    b = _fit(SAMConfig(rho=0.5, rho_schedule="lr", rho_min=0.1), "constant")
    assert all(torch.equal(x, y) for x, y in zip(a, b))


def test_lr_schedule_changes_a_cosine_run():
    a = _fit(SAMConfig(rho=0.5), "cosine")
    b = _fit(SAMConfig(rho=0.5, rho_schedule="lr"), "cosine")
    assert not all(torch.equal(x, y) for x, y in zip(a, b))
