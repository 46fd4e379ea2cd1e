"""WaNet (Nguyen & Tran 2021): an imperceptible warp as the trigger, poisoned on the fly.

The warping field follows the official code (VinAIResearch/Warping-based_Backdoor_Attack-release)
and BackdoorBench: a random ``k x k x 2`` grid of uniform(-1, 1) values, divided by its mean
absolute value, upsampled bicubically (``align_corners=True``) to ``H x W``; the sampling grid is

    grid = clamp((identity + s * noise / H) * grid_rescale, -1, 1)

in ``grid_sample``'s normalised coordinates, and the trigger is
``grid_sample(x, grid, align_corners=True)``. Defaults are the published ones: k = 4, s = 0.5,
grid_rescale = 1, cross_ratio = 2. The field is fixed for a run and derived from the run's
seed in :meth:`prepare` (cheap, so not cached).

Training (``on_the_fly``): in every batch the first ``int(B * poison_ratio)`` samples (batches
are in random order) are warped and relabelled, the next ``cross_ratio`` times as many are
"noise" samples warped with ``grid + (U(-1, 1) / H)`` (a fresh random grid each) that keep their
labels, and the rest stay clean. Unlike the official code, the warp is applied after the batch
augmentation of :func:`ftsam.train.fit` (crop/flip), not before. No fixed training samples are
poisoned, so ``poison_index`` is empty. The test set is the non-target images warped with the
fixed field."""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ftsam.attacks.base import Attack
from ftsam.config import ConfigError
from ftsam.data import ImageSet


class WaNet(Attack):
    name, title = "wanet", "WaNet"
    on_the_fly = True

    @dataclass(frozen=True)
    class Options:
        k: int = 4                   # control grid size
        s: float = 0.5               # warping strength
        grid_rescale: float = 1.0
        cross_ratio: float = 2.0     # noise samples per poisoned sample

    @classmethod
    def check_options(cls, opts):
        if opts.k < 2:
            raise ConfigError(f"attack.options.k must be >= 2, got {opts.k}")
        if opts.s < 0:
            raise ConfigError(f"attack.options.s must be >= 0, got {opts.s}")
        if opts.grid_rescale <= 0:
            raise ConfigError(f"attack.options.grid_rescale must be > 0, got {opts.grid_rescale}")
        if opts.cross_ratio < 0:
            raise ConfigError(f"attack.options.cross_ratio must be >= 0, got {opts.cross_ratio}")

    def __init__(self, cfg, info):
        super().__init__(cfg, info)
        self.noise_grid: torch.Tensor | None = None   # [1, H, W, 2], set by prepare
        self.grid: torch.Tensor | None = None         # [1, H, W, 2], the sampling grid

    # ---- the warping field ---------------------------------------------------------------
    @staticmethod
    def identity_grid(h: int, w: int) -> torch.Tensor:
        rows, cols = torch.meshgrid(torch.linspace(-1, 1, h), torch.linspace(-1, 1, w), indexing="ij")
        return torch.stack((cols, rows), 2)[None]    # grid_sample wants (x = column, y = row)

    @staticmethod
    def make_noise_grid(k: int, size: int, seed: int) -> torch.Tensor:
        g = torch.Generator().manual_seed(seed)
        ins = torch.rand(1, 2, k, k, generator=g) * 2 - 1
        ins = ins / ins.abs().mean()
        return F.interpolate(ins, size=size, mode="bicubic", align_corners=True).permute(0, 2, 3, 1)

    def set_seed(self, seed: int) -> None:
        """Build the fixed warping field from ``seed``."""
        size = self.info.size
        self.noise_grid = self.make_noise_grid(self.opts.k, size, seed)
        grid = (self.identity_grid(size, size) + self.opts.s * self.noise_grid / size) * self.opts.grid_rescale
        self.grid = grid.clamp(-1, 1)

    def prepare(self, train, *, seed, cache_dir, key, device="cpu", clean_model=None):
        self.set_seed(seed)

    def _grid(self, x: torch.Tensor) -> torch.Tensor:
        if self.grid is None:
            raise RuntimeError("WaNet's warping field is built by prepare(...) (or set_seed(seed)); call it first")
        return self.grid.to(x.device, x.dtype)

    def trigger(self, x, y=None):
        grid = self._grid(x)
        return F.grid_sample(x, grid.expand(len(x), -1, -1, -1), align_corners=True)

    # ---- poisoning -----------------------------------------------------------------------
    def poison_index(self, train: ImageSet, seed: int) -> torch.Tensor:
        return torch.empty(0, dtype=torch.long)      # poisoned per batch, not as a fixed set

    def batch_counts(self, batch_size: int) -> tuple[int, int]:
        """(poisoned, noise) samples in a batch of ``batch_size``, as the official code counts."""
        num_bd = int(batch_size * self.cfg.poison_ratio)
        num_cross = min(int(num_bd * self.opts.cross_ratio), batch_size - num_bd)
        return num_bd, num_cross

    def poison_batch(self, x, y, generator):
        grid = self._grid(x)
        n, _, h, w = x.shape
        num_bd, num_cross = self.batch_counts(n)
        if num_bd + num_cross == 0:
            return x, y
        x_bd = F.grid_sample(x[:num_bd], grid.expand(num_bd, -1, -1, -1), align_corners=True)
        ins = torch.rand(num_cross, h, w, 2, generator=generator, device=x.device, dtype=x.dtype) * 2 - 1
        grid2 = (grid + ins / h).clamp(-1, 1)
        x_cross = F.grid_sample(x[num_bd:num_bd + num_cross], grid2, align_corners=True)
        x = torch.cat([x_bd, x_cross, x[num_bd + num_cross:]])
        y = torch.cat([self.target_of(y[:num_bd]), y[num_bd:]])
        return x, y
