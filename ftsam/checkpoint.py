"""Resumable training state: model and optimizer tensors in one safetensors file, the
epoch and history in its metadata. Written atomically after every epoch.

The optimizer's whole per-parameter state is kept (SGD's momentum, Adam's moments and step
count, ...): tensors as ``opt.<i>.<key>`` with ``i`` the parameter's position in the optimizer,
other values in the metadata. ``extra`` tensors (the state of a trainable batch hook, e.g. an
attack's trigger generator and its optimizer) are stored under the prefix ``extra.``, and the
state of a training step that has one (see :class:`ftsam.train.Step`) under ``step.``."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import torch
from safetensors import safe_open

from ftsam.io import CheckpointError, load_tensors, save_tensors

Loader = Callable[[dict[str, torch.Tensor]], None]


def save_train_state(path: str | Path, model: torch.nn.Module, opt: torch.optim.Optimizer,
                     epoch: int, history: list[dict], extra: dict[str, torch.Tensor] | None = None,
                     step_state: dict[str, torch.Tensor] | None = None) -> None:
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    scalars: dict[str, dict] = {}
    for i, state in opt.state_dict()["state"].items():
        for key, value in state.items():
            if isinstance(value, torch.Tensor):
                tensors[f"opt.{i}.{key}"] = value
            else:
                scalars.setdefault(str(i), {})[key] = value
    tensors.update({f"extra.{k}": v for k, v in (extra or {}).items()})
    tensors.update({f"step.{k}": v for k, v in (step_state or {}).items()})
    meta = {"epoch": str(epoch), "history": json.dumps(history)}
    if scalars:
        meta["opt_scalars"] = json.dumps(scalars)
    save_tensors(path, tensors, metadata=meta)


def load_train_state(path: str | Path, model: torch.nn.Module, opt: torch.optim.Optimizer,
                     load_extra: Loader | None = None, load_step: Loader | None = None) -> tuple[int, list[dict]]:
    """Restore ``model`` and ``opt`` from ``path``; hand the ``extra`` and ``step`` tensors (prefix
    removed, possibly none) to ``load_extra`` and ``load_step``. Returns the epoch reached and the
    history."""
    tensors = load_tensors(path)
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    if "epoch" not in meta:
        raise CheckpointError(f"{path} is a safetensors file but not an ftsam training state (no epoch)")
    try:
        model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    except RuntimeError as e:
        raise CheckpointError(f"{path} does not fit {type(model).__name__}: {e}") from None
    state: dict[int, dict] = {}
    for k, v in tensors.items():
        if k.startswith("opt."):
            i, key = k[4:].split(".", 1)
            state.setdefault(int(i), {})[key] = v
    for i, values in json.loads(meta.get("opt_scalars", "{}")).items():
        state.setdefault(int(i), {}).update(values)
    sd = opt.state_dict()
    if any(i >= sum(len(g["params"]) for g in sd["param_groups"]) for i in state):
        raise CheckpointError(f"{path} holds optimizer state for more parameters than the model has")
    sd["state"] = state
    opt.load_state_dict(sd)
    for prefix, loader in (("extra.", load_extra), ("step.", load_step)):
        if loader is not None:
            loader({k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)})
    return int(meta["epoch"]), json.loads(meta.get("history", "[]"))
