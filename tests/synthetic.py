"""Synthetic images and dataset descriptions shared by the attack tests (seeded, uint8)."""
from __future__ import annotations

import torch

from ftsam.data import DatasetInfo, ImageSet


def info(channels: int, size: int, classes: int = 10) -> DatasetInfo:
    return DatasetInfo("test", channels, size, classes, (0.5,) * channels, (0.5,) * channels)


def images(n: int, channels: int, size: int, seed: int = 0, lo: int = 0, hi: int = 256) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(lo, hi, (n, channels, size, size), dtype=torch.uint8, generator=g)


def imageset(n: int, classes: int, channels: int, size: int, seed: int = 0) -> ImageSet:
    g = torch.Generator().manual_seed(seed + 1)
    return ImageSet(images(n, channels, size, seed), torch.randint(0, classes, (n,), generator=g))
