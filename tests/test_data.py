"""The dataset loaders, on small files written here in each dataset's own on-disk format."""
from __future__ import annotations

import gzip
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import ftsam.data as data
from ftsam.config import ConfigError, DataConfig
from ftsam.data import DatasetNotFound, ImageSet, clean_subset, load_dataset


def load(name: str, root: Path, **kw):
    return load_dataset(DataConfig(name=name, root=str(root), **kw))


# ---- CIFAR-10 ---------------------------------------------------------------------------
class _Py2Pickler(pickle._Pickler):
    """Writes pickles as Python 2 did for the official CIFAR-10 files: protocol 2, ``str``
    and ``bytes`` as BINSTRING (what encoding="latin1" decodes), numpy under ``numpy.core``."""
    dispatch = dict(pickle._Pickler.dispatch)

    def _binstring(self, raw: bytes, obj):
        self.write(pickle.BINSTRING + struct.pack("<i", len(raw)) + raw)
        self.memoize(obj)

    def save_bytes(self, obj):
        self._binstring(obj, obj)

    def save_str(self, obj):
        self._binstring(obj.encode("latin1"), obj)

    def save_global(self, obj, name=None):
        module = obj.__module__.replace("numpy._core", "numpy.core")
        self.write(pickle.GLOBAL + f"{module}\n{name or obj.__qualname__}\n".encode())
        self.memoize(obj)

    dispatch[bytes] = save_bytes
    dispatch[str] = save_str


def _cifar_records(n: int, offset: int) -> tuple[np.ndarray, list[int]]:
    """n CIFAR rows [n, 3072]: row i has R = (offset+i), G = 100 + ..., B = 200 - ...,
    plus a per-pixel ramp in R so the spatial order is checked as well."""
    rows = np.empty((n, 3, 1024), dtype=np.uint8)
    for i in range(n):
        v = offset + i
        rows[i, 0] = (np.arange(1024) + v) % 256
        rows[i, 1] = (100 + v) % 256
        rows[i, 2] = (200 - v) % 256
    labels = [(offset + i) % 10 for i in range(n)]
    return rows.reshape(n, 3072), labels


def _write_cifar_py(root: Path, py2: bool = False, n: int = 4) -> None:
    d = root / "cifar-10-batches-py"
    d.mkdir(parents=True)
    names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    for k, name in enumerate(names):
        x, y = _cifar_records(n, offset=10 * k)
        obj = {"batch_label": f"batch {k}", "labels": y, "data": x,
               "filenames": [f"img_{k}_{i}.png" for i in range(n)]}
        with open(d / name, "wb") as f:
            if py2:
                _Py2Pickler(f, protocol=2).dump(obj)
            else:
                pickle.dump(obj, f, protocol=2)


def _check_cifar(train: ImageSet, test: ImageSet, n: int = 4) -> None:
    assert train.x.shape == (5 * n, 3, 32, 32) and train.x.dtype == torch.uint8
    assert test.x.shape == (n, 3, 32, 32) and test.x.dtype == torch.uint8
    assert train.y.dtype == torch.int64
    assert train.y.tolist() == [(10 * k + i) % 10 for k in range(5) for i in range(n)]
    assert test.y.tolist() == [(50 + i) % 10 for i in range(n)]
    # channel-major rows: the first 1024 bytes are the red plane, row-major
    rows, _ = _cifar_records(n, offset=10)
    first_of_batch2 = train.x[n]
    assert torch.equal(first_of_batch2.reshape(-1), torch.from_numpy(rows[0]))
    assert first_of_batch2[0, 0, :3].tolist() == [10, 11, 12]   # R ramp along the first row
    assert first_of_batch2[0, 1, 0].item() == 10 + 32            # next row starts 32 further
    assert (first_of_batch2[1] == 110).all() and (first_of_batch2[2] == 190).all()


def test_cifar10_python_batches(tmp_path):
    _write_cifar_py(tmp_path)
    train, test, info = load("cifar10", tmp_path)
    _check_cifar(train, test)
    assert (info.channels, info.size, info.num_classes) == (3, 32, 10)


def test_cifar10_python_batches_written_by_python2(tmp_path):
    """The official files are Python 2 pickles: latin1 strings, numpy.core module paths."""
    _write_cifar_py(tmp_path, py2=True)
    train, test, _ = load("cifar10", tmp_path)
    _check_cifar(train, test)


