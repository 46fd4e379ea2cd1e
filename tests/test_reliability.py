"""Issue 12 (reliability): damaged files are named, wrong settings are refused, caches follow
their sources, failed runs keep good files, and concurrent runs take turns."""
from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest
import torch

from ftsam.io import (CheckpointError, DamagedFile, load_json, load_tensors, run_lock, save_json,
                      save_tensors)


# ---- damaged files are named ----------------------------------------------------------
@pytest.mark.parametrize("cut", [0, 1, 10, -1])
def test_truncated_json_names_the_file(tmp_path, cut):
    p = save_json(tmp_path / "result.json", {"metrics": {"acc": 91.5, "asr": 2.0}, "history": [1, 2, 3]})
    raw = p.read_bytes()
    p.write_bytes(raw[:cut] if cut >= 0 else raw[: len(raw) // 2])
    with pytest.raises(DamagedFile) as e:
        load_json(p)
    assert str(p) in str(e.value) and e.value.path == p
    assert isinstance(e.value, ValueError)


def test_truncated_safetensors_is_called_damaged_not_foreign(tmp_path):
    p = save_tensors(tmp_path / "train_state.safetensors", {"w": torch.randn(64, 64)})
    p.write_bytes(p.read_bytes()[:-1000])
    with pytest.raises(CheckpointError) as e:
        load_tensors(p)
    msg = str(e.value)
    assert str(p) in msg and "damaged" in msg and "convert" not in msg   # no advice that does not apply
    assert e.value.path == p and isinstance(e.value, DamagedFile)


def test_foreign_file_still_gets_the_conversion_advice(tmp_path):
    p = tmp_path / "model.pt"
    p.write_bytes(b"PK\x03\x04" + b"\x00" * 100)     # a torch.save zip
    with pytest.raises(CheckpointError, match="convert"):
        load_tensors(p)


# ---- one process per run directory ----------------------------------------------------
def test_run_lock_second_waits_then_reuses(tmp_path):
    """Two workers on the same run: the second waits for the first and reuses its result."""
    run_dir = tmp_path / "run"
    trained, order = [], []

    def worker(name):
        with run_lock(run_dir):
            result = run_dir / "result.json"
            if result.is_file():
                order.append((name, "reused", load_json(result)["by"]))
                return
            order.append((name, "training", None))
            time.sleep(0.3)
            trained.append(name)
            save_json(result, {"by": name})

    a = threading.Thread(target=worker, args=("a",))
    a.start()
    time.sleep(0.05)
    b = threading.Thread(target=worker, args=("b",))
    b.start()
    a.join(), b.join()
    assert trained == ["a"]
    assert order == [("a", "training", None), ("b", "reused", "a")]


def test_run_lock_is_exclusive_and_released(tmp_path):
    with run_lock(tmp_path / "r"):
        with pytest.raises(BlockingIOError):
            with run_lock(tmp_path / "r", blocking=False):
                pass
    with run_lock(tmp_path / "r", blocking=False):   # free again after the first left
        pass
    with pytest.raises(RuntimeError):
        with run_lock(tmp_path / "r"):
            raise RuntimeError("training failed")
    with run_lock(tmp_path / "r", blocking=False):   # an exception releases it too
        pass


# ---- wrong settings are refused, naming the key ----------------------------------------
from ftsam.config import ConfigError, DataConfig, from_dict, load_config, project_root  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def _params(tmp_path: Path, text: str, name: str = "p.yaml") -> Path:
    p = tmp_path / name
    p.write_text(text)
    return p


@pytest.mark.parametrize("text,key,lines", [
    ("seed: 0\nseed: 1\n", "seed", "1 and 2"),
    ("defense:\n  clean_ratio: 0.1\nmodel:\n  width: 8\ndefense:\n  clean_ratio: 0.2\n", "defense", "1 and 5"),
    ("defense:\n  train:\n    lr: 0.1\n    epochs: 3\n    lr: 0.2\n", "defense.train.lr", "3 and 5"),
    ("attack_settings:\n  wanet: {attack_train.epochs: 3, attack_train.epochs: 4}\n",
     "attack_settings.wanet.attack_train.epochs", "2 and 2"),
])
def test_repeated_yaml_key_is_refused(tmp_path, text, key, lines):
    p = _params(tmp_path, text)
    with pytest.raises(ConfigError) as e:
        load_config(p)
    msg = str(e.value)
    assert str(p) in msg and f"key {key} is given twice" in msg and f"lines {lines}" in msg


def test_yaml_merge_keys_are_not_duplicates(tmp_path):
    p = _params(tmp_path, "attack_train: &t {epochs: 3, lr: 0.1}\ndefense:\n  train:\n    <<: *t\n    lr: 0.2\n")
    cfg = load_config(p)
    assert cfg.defense.train.epochs == 3 and cfg.defense.train.lr == 0.2


@pytest.mark.parametrize("text,value", [("1e-3", 1e-3), ("5E-4", 5e-4), ("1e3", 1000.0), ("+2.5e-2", 0.025),
                                        ("1.0e-3", 1e-3), ("0.01", 0.01)])
def test_exponent_floats_are_numbers(tmp_path, text, value):
    p = _params(tmp_path, f"attack_train:\n  lr: {text}\n")
    assert load_config(p).attack_train.lr == pytest.approx(value)


def test_strings_stay_strings(tmp_path):
    p = _params(tmp_path, "data:\n  name: digits\n  root: 1e3data\n")
    assert Path(load_config(p).data.root).name == "1e3data"


def test_yaml_syntax_error_names_the_file(tmp_path):
    p = _params(tmp_path, "defense:\n  clean_ratio: [0.1\n")
    with pytest.raises(ConfigError, match="not valid YAML at line 3, column 1") as e:
        load_config(p)
    assert str(p) in str(e.value) and "flow sequence" in str(e.value)


@pytest.mark.parametrize("size", [1, 2, 7])
def test_tiny_image_size_is_refused(size):
    with pytest.raises(ConfigError, match="data.image_size") as e:
        from_dict({"data": {"image_size": size}})
    assert str(size) in str(e.value)
    DataConfig(image_size=0).check()
    DataConfig(image_size=8).check()


# ---- relative paths: one rule, whatever the working directory ---------------------------
def test_params_file_resolves_data_root_from_any_cwd(tmp_path, monkeypatch):
    project = tmp_path / "proj"
    (project / "params").mkdir(parents=True)
    (project / "notebooks").mkdir()
    (project / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    p = _params(project / "params", "data:\n  name: cifar10\n  root: data\n", "c.yaml")
    roots = []
    for cwd in (project, project / "notebooks", tmp_path):
        monkeypatch.chdir(cwd)
        rel = Path("params/c.yaml") if cwd == project else Path("../params/c.yaml") if cwd.name == "notebooks" else p
        roots.append(load_config(rel).data.root)
    assert roots == [str(project / "data")] * 3
    assert project_root(project / "notebooks") == project == project_root(p.parent)
    # and the same files are found: CIFAR-10 at data/cifar-10-batches-py/, as the README says
    _write_cifar_py(project / "data")
    found = []
    for cwd, rel in ((project, "params/c.yaml"), (project / "notebooks", "../params/c.yaml")):
        monkeypatch.chdir(cwd)
        *_, info = load_dataset(load_config(rel).data)
        found.append(info.fingerprint)
    assert found[0] == found[1] != ""


def test_absolute_data_root_and_file_outside_a_project(tmp_path):
    p = _params(tmp_path, f"data:\n  name: cifar10\n  root: {tmp_path / 'elsewhere'}\n")
    assert load_config(p).data.root == str(tmp_path / "elsewhere")
    q = _params(tmp_path, "data:\n  name: cifar10\n  root: d\n", "q.yaml")
    if project_root(tmp_path) == tmp_path.resolve():       # no pyproject.toml above the tmp dir
        assert load_config(q).data.root == str(tmp_path.resolve() / "d")


def test_repo_params_find_repo_data(monkeypatch):
    """The README's layout: data/cifar-10-batches-py/ at the repository root, wherever one runs."""
    for cwd in (REPO, REPO / "notebooks"):
        monkeypatch.chdir(cwd)
        assert load_config(REPO / "params/paper/cifar10-preactresnet18.yaml").data.root == str(REPO / "data")


# ---- damaged dataset files: an error naming the file and what was expected ---------------
import gzip  # noqa: E402
import pickle  # noqa: E402
import warnings  # noqa: E402

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402
from test_data import (_cifar_records, _idx_bytes, _write_cifar_py, _write_fashion, _write_gtsrb,  # noqa: E402
                       _write_tiny)

import ftsam.data as data  # noqa: E402
from ftsam.data import CacheWarning, DataError, ImageSet, clean_subset, load_dataset  # noqa: E402


def _load(name, root, **kw):
    return load_dataset(DataConfig(name=name, root=str(root), **kw))


@pytest.fixture
def no_system_fashion(monkeypatch, tmp_path):
    monkeypatch.setattr(data, "FASHION_MNIST_SYSTEM_DIR", tmp_path / "no-such-system-dir")


@pytest.mark.parametrize("keep", [0, 20, 0.5, 0.99])
def test_truncated_cifar_python_batch(tmp_path, keep):
    _write_cifar_py(tmp_path)
    f = tmp_path / "cifar-10-batches-py" / "data_batch_3"
    raw = f.read_bytes()
    f.write_bytes(raw[: keep if isinstance(keep, int) else int(len(raw) * keep)])
    with pytest.raises(DataError) as e:
        _load("cifar10", tmp_path)
    assert str(f) in str(e.value) and "CIFAR-10 python batch" in str(e.value) and e.value.path == f


def test_cifar_python_batch_of_the_wrong_shape(tmp_path):
    _write_cifar_py(tmp_path)
    f = tmp_path / "cifar-10-batches-py" / "test_batch"
    with open(f, "wb") as fh:
        pickle.dump({"data": np.zeros((4, 100), np.uint8), "labels": [0, 1, 2, 3]}, fh, protocol=2)
    with pytest.raises(DataError, match=r"\(4, 3072\)") as e:
        _load("cifar10", tmp_path)
    assert str(f) in str(e.value)


def test_cifar_label_out_of_range(tmp_path):
    _write_cifar_py(tmp_path)
    f = tmp_path / "cifar-10-batches-py" / "data_batch_2"
    x, _ = _cifar_records(4, 0)
    with open(f, "wb") as fh:
        pickle.dump({"data": x, "labels": [0, 1, 10, 3]}, fh, protocol=2)
    with pytest.raises(DataError, match=r"labels must lie in 0\.\.9, found 10") as e:
        _load("cifar10", tmp_path)
    assert str(f) in str(e.value)


def test_cifar_missing_batch(tmp_path):
    _write_cifar_py(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_5").unlink()
    with pytest.raises(DataError, match="data_batch_5: missing"):
        _load("cifar10", tmp_path)


def test_malicious_cifar_pickle_is_still_refused_not_called_damaged(tmp_path):
    _write_cifar_py(tmp_path)
    with open(tmp_path / "cifar-10-batches-py" / "data_batch_1", "wb") as fh:
        pickle.dump({"data": print, "labels": [0]}, fh, protocol=2)
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        _load("cifar10", tmp_path)


@pytest.mark.parametrize("damage,needle", [("cut", "not a whole number of 3073-byte"),
                                           ("label", "found 200")])
def test_cifar_binary_batch(tmp_path, damage, needle):
    d = tmp_path / "cifar-10-batches-bin"
    d.mkdir()
    for k, name in enumerate([f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]):
        x, y = _cifar_records(2, offset=10 * k)
        (d / name).write_bytes(np.concatenate([np.array(y, np.uint8)[:, None], x], axis=1).tobytes())
    f = d / "data_batch_4.bin"
    raw = bytearray(f.read_bytes())
    if damage == "cut":
        raw = raw[:-7]
    else:
        raw[3073] = 200
    f.write_bytes(bytes(raw))
    with pytest.raises(DataError, match=needle) as e:
        _load("cifar10", tmp_path)
    assert str(f) in str(e.value)


@pytest.mark.parametrize("gz", [False, True])
def test_truncated_idx_file(tmp_path, no_system_fashion, gz):
    folder = tmp_path / "FashionMNIST" / "raw"
    _write_fashion(folder, gz=gz)
    f = folder / ("train-images-idx3-ubyte" + (".gz" if gz else ""))
    if gz:       # a gzip cut short: the stream ends before its end marker
        f.write_bytes(f.read_bytes()[:-30])
        needle = "damaged gzip"
    else:
        f.write_bytes(f.read_bytes()[:-28])
        needle = r"shape \(6, 28, 28\), i.e. 4720 bytes, but the file holds 4692: truncated"
    with pytest.raises(DataError, match=needle) as e:
        _load("fashion_mnist", tmp_path)
    assert str(f) in str(e.value)


def test_idx_header_cut_short_and_foreign(tmp_path):
    p = tmp_path / "x-idx3-ubyte"
    p.write_bytes(b"\x00\x00\x08\x03\x00\x00")
    with pytest.raises(DataError, match="header cut short"):
        data.read_idx(p)
    p.write_bytes(b"")
    with pytest.raises(DataError, match="not an unsigned-byte IDX"):
        data.read_idx(p)


def test_fashion_labels_out_of_range_and_count(tmp_path, no_system_fashion):
    folder = tmp_path / "FashionMNIST" / "raw"
    _write_fashion(folder, gz=False)
    f = folder / "t10k-labels-idx1-ubyte"
    f.write_bytes(_idx_bytes(np.array([1, 2, 11], np.uint8)))
    with pytest.raises(DataError, match=r"0\.\.9, found 11") as e:
        _load("fashion_mnist", tmp_path)
    assert str(f) in str(e.value)
    f.write_bytes(_idx_bytes(np.array([1, 2], np.uint8)))
    with pytest.raises(DataError, match="expected 3 labels"):
        _load("fashion_mnist", tmp_path)


# ---- image folders: no empty class, caches follow their files ---------------------------
def test_gtsrb_empty_class_is_an_error(tmp_path):
    base = _write_gtsrb(tmp_path)
    for p in (base / "GTSRB" / "Training" / "00007").glob("*.ppm"):
        p.unlink()
    with pytest.raises(DataError, match="1 of 43 classes have no") as e:
        _load("gtsrb", tmp_path)
    assert "00007" in str(e.value) and str(base / "GTSRB" / "Training") in str(e.value)


def test_gtsrb_missing_class_folder_is_an_error(tmp_path):
    import shutil
    base = _write_gtsrb(tmp_path)
    shutil.rmtree(base / "GTSRB" / "Training" / "00042")
    with pytest.raises(DataError, match="00042"):
        _load("gtsrb", tmp_path)


def test_gtsrb_cache_is_rebuilt_after_images_are_added(tmp_path):
    base = _write_gtsrb(tmp_path)
    train, _, info = _load("gtsrb", tmp_path)
    Image.new("RGB", (9, 9), (1, 2, 3)).save(base / "GTSRB" / "Training" / "00005" / "00001_00000.ppm", format="PPM")
    with pytest.warns(CacheWarning, match="other files"):
        train2, _, info2 = _load("gtsrb", tmp_path)
    assert len(train2) == len(train) + 1 and (train2.y == 5).sum() == 2
    assert info2.fingerprint != info.fingerprint
    with warnings.catch_warnings():          # now current: reused silently
        warnings.simplefilter("error")
        train3, _, info3 = _load("gtsrb", tmp_path)
    assert torch.equal(train3.x, train2.x) and info3.fingerprint == info2.fingerprint


def test_gtsrb_cache_is_rebuilt_after_an_image_is_replaced(tmp_path):
    base = _write_gtsrb(tmp_path)
    train, _, _ = _load("gtsrb", tmp_path)
    p = base / "GTSRB" / "Training" / "00001" / "00000_00000.ppm"
    Image.new("RGB", (30, 30), (9, 9, 9)).save(p, format="PPM")
    with pytest.warns(CacheWarning):
        train2, _, _ = _load("gtsrb", tmp_path)
    assert (train2.x[2] == 9).all() and not torch.equal(train.x[2], train2.x[2])


@pytest.mark.parametrize("damage", [lambda b: b[:-500], lambda b: b"", lambda b: b"garbage" * 10])
def test_damaged_dataset_cache_is_reported_and_rebuilt(tmp_path, damage):
    base = _write_gtsrb(tmp_path)
    train, _, _ = _load("gtsrb", tmp_path)
    cache = base / ".ftsam-gtsrb32.safetensors"
    cache.write_bytes(damage(cache.read_bytes()))
    with pytest.warns(CacheWarning, match="damaged dataset cache") as w:
        train2, _, _ = _load("gtsrb", tmp_path)
    assert str(cache) in str(w[0].message)
    assert torch.equal(train.x, train2.x)
    _load("gtsrb", tmp_path)          # the rebuilt cache reads


def test_damaged_image_is_named(tmp_path):
    base = _write_gtsrb(tmp_path)
    p = base / "GTSRB" / "Training" / "00003" / "00000_00000.ppm"
    p.write_bytes(p.read_bytes()[:20])
    with pytest.raises(DataError) as e:
        _load("gtsrb", tmp_path)
    assert str(p) in str(e.value)


def test_gtsrb_test_label_out_of_range(tmp_path):
    base = _write_gtsrb(tmp_path)
    csv = base / "GT-final_test.csv"
    csv.write_text(csv.read_text().replace(";42", ";43"))
    with pytest.raises(DataError, match=r"line 2: .*ClassId in 0\.\.42"):
        _load("gtsrb", tmp_path)


def test_tiny_imagenet_empty_class_and_short_wnids(tmp_path):
    base = _write_tiny(tmp_path)
    wnid = (base / "wnids.txt").read_text().split()[5]
    for p in (base / "train" / wnid / "images").glob("*.JPEG"):
        p.unlink()
    with pytest.raises(DataError, match=f"1 of 200 classes have no.*{wnid}"):
        _load("tiny_imagenet", tmp_path)
    (base / "wnids.txt").write_text("\n".join((base / "wnids.txt").read_text().split()[:150]))
    with pytest.raises(DataError, match="expected 200 distinct class ids"):
        _load("tiny_imagenet", tmp_path)


def test_fingerprint_follows_cifar_files(tmp_path):
    _write_cifar_py(tmp_path)
    *_, a = _load("cifar10", tmp_path)
    *_, b = _load("cifar10", tmp_path)
    assert a.fingerprint == b.fingerprint != ""
    f = tmp_path / "cifar-10-batches-py" / "test_batch"
    f.write_bytes(f.read_bytes())                          # rewritten: another mtime
    import os
    os.utime(f, ns=(f.stat().st_atime_ns, f.stat().st_mtime_ns + 10**9))
    *_, c = _load("cifar10", tmp_path)
    assert c.fingerprint != a.fingerprint


# ---- the defender's clean data ---------------------------------------------------------
def _labels(counts):
    y = torch.cat([torch.full((n,), c) for c, n in enumerate(counts)])
    return ImageSet(torch.zeros(len(y), 1, 2, 2, dtype=torch.uint8), y)


@pytest.mark.parametrize("ratio,balanced", [(0.001, True), (0.001, False), (0.03, True), (0.05, False)])
def test_clean_subset_too_small_is_refused(ratio, balanced):
    with pytest.raises(ConfigError, match="defense.clean_ratio") as e:
        clean_subset(_labels([30, 30, 30, 30, 30]), ratio, seed=0, balanced=balanced)
    assert "at least 2" in str(e.value)


def test_clean_subset_large_enough_passes():
    idx = clean_subset(_labels([30, 30, 30, 30, 30]), 0.07, seed=0)
    assert torch.bincount(_labels([30] * 5).y[idx]).tolist() == [2] * 5


# ---- notebooks: parameters checked, paths inside the project, failed runs keep good files ---
import nbformat  # noqa: E402

from ftsam.notebook import check_parameters, coerce_parameter  # noqa: E402

PARAMS_CELL = 'params_file = "../params/p.yaml"\ncache_dir = "../runs"\ncheck = True\ndefenses = ["ft", "ft_sam"]\nrho = 0.5\n'


def test_typo_in_a_parameter_is_an_error(tmp_path):
    ns = {"defences": ["ft"]}
    with pytest.raises(ConfigError) as e:
        check_parameters(ns, PARAMS_CELL, '# Parameters\ndefences = ["ft"]\n', notebooks_dir=tmp_path)
    assert "defences" in str(e.value) and "defenses" in str(e.value) and "check" in str(e.value)


@pytest.mark.parametrize("given,want", [("false", False), ("False", False), ("no", False), ("0", False),
                                        ("true", True), ("TRUE", True), (False, False), (0, False), (1, True)])
def test_papermill_string_booleans(given, want):
    assert coerce_parameter("check", given, True) is want


@pytest.mark.parametrize("name,given", [("check", "maybe"), ("defenses", "ft_sam"), ("rho", "big"),
                                        ("params_file", 3)])
def test_parameter_of_the_wrong_type(name, given):
    default = {"check": True, "defenses": ["ft"], "rho": 0.5, "params_file": "x"}[name]
    with pytest.raises(ConfigError, match=f"notebook parameter {name}"):
        coerce_parameter(name, given, default)
    assert coerce_parameter("rho", 2, 0.5) == 2.0 and isinstance(coerce_parameter("rho", 2, 0.5), float)


def test_injected_relative_paths_are_from_the_callers_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "nbs").mkdir()
    ns = {"check": "false", "cache_dir": "my_runs"}
    names = check_parameters(ns, PARAMS_CELL, '# Parameters\ncheck = "false"\ncache_dir = "my_runs"\n',
                             notebooks_dir=tmp_path / "nbs")
    assert names == ["check", "cache_dir"] and ns["check"] is False
    assert ns["cache_dir"] == str(tmp_path / "my_runs")
    assert Path.cwd() == tmp_path / "nbs"          # the notebook's own defaults are relative to its folder


def _project(tmp_path: Path, cells: list[str]) -> Path:
    proj = tmp_path / "proj"
    for d in ("notebooks", "params"):
        (proj / d).mkdir(parents=True)
    (proj / "pyproject.toml").write_text("[project]\nname = 'x'\n")
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell(cells[0], metadata={"tags": ["parameters"]})] + [
        nbformat.v4.new_code_cell(c) for c in cells[1:]]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, proj / "notebooks" / "n.ipynb")
    return proj


NOTEBOOK = [PARAMS_CELL,
            "from ftsam.notebook import check_parameters\ncheck_parameters(globals())\n"
            "import os, pathlib\npathlib.Path(cache_dir).mkdir(parents=True, exist_ok=True)\n"
            "pathlib.Path(cache_dir, 'made').write_text(repr(check))\n"
            "assert not check, 'the checks ran'\n"]


def test_papermill_from_the_repo_root_writes_inside_and_honours_check_false(tmp_path, monkeypatch):
    """papermill started in the project root (not notebooks/), as `-p check false` passes it."""
    import papermill as pm
    proj = _project(tmp_path, NOTEBOOK)
    monkeypatch.chdir(proj)
    pm.execute_notebook("notebooks/n.ipynb", str(tmp_path / "out.ipynb"), parameters={"check": "false"},
                        kernel_name="python3", progress_bar=False)
    assert (proj / "runs" / "made").read_text() == "False"
    assert not (tmp_path / "runs").exists()           # not the project's parent
    with pytest.raises(pm.PapermillExecutionError, match="unknown notebook parameter defences"):
        pm.execute_notebook("notebooks/n.ipynb", str(tmp_path / "out2.ipynb"),
                            parameters={"defences": ["ft"], "check": False}, kernel_name="python3",
                            progress_bar=False)


def test_batch_inplace_keeps_the_notebook_when_the_run_fails(tmp_path, capsys):
    from ftsam.batch import main
    proj = _project(tmp_path, [PARAMS_CELL, "print('fresh output')", "raise RuntimeError('boom')"])
    nb = proj / "notebooks" / "n.ipynb"
    before = nb.read_bytes()
    assert main(["--inplace", str(nb)]) == 1
    assert nb.read_bytes() == before
    out = capsys.readouterr().out
    assert "n.ipynb is unchanged" in out and "RuntimeError" in out
    failed = nbformat.read(proj / "notebooks" / "executed" / "n.ipynb", as_version=4)
    assert "fresh output" in str([c.get("outputs") for c in failed.cells])
    assert sorted(p.name for p in (proj / "notebooks").iterdir()) == ["executed", "n.ipynb"]   # no temp left

    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("print('ok run')")],
                                            metadata={"kernelspec": {"name": "python3", "display_name": "P",
                                                                     "language": "python"}}), nb)
    assert main(["--inplace", str(nb)]) == 0
    ran = nbformat.read(nb, as_version=4)
    assert "ok run" in str(ran.cells[0].outputs) and "papermill" not in ran.metadata


