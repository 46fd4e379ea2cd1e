"""Helpers for the bring-your-own tests: an image folder of PNG files written from digits."""
from __future__ import annotations

from pathlib import Path

from ftsam.config import DataConfig
from ftsam.data import ImageSet, load_dataset

CLASSES = [f"c{i}" for i in range(10)]     # sorted like ImageFolder sorts them: c0 .. c9 -> 0 .. 9


def digits(train_per_class: int = 10, test_per_class: int = 5) -> tuple[ImageSet, ImageSet]:
    train, test, _ = load_dataset(DataConfig(name="digits", train_per_class=train_per_class,
                                             test_per_class=test_per_class))
    return train, test


def write_pngs(folder: Path, s: ImageSet, names=CLASSES) -> list[Path]:
    from PIL import Image
    paths = []
    for i, (x, y) in enumerate(zip(s.x, s.y)):
        d = Path(folder) / names[int(y)]
        d.mkdir(parents=True, exist_ok=True)
        p = d / f"{i:04d}.png"
        a = x.permute(1, 2, 0).numpy()
        Image.fromarray(a[:, :, 0] if a.shape[2] == 1 else a).save(p)
        paths.append(p)
    return paths


def image_folder(root: Path, train_per_class: int = 10, test_per_class: int = 5) -> Path:
    train, test = digits(train_per_class, test_per_class)
    write_pngs(root / "train", train)
    write_pngs(root / "test", test)
    return root


def small_cnn(num_classes: int, in_channels: int):
    """A user's architecture for ``--arch byo_helpers:small_cnn`` (no BatchNorm)."""
    from torch import nn
    from ftsam.models import Normalize
    return nn.Sequential(Normalize((0.5,) * in_channels, (0.5,) * in_channels), nn.Conv2d(in_channels, 4, 3, padding=1),
                         nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(16, num_classes))


def not_a_model(**kwargs):
    return "a string"
