"""Datasets the user brings, usable wherever a built-in dataset is (params files, notebooks,
:func:`ftsam.train_backdoor`, :func:`ftsam.purify`).

Three ways, each a ``data.name`` of a params file:

- ``data.name: folder`` with ``data.root: DIR``: images in the ``torchvision.datasets.ImageFolder``
  layout, ``DIR/train/<class>/*.png`` and ``DIR/test/<class>/*.png`` (any format Pillow reads:
  png, jpg, bmp, ppm, tif, webp). Classes are numbered in sorted order of their folder names
  (as ImageFolder does); the test set must have the same class folders. Images are read as
  grayscale when every image is, else RGB; images of different sizes need ``data.image_size``.
- ``data.name: arrays`` with ``data.root: FILE``: a ``.npz`` (read with ``allow_pickle=False``)
  or ``.safetensors`` file holding ``x_train``, ``y_train``, ``x_test``, ``y_test``; images
  uint8 (or float in [0, 1]) ``[N, C, H, W]`` or ``[N, H, W]``, labels integers ``[N]``.
- a Python loader registered under a name of its own::

      @ftsam.register_dataset("my_data")
      def my_data(cfg: ftsam.config.DataConfig):
          return train, test              # ImageSets, or (x, y) pairs; optionally a DatasetInfo third

  For notebooks run by papermill (a fresh kernel that never ran your decorator), register it as
  an entry point of your package instead: ``[project.entry-points."ftsam.datasets"]
  my_data = "my_package.data:my_data"``.

``data.image_size``, ``data.train_per_class`` and ``data.test_per_class`` apply as to the built-in
datasets. The normalization the models apply (``DatasetInfo.mean/std``) is the training set's own
per-channel mean and standard deviation, unless a loader returns a :class:`DatasetInfo`.

A run's cache key covers the data's **content**: :attr:`DatasetInfo.fingerprint` is a hash of
the decoded images and labels (and the class names), so a changed, added or removed file never
returns a model trained on the old data.
"""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ftsam.config import DATASETS, ConfigError, DataConfig
from ftsam.data import DatasetInfo, ImageSet, per_class_subset, resize, SUBSET_SEED

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".ppm", ".pgm", ".tif", ".tiff", ".webp")
ENTRY_POINT_GROUP = "ftsam.datasets"


class DatasetError(ConfigError):
    """A dataset the user brought that cannot be used: wrong layout, too few classes, an
    unreadable file, wrong shapes. The message names the file or the problem."""


Loader = Callable[[DataConfig], tuple]
REGISTRY: dict[str, Loader] = {}


def register_dataset(name: str) -> Callable[[Loader], Loader]:
    """Decorator: make ``loader(cfg: DataConfig)`` the dataset ``data.name: <name>``. It returns
    ``(train, test)`` or ``(train, test, info)``: each set an :class:`~ftsam.data.ImageSet` or an
    ``(x, y)`` pair (see :func:`as_imageset`)."""
    if not isinstance(name, str) or not name.isidentifier():
        raise ConfigError(f"register_dataset: a dataset name must be an identifier, got {name!r}")
    if name in DATASETS or name in BUILT_IN:
        raise ConfigError(f"register_dataset: {name!r} is a built-in dataset of ftsam; choose another name")

    def decorate(loader: Loader) -> Loader:
        REGISTRY[name] = loader
        return loader
    return decorate


def _entry_points() -> dict:
    from importlib.metadata import entry_points
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def dataset_names() -> tuple[str, ...]:
    """Every valid ``data.name``: the built-in datasets, ``folder``, ``arrays`` and the registered ones."""
    return tuple(dict.fromkeys((*DATASETS, *BUILT_IN, *REGISTRY, *_entry_points())))


def check_dataset_name(name: str) -> None:
    """``data.name`` is a dataset ftsam knows (entry points are read only for a name not otherwise known)."""
    if name in DATASETS or name in BUILT_IN or name in REGISTRY:
        return
    from ftsam.config import _choice
    _choice("data.name", name, dataset_names())


def _loader(name: str) -> Loader:
    if name in BUILT_IN:
        return BUILT_IN[name]
    if name in REGISTRY:
        return REGISTRY[name]
    eps = _entry_points()
    if name in eps:
        return eps[name].load()
    raise ConfigError(f"data.name: unknown dataset {name!r}; valid choices: {', '.join(dataset_names())}")