# ---- the run cache: damaged entries rebuilt, keyed by the data, one process per run --------
from ftsam import experiment  # noqa: E402

TINY = {"seed": 0, "data": {"name": "digits", "train_per_class": 20, "test_per_class": 10},
        "model": {"name": "preactresnet18", "width": 2},
        "attack_train": {"epochs": 1, "batch_size": 32, "lr": 0.05},
        "defense": {"clean_ratio": 0.5, "train": {"epochs": 1, "batch_size": 32}}}


@pytest.fixture
def fits(monkeypatch):
    """Counts the training runs of the pipeline."""
    calls = []
    real = experiment.fit

    def counting(*a, **kw):
        calls.append(kw.get("checkpoint"))
        return real(*a, **kw)
    monkeypatch.setattr(experiment, "fit", counting)
    return calls


def _cut(p: Path) -> None:
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])


@pytest.mark.parametrize("victim", ["model.safetensors", "result.json"])
def test_damaged_cached_run_is_reported_and_trained_again(tmp_path, fits, victim):
    cfg = from_dict(TINY)
    first = experiment.train_backdoor(cfg, cache_dir=tmp_path, device="cpu", progress=False)
    assert len(fits) == 1
    _cut(first.run_dir / victim)
    with pytest.warns(CacheWarning, match="damaged cache entry") as w:
        again = experiment.train_backdoor(cfg, cache_dir=tmp_path, device="cpu", progress=False)
    assert str(first.run_dir / victim) in str(w[0].message)
    assert len(fits) == 2 and again.metrics == first.metrics
    load_json(first.run_dir / "result.json")                   # whole again
    experiment.train_backdoor(cfg, cache_dir=tmp_path, device="cpu", progress=False)
    assert len(fits) == 2                                      # and reused from now on