def test_cifar10_binary_batches(tmp_path):
    d = tmp_path / "cifar-10-batches-bin"
    d.mkdir()
    names = [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]
    for k, name in enumerate(names):
        x, y = _cifar_records(4, offset=10 * k)
        recs = np.concatenate([np.array(y, dtype=np.uint8)[:, None], x], axis=1)
        assert recs.shape == (4, 3073)
        (d / name).write_bytes(recs.tobytes())
    train, test, _ = load("cifar10", tmp_path)
    _check_cifar(train, test)


def test_cifar10_python_wins_over_binary(tmp_path):
    _write_cifar_py(tmp_path)
    (tmp_path / "cifar-10-batches-bin").mkdir()  # empty: would fail if it were read
    train, test, _ = load("cifar10", tmp_path)
    _check_cifar(train, test)


class _Evil:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])
def test_cifar10_refuses_malicious_pickle(tmp_path, protocol):
    _write_cifar_py(tmp_path)
    marker = tmp_path / "pwned"
    with open(tmp_path / "cifar-10-batches-py" / "data_batch_1", "wb") as f:
        pickle.dump({"data": _Evil(marker), "labels": [0]}, f, protocol=protocol)
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        load("cifar10", tmp_path)
    assert not marker.exists()


class _EvilExec:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (exec, (f"open({str(self.marker)!r}, 'w').close()",))


def test_cifar10_refuses_other_callables(tmp_path):
    """Not only os.system: any global outside the numpy allow-list (here builtins.exec)."""
    _write_cifar_py(tmp_path)
    marker = tmp_path / "pwned"
    with open(tmp_path / "cifar-10-batches-py" / "test_batch", "wb") as f:
        pickle.dump([_EvilExec(marker)], f, protocol=0)
    with pytest.raises(pickle.UnpicklingError, match="exec"):
        load("cifar10", tmp_path)
    assert not marker.exists()


# ---- GTSRB ------------------------------------------------------------------------------
GTSRB_TRAIN = {  # class folder -> [(w, h, rgb), ...]
    "00000": [(29, 31, (255, 0, 0)), (50, 40, (200, 10, 10))],
    "00001": [(15, 15, (0, 255, 0))],
    "00042": [(64, 33, (0, 0, 255)), (32, 32, (10, 20, 30)), (40, 80, (7, 8, 9))],
}
GTSRB_FILLER = (128, 128, 128)   # one grey image in each of the other 40 classes: every class needs images
GTSRB_TEST = [("00001.ppm", 25, 30, (1, 2, 3), 42), ("00000.ppm", 70, 60, (90, 80, 70), 0),
              ("00002.ppm", 32, 32, (5, 250, 5), 1)]


def _ppm(path: Path, w: int, h: int, rgb) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (w, h), rgb).save(path, format="PPM")


def _gtsrb_train() -> dict[str, list]:
    return {f"{c:05d}": GTSRB_TRAIN.get(f"{c:05d}", [(8, 8, GTSRB_FILLER)]) for c in range(43)}


def _gtsrb_labels() -> list[int]:
    return [int(cls) for cls, imgs in _gtsrb_train().items() for _ in imgs]


def _write_gtsrb(root: Path) -> Path:
    base = root / "gtsrb"
    for cls, imgs in _gtsrb_train().items():
        cdir = base / "GTSRB" / "Training" / cls
        for i, (w, h, rgb) in enumerate(imgs):
            _ppm(cdir / f"00000_{i:05d}.ppm", w, h, rgb)
        # the official training folders carry an annotation csv beside the images
        (cdir / f"GT-{cls}.csv").write_text("Filename;Width;Height;Roi.X1;Roi.Y1;Roi.X2;Roi.Y2;ClassId\n")
    lines = ["Filename;Width;Height;Roi.X1;Roi.Y1;Roi.X2;Roi.Y2;ClassId"]
    for name, w, h, rgb, cls in GTSRB_TEST:
        _ppm(base / "GTSRB" / "Final_Test" / "Images" / name, w, h, rgb)
        lines.append(f"{name};{w};{h};5;5;{w - 5};{h - 5};{cls}")
    (base / "GT-final_test.csv").write_bytes(("\r\n".join(lines) + "\r\n").encode())
    return base


def test_gtsrb_folder_layout(tmp_path):
    base = _write_gtsrb(tmp_path)
    train, test, info = load("gtsrb", tmp_path)
    assert train.x.shape == (46, 3, 32, 32) and train.x.dtype == torch.uint8
    assert test.x.shape == (3, 3, 32, 32) and test.x.dtype == torch.uint8
    assert train.y.tolist() == [0, 0] + list(range(1, 42)) + [42, 42, 42] == _gtsrb_labels()
    assert test.y.tolist() == [42, 0, 1]
    colours = [rgb for imgs in _gtsrb_train().values() for _, _, rgb in imgs]
    for x, rgb in zip(train.x, colours):
        assert x.reshape(3, -1).unique(dim=1).flatten().tolist() == list(rgb)
    for x, (_, _, _, rgb, _) in zip(test.x, GTSRB_TEST):
        assert x.reshape(3, -1).unique(dim=1).flatten().tolist() == list(rgb)
    assert (info.channels, info.size, info.num_classes) == (3, 32, 43)
    assert (base / ".ftsam-gtsrb32.safetensors").is_file()