def load_byo(cfg: DataConfig) -> tuple[ImageSet, ImageSet, DatasetInfo]:
    """Load a dataset the user brought (``folder``, ``arrays`` or a registered name), then apply
    the common ``data.*`` settings as :func:`ftsam.data.load_dataset` does for the built-ins."""
    out = _loader(cfg.name)(cfg)
    if not isinstance(out, tuple) or len(out) not in (2, 3, 4):   # 4: ftsam's own, with a fingerprint extra
        raise DatasetError(f"the loader of dataset {cfg.name!r} must return (train, test) or (train, test, info), "
                           f"got {type(out).__name__}")
    train = as_imageset(*_pair(out[0]), where=f"{cfg.name}: training set")
    test = as_imageset(*_pair(out[1]), where=f"{cfg.name}: test set")
    given_info = out[2] if len(out) >= 3 else None
    extra = out[3] if len(out) == 4 else ""
    _check_sets(cfg.name, train, test)
    fingerprint = content_fingerprint(train, test, extra=f"{cfg.name}:{getattr(given_info, 'fingerprint', '')}{extra}")
    if cfg.train_per_class:
        train = per_class_subset(train, cfg.train_per_class, seed=SUBSET_SEED)
    if cfg.test_per_class:
        test = per_class_subset(test, cfg.test_per_class, seed=SUBSET_SEED + 1)
    if cfg.image_size and cfg.image_size != train.x.shape[-1]:
        train, test = resize(train, cfg.image_size), resize(test, cfg.image_size)
    classes = int(max(train.y.max(), test.y.max())) + 1
    if given_info is not None:
        mean, std, classes = given_info.mean, given_info.std, max(classes, given_info.num_classes)
    else:
        mean, std = channel_stats(train)
    return train, test, DatasetInfo(cfg.name, train.x.shape[1], train.x.shape[-1], classes, mean, std, fingerprint)


def _pair(s):
    if isinstance(s, ImageSet):
        return s.x, s.y
    if isinstance(s, (tuple, list)) and len(s) == 2:
        return s
    raise DatasetError(f"a dataset loader must give each set as an ImageSet or an (x, y) pair, got {type(s).__name__}")


def _check_sets(name: str, train: ImageSet, test: ImageSet) -> None:
    if train.x.shape[1:] != test.x.shape[1:]:
        raise DatasetError(f"dataset {name!r}: training images are {tuple(train.x.shape[1:])} but test images "
                           f"{tuple(test.x.shape[1:])} ([C, H, W]); they must match")
    if train.x.shape[-1] != train.x.shape[-2]:
        raise DatasetError(f"dataset {name!r}: images must be square, got {tuple(train.x.shape[-2:])} (H, W); "
                           "resize them, or for a folder set data.image_size")
    if len(torch.unique(train.y)) < 2:
        raise DatasetError(f"dataset {name!r}: the training set has {len(torch.unique(train.y))} class; "
                           "a classifier (and a backdoor) needs at least 2")
    if len(test) == 0:
        raise DatasetError(f"dataset {name!r}: the test set is empty")


