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
import pickle
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ftsam.config import DATASETS, ConfigError, DataConfig

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


def load_dataset(cfg: DataConfig) -> tuple[ImageSet, ImageSet, DatasetInfo]:
    """Load ``cfg.name`` as uint8 tensors, resized to ``cfg.image_size`` when that is set."""
    if cfg.name not in DATASETS:   # a dataset the user brings (folder, arrays, registered): ftsam.datasets_byo
        from ftsam.datasets_byo import load_byo
        return load_byo(cfg)
    root = Path(cfg.root)
    loader = {"digits": _digits, "fashion_mnist": _fashion_mnist, "cifar10": _cifar10,
              "gtsrb": _gtsrb, "tiny_imagenet": _tiny_imagenet}[cfg.name]
    train, test = loader(root, cfg.download) if cfg.name != "digits" else loader()
    if cfg.train_per_class:
        train = per_class_subset(train, cfg.train_per_class, seed=SUBSET_SEED)
    if cfg.test_per_class:
        test = per_class_subset(test, cfg.test_per_class, seed=SUBSET_SEED + 1)
    c, size, classes = NATIVE[cfg.name]
    if cfg.image_size and cfg.image_size != train.x.shape[-1]:
        train, test = resize(train, cfg.image_size), resize(test, cfg.image_size)
        size = cfg.image_size
    mean, std = NORMALIZATION[cfg.name]
    return train, test, DatasetInfo(cfg.name, c, size, classes, mean, std)


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
    if not balanced:
        return torch.randperm(len(train), generator=g)[:n].sort().values
    return per_class_indices(train.y, max(1, n // len(torch.unique(train.y))), g)


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
    return ImageSet(x[~test_mask], y[~test_mask]), ImageSet(x[test_mask], y[test_mask])


# ---- Fashion-MNIST (IDX files: Debian's package, or torchvision's raw folder) ----------
def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (optionally gzipped), the format of MNIST and Fashion-MNIST."""
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    zero, dtype_code, ndim = data[0:2], data[2], data[3]
    if zero != b"\x00\x00" or dtype_code != 0x08:
        raise ValueError(f"{path}: not an unsigned-byte IDX file")
    shape = struct.unpack(">" + "I" * ndim, data[4:4 + 4 * ndim])
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
    xtr, ytr, xte, yte = (torch.from_numpy(read_idx(p).copy()) for p in paths)
    return ImageSet(xtr.unsqueeze(1), ytr.long()), ImageSet(xte.unsqueeze(1), yte.long())


# ---- CIFAR-10 (torchvision's python batches, or the official binary batches) -----------
class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickles CIFAR-10's python batches and nothing else: only plain containers and numpy
    arrays may be built, so a hostile file cannot run code."""
    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "scalar"),
               ("numpy._core.multiarray", "scalar"), ("_codecs", "encode")}

    def find_class(self, module, name):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a CIFAR-10 batch")