def test_gtsrb_second_load_uses_cache(tmp_path, monkeypatch):
    base = _write_gtsrb(tmp_path)
    train, test, _ = load("gtsrb", tmp_path)
    cache = base / ".ftsam-gtsrb32.safetensors"
    assert cache.is_file()

    def no_decoding(*a, **k):
        raise AssertionError("images decoded again although the cache exists")
    monkeypatch.setattr(data, "_load_images", no_decoding)
    train2, test2, _ = load("gtsrb", tmp_path)
    assert torch.equal(train.x, train2.x) and torch.equal(train.y, train2.y)
    assert torch.equal(test.x, test2.x) and torch.equal(test.y, test2.y)
    assert train2.y.dtype == torch.int64


def test_gtsrb_resize_option(tmp_path):
    _write_gtsrb(tmp_path)
    train, test, info = load("gtsrb", tmp_path, image_size=16)
    assert train.x.shape == (46, 3, 16, 16) and test.x.shape == (3, 3, 16, 16)
    assert info.size == 16
    assert (train.x[0, 0] == 255).all() and (train.x[0, 1:] == 0).all()


# ---- Tiny ImageNet ----------------------------------------------------------------------
COLOURS = {"n01443537": (220, 30, 30), "n01629819": (30, 220, 30), "n01641577": (30, 30, 220)}
WNIDS = list(COLOURS) + [f"n9{i:07d}" for i in range(197)]   # Tiny ImageNet has 200 classes


def _write_tiny(root: Path, per_class: int = 2) -> Path:
    base = root / "tiny-imagenet-200"
    base.mkdir(parents=True)
    (base / "wnids.txt").write_text("\n".join(WNIDS) + "\n")
    for w in WNIDS:
        img_dir = base / "train" / w / "images"
        img_dir.mkdir(parents=True)
        for i in range(per_class if w in COLOURS else 1):   # the other classes: one small image each
            Image.new("RGB", (64, 64) if w in COLOURS else (8, 8), COLOURS.get(w, (128, 128, 128))).save(
                img_dir / f"{w}_{i}.JPEG", format="JPEG", quality=95)
        (base / "train" / w / f"{w}_boxes.txt").write_text("")
    # a grayscale JPEG, as a few of the real ones are
    Image.new("L", (64, 64), 128).save(base / "train" / WNIDS[0] / "images" / f"{WNIDS[0]}_{per_class}.JPEG",
                                       format="JPEG", quality=95)
    val = base / "val" / "images"
    val.mkdir(parents=True)
    val_labels = [WNIDS[2], WNIDS[0], WNIDS[1], WNIDS[2]]
    lines = []
    for i, w in enumerate(val_labels):
        Image.new("RGB", (64, 64), COLOURS[w]).save(val / f"val_{i}.JPEG", format="JPEG", quality=95)
        lines.append(f"val_{i}.JPEG\t{w}\t0\t1\t62\t63")
    (base / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    return base


def _close(x: torch.Tensor, rgb, tol: int = 4) -> bool:
    return bool((x.float().mean((1, 2)) - torch.tensor(rgb, dtype=torch.float)).abs().max() <= tol)


def test_tiny_imagenet_folder_layout(tmp_path, monkeypatch):
    base = _write_tiny(tmp_path)
    train, test, info = load("tiny_imagenet", tmp_path)
    assert train.x.shape == (7 + 197, 3, 64, 64) and train.x.dtype == torch.uint8
    assert test.x.shape == (4, 3, 64, 64)
    assert train.y.tolist() == [0, 0, 0, 1, 1, 2, 2] + list(range(3, 200))
    assert test.y.tolist() == [2, 0, 1, 2]
    for x, y in zip(train.x[:7], train.y[:7]):
        if not _close(x, (128, 128, 128)):
            assert _close(x, COLOURS[WNIDS[y]])
    assert _close(train.x[2], (128, 128, 128))   # the grayscale one, as three equal channels
    for x, y in zip(test.x, test.y):
        assert _close(x, COLOURS[WNIDS[y]])
    assert (info.channels, info.size, info.num_classes) == (3, 64, 200)
    assert (base / ".ftsam-tiny64.safetensors").is_file()
    monkeypatch.setattr(data, "_load_images", lambda *a, **k: pytest.fail("cache not used"))
    train2, test2, _ = load("tiny_imagenet", tmp_path)
    assert torch.equal(train.x, train2.x) and torch.equal(test.y, test2.y)


# ---- Fashion-MNIST ----------------------------------------------------------------------
def _idx_bytes(arr: np.ndarray) -> bytes:
    return b"\x00\x00\x08" + bytes([arr.ndim]) + struct.pack(">" + "I" * arr.ndim, *arr.shape) + arr.tobytes()


def _write_fashion(folder: Path, gz: bool, n_train: int = 6, n_test: int = 3) -> dict[str, np.ndarray]:
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": (np.arange(n_train) % 10).astype(np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": (9 - np.arange(n_test) % 10).astype(np.uint8),
    }
    for stem, arr in arrays.items():
        raw = _idx_bytes(arr)
        if gz:
            (folder / (stem + ".gz")).write_bytes(gzip.compress(raw))
        else:
            (folder / stem).write_bytes(raw)
    return arrays


