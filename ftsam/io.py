"""Checkpoints and results, written atomically.

Models and tensors go to safetensors (no pickle anywhere); results go to JSON. Every write
lands in a temporary file beside the target and is renamed over it, so a crash never leaves a
half-written file behind.
"""
from __future__ import annotations

import contextlib
import fcntl
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any, Iterator

import torch
from safetensors import SafetensorError
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save


class DamagedFile(ValueError):
    """A file that exists but cannot be read as what it should be (truncated, overwritten,
    not of its format). ``path`` names it, so a cache can report it and build it again."""

    def __init__(self, message: str, path: str | Path | None = None):
        super().__init__(message)
        self.path = Path(path) if path is not None else None


class CheckpointError(DamagedFile):
    """A file that is not a readable safetensors checkpoint, or does not fit the model."""


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fchmod(f.fileno(), 0o666 & ~_umask())  # mkstemp makes 0600; give what open() would
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def save_json(path: str | Path, obj: Any) -> Path:
    return atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True, default=_jsonable) + "\n").encode())


def load_json(path: str | Path) -> Any:
    """Read a JSON file; a truncated or otherwise damaged one raises :class:`DamagedFile`
    naming it (not a bare ``JSONDecodeError`` without the path)."""
    path = Path(path)
    raw = path.read_bytes()
    try:
        return json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        what = "empty" if not raw.strip() else f"not valid JSON ({e})"
        raise DamagedFile(f"{path} is damaged: {what}; {len(raw)} bytes, probably truncated "
                                "by an interrupted write or a full disk", path) from None


def _jsonable(o):
    if isinstance(o, torch.Tensor):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def save_tensors(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> Path:
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    return atomic_write_bytes(path, st_save(tensors, metadata=metadata))


def load_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}", path)
    data = path.read_bytes()
    try:
        return st_load(data)
    except (SafetensorError, Exception) as e:  # safetensors raises several types on garbage
        if looks_like_safetensors(data):
            raise CheckpointError(
                f"{path} is a damaged safetensors file ({e}): {len(data)} bytes, probably truncated by an "
                "interrupted copy or a full disk; delete it (a cached run is then trained again)", path) from None
        raise CheckpointError(
            f"{path} is not a safetensors checkpoint ({e}). ftsam reads only safetensors; "
            "convert a trusted PyTorch file with safetensors.torch.save_file(torch.load(f, weights_only=True), out).",
            path) from None


def looks_like_safetensors(data: bytes) -> bool:
    """Whether ``data`` starts like a safetensors file: an 8-byte header length, then a JSON
    header that begins with ``{`` (so a damaged checkpoint is not mistaken for another format)."""
    if len(data) < 10:
        return False
    n = int.from_bytes(data[:8], "little")
    return 2 <= n < 100_000_000 and data[8:9] == b"{"


def save_model(path: str | Path, model: torch.nn.Module, metadata: dict[str, str] | None = None) -> Path:
    return save_tensors(path, model.state_dict(), metadata)


def load_model(path: str | Path, model: torch.nn.Module) -> torch.nn.Module:
    state = load_tensors(path)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"{path} does not fit {type(model).__name__}: {e}", path) from None
    return model


LOCK_NAME = ".lock"


@contextlib.contextmanager
def run_lock(run_dir: str | Path, blocking: bool = True) -> Iterator[Path]:
    """Hold an exclusive lock on ``run_dir`` (``fcntl.flock`` on ``run_dir/.lock``).

    Two processes on the same run take turns: the second waits here until the first is done,
    then finds its result on disk and reuses it instead of training again. The lock goes with
    the process (a crashed holder frees it). ``blocking=False`` raises ``BlockingIOError``
    instead of waiting."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    lock = run_dir / LOCK_NAME
    with open(lock, "a") as f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if not blocking:
                raise
            print(f"[ftsam] waiting for another process working on {run_dir}", file=sys.stderr, flush=True)
            fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield run_dir
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)
