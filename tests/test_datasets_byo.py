"""Datasets the user brings: an image folder, an arrays file, a registered loader; each usable
as ``data.name`` of a params file, with the data's content in the run's cache key."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from byo_helpers import digits, image_folder, write_pngs
from ftsam import datasets_byo, experiment
from ftsam.config import ConfigError, from_dict
from ftsam.data import ImageSet, load_dataset
from ftsam.datasets_byo import DatasetError, register_dataset

pytestmark = pytest.mark.usefixtures("one_thread")


def _cfg(data: dict, **more):
    return from_dict({"data": data, **more})


def test_folder_reads_the_imagefolder_layout_exactly(tmp_path):
    train, test = digits(6, 3)
    write_pngs(tmp_path / "train", train)
    write_pngs(tmp_path / "test", test)
    tr, te, info = load_dataset(_cfg({"name": "folder", "root": str(tmp_path)}).data)
    # labels are the sorted class folders; PNG is lossless: every image comes back bitwise
    for got, want in ((tr, train), (te, test)):
        order = torch.argsort(want.y, stable=True)
        assert torch.equal(got.y, want.y[order]) and torch.equal(got.x, want.x[order])
    assert (info.channels, info.size, info.num_classes) == (1, 8, 10)
    assert info.fingerprint and info.mean[0] == pytest.approx(tr.x.float().div(255).mean().item(), abs=1e-4)


def test_folder_resizes_and_reads_rgb(tmp_path):
    rgb = ImageSet(torch.randint(0, 256, (6, 3, 10, 10), dtype=torch.uint8), torch.tensor([0, 1, 2, 0, 1, 2]))
    write_pngs(tmp_path / "train", rgb)
    write_pngs(tmp_path / "test", rgb)
    tr, te, info = load_dataset(_cfg({"name": "folder", "root": str(tmp_path), "image_size": 8}).data)
    assert tr.x.shape == (6, 3, 8, 8) and info.num_classes == 3 and info.channels == 3


def test_content_is_in_the_cache_key(tmp_path):
    root = image_folder(tmp_path / "data", 4, 2)
    cfg = _cfg({"name": "folder", "root": str(root)}, model={"width": 2})
    _, _, info = load_dataset(cfg.data)
    key = experiment.attack_key(cfg, info)
    assert experiment.attack_key(cfg, load_dataset(cfg.data)[2]) == key         # same files: same key
    png = sorted((root / "train" / "c3").glob("*.png"))[0]
    from PIL import Image
    a = np.asarray(Image.open(png)).copy()
    a[0, 0] ^= 0xFF                                                              # one pixel changed
    Image.fromarray(a).save(png)
    assert experiment.attack_key(cfg, load_dataset(cfg.data)[2]) != key
    with pytest.raises(ValueError, match="fingerprint"):
        experiment.attack_key(cfg)                                               # never a key without content
    digits_cfg = _cfg({"name": "digits"})                                        # built-in keys unchanged
    assert experiment.attack_key(digits_cfg) == experiment.attack_key(digits_cfg, load_dataset(digits_cfg.data)[2])


def test_a_changed_file_retrains_instead_of_returning_the_old_model(tmp_path):
    root = image_folder(tmp_path / "data", 6, 2)
    cfg = _cfg({"name": "folder", "root": str(root)}, model={"width": 2},
               attack_train={"epochs": 1, "batch_size": 32})
    first = experiment.train_backdoor(cfg, cache_dir=tmp_path / "runs", device="cpu", progress=False)
    again = experiment.train_backdoor(cfg, cache_dir=tmp_path / "runs", device="cpu", progress=False)
    assert again.run_dir == first.run_dir
    next((root / "test" / "c1").glob("*.png")).unlink()                          # a file removed
    changed = experiment.train_backdoor(cfg, cache_dir=tmp_path / "runs", device="cpu", progress=False)
    assert changed.run_dir != first.run_dir and len(changed.test) == len(first.test) - 1


@pytest.mark.parametrize("case, message", [
    ("one_class", "at least 2"), ("unreadable", "c1/bad.png: not a readable image"),
    ("no_images", "no images"), ("no_test", "no test/ folder"), ("sizes", "differ in size"),
    ("unknown_test_class", "not among the training classes")])
def test_bad_image_folders_are_clear_errors(tmp_path, case, message):
    train, test = digits(3, 2)
    if case == "one_class":
        write_pngs(tmp_path / "train", ImageSet(train.x[:3], torch.zeros(3, dtype=torch.long)))
    else:
        write_pngs(tmp_path / "train", train)
    if case != "no_test":
        write_pngs(tmp_path / "test", test)
    if case == "unreadable":
        (tmp_path / "train" / "c1" / "bad.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    if case == "no_images":
        for p in (tmp_path / "train" / "c2").glob("*.png"):
            p.unlink()
        (tmp_path / "train" / "c2" / "notes.txt").write_text("not an image")
    if case == "sizes":
        write_pngs(tmp_path / "train", ImageSet(torch.zeros(1, 1, 9, 9, dtype=torch.uint8), torch.tensor([0])),
                   names=["c0"] * 1)
        (tmp_path / "train" / "c0" / "0000.png").rename(tmp_path / "train" / "c0" / "zz.png")
    if case == "unknown_test_class":
        write_pngs(tmp_path / "test", test, names=[f"d{i}" for i in range(10)])
    with pytest.raises(DatasetError, match=message):
        load_dataset(_cfg({"name": "folder", "root": str(tmp_path)}).data)


def test_arrays_npz_and_safetensors(tmp_path):
    train, test = digits(3, 2)
    arrays = {"x_train": train.x.numpy(), "y_train": train.y.numpy(),
              "x_test": test.x[:, 0].numpy(), "y_test": test.y.numpy()}          # [N, H, W] is one channel
    np.savez(tmp_path / "d.npz", **arrays)
    tr, te, info = load_dataset(_cfg({"name": "arrays", "root": str(tmp_path / "d.npz")}).data)
    assert torch.equal(tr.x, train.x) and torch.equal(te.x, test.x) and info.num_classes == 10
    from ftsam.io import save_tensors
    save_tensors(tmp_path / "d.safetensors", {k: torch.as_tensor(v) for k, v in arrays.items()})
    tr2, _, info2 = load_dataset(_cfg({"name": "arrays", "root": str(tmp_path / "d.safetensors")}).data)
    assert torch.equal(tr2.x, train.x) and info2.fingerprint == info.fingerprint
    # refused: pickled object arrays, a missing key, float images outside [0, 1]
    np.savez(tmp_path / "obj.npz", **(arrays | {"y_test": np.array([object()] * len(test), dtype=object)}))
    with pytest.raises(DatasetError, match="no pickles"):
        load_dataset(_cfg({"name": "arrays", "root": str(tmp_path / "obj.npz")}).data)
    np.savez(tmp_path / "miss.npz", **{k: v for k, v in arrays.items() if k != "y_test"})
    with pytest.raises(DatasetError, match="missing arrays.*y_test"):
        load_dataset(_cfg({"name": "arrays", "root": str(tmp_path / "miss.npz")}).data)
    np.savez(tmp_path / "f.npz", **(arrays | {"x_train": train.x.numpy() * 1.0}))
    with pytest.raises(DatasetError, match=r"\[0, 1\]"):
        load_dataset(_cfg({"name": "arrays", "root": str(tmp_path / "f.npz")}).data)


def test_registered_loader_is_a_data_name_and_runs_an_attack(tmp_path, monkeypatch):
    monkeypatch.setattr(datasets_byo, "REGISTRY", {})
    with pytest.raises(ConfigError, match="unknown value 'tiny_digits'.*folder, arrays"):
        _cfg({"name": "tiny_digits"})
    calls = []

    @register_dataset("tiny_digits")
    def tiny_digits(cfg):
        calls.append(cfg.root)
        train, test = digits(6, 2)
        return train, (test.x.float() / 255, test.y)         # an (x, y) pair of floats on the uint8 grid

    cfg = _cfg({"name": "tiny_digits", "root": "anything"}, model={"width": 2},
               attack_train={"epochs": 1, "batch_size": 32})
    run = experiment.train_backdoor(cfg, cache_dir=tmp_path, device="cpu", progress=False)
    assert calls == ["anything"] and run.info.name == "tiny_digits" and run.run_dir.name.endswith(run.info.fingerprint)
    assert torch.equal(run.test.x, digits(6, 2)[1].x)
    with pytest.raises(ConfigError, match="built-in"):
        register_dataset("folder")


def test_an_entry_point_names_a_dataset_for_fresh_kernels(monkeypatch):
    """Notebooks run in a fresh kernel that never ran a decorator: group ftsam.datasets is read."""
    class EntryPoint:
        def load(self):
            return lambda cfg: digits(3, 2)
    monkeypatch.setattr(datasets_byo, "_entry_points", lambda: {"from_pkg": EntryPoint()})
    train, _, info = load_dataset(_cfg({"name": "from_pkg"}).data)
    assert len(train) == 30 and info.name == "from_pkg" and "from_pkg" in datasets_byo.dataset_names()
