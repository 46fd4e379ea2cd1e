"""Datasets held as uint8 tensors.

Every loader returns ``(train, test)`` as :class:`ImageSet`: images ``x`` uint8 ``[N, C, H, W]``
and labels ``y`` int64 ``[N]``. Triggers and augmentation work on whole batches of these
tensors; nothing here goes through PIL per sample at training time.

Offline sources: scikit-learn's digits (always present) and Fashion-MNIST from Debian's
``dataset-fashion-mnist`` (``/usr/share/datasets/fashion-mnist``). CIFAR-10, GTSRB and
Tiny ImageNet are read from their own on-disk formats under ``data.root``.
"""
from __future__ import annotations

import gzip
import hashlib
import os
import pickle
import struct
import warnings
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ftsam.config import DATASETS, ConfigError, DataConfig
from ftsam.io import DamagedFile

FASHION_MNIST_SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    channels: int
    size: int
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    fingerprint: str = ""       # of the source files (names, sizes, mtimes): part of every cache key


@dataclass
class ImageSet:
    x: torch.Tensor  # uint8 [N, C, H, W]
    y: torch.Tensor  # int64 [N]

    def __post_init__(self):
        if self.x.dtype != torch.uint8 or self.x.ndim != 4:
            raise ValueError(f"ImageSet.x must be uint8 [N, C, H, W], got {self.x.dtype} {tuple(self.x.shape)}")
        if self.y.shape != (self.x.shape[0],):
            raise ValueError(f"ImageSet.y must have shape ({self.x.shape[0]},), got {tuple(self.y.shape)}")
        self.y = self.y.long()

    def __len__(self) -> int:
        return self.x.shape[0]

    def subset(self, idx: torch.Tensor) -> "ImageSet":
        return ImageSet(self.x[idx], self.y[idx])


# Per-dataset normalization (mean, std), as BackdoorBench uses them.
NORMALIZATION = {
    "digits": ((0.5,), (0.5,)),
    "fashion_mnist": ((0.2860,), (0.3530,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.247, 0.243, 0.261)),
    "gtsrb": ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0)),
    "tiny_imagenet": ((0.4802, 0.4481, 0.3975), (0.2302, 0.2265, 0.2262)),
}
NATIVE = {  # channels, size, classes
    "digits": (1, 8, 10), "fashion_mnist": (1, 28, 10), "cifar10": (3, 32, 10),
    "gtsrb": (3, 32, 43), "tiny_imagenet": (3, 64, 200),
}


class DatasetNotFound(FileNotFoundError):
    """The files of a dataset are not where they were looked for."""


class DataError(DamagedFile):
    """A dataset file that is there but is not what it should be (truncated, wrong size,
    labels out of range, a class without images). The message names the file and what was
    expected."""


class CacheWarning(UserWarning):
    """A derived cache (dataset tensors, a trained run) was damaged or stale and is rebuilt."""


