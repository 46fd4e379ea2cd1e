"""BadNets (Gu et al. 2017): a white square stamped in the bottom-right corner.

3x3 on 32x32 images, 6x6 on 64x64 (the supplement); ``patch_size: 0`` picks that by size."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ftsam.attacks.base import Attack
from ftsam.config import ConfigError


class BadNets(Attack):
    name, title = "badnets", "BadNets"

    @dataclass(frozen=True)
    class Options:
        patch_size: int = 0      # 0: 3 below 64 pixels, 6 at 64 and above
        value: float = 1.0       # the patch intensity in [0, 1] (white)

    @classmethod
    def check_options(cls, opts):
        if opts.patch_size < 0:
            raise ConfigError(f"attack.options.patch_size must be >= 0, got {opts.patch_size}")
        if not 0.0 <= opts.value <= 1.0:
            raise ConfigError(f"attack.options.value must lie in [0, 1], got {opts.value}")

    @property
    def patch_size(self) -> int:
        return self.opts.patch_size or (6 if self.info.size >= 64 else 3)

    def mask(self, h: int, w: int) -> torch.Tensor:
        p = self.patch_size
        m = torch.zeros(h, w, dtype=torch.bool)
        m[h - p:, w - p:] = True
        return m

    def trigger(self, x, y=None):
        p = self.patch_size
        x = x.clone()
        x[..., -p:, -p:] = self.opts.value
        return x
