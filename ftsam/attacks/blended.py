"""Blended (Chen et al. 2017): x' = (1 - alpha) x + alpha * image.

alpha = 0.1 as the supplement says. The paper blends a Hello Kitty picture; offline we blend
a natural photograph that ships inside scikit-learn (``china`` or ``flower``), or a user's
own image file (any format PIL reads), or ``noise:SEED``, a fixed uniform-noise image drawn
from SEED (Chen et al.'s random-noise pattern; the robustness suite's "random image")."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ftsam.attacks.base import Attack
from ftsam.config import ConfigError

BUILTIN_IMAGES = ("china", "flower")


class Blended(Attack):
    name, title = "blended", "Blended"

    @dataclass(frozen=True)
    class Options:
        alpha: float = 0.1
        image: str = "china"     # "china", "flower", "noise:SEED", or a path to an image file

    @classmethod
    def check_options(cls, opts):
        if not 0.0 < opts.alpha < 1.0:
            raise ConfigError(f"attack.options.alpha must lie in (0, 1), got {opts.alpha}")
        if opts.image.startswith("noise:"):
            if not opts.image[6:].isdigit():
                raise ConfigError(f"attack.options.image: {opts.image!r}: noise images are 'noise:SEED' "
                                  f"with SEED an integer >= 0")
        elif opts.image not in BUILTIN_IMAGES and not Path(opts.image).is_file():
            raise ConfigError(f"attack.options.image: {opts.image!r} is neither a built-in image "
                              f"({', '.join(BUILTIN_IMAGES)}) nor an existing file")

    def __init__(self, cfg, info):
        super().__init__(cfg, info)
        self.pattern = self.load_pattern(self.opts.image, info.channels, info.size)

    @staticmethod
    def load_pattern(image: str, channels: int, size: int) -> torch.Tensor:
        """The blend image as float [C, size, size] in [0, 1]."""
        if image.startswith("noise:"):
            g = torch.Generator().manual_seed(int(image[6:]))
            return torch.rand(channels, size, size, generator=g)
        if image in BUILTIN_IMAGES:
            from sklearn.datasets import load_sample_image
            arr = load_sample_image(f"{image}.jpg")
        else:
            from PIL import Image
            with Image.open(image) as im:
                arr = np.asarray(im.convert("RGB"))
        t = torch.from_numpy(np.array(arr, dtype=np.uint8)).permute(2, 0, 1).float().div(255.0)
        side = min(t.shape[1:])  # centre square crop, then resize
        top, left = (t.shape[1] - side) // 2, (t.shape[2] - side) // 2
        t = t[:, top:top + side, left:left + side]
        t = F.interpolate(t[None], size=(size, size), mode="bilinear", antialias=True, align_corners=False)[0]
        if channels == 1:
            t = (0.299 * t[0] + 0.587 * t[1] + 0.114 * t[2])[None]
        return t.clamp(0, 1)

    def trigger(self, x, y=None):
        a = self.opts.alpha
        return (1 - a) * x + a * self.pattern.to(x.device, x.dtype)
