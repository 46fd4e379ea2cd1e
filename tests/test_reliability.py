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
    with pytest.raises(ConfigError, match="not valid YAML") as e:
        load_config(p)
    assert str(p) in str(e.value)


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
