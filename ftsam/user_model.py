"""Models the user brings: a safetensors state dict plus the architecture it belongs to. Never
a pickle: a ``torch.save`` file or a TorchScript archive is refused with how to convert it.

The architecture (``arch``) is one of

- ftsam's own (``preactresnet18``, ``vgg19_bn``, ...: :data:`ftsam.config.MODELS`), built for the
  data's channels, classes and normalization with ``width``;
- a torchvision classification model by name (``resnet18``, ``torchvision:resnet18``), built with
  ``weights=None`` and ``num_classes`` (3-channel input, no normalization inside: wrap it in a
  module of your own if it was trained on normalized images);
- ``module:callable`` (``my_package.nets:build``), called with those of ``num_classes``,
  ``in_channels``, ``image_size`` it accepts, and returning the ``nn.Module``.
"""
from __future__ import annotations

import importlib
import inspect
import zipfile
from pathlib import Path

from torch import nn

from ftsam.config import MODELS, ConfigError, ModelConfig
from ftsam.data import DatasetInfo
from ftsam.io import CheckpointError, load_tensors, looks_like_safetensors


def build_architecture(arch: str, info: DatasetInfo, width: int = 64) -> nn.Module:
    """An untrained model of architecture ``arch`` for data described by ``info``."""
    if arch in MODELS:
        from ftsam.models import build_model
        return build_model(ModelConfig(name=arch, width=width), info)
    if ":" in arch and not arch.startswith("torchvision:"):
        return _from_callable(arch, info)
    import torchvision
    name = arch.removeprefix("torchvision:")
    if name not in torchvision.models.list_models(module=torchvision.models):
        raise ConfigError(f"--arch: unknown architecture {arch!r}; valid: ftsam's {', '.join(MODELS)}, a torchvision "
                          "classification model (e.g. resnet18), or module:callable returning an nn.Module")
    if info.channels != 3:
        raise ConfigError(f"--arch {arch}: torchvision's models take 3-channel images, the data have {info.channels}; "
                          "give module:callable building your adapted model instead")
    return torchvision.models.get_model(name, weights=None, num_classes=info.num_classes)


def _from_callable(arch: str, info: DatasetInfo) -> nn.Module:
    module_name, _, attr = arch.partition(":")
    try:
        fn = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as e:
        raise ConfigError(f"--arch {arch}: cannot import it ({e})") from None
    offered = {"num_classes": info.num_classes, "in_channels": info.channels, "image_size": info.size}
    try:
        params = inspect.signature(fn).parameters
        takes_all = any(p.kind is p.VAR_KEYWORD for p in params.values())
        kwargs = {k: v for k, v in offered.items() if takes_all or k in params}
    except (TypeError, ValueError):
        kwargs = {}
    model = fn(**kwargs)
    if not isinstance(model, nn.Module):
        raise ConfigError(f"--arch {arch}: returned a {type(model).__name__}, not an nn.Module")
    return model


def refuse_pickles(path: str | Path) -> None:
    """A clear error for a model file that is a pickle (``torch.save``) or TorchScript archive."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"model file not found: {path}")
    with open(path, "rb") as f:
        head = f.read(10)
    # Recognised first: a safetensors header length's first byte may be 0x80, a pickle's first byte.
    if looks_like_safetensors(head):
        return
    convert = ("ftsam never unpickles a model (loading a pickle can run any code). Where you trust the file, convert "
               "it: python -c \"import torch, safetensors.torch as s; s.save_file({k: v.contiguous() for k, v in "
               "torch.load('IN', weights_only=True).items()}, 'OUT.safetensors')\"")
    if head.startswith(b"PK\x03\x04") and zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as z:
            names = z.namelist()
        if any("/code/" in n or n.endswith("constants.pkl") for n in names):
            raise CheckpointError(f"{path} is a TorchScript archive (torch.jit.save), not a safetensors state dict. "
                                  "Save the state dict instead: safetensors.torch.save_file(model.state_dict(), "
                                  "'model.safetensors'); " + convert.split(". ", 1)[0] + ".")
        if any(n.endswith("data.pkl") for n in names):
            raise CheckpointError(f"{path} is a PyTorch pickle (torch.save), not safetensors. " + convert)
    if head[:1] == b"\x80":
        raise CheckpointError(f"{path} is a Python pickle, not safetensors. " + convert)


def load_user_model(path: str | Path, arch: str, info: DatasetInfo, width: int = 64) -> nn.Module:
    """Build ``arch`` for ``info`` and load the safetensors state dict at ``path`` into it
    (strictly: a missing, extra or misshapen tensor is a :class:`CheckpointError` naming them)."""
    refuse_pickles(path)
    model = build_architecture(arch, info, width)
    state = load_tensors(path)
    ours = model.state_dict()
    missing = sorted(set(ours) - set(state))
    extra = sorted(set(state) - set(ours))
    shapes = [f"{k}: file {tuple(state[k].shape)}, model {tuple(ours[k].shape)}"
              for k in ours if k in state and state[k].shape != ours[k].shape]
    if missing or extra or shapes:
        parts = [f"missing {len(missing)} ({', '.join(missing[:4])}{', ...' if len(missing) > 4 else ''})" if missing else "",
                 f"unexpected {len(extra)} ({', '.join(extra[:4])}{', ...' if len(extra) > 4 else ''})" if extra else "",
                 f"wrong shapes ({'; '.join(shapes[:3])}{'; ...' if len(shapes) > 3 else ''})" if shapes else ""]
        hint = " (for ftsam's models, check --width)" if arch in MODELS else ""
        raise CheckpointError(f"{path} does not fit architecture {arch!r} for {info.channels}-channel "
                              f"{info.size}x{info.size} images and {info.num_classes} classes{hint}: "
                              + "; ".join(p for p in parts if p))
    model.load_state_dict(state, strict=True)
    return model