def fingerprint(paths: list[Path], base: Path, extra: str = "") -> str:
    """A short hash of what a derived cache is built from: each file's path relative to
    ``base``, its size and its modification time (any added, removed, resized or touched file
    changes it), plus ``extra``."""
    h = hashlib.sha256(extra.encode())
    for p in paths:
        st = os.stat(p)
        h.update(f"{Path(p).relative_to(base) if Path(p).is_relative_to(base) else p}\0{st.st_size}\0"
                 f"{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


def load_dataset(cfg: DataConfig) -> tuple[ImageSet, ImageSet, DatasetInfo]:
    """Load ``cfg.name`` as uint8 tensors, resized to ``cfg.image_size`` when that is set."""
    if cfg.name not in DATASETS:   # a dataset the user brings (folder, arrays, registered): ftsam.datasets_byo
        from ftsam.datasets_byo import load_byo
        return load_byo(cfg)
    root = Path(cfg.root)
    loader = {"digits": _digits, "fashion_mnist": _fashion_mnist, "cifar10": _cifar10,
              "gtsrb": _gtsrb, "tiny_imagenet": _tiny_imagenet}[cfg.name]
    train, test, source = loader(root, cfg.download) if cfg.name != "digits" else loader()
    if cfg.train_per_class:
        train = per_class_subset(train, cfg.train_per_class, seed=SUBSET_SEED)
    if cfg.test_per_class:
        test = per_class_subset(test, cfg.test_per_class, seed=SUBSET_SEED + 1)
    c, size, classes = NATIVE[cfg.name]
    if cfg.image_size and cfg.image_size != train.x.shape[-1]:
        train, test = resize(train, cfg.image_size), resize(test, cfg.image_size)
        size = cfg.image_size
    mean, std = NORMALIZATION[cfg.name]
    return train, test, DatasetInfo(cfg.name, c, size, classes, mean, std, source)


def _check_labels(y: np.ndarray, classes: int, path: Path) -> None:
    if len(y) and (y.min() < 0 or y.max() >= classes):
        bad = y[(y < 0) | (y >= classes)]
        raise DataError(f"{path}: labels must lie in 0..{classes - 1}, found {int(bad[0])} "
                        f"({len(bad)} out of range): the file is damaged or of another dataset", path)


def resize(s: ImageSet, size: int) -> ImageSet:
    x = F.interpolate(s.x.float(), size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return ImageSet(x.round().clamp(0, 255).to(torch.uint8), s.y)


SUBSET_SEED = 12345  # the per-class subsets are fixed, independent of the experiment seed


def per_class_subset(s: ImageSet, n: int, seed: int) -> ImageSet:
    """At most ``n`` images of every class, drawn with a fixed seed, in their original order
    (``data.train_per_class`` / ``data.test_per_class``: a smaller, balanced copy of a
    large dataset for quick runs on a CPU)."""
    return s.subset(per_class_indices(s.y, n, torch.Generator().manual_seed(seed)))


def per_class_indices(y: torch.Tensor, n: int, g: torch.Generator) -> torch.Tensor:
    """Sorted indices of at most ``n`` random samples of every class, drawn from ``g``."""
    picks = []
    for c in torch.unique(y).tolist():
        idx = (y == c).nonzero().flatten()
        picks.append(idx[torch.randperm(len(idx), generator=g)[:n]])
    return torch.cat(picks).sort().values


def clean_subset(train: ImageSet, ratio: float, seed: int, balanced: bool = True) -> torch.Tensor:
    """Indices of the defender's clean data: ``ratio`` of the training set.

    ``balanced`` draws the same number from every class (the FT-SAM code: 250 per class on
    CIFAR-10 at 5%); otherwise a uniform draw (the plain-FT code)."""
    if not 0.0 < ratio <= 1.0:
        raise ValueError(f"clean ratio must lie in (0, 1], got {ratio!r}")
    g = torch.Generator().manual_seed(seed)
    n = max(1, int(round(ratio * len(train))))
    classes = torch.unique(train.y)
    if not balanced:
        idx = torch.randperm(len(train), generator=g)[:n].sort().values
    else:
        idx = per_class_indices(train.y, max(1, n // len(classes)), g)
    counts = torch.bincount(train.y[idx], minlength=int(classes.max()) + 1)[classes]
    if int(counts.min()) < MIN_CLEAN_PER_CLASS:
        few = [int(c) for c, k in zip(classes, counts) if k < MIN_CLEAN_PER_CLASS]
        need = MIN_CLEAN_PER_CLASS * len(classes) / len(train)
        raise ConfigError(
            f"defense.clean_ratio {ratio} leaves the defender {len(idx)} clean image(s) of {len(train)}, fewer than "
            f"{MIN_CLEAN_PER_CLASS} of class(es) {', '.join(map(str, few[:10]))}{' ...' if len(few) > 10 else ''}; "
            f"every one of the {len(classes)} classes needs at least {MIN_CLEAN_PER_CLASS} "
            f"(balanced sampling: defense.clean_ratio >= {need:.4g})")
    return idx


MIN_CLEAN_PER_CLASS = 2


# ---- digits (scikit-learn, always offline) ---------------------------------------------
def _digits() -> tuple[ImageSet, ImageSet]:
    from sklearn.datasets import load_digits
    d = load_digits()
    x = torch.from_numpy((d.images * (255.0 / 16.0)).round().astype(np.uint8)).unsqueeze(1)
    y = torch.from_numpy(d.target).long()
    # a fixed stratified 75/25 split, independent of the experiment seed
    g = torch.Generator().manual_seed(12345)
    test_idx = []
    for c in range(10):
        idx = (y == c).nonzero().flatten()
        idx = idx[torch.randperm(len(idx), generator=g)]
        test_idx.append(idx[: len(idx) // 4])
    test_mask = torch.zeros(len(y), dtype=torch.bool)
    test_mask[torch.cat(test_idx)] = True
    return ImageSet(x[~test_mask], y[~test_mask]), ImageSet(x[test_mask], y[test_mask]), ""


# ---- Fashion-MNIST (IDX files: Debian's package, or torchvision's raw folder) ----------
def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (optionally gzipped), the format of MNIST and Fashion-MNIST."""
    path = Path(path)
    gz = str(path).endswith(".gz")
    try:
        with (gzip.open if gz else open)(path, "rb") as f:
            data = f.read()
    except (EOFError, gzip.BadGzipFile, zlib.error) as e:
        raise DataError(f"{path}: damaged gzip file ({e}); expected a gzipped IDX file, download it again",
                        path) from None
    if len(data) < 4 or data[0:2] != b"\x00\x00" or data[2] != 0x08 or not 1 <= data[3] <= 4:
        raise DataError(f"{path}: not an unsigned-byte IDX file (expected the header 00 00 08 <ndim>, "
                        f"got {data[:4].hex(' ') or 'nothing'})", path)
    ndim = data[3]
    if len(data) < 4 + 4 * ndim:
        raise DataError(f"{path}: IDX header cut short ({len(data)} bytes)", path)
    shape = struct.unpack(">" + "I" * ndim, data[4:4 + 4 * ndim])
    expected = 4 + 4 * ndim + int(np.prod(shape, dtype=np.int64))
    if len(data) != expected:
        raise DataError(f"{path}: the IDX header gives shape {tuple(shape)}, i.e. {expected} bytes"
                        f"{' uncompressed' if gz else ''}, but the file holds {len(data)}: "
                        f"{'truncated' if len(data) < expected else 'trailing data'}", path)
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def _find_idx(dirs: list[Path], stem: str) -> Path | None:
    for d in dirs:
        for name in (stem, stem + ".gz"):
            if (d / name).is_file():
                return d / name
    return None


def _fashion_mnist(root: Path, download: bool) -> tuple[ImageSet, ImageSet]:
    dirs = [root / "FashionMNIST" / "raw", root / "fashion-mnist", FASHION_MNIST_SYSTEM_DIR]
    stems = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
    if _find_idx(dirs, stems[0]) is None and download:
        import torchvision
        torchvision.datasets.FashionMNIST(str(root), train=True, download=True)
        torchvision.datasets.FashionMNIST(str(root), train=False, download=True)
    paths = [_find_idx(dirs, s) for s in stems]
    if any(p is None for p in paths):
        raise DatasetNotFound(
            "Fashion-MNIST not found. Install Debian's package (apt-get install dataset-fashion-mnist, "
            f"files in {FASHION_MNIST_SYSTEM_DIR}), or put the four IDX files in {root / 'FashionMNIST' / 'raw'}, "
            "or set data.download: true where there is a network.")
    xtr, ytr, xte, yte = (read_idx(p) for p in paths)
    for x, y, px, py in ((xtr, ytr, paths[0], paths[1]), (xte, yte, paths[2], paths[3])):
        if x.ndim != 3 or x.shape[1:] != (28, 28):
            raise DataError(f"{px}: expected 28x28 images [N, 28, 28], got shape {x.shape}", px)
        if y.ndim != 1 or len(y) != len(x):
            raise DataError(f"{py}: expected {len(x)} labels (one per image of {px.name}), got shape {y.shape}", py)
        _check_labels(y, 10, py)
    t = [torch.from_numpy(a.copy()) for a in (xtr, ytr, xte, yte)]
    return (ImageSet(t[0].unsqueeze(1), t[1].long()), ImageSet(t[2].unsqueeze(1), t[3].long()),
            fingerprint(paths, root))


# ---- CIFAR-10 (torchvision's python batches, or the official binary batches) -----------
class _Refused(pickle.UnpicklingError):
    """A global outside the allow-list: a hostile or foreign pickle, not a damaged one."""


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickles CIFAR-10's python batches and nothing else: only plain containers and numpy
    arrays may be built, so a hostile file cannot run code."""
    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
               ("numpy._core.multiarray", "scalar"), ("_codecs", "encode")}

    def find_class(self, module, name):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise _Refused(f"refusing to load {module}.{name} from a CIFAR-10 batch")


CIFAR_ROW = 3 * 32 * 32


def _cifar_py_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    if not path.is_file():
        raise DataError(f"{path}: missing; a CIFAR-10 python folder holds data_batch_1..5 and test_batch", path)
    expected = "a CIFAR-10 python batch (a pickled dict with 'data' [N, 3072] uint8 and 'labels' [N])"
    try:
        with open(path, "rb") as f:
            d = _NumpyOnlyUnpickler(f, encoding="latin1").load()
    except _Refused:
        raise
    except (EOFError, pickle.UnpicklingError, ValueError, TypeError, AttributeError, IndexError) as e:
        raise DataError(f"{path}: damaged ({type(e).__name__}: {e}), probably truncated; expected {expected}. "
                        "Extract cifar-10-python.tar.gz again", path) from None
    labels = d.get("labels", d.get("fine_labels")) if isinstance(d, dict) else None
    data = d.get("data") if isinstance(d, dict) else None
    if labels is None or data is None:
        raise DataError(f"{path}: expected {expected}, got {type(d).__name__}"
                        f"{' with keys ' + ', '.join(map(str, d)) if isinstance(d, dict) else ''}", path)
    data = np.asarray(data)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != CIFAR_ROW or data.shape[0] != len(labels):
        raise DataError(f"{path}: expected 'data' of shape ({len(labels)}, {CIFAR_ROW}) uint8 for its "
                        f"{len(labels)} labels, got {data.shape} {data.dtype}", path)
    y = np.asarray(labels, dtype=np.int64)
    _check_labels(y, 10, path)
    return data.reshape(-1, 3, 32, 32), y


def _cifar_bin_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    if not path.is_file():
        raise DataError(f"{path}: missing; a CIFAR-10 binary folder holds data_batch_1..5.bin and test_batch.bin", path)
    raw = np.fromfile(path, dtype=np.uint8)
    if raw.size == 0 or raw.size % (1 + CIFAR_ROW):
        raise DataError(f"{path}: {raw.size} bytes is not a whole number of {1 + CIFAR_ROW}-byte CIFAR-10 records "
                        f"(1 label byte + {CIFAR_ROW} pixels); the file is truncated or damaged", path)
    raw = raw.reshape(-1, 1 + CIFAR_ROW)
    y = raw[:, 0].astype(np.int64)
    _check_labels(y, 10, path)
    return raw[:, 1:].reshape(-1, 3, 32, 32), y


def _cifar10(root: Path, download: bool) -> tuple[ImageSet, ImageSet]:
    py, binary = root / "cifar-10-batches-py", root / "cifar-10-batches-bin"
    if not py.is_dir() and not binary.is_dir() and download:
        import torchvision
        torchvision.datasets.CIFAR10(str(root), train=True, download=True)
    if py.is_dir():
        files = [py / f"data_batch_{i}" for i in range(1, 6)] + [py / "test_batch"]
        parts = [_cifar_py_batch(f) for f in files]
    elif binary.is_dir():
        files = [binary / f"data_batch_{i}.bin" for i in range(1, 6)] + [binary / "test_batch.bin"]
        parts = [_cifar_bin_batch(f) for f in files]
    else:
        raise DatasetNotFound(
            f"CIFAR-10 not found under {root}: extract cifar-10-python.tar.gz there "
            f"(giving {py}/data_batch_1..5 and test_batch), or the binary version "
            f"(giving {binary}), or set data.download: true where there is a network.")

    def cat(parts):
        return ImageSet(torch.from_numpy(np.concatenate([p[0] for p in parts])),
                        torch.from_numpy(np.concatenate([p[1] for p in parts])))
    return cat(parts[:5]), cat(parts[5:]), fingerprint(files, root)


# ---- GTSRB (torchvision's folder layout) and Tiny ImageNet (tiny-imagenet-200/) ---------
def _load_images(paths: list[Path], size: int) -> torch.Tensor:
    from PIL import Image, UnidentifiedImageError
    out = np.empty((len(paths), size, size, 3), dtype=np.uint8)
    for i, p in enumerate(paths):
        try:
            with Image.open(p) as im:
                out[i] = np.asarray(im.convert("RGB").resize((size, size), Image.BILINEAR))
        except FileNotFoundError:
            raise DataError(f"{p}: image missing", p) from None
        except (OSError, UnidentifiedImageError, SyntaxError, ValueError) as e:
            raise DataError(f"{p}: not a readable image ({e}); the file is damaged or truncated", p) from None
    return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()


@dataclass
class _FolderIndex:
    """The files an image-folder dataset is decoded from, with their labels."""
    train: list[Path]
    train_y: list[int]
    test: list[Path]
    test_y: list[int]
    listings: list[Path]      # the label files (csv, txt) the index was read from

    def sources(self) -> list[Path]:
        return self.listings + self.train + self.test


def _cached(base: Path, name: str, index: _FolderIndex, size: int) -> tuple[ImageSet, ImageSet, str]:
    """Decoding tens of thousands of image files is slow: keep the tensors beside the data,
    keyed by the :func:`fingerprint` of the files they were decoded from. A cache built from
    other files (images added, removed or replaced since), or a damaged one, is reported and
    built again."""
    from safetensors import safe_open

    from ftsam.io import load_tensors, save_tensors
    source = fingerprint(index.sources(), base, extra=f"{name}:{size}")
    cache = base / f".ftsam-{name}.safetensors"
    if cache.is_file():
        try:
            t = load_tensors(cache)
            with safe_open(str(cache), framework="pt") as f:
                built_from = (f.metadata() or {}).get("source")
            if built_from == source:
                return ImageSet(t["train_x"], t["train_y"]), ImageSet(t["test_x"], t["test_y"]), source
            warnings.warn(f"{cache} was built from other files than {base} holds now (images added, removed or "
                          "changed since); building it again", CacheWarning, stacklevel=3)
        except (DamagedFile, KeyError) as e:
            warnings.warn(f"damaged dataset cache {cache} ({e}); building it again", CacheWarning, stacklevel=3)
    train = ImageSet(_load_images(index.train, size), torch.tensor(index.train_y, dtype=torch.long))
    test = ImageSet(_load_images(index.test, size), torch.tensor(index.test_y, dtype=torch.long))
    save_tensors(cache, {"train_x": train.x, "train_y": train.y, "test_x": test.x, "test_y": test.y},
                 metadata={"source": source})
    return train, test, source


def _no_empty_classes(names: list[str], files: list[list[Path]], where: Path, what: str) -> None:
    empty = [n for n, f in zip(names, files) if not f]
    if empty:
        raise DataError(f"{where}: {len(empty)} of {len(names)} classes have no {what} "
                        f"({', '.join(empty[:8])}{' ...' if len(empty) > 8 else ''}); every class needs training "
                        "images (training on fewer classes would pass unnoticed). Restore them, or extract the "
                        "dataset again", where)


def _gtsrb(root: Path, download: bool) -> tuple[ImageSet, ImageSet, str]:
    base = root / "gtsrb"
    train_dir, test_dir = base / "GTSRB" / "Training", base / "GTSRB" / "Final_Test" / "Images"
    if not train_dir.is_dir() and download:
        import torchvision
        torchvision.datasets.GTSRB(str(root), split="train", download=True)
        torchvision.datasets.GTSRB(str(root), split="test", download=True)
    test_csv = base / "GT-final_test.csv"
    if not (train_dir.is_dir() and test_dir.is_dir() and test_csv.is_file()):
        raise DatasetNotFound(
            f"GTSRB not found under {base}: it needs {train_dir}/<class>/*.ppm, {test_dir}/*.ppm and "
            f"{test_csv} (torchvision's GTSRB layout), or set data.download: true where there is a network.")
    classes = NATIVE["gtsrb"][2]
    folders = {}
    for d in train_dir.iterdir():
        if d.is_dir():
            if not (d.name.isdigit() and int(d.name) < classes):
                raise DataError(f"{d}: not a GTSRB class folder; expected 00000..{classes - 1:05d}", d)
            folders[int(d.name)] = d
    names = [f"{c:05d}" for c in range(classes)]
    per_class = [sorted(folders[c].glob("*.ppm")) if c in folders else [] for c in range(classes)]
    _no_empty_classes(names, per_class, train_dir, "*.ppm images (or no folder)")
    te_paths, te_y = [], []
    for n, line in enumerate(test_csv.read_text().splitlines()[1:], start=2):
        if line.strip():
            cols = line.split(";")
            try:
                label = int(cols[-1])
            except ValueError:
                label = -1
            if len(cols) < 2 or not 0 <= label < classes:
                raise DataError(f"{test_csv}, line {n}: expected 'Filename;...;ClassId' with a ClassId in "
                                f"0..{classes - 1}, got {line.strip()!r}", test_csv)
            te_paths.append(test_dir / cols[0])
            te_y.append(label)
    missing = [p for p in te_paths if not p.is_file()]
    if missing:
        raise DataError(f"{test_csv}: lists {len(missing)} test image(s) not in {test_dir}, e.g. {missing[0].name}",
                        test_csv)
    index = _FolderIndex([p for f in per_class for p in f], [c for c, f in enumerate(per_class) for _ in f],
                         te_paths, te_y, [test_csv])
    return _cached(base, "gtsrb32", index, 32)


def _tiny_imagenet(root: Path, download: bool) -> tuple[ImageSet, ImageSet, str]:
    base = root / "tiny-imagenet-200"
    if not (base / "wnids.txt").is_file():
        raise DatasetNotFound(
            f"Tiny ImageNet not found: unzip tiny-imagenet-200.zip into {root} (giving {base}/wnids.txt, "
            f"train/<wnid>/images/*.JPEG and val/val_annotations.txt). There is no automatic download.")
    classes = NATIVE["tiny_imagenet"][2]
    wnids_file, val_file = base / "wnids.txt", base / "val" / "val_annotations.txt"
    wnids = [w.strip() for w in wnids_file.read_text().splitlines() if w.strip()]
    if len(wnids) != classes or len(set(wnids)) != len(wnids):
        raise DataError(f"{wnids_file}: expected {classes} distinct class ids (wnids), found {len(set(wnids))}"
                        f"{' distinct' if len(set(wnids)) != len(wnids) else ''}: the file is damaged", wnids_file)
    if not val_file.is_file():
        raise DataError(f"{val_file}: missing; Tiny ImageNet's test labels are read from it", val_file)
    index = {w: i for i, w in enumerate(wnids)}
    per_class = [sorted((base / "train" / w / "images").glob("*.JPEG")) for w in wnids]
    _no_empty_classes(wnids, per_class, base / "train", "train/<wnid>/images/*.JPEG")
    te_paths, te_y = [], []
    for n, line in enumerate(val_file.read_text().splitlines(), start=1):
        if line.strip():
            cols = line.split("\t")
            if len(cols) < 2 or cols[1] not in index:
                raise DataError(f"{val_file}, line {n}: expected '<image>\\t<wnid listed in wnids.txt>\\t...', "
                                f"got {line.strip()!r}", val_file)
            te_paths.append(base / "val" / "images" / cols[0])
            te_y.append(index[cols[1]])
    folder = _FolderIndex([p for f in per_class for p in f], [c for c, f in enumerate(per_class) for _ in f],
                          te_paths, te_y, [wnids_file, val_file])
    return _cached(base, "tiny64", folder, 64)
