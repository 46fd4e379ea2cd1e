"""Atomic writes, safetensors-only checkpoints, and exact resumption of an interrupted fit."""
from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
import torch
from torch import nn

from ftsam.checkpoint import load_train_state, save_train_state
from ftsam.config import DataConfig, SAMConfig, TrainConfig
from ftsam.defenses.ft_sam import sam_step
from ftsam.data import load_dataset
from ftsam.io import CheckpointError, load_json, load_model, load_tensors, save_json, save_model, save_tensors
from ftsam.models.preact_resnet import PreActResNet18
from ftsam.train import fit, predict


def tiny_model(seed: int = 0, width: int = 4) -> nn.Module:
    torch.manual_seed(seed)
    return PreActResNet18(1, 10, (0.5,), (0.5,), width=width)


def leftovers(folder: Path) -> list[str]:
    """Every file in ``folder`` that is a temporary file of an atomic write."""
    return [p.name for p in folder.iterdir() if p.name.endswith(".tmp") or p.name.startswith(".")]


# ---- atomic writes ----------------------------------------------------------------------
def test_save_json_round_trip_and_no_temp(tmp_path):
    p = tmp_path / "sub" / "result.json"
    save_json(p, {"acc": 0.5, "t": torch.tensor([1, 2]), "path": Path("/x"), "nested": {"b": [1, 2]}})
    assert load_json(p) == {"acc": 0.5, "t": [1, 2], "path": "/x", "nested": {"b": [1, 2]}}
    assert sorted(x.name for x in p.parent.iterdir()) == ["result.json"]


