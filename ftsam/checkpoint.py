"""Resumable training state: model and optimizer tensors in one safetensors file, the
epoch and history in its metadata. Written atomically after every epoch. ``extra`` tensors
(the state of a trainable batch hook, e.g. an attack's trigger generator and its optimizer)
are stored beside them under the prefix ``extra.``."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import torch
from safetensors import safe_open

from ftsam.io import CheckpointError, load_tensors, save_tensors


def save_train_state(path: str | Path, model: torch.nn.Module, opt: torch.optim.Optimizer,
                     epoch: int, history: list[dict], extra: dict[str, torch.Tensor] | None = None) -> None:
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    for i, p in enumerate(p for g in opt.param_groups for p in g["params"]):
        buf = opt.state.get(p, {}).get("momentum_buffer")
        if buf is not None:
            tensors[f"opt.{i}.momentum_buffer"] = buf
    tensors.update({f"extra.{k}": v for k, v in (extra or {}).items()})
    save_tensors(path, tensors, metadata={"epoch": str(epoch), "history": json.dumps(history)})


def load_train_state(path: str | Path, model: torch.nn.Module, opt: torch.optim.Optimizer,
                     load_extra: Callable[[dict[str, torch.Tensor]], None] | None = None) -> tuple[int, list[dict]]:
    """Restore ``model`` and ``opt`` from ``path``; hand the ``extra`` tensors (prefix removed,
    possibly none) to ``load_extra``. Returns the epoch reached and the history."""
    tensors = load_tensors(path)
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    if "epoch" not in meta:
        raise CheckpointError(f"{path} is a safetensors file but not an ftsam training state (no epoch)")
    device = next(model.parameters()).device
    try:
        model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    except RuntimeError as e:
        raise CheckpointError(f"{path} does not fit {type(model).__name__}: {e}") from None
    for i, p in enumerate(p for g in opt.param_groups for p in g["params"]):
        key = f"opt.{i}.momentum_buffer"
        if key in tensors:
            opt.state[p]["momentum_buffer"] = tensors[key].to(device)
    if load_extra is not None:
        load_extra({k[6:]: v for k, v in tensors.items() if k.startswith("extra.")})
    return int(meta["epoch"]), json.loads(meta.get("history", "[]"))