@pytest.fixture
def no_system_fashion(monkeypatch, tmp_path):
    monkeypatch.setattr(data, "FASHION_MNIST_SYSTEM_DIR", tmp_path / "no-such-system-dir")


@pytest.mark.parametrize("gz", [False, True])
def test_fashion_mnist_idx(tmp_path, no_system_fashion, gz):
    arrays = _write_fashion(tmp_path / "FashionMNIST" / "raw", gz)
    train, test, info = load("fashion_mnist", tmp_path)
    assert train.x.shape == (6, 1, 28, 28) and train.x.dtype == torch.uint8
    assert test.x.shape == (3, 1, 28, 28)
    assert torch.equal(train.x[:, 0], torch.from_numpy(arrays["train-images-idx3-ubyte"]))
    assert torch.equal(test.x[:, 0], torch.from_numpy(arrays["t10k-images-idx3-ubyte"]))
    assert train.y.tolist() == [0, 1, 2, 3, 4, 5] and test.y.tolist() == [9, 8, 7]
    assert train.y.dtype == torch.int64
    assert (info.channels, info.size, info.num_classes) == (1, 28, 10)


def test_fashion_mnist_plain_folder(tmp_path, no_system_fashion):
    _write_fashion(tmp_path / "fashion-mnist", gz=True)
    train, test, _ = load("fashion_mnist", tmp_path)
    assert len(train) == 6 and len(test) == 3


def test_read_idx_rejects_other_dtypes(tmp_path):
    p = tmp_path / "float.idx"
    p.write_bytes(b"\x00\x00\x0d\x01" + struct.pack(">I", 1) + b"\x00" * 4)
    with pytest.raises(ValueError, match="not an unsigned-byte IDX"):
        data.read_idx(p)


@pytest.mark.skipif(not (data.FASHION_MNIST_SYSTEM_DIR / "train-images-idx3-ubyte.gz").is_file()
                    and not (data.FASHION_MNIST_SYSTEM_DIR / "train-images-idx3-ubyte").is_file(),
                    reason="Debian's dataset-fashion-mnist is not installed")
def test_fashion_mnist_system_package(tmp_path):
    train, test, _ = load("fashion_mnist", tmp_path)
    assert train.x.shape == (60000, 1, 28, 28) and test.x.shape == (10000, 1, 28, 28)
    assert train.y.min() == 0 and train.y.max() == 9
    assert torch.bincount(train.y).tolist() == [6000] * 10
    assert torch.bincount(test.y).tolist() == [1000] * 10


# ---- digits -----------------------------------------------------------------------------
def test_digits_split():
    train, test, info = load("digits", "unused")
    assert len(train) + len(test) == 1797
    assert 1330 <= len(train) <= 1360 and 440 <= len(test) <= 465
    assert train.x.dtype == torch.uint8 and train.x.shape[1:] == (1, 8, 8)
    assert int(train.x.max()) == 255 and int(train.x.min()) == 0
    # stratified: every class has a quarter (rounded down) of its samples in the test set
    total = torch.bincount(train.y, minlength=10) + torch.bincount(test.y, minlength=10)
    assert torch.bincount(test.y, minlength=10).tolist() == (total // 4).tolist()
    assert (info.channels, info.size, info.num_classes) == (1, 8, 10)
    # deterministic
    train2, test2, _ = load("digits", "unused")
    assert torch.equal(train.x, train2.x) and torch.equal(test.y, test2.y)


def test_digits_split_does_not_depend_on_global_seed():
    torch.manual_seed(1)
    a, _, _ = load("digits", "unused")
    torch.manual_seed(2)
    b, _, _ = load("digits", "unused")
    assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y)