def test_damaged_cached_defense_is_trained_again(tmp_path):
    run = experiment.train_backdoor(from_dict(TINY), cache_dir=tmp_path, device="cpu", progress=False)
    first = experiment.defend(run, "ft", progress=False)
    (result,) = run.run_dir.glob("ft-*/result.json")
    result.write_text('{"metrics": {"acc": 1')
    with pytest.warns(CacheWarning, match=str(result)):
        again = experiment.defend(run, "ft", progress=False)
    assert again.metrics == first.metrics and load_json(result)["metrics"] == first.metrics


def test_unreadable_training_state_starts_the_run_again(tmp_path, fits):
    cfg = from_dict(TINY)
    run_dir = tmp_path / experiment.attack_key(cfg)
    run_dir.mkdir(parents=True)
    state = run_dir / "train_state.safetensors"
    save_tensors(state, {"model.w": torch.zeros(100)})
    _cut(state)
    with pytest.warns(CacheWarning, match="starting that run again") as w:
        run = experiment.train_backdoor(cfg, cache_dir=tmp_path, device="cpu", progress=False)
    assert str(state) in str(w[0].message) and run.run_dir == run_dir
    assert not state.exists() and (run_dir / "model.safetensors").is_file()


def test_changed_dataset_files_are_not_answered_from_the_old_run(tmp_path, fits):
    data_root = tmp_path / "data"
    _write_cifar_py(data_root, n=6)
    cfg = from_dict(TINY | {"data": {"name": "cifar10", "root": str(data_root)}})
    a = experiment.train_backdoor(cfg, cache_dir=tmp_path / "runs", device="cpu", progress=False)
    experiment.train_backdoor(cfg, cache_dir=tmp_path / "runs", device="cpu", progress=False)
    assert len(fits) == 1
    f = data_root / "cifar-10-batches-py" / "data_batch_1"
    x, y = _cifar_records(6, offset=3)                       # other images in one batch
    with open(f, "wb") as fh:
        pickle.dump({"data": x, "labels": y}, fh, protocol=2)
    b = experiment.train_backdoor(cfg, cache_dir=tmp_path / "runs", device="cpu", progress=False)
    assert len(fits) == 2 and b.run_dir != a.run_dir


