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