def as_imageset(x, y, where: str = "data") -> ImageSet:
    """An :class:`ImageSet` from images ``x`` and labels ``y`` (tensors or NumPy arrays).

    ``x``: uint8 ``[N, C, H, W]`` or ``[N, H, W]`` (one channel), or floating point in [0, 1]
    (quantised to uint8 by ``round(255 x)``: what ftsam's training loop feeds the model is
    ``uint8 / 255``, so images already on that grid come back exactly). ``y``: integer labels
    ``[N]``, at least 0. Anything else is a :class:`DatasetError` naming ``where``."""
    x = torch.as_tensor(np.asarray(x) if isinstance(x, np.ndarray) else x)
    y = torch.as_tensor(np.asarray(y) if isinstance(y, np.ndarray) else y)
    if x.ndim == 3:
        x = x.unsqueeze(1)
    if x.ndim != 4:
        raise DatasetError(f"{where}: images must be [N, C, H, W] or [N, H, W], got shape {tuple(x.shape)}")
    if x.shape[1] not in (1, 3) and x.shape[-1] in (1, 3):
        raise DatasetError(f"{where}: images look channels-last {tuple(x.shape)}; give them as [N, C, H, W] "
                           "(x.permute(0, 3, 1, 2))")
    if x.dtype.is_floating_point:
        if len(x) and (not torch.isfinite(x).all() or x.min() < 0 or x.max() > 1):
            raise DatasetError(f"{where}: float images must lie in [0, 1] (unnormalized; the model normalizes), "
                               f"got values in [{float(x.min()):.3g}, {float(x.max()):.3g}]")
        x = x.mul(255.0).round_().to(torch.uint8)
    elif x.dtype != torch.uint8:
        raise DatasetError(f"{where}: images must be uint8 (0..255) or float in [0, 1], got {x.dtype}")
    if y.dtype.is_floating_point or y.dtype == torch.bool or y.ndim != 1 or len(y) != len(x):
        raise DatasetError(f"{where}: labels must be integers of shape ({len(x)},), got {y.dtype} {tuple(y.shape)}")
    if len(y) and y.min() < 0:
        raise DatasetError(f"{where}: labels must be >= 0, found {int(y.min())}")
    return ImageSet(x.contiguous(), y.long())