def test_moved_data_keeps_its_runs(tmp_path):
    import dataclasses
    cfg = from_dict(TINY | {"data": {"name": "cifar10", "root": "data"}})
    moved = cfg.with_overrides({"data.root": str(tmp_path / "elsewhere")})
    info = data.DatasetInfo("cifar10", 3, 32, 10, (0.5,) * 3, (0.5,) * 3, "fp")
    other = dataclasses.replace(info, fingerprint="x")
    assert experiment.attack_key(cfg, info) == experiment.attack_key(moved, info) != experiment.attack_key(cfg, other)
    assert experiment.clean_key(cfg, info) != experiment.clean_key(cfg, other)
    with pytest.raises(ValueError, match="fingerprint"):      # never a key without the data's files
        experiment.attack_key(cfg)


def test_two_workers_on_one_run_train_it_once(tmp_path, fits):
    cfg = from_dict(TINY)
    runs, errors = [], []

    def worker():
        try:
            runs.append(experiment.train_backdoor(cfg, cache_dir=tmp_path, device="cpu", progress=False))
        except BaseException as e:   # noqa: BLE001 - reported below
            errors.append(e)
    threads = [threading.Thread(target=worker) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(runs) == 2
    assert len(fits) == 1 and runs[0].metrics == runs[1].metrics


def test_damaged_attack_resource_is_reported_and_built_again(tmp_path):
    from test_attacks_lf_trojan import Spy, linear_model, prepared_lf
    spy = Spy(linear_model())
    a = prepared_lf(tmp_path, spy=spy)
    (res,) = tmp_path.glob("lf-*.safetensors")
    _cut(res)
    with pytest.warns(CacheWarning, match="damaged cache entry") as w:
        b = prepared_lf(tmp_path, spy=spy)
    assert str(res) in str(w[0].message) and spy.calls == 2 and torch.equal(a.delta, b.delta)
    prepared_lf(tmp_path, spy=spy)
    assert spy.calls == 2                      # the rebuilt one is read back