def _cifar_py_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    with open(path, "rb") as f:
        d = _NumpyOnlyUnpickler(f, encoding="latin1").load()
    x = np.asarray(d["data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
    return x, np.asarray(d.get("labels", d.get("fine_labels")), dtype=np.int64)


def _cifar_bin_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    raw = np.fromfile(path, dtype=np.uint8).reshape(-1, 1 + 3 * 32 * 32)
    return raw[:, 1:].reshape(-1, 3, 32, 32), raw[:, 0].astype(np.int64)


def _cifar10(root: Path, download: bool) -> tuple[ImageSet, ImageSet]:
    py, binary = root / "cifar-10-batches-py", root / "cifar-10-batches-bin"
    if not py.is_dir() and not binary.is_dir() and download:
        import torchvision
        torchvision.datasets.CIFAR10(str(root), train=True, download=True)
    if py.is_dir():
        train = [_cifar_py_batch(py / f"data_batch_{i}") for i in range(1, 6)]
        test = [_cifar_py_batch(py / "test_batch")]
    elif binary.is_dir():
        train = [_cifar_bin_batch(binary / f"data_batch_{i}.bin") for i in range(1, 6)]
        test = [_cifar_bin_batch(binary / "test_batch.bin")]
    else:
        raise DatasetNotFound(
            f"CIFAR-10 not found under {root}: extract cifar-10-python.tar.gz there "
            f"(giving {py}/data_batch_1..5 and test_batch), or the binary version "
            f"(giving {binary}), or set data.download: true where there is a network.")

    def cat(parts):
        return ImageSet(torch.from_numpy(np.concatenate([p[0] for p in parts])),
                        torch.from_numpy(np.concatenate([p[1] for p in parts])))
    return cat(train), cat(test)


# ---- GTSRB (torchvision's folder layout) and Tiny ImageNet (tiny-imagenet-200/) ---------
def _load_images(paths: list[Path], size: int) -> torch.Tensor:
    from PIL import Image
    out = np.empty((len(paths), size, size, 3), dtype=np.uint8)
    for i, p in enumerate(paths):
        with Image.open(p) as im:
            out[i] = np.asarray(im.convert("RGB").resize((size, size), Image.BILINEAR))
    return torch.from_numpy(out).permute(0, 3, 1, 2).contiguous()


def _cached(root: Path, name: str, build) -> tuple[ImageSet, ImageSet]:
    """Decoding tens of thousands of image files is slow: keep the tensors beside the data."""
    from ftsam.io import load_tensors, save_tensors
    cache = root / f".ftsam-{name}.safetensors"
    if cache.is_file():
        t = load_tensors(cache)
        return ImageSet(t["train_x"], t["train_y"]), ImageSet(t["test_x"], t["test_y"])
    train, test = build()
    save_tensors(cache, {"train_x": train.x, "train_y": train.y, "test_x": test.x, "test_y": test.y})
    return train, test


def _gtsrb(root: Path, download: bool) -> tuple[ImageSet, ImageSet]:
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

    def build():
        tr_paths, tr_y = [], []
        for cdir in sorted(d for d in train_dir.iterdir() if d.is_dir()):
            for p in sorted(cdir.glob("*.ppm")):
                tr_paths.append(p)
                tr_y.append(int(cdir.name))
        te_paths, te_y = [], []
        for line in test_csv.read_text().splitlines()[1:]:
            if line.strip():
                cols = line.split(";")
                te_paths.append(test_dir / cols[0])
                te_y.append(int(cols[-1]))
        return (ImageSet(_load_images(tr_paths, 32), torch.tensor(tr_y)),
                ImageSet(_load_images(te_paths, 32), torch.tensor(te_y)))
    return _cached(base, "gtsrb32", build)


def _tiny_imagenet(root: Path, download: bool) -> tuple[ImageSet, ImageSet]:
    base = root / "tiny-imagenet-200"
    if not (base / "wnids.txt").is_file():
        raise DatasetNotFound(
            f"Tiny ImageNet not found: unzip tiny-imagenet-200.zip into {root} (giving {base}/wnids.txt, "
            f"train/<wnid>/images/*.JPEG and val/val_annotations.txt). There is no automatic download.")

    def build():
        wnids = [w.strip() for w in (base / "wnids.txt").read_text().splitlines() if w.strip()]
        index = {w: i for i, w in enumerate(wnids)}
        tr_paths, tr_y = [], []
        for w in wnids:
            for p in sorted((base / "train" / w / "images").glob("*.JPEG")):
                tr_paths.append(p)
                tr_y.append(index[w])
        te_paths, te_y = [], []
        for line in (base / "val" / "val_annotations.txt").read_text().splitlines():
            if line.strip():
                cols = line.split("\t")
                te_paths.append(base / "val" / "images" / cols[0])
                te_y.append(index[cols[1]])
        return (ImageSet(_load_images(tr_paths, 64), torch.tensor(tr_y)),
                ImageSet(_load_images(te_paths, 64), torch.tensor(te_y)))
    return _cached(base, "tiny64", build)