def test_digits_resize():
    train, test, info = load("digits", "unused", image_size=16)
    assert train.x.shape[1:] == (1, 16, 16) and test.x.shape[1:] == (1, 16, 16)
    assert train.x.dtype == torch.uint8 and info.size == 16
    native, _, _ = load("digits", "unused")
    assert torch.equal(train.y, native.y)


# ---- missing data -----------------------------------------------------------------------
@pytest.mark.parametrize("name,where", [
    ("cifar10", ""), ("gtsrb", "gtsrb"), ("tiny_imagenet", ""), ("fashion_mnist", "FashionMNIST/raw")])
def test_missing_dataset_says_where(tmp_path, no_system_fashion, name, where):
    root = tmp_path / "data"
    with pytest.raises(DatasetNotFound) as e:
        load(name, root)
    msg = str(e.value)
    assert str(root / where).rstrip("/") in msg
    assert isinstance(e.value, FileNotFoundError)


def test_unknown_dataset_name(tmp_path):
    with pytest.raises(ConfigError, match="valid choices"):
        load("mnist", tmp_path)


# ---- the defender's clean subset --------------------------------------------------------
def _labels(counts):
    y = torch.cat([torch.full((n,), c) for c, n in enumerate(counts)])
    return ImageSet(torch.zeros(len(y), 1, 2, 2, dtype=torch.uint8), y)


def test_clean_subset_balanced():
    s = _labels([100, 60, 200, 40])
    idx = clean_subset(s, 0.1, seed=0)
    assert torch.bincount(s.y[idx], minlength=4).tolist() == [10, 10, 10, 10]
    assert len(idx.unique()) == len(idx) and torch.equal(idx, idx.sort().values)
    assert torch.equal(idx, clean_subset(s, 0.1, seed=0))
    assert not torch.equal(idx, clean_subset(s, 0.1, seed=1))


def test_clean_subset_uniform():
    s = _labels([100, 60, 200, 40])
    idx = clean_subset(s, 0.25, seed=3, balanced=False)
    assert len(idx) == 100 and len(idx.unique()) == 100
    assert torch.equal(idx, clean_subset(s, 0.25, seed=3, balanced=False))
    assert not torch.equal(idx, clean_subset(s, 0.25, seed=4, balanced=False))
    assert len(clean_subset(s, 1.0, seed=0, balanced=False)) == len(s)


@pytest.mark.parametrize("ratio", [0.0, -0.1, 1.5])
def test_clean_subset_bad_ratio(ratio):
    with pytest.raises(ValueError, match="ratio"):
        clean_subset(_labels([10, 10]), ratio, seed=0)


# ---- per-class subsets (data.train_per_class / data.test_per_class) -----------------------
def test_per_class_subset_of_a_real_loader():
    full_train, full_test, _ = load("digits", "unused")
    train, test, _ = load("digits", "unused", train_per_class=20, test_per_class=5)
    assert torch.bincount(train.y, minlength=10).tolist() == [20] * 10
    assert torch.bincount(test.y, minlength=10).tolist() == [5] * 10
    # every kept image is one of the originals with its own label, in the original order
    rows = {bytes(x.numpy()): int(y) for x, y in zip(full_train.x, full_train.y)}
    assert all(rows[bytes(x.numpy())] == int(y) for x, y in zip(train.x, train.y))
    pos = [next(i for i in range(len(full_train)) if torch.equal(full_train.x[i], x)) for x in train.x[:30]]
    assert pos == sorted(pos)
    # fixed: the same subset every time, whatever the global seed
    torch.manual_seed(99)
    again, _, _ = load("digits", "unused", train_per_class=20, test_per_class=5)
    assert torch.equal(again.x, train.x) and torch.equal(again.y, train.y)


def test_per_class_subset_keeps_small_classes_whole():
    s = _labels([100, 60, 200, 40])
    sub = data.per_class_subset(s, 50, seed=0)
    assert torch.bincount(sub.y, minlength=4).tolist() == [50, 50, 50, 40]
    full, _, _ = load("digits", "unused")
    assert len(load("digits", "unused", train_per_class=0)[0]) == len(full)   # 0 keeps everything


def test_per_class_subset_rejects_negative():
    with pytest.raises(ConfigError, match="data.train_per_class"):
        DataConfig(train_per_class=-1).check()
