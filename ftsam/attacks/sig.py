"""SIG (Barni, Kallas & Tondi 2019): a clean-label attack with a sinusoidal signal.

The trigger adds ``v[j] = delta * sin(2 pi j f / W)`` to every pixel of column ``j`` (the same
for every row and channel), with ``delta`` in pixel units out of 255, then clips to the valid
range: x' = clip(x + v). Only training images of the target class are poisoned, and they keep
their labels; at test time the signal is added to the images of the other classes.

Defaults: f = 6 (the paper's and BackdoorBench's); delta = 20 (the paper trains with 20,
BackdoorBench's default is 40; the FT-SAM notes give 20-40).

**Poisoning ratio.** With ``ratio_of: dataset`` (the default, BackdoorBench's convention)
``attack.poison_ratio`` counts the whole training set: n = ratio * N samples, all drawn from
the target class, so it can be at most (#target-class samples) / N (about 0.1 on a
balanced ten-class set, where 0.1 poisons the whole class). With ``ratio_of: target_class``,
n = ratio * (#target-class samples)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch

from ftsam.attacks.base import Attack
from ftsam.config import ConfigError


class SIG(Attack):
    name, title = "sig", "SIG"
    clean_label = True

    @dataclass(frozen=True)
    class Options:
        delta: float = 20.0      # amplitude, pixel units out of 255
        frequency: int = 6       # periods across the image width
        ratio_of: Literal["dataset", "target_class"] = "dataset"

    @classmethod
    def check_options(cls, opts):
        if not 0.0 < opts.delta <= 255.0:
            raise ConfigError(f"attack.options.delta must lie in (0, 255], got {opts.delta}")
        if opts.frequency < 1:
            raise ConfigError(f"attack.options.frequency must be >= 1, got {opts.frequency}")

    def __init__(self, cfg, info):
        super().__init__(cfg, info)
        if cfg.mode != "all2one":
            raise ConfigError("attack.mode: SIG is a clean-label all-to-one attack; use all2one")

    def signal(self, width: int) -> torch.Tensor:
        """The sinusoid along the columns, float [W] in image units (delta / 255)."""
        j = torch.arange(width, dtype=torch.float64)
        return (self.opts.delta / 255.0 * torch.sin(2 * math.pi * j * self.opts.frequency / width)).float()

    def trigger(self, x, y=None):
        return (x + self.signal(x.shape[-1]).to(x.device, x.dtype)).clamp(0.0, 1.0)
