"""BadNets (Gu et al. 2017): a patch stamped onto the image, by default a white square in the
bottom-right corner.

3x3 on 32x32 images, 6x6 on 64x64 (the supplement); ``patch_size: 0`` picks that by size.
Options beyond the paper's trigger (for the robustness suite, :mod:`ftsam.robustness`):

- ``position``: ``bottom_right`` (default), ``bottom_left``, ``top_left``, ``top_right``, or
  ``[row, col]``, the patch's top-left pixel.
- ``pattern``: ``white`` (default: every patch pixel at ``value``), ``checkerboard`` (``value``
  where row + col is even inside the patch, 0 elsewhere), or ``random`` (each patch pixel and
  channel ``value`` or 0, drawn once from ``pattern_seed``: a fixed pattern, not a per-image one).

The defaults give today's trigger bitwise."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ftsam.attacks.base import Attack
from ftsam.config import ConfigError

CORNERS = ("bottom_right", "bottom_left", "top_left", "top_right")
PATTERNS = ("white", "checkerboard", "random")


class BadNets(Attack):
    name, title = "badnets", "BadNets"

    @dataclass(frozen=True)
    class Options:
        patch_size: int = 0      # 0: 3 below 64 pixels, 6 at 64 and above
        value: float = 1.0       # the patch intensity in [0, 1] (white)
        position: Any = "bottom_right"   # a corner, or [row, col] of the patch's top-left pixel
        pattern: str = "white"   # white, checkerboard, random
        pattern_seed: int = 0    # the seed of the random pattern

    @classmethod
    def check_options(cls, opts):
        if opts.patch_size < 0:
            raise ConfigError(f"attack.options.patch_size must be >= 0, got {opts.patch_size}")
        if not 0.0 <= opts.value <= 1.0:
            raise ConfigError(f"attack.options.value must lie in [0, 1], got {opts.value}")
        if opts.pattern not in PATTERNS:
            raise ConfigError(f"attack.options.pattern: unknown value {opts.pattern!r}; "
                              f"valid choices: {', '.join(PATTERNS)}")
        pos = opts.position
        if isinstance(pos, str):
            if pos not in CORNERS:
                raise ConfigError(f"attack.options.position: unknown value {pos!r}; valid choices: "
                                  f"{', '.join(CORNERS)}, or [row, col] of the patch's top-left pixel")
        elif not (isinstance(pos, (list, tuple)) and len(pos) == 2
                  and all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in pos)):
            raise ConfigError(f"attack.options.position must be a corner ({', '.join(CORNERS)}) or "
                              f"[row, col] with two integers >= 0, got {pos!r}")

    def __init__(self, cfg, info):
        super().__init__(cfg, info)
        p, size = self.patch_size, info.size
        if p > size:
            raise ConfigError(f"attack.options.patch_size {p} exceeds the image size {size}")
        r, c = self.origin(size, size)
        if r + p > size or c + p > size:
            raise ConfigError(f"attack.options.position {list(self.opts.position)}: a {p}x{p} patch "
                              f"there leaves the {size}x{size} image (row and col must be <= {size - p})")

    @property
    def patch_size(self) -> int:
        return self.opts.patch_size or (6 if self.info.size >= 64 else 3)

    def origin(self, h: int, w: int) -> tuple[int, int]:
        """Row and column of the patch's top-left pixel in an h x w image."""
        p, pos = self.patch_size, self.opts.position
        if isinstance(pos, str):
            return (h - p if pos.startswith("bottom") else 0, w - p if pos.endswith("right") else 0)
        return int(pos[0]), int(pos[1])

    def patch(self, channels: int) -> torch.Tensor | None:
        """The patch as a ``[C, p, p]`` float tensor; ``None`` for the white square (a scalar)."""
        p, v = self.patch_size, self.opts.value
        if self.opts.pattern == "white":
            return None
        if self.opts.pattern == "checkerboard":
            on = (torch.arange(p)[:, None] + torch.arange(p)[None, :]) % 2 == 0
            on = on.expand(channels, p, p)
        else:
            g = torch.Generator().manual_seed(self.opts.pattern_seed)
            on = torch.rand(channels, p, p, generator=g) < 0.5
        return on.float() * v

    def mask(self, h: int, w: int) -> torch.Tensor:
        p = self.patch_size
        r, c = self.origin(h, w)
        m = torch.zeros(h, w, dtype=torch.bool)
        m[r:r + p, c:c + p] = True
        return m

    def trigger(self, x, y=None):
        p = self.patch_size
        x = x.clone()
        if self.opts.position == "bottom_right" and self.opts.pattern == "white":
            x[..., -p:, -p:] = self.opts.value          # the paper's trigger, exactly as before
            return x
        r, c = self.origin(*x.shape[-2:])
        patch = self.patch(x.shape[-3])
        x[..., r:r + p, c:c + p] = self.opts.value if patch is None else patch.to(x.device, x.dtype)
        return x