def test_save_model_leaves_no_temp(tmp_path):
    p = tmp_path / "model.safetensors"
    save_model(p, tiny_model())
    save_model(p, tiny_model(1))  # overwrite
    assert sorted(x.name for x in tmp_path.iterdir()) == ["model.safetensors"]


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_written_files_get_normal_permissions(tmp_path, umask):
    """Like open(): 0666 minus the umask, not mkstemp's 0600 (others could not read results
    or the dataset caches beside shared data)."""
    old = os.umask(umask)
    try:
        save_json(tmp_path / "r.json", {"v": 1})
        save_model(tmp_path / "m.safetensors", tiny_model())
    finally:
        os.umask(old)
    for name in ("r.json", "m.safetensors"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o666 & ~umask, name


def test_save_json_unserialisable_keeps_old(tmp_path):
    p = tmp_path / "result.json"
    save_json(p, {"v": 1})
    before = p.read_bytes()
    with pytest.raises(TypeError):
        save_json(p, {"v": 2, "bad": object()})
    assert p.read_bytes() == before
    assert leftovers(tmp_path) == []
    with pytest.raises(TypeError):
        save_json(tmp_path / "new.json", {"bad": {1, 2}})
    assert not (tmp_path / "new.json").exists() and leftovers(tmp_path) == []


@pytest.mark.parametrize("fail", ["replace", "fsync"])
def test_failed_write_keeps_old_content(tmp_path, monkeypatch, fail):
    old_json, old_model = tmp_path / "r.json", tmp_path / "m.safetensors"
    save_json(old_json, {"v": 1})
    save_model(old_model, tiny_model(0))
    before = {p: p.read_bytes() for p in (old_json, old_model)}

    def boom(*a, **k):
        raise OSError("disk on fire")
    monkeypatch.setattr(os, fail, boom)
    with pytest.raises(OSError, match="disk on fire"):
        save_json(old_json, {"v": 2})
    with pytest.raises(OSError, match="disk on fire"):
        save_model(old_model, tiny_model(1))
    with pytest.raises(OSError, match="disk on fire"):
        save_json(tmp_path / "fresh.json", {"v": 3})
    monkeypatch.undo()
    assert {p: p.read_bytes() for p in (old_json, old_model)} == before
    assert not (tmp_path / "fresh.json").exists()
    assert leftovers(tmp_path) == []
    assert sorted(x.name for x in tmp_path.iterdir()) == ["m.safetensors", "r.json"]


def test_interrupt_during_write_leaves_no_temp(tmp_path, monkeypatch):
    """A KeyboardInterrupt (a BaseException) in the middle of a write cleans up too."""
    p = tmp_path / "r.json"
    save_json(p, {"v": 1})

    def interrupt(*a, **k):
        raise KeyboardInterrupt
    monkeypatch.setattr(os, "fsync", interrupt)
    with pytest.raises(KeyboardInterrupt):
        save_json(p, {"v": 2})
    monkeypatch.undo()
    assert load_json(p) == {"v": 1} and leftovers(tmp_path) == []


# ---- safetensors only -------------------------------------------------------------------
def test_load_model_refuses_torch_pickle(tmp_path):
    p = tmp_path / "model.pt"
    torch.save(tiny_model().state_dict(), p)
    with pytest.raises(CheckpointError, match="safetensors"):
        load_model(p, tiny_model())


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_load_model_never_unpickles(tmp_path):
    p, marker = tmp_path / "evil.pt", tmp_path / "pwned"
    with open(p, "wb") as f:
        pickle.dump(_Evil(marker), f)
    with pytest.raises(CheckpointError, match="safetensors"):
        load_model(p, tiny_model())
    assert not marker.exists()


@pytest.mark.parametrize("content", [b"", b"\x00" * 7, os.urandom(4096), b"{\"not\": \"a checkpoint\"}",
                                     (200).to_bytes(8, "little") + b"{\"a\": 1}"])
def test_load_model_refuses_garbage(tmp_path, content):
    p = tmp_path / "garbage.safetensors"
    p.write_bytes(content)
    with pytest.raises(CheckpointError, match="safetensors"):
        load_model(p, tiny_model())


def test_load_model_truncated(tmp_path):
    p = tmp_path / "m.safetensors"
    save_model(p, tiny_model())
    p.write_bytes(p.read_bytes()[:-100])
    with pytest.raises(CheckpointError, match="safetensors"):
        load_model(p, tiny_model())


def test_load_model_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_model(tmp_path / "nope.safetensors", tiny_model())


@pytest.mark.parametrize("other", [
    lambda: tiny_model(width=8),                                   # same keys, other shapes
    lambda: nn.Sequential(nn.Linear(4, 2)),                         # other keys
])
def test_load_model_of_wrong_model(tmp_path, other):
    p = tmp_path / "m.safetensors"
    save_model(p, other())
    with pytest.raises(CheckpointError, match="does not fit"):
        load_model(p, tiny_model())


def test_model_round_trip_preserves_outputs(tmp_path):
    m = tiny_model(0)
    m.train()
    with torch.no_grad():  # move the BatchNorm running statistics off their defaults
        m(torch.rand(16, 1, 8, 8))
    m.eval()
    x = torch.rand(5, 1, 8, 8)
    ref = m(x)
    p = tmp_path / "m.safetensors"
    save_model(p, m, metadata={"note": "hi"})
    m2 = load_model(p, tiny_model(1)).eval()
    assert torch.equal(m2(x), ref)
    for (k, a), (_, b) in zip(m.state_dict().items(), m2.state_dict().items()):
        assert torch.equal(a, b), k


def test_tensors_round_trip(tmp_path):
    t = {"u8": torch.arange(6, dtype=torch.uint8).view(2, 3), "i64": torch.tensor([1, -2]),
         "f": torch.randn(3, 4)[:, 1]}  # a non-contiguous view
    p = save_tensors(tmp_path / "t.safetensors", t)
    back = load_tensors(p)
    assert set(back) == set(t) and all(torch.equal(back[k], t[k]) for k in t)


# ---- resumable training -----------------------------------------------------------------
@pytest.fixture(scope="module")
def digits64():
    train, _, _ = load_dataset(DataConfig(name="digits"))
    return train.subset(torch.arange(64))


CFG = TrainConfig(epochs=4, batch_size=16, lr=0.05, schedule="cosine", crop_padding=1, hflip=True,
                  label_smoothing=0.1)


class Interrupted(Exception):
    pass


def _evaluator(data, fail_at: int | None = None):
    calls = []

    def evaluate(model):
        calls.append(1)
        if fail_at is not None and len(calls) == fail_at:
            raise Interrupted
        return {"acc": float((predict(model, data.x) == data.y).float().mean())}
    return evaluate


def _step(model, sam):
    return sam_step(model, CFG, sam) if sam is not None else None


@pytest.mark.parametrize("sam", [None, SAMConfig(rho=0.5)], ids=["sgd", "sam"])
def test_resume_matches_uninterrupted_run(tmp_path, digits64, sam):
    ref = tiny_model(0)
    ref_hist = fit(ref, digits64, CFG, _step(ref, sam), seed=3, evaluate=_evaluator(digits64), progress=False).history
    assert [r["epoch"] for r in ref_hist] == [1, 2, 3, 4]

    ckpt = tmp_path / "state.safetensors"
    first = tiny_model(0)
    with pytest.raises(Interrupted):  # stopped while ending epoch 3: the state of epoch 2 is on disk
        fit(first, digits64, CFG, _step(first, sam), seed=3, evaluate=_evaluator(digits64, fail_at=3),
            checkpoint=ckpt, progress=False)
    assert ckpt.is_file() and leftovers(tmp_path) == []
    probe = tiny_model(5)
    epoch, hist = load_train_state(ckpt, probe, torch.optim.SGD(probe.parameters(), lr=0.1, momentum=0.9))
    assert epoch == 2 and hist == ref_hist[:2]

    resumed = tiny_model(7)  # another initialisation: everything must come from the checkpoint
    hist = fit(resumed, digits64, CFG, _step(resumed, sam), seed=3, evaluate=_evaluator(digits64),
               checkpoint=ckpt, progress=False).history
    assert hist == ref_hist
    for (k, a), (_, b) in zip(ref.state_dict().items(), resumed.state_dict().items()):
        assert torch.equal(a, b), k

    # a finished run found on disk is not trained again
    again = tiny_model(9)
    hist = fit(again, digits64, CFG, _step(again, sam), seed=3, evaluate=_evaluator(digits64), checkpoint=ckpt,
               progress=False).history
    assert hist == ref_hist
    for (k, a), (_, b) in zip(ref.state_dict().items(), again.state_dict().items()):
        assert torch.equal(a, b), k


def test_training_state_holds_momentum(tmp_path, digits64):
    m = tiny_model(0)
    fit(m, digits64, TrainConfig(epochs=1, batch_size=32, lr=0.05), seed=0, checkpoint=tmp_path / "s.safetensors",
        progress=False)
    t = load_tensors(tmp_path / "s.safetensors")
    n_params = len(list(m.parameters()))
    assert sum(k.startswith("opt.") for k in t) == n_params
    assert sum(k.startswith("model.") for k in t) == len(m.state_dict())


def test_plain_model_file_is_not_a_training_state(tmp_path):
    p = tmp_path / "m.safetensors"
    save_model(p, tiny_model())
    m = tiny_model()
    with pytest.raises(CheckpointError, match="training state"):
        load_train_state(p, m, torch.optim.SGD(m.parameters(), lr=0.1))


def test_train_state_round_trip(tmp_path):
    m = tiny_model()
    opt = torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9)
    m(torch.rand(4, 1, 8, 8)).sum().backward()
    opt.step()
    save_train_state(tmp_path / "s.safetensors", m, opt, 3, [{"epoch": 3, "loss": 0.25}])
    m2 = tiny_model(1)
    opt2 = torch.optim.SGD(m2.parameters(), lr=0.1, momentum=0.9)
    epoch, hist = load_train_state(tmp_path / "s.safetensors", m2, opt2)
    assert epoch == 3 and hist == [{"epoch": 3, "loss": 0.25}]
    for p1, p2 in zip(m.parameters(), m2.parameters()):
        assert torch.equal(p1, p2)
        assert torch.equal(opt.state[p1]["momentum_buffer"], opt2.state[p2]["momentum_buffer"])