def content_fingerprint(*sets: ImageSet, extra: str = "") -> str:
    """A short hash of the images and labels themselves (what a cache key must cover)."""
    h = hashlib.sha256(extra.encode())
    for s in sets:
        for t in (s.x, s.y):
            h.update(str(tuple(t.shape)).encode())
            h.update(t.contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def channel_stats(s: ImageSet) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and standard deviation of a set in [0, 1] (4 decimals, never 0)."""
    x = s.x.float().div(255.0).transpose(0, 1).reshape(s.x.shape[1], -1)
    mean = tuple(round(float(v), 4) for v in x.mean(1))
    std = tuple(max(round(float(v), 4), 1e-3) for v in x.std(1))
    return mean, std


# ---- folder: the ImageFolder layout ------------------------------------------------------
def _class_dirs(split_dir: Path) -> list[Path]:
    return sorted((d for d in split_dir.iterdir() if d.is_dir() and not d.name.startswith(".")), key=lambda d: d.name)


def _image_files(class_dir: Path) -> list[Path]:
    return sorted(p for p in class_dir.rglob("*")
                  if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith("."))


def _read_image(path: Path):
    from PIL import Image, UnidentifiedImageError
    try:
        with Image.open(path) as im:
            im.load()
            return im.copy()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise DatasetError(f"{path}: not a readable image ({e})") from None


def read_folder(root: str | Path, image_size: int = 0, need_test: bool = True) -> tuple[ImageSet, ImageSet | None, list[str]]:
    """Read ``root/train/<class>/*`` and ``root/test/<class>/*`` into uint8 ImageSets; returns
    them and the class names (label i is ``names[i]``, sorted as ImageFolder sorts them).
    Without ``need_test`` a missing ``test/`` folder gives ``None`` for the test set."""
    root = Path(root)
    splits = {s: root / s for s in ("train", "test")}
    for split, d in splits.items():
        if not d.is_dir() and (split == "train" or need_test):
            raise DatasetError(f"image folder {root}: no {split}/ folder; expected {root}/train/<class>/*.png and "
                               f"{root}/test/<class>/*.png (the ImageFolder layout)")
    names = [d.name for d in _class_dirs(splits["train"])]
    if len(names) < 2:
        raise DatasetError(f"image folder {splits['train']}: found {len(names)} class folder(s) "
                           f"({', '.join(names) or 'none'}); a classifier needs at least 2")
    train_files = class_files(splits["train"], names, every_class=True)
    test_files = class_files(splits["test"], names) if splits["test"].is_dir() else []
    images = [_read_image(p) for p, _ in train_files + test_files]
    gray = all(im.mode in GRAY_MODES for im in images)
    x = images_to_tensor(images, [p for p, _ in train_files + test_files], gray, image_size, root)
    y = torch.tensor([c for _, c in train_files + test_files])
    n = len(train_files)
    return ImageSet(x[:n], y[:n]), ImageSet(x[n:], y[n:]) if test_files else None, names


GRAY_MODES = ("1", "L", "LA", "I", "I;16", "F")


def class_files(split_dir: Path, names: list[str], every_class: bool = False) -> list[tuple[Path, int]]:
    """``(file, label)`` of every image under ``split_dir/<class>/``, label = index in ``names``."""
    split_dir = Path(split_dir)
    if not split_dir.is_dir():
        raise DatasetError(f"image folder {split_dir}: no such folder")
    found = [d.name for d in _class_dirs(split_dir)]
    unknown = sorted(set(found) - set(names))
    if unknown:
        raise DatasetError(f"image folder {split_dir}: classes {unknown} are not among the training classes "
                           f"({', '.join(names)})")
    files = []
    for c in found:
        these = _image_files(split_dir / c)
        if not these and every_class:
            raise DatasetError(f"image folder {split_dir / c}: no images (extensions: {', '.join(IMAGE_EXTENSIONS)})")
        files += [(p, names.index(c)) for p in these]
    if not files:
        raise DatasetError(f"image folder {split_dir}: no images in class folders "
                           f"(extensions: {', '.join(IMAGE_EXTENSIONS)})")
    return files


def images_to_tensor(images: list, paths: list[Path], gray: bool, image_size: int, where: Path) -> torch.Tensor:
    """Decoded PIL images as one uint8 ``[N, C, H, W]`` tensor (grayscale or RGB), resized to
    ``image_size`` when set; images of different sizes without it are an error naming two."""
    arrays = []
    for im in images:
        im = im.convert("L" if gray else "RGB")
        if image_size:
            im = im.resize((image_size, image_size), resample=_bilinear())
        arrays.append(np.asarray(im, dtype=np.uint8))
    odd = next((i for i, a in enumerate(arrays) if a.shape != arrays[0].shape), None)
    if odd is not None:
        raise DatasetError(f"image folder {where}: images differ in size ({paths[0]}: {arrays[0].shape[1::-1]}, "
                           f"{paths[odd]}: {arrays[odd].shape[1::-1]}, width x height); set data.image_size "
                           "(--image-size) to resize them")
    x = torch.from_numpy(np.stack(arrays))
    return (x.unsqueeze(1) if gray else x.permute(0, 3, 1, 2)).contiguous()


def _bilinear():
    from PIL import Image
    return Image.Resampling.BILINEAR


def _folder(cfg: DataConfig):
    train, test, names = read_folder(cfg.root, cfg.image_size)
    return train, test, None, "|".join(names)


# ---- arrays: one .npz or .safetensors file ---------------------------------------------------
ARRAY_KEYS = ("x_train", "y_train", "x_test", "y_test")


def read_arrays(path: str | Path) -> tuple[ImageSet, ImageSet]:
    """``x_train, y_train, x_test, y_test`` from a ``.npz`` (no pickles) or ``.safetensors`` file."""
    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"data.root: arrays file not found: {path} (a .npz or .safetensors file with "
                           f"{', '.join(ARRAY_KEYS)})")
    if path.suffix == ".safetensors":
        from ftsam.io import load_tensors
        arrays = load_tensors(path)
    elif path.suffix == ".npz":
        try:
            with np.load(path, allow_pickle=False) as f:
                arrays = {k: f[k] for k in f.files}
        except ValueError as e:        # object arrays need pickle: refused
            raise DatasetError(f"{path}: {e}; ftsam reads numeric arrays only (no pickles)") from None
        except Exception as e:         # a damaged zip
            raise DatasetError(f"{path}: not a readable .npz file ({e})") from None
    else:
        raise DatasetError(f"data.root: {path} must be a .npz or .safetensors file")
    missing = [k for k in ARRAY_KEYS if k not in arrays]
    if missing:
        raise DatasetError(f"{path}: missing arrays {missing}; it holds {sorted(arrays)}, needs {', '.join(ARRAY_KEYS)}")
    return (as_imageset(arrays["x_train"], arrays["y_train"], where=f"{path} (x_train, y_train)"),
            as_imageset(arrays["x_test"], arrays["y_test"], where=f"{path} (x_test, y_test)"))


def _arrays(cfg: DataConfig):
    return read_arrays(cfg.root)


BUILT_IN: dict[str, Loader] = {"folder": _folder, "arrays": _arrays}
