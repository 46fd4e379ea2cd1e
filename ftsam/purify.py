"""Purify your own model: any defense of :mod:`ftsam.defenses` (FT-SAM by default) on a
classifier and clean data the user brings, without the reproduction pipeline.

:func:`purify` reuses the defense machinery as :func:`ftsam.defend` runs it (a
:class:`~ftsam.defenses.base.Given` with a copy of the model and the clean data, a
:class:`~ftsam.defenses.base.Context`, the defense's ``run``) and measures what can be measured:
with a test set and a trigger (or a triggered test set) the paper's ACC/ASR/RA/DER, with a test
set only ACC, with neither the accuracy on the clean data it was given. On the same model, clean
data and seed it gives the weights :func:`ftsam.defend` gives (``tests/test_purify.py``).

The model takes float images in [0, 1] and does its own normalization, as ftsam's models do; a
model trained on normalized inputs is wrapped first::

    model = torch.nn.Sequential(ftsam.models.Normalize(mean, std), model)
"""
from __future__ import annotations

import copy
import dataclasses
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ftsam.attacks.base import PoisonedTestSet, to_uint8
from ftsam.config import Config, ConfigError, DefenseConfig, TrainConfig, load_config
from ftsam.data import ImageSet
from ftsam.datasets_byo import DatasetError, as_imageset
from ftsam.defenses import Context, Given, build_defense, defense_class
from ftsam.metrics import accuracy, der, evaluate
from ftsam.train import predict, seeded

PARAMS_DIR = Path(__file__).resolve().parent.parent / "params"
# How far the accuracy on the defender's own clean data may fall before purify warns. Those are
# the images the defense trained on, so a fine-tuning that works keeps them near where they were;
# a drop of this size means the model was broken, not cleaned (the small CNN without BatchNorm at
# rho 5 ended at chance on two variants of a family and at 73% on a third, notebook 13). An
# ordinary two-epoch run on 50 images (tests/test_purify.py) moves it by 10 points: the line sits above.
COLLAPSE_POINTS = 20.0


class CollapseWarning(UserWarning):
    """The purified model lost much of its accuracy on the clean data the defense was given."""


@dataclass
class Purified:
    """What :func:`purify` returns: the purified model (on the input model's device, in the
    input model's train/eval mode) and a report: what ran (``defense``, ``title``, ``options``:
    the defense's settings in full, ``seed``, ``device``, ``clean``: the data it was given),
    ``history`` (one row per epoch), ``found`` (what the defense found), ``seconds`` and
    ``metrics`` (``before``/``after``, and ``der`` where a trigger was given). ``clean`` also holds
    the accuracy on those clean images before and after (``acc_before``, ``acc_after``): where it
    falls by more than :data:`COLLAPSE_POINTS`, :func:`purify` warns (:class:`CollapseWarning`)."""
    model: nn.Module
    report: dict = field(default_factory=dict)

    @property
    def metrics(self) -> dict:
        return self.report["metrics"]

    @property
    def history(self) -> list:
        return self.report["history"]

    @property
    def found(self) -> dict:
        return self.report["found"]

    def save(self, path: str | Path) -> Path:
        """The purified state dict as safetensors, written atomically, with the report (JSON) in
        its metadata under ``ftsam.report``."""
        import json
        from ftsam.io import _jsonable, save_model
        report = {k: v for k, v in self.report.items() if k != "found"}
        return save_model(path, self.model, metadata={"ftsam.report": json.dumps(report, default=_jsonable)})


def purify(model: nn.Module, clean, *, defense: str = "ft_sam", settings: str | Path | Config | None = None,
           seed: int = 0, test=None, trigger=None, target: int | None = 0, poisoned_test=None, poisoned=None,
           progress: bool | None = None, **options: Any) -> Purified:
    """Apply ``defense`` to a copy of ``model`` with the defender's ``clean`` data.

    - ``model``: any ``nn.Module`` classifier of float images in [0, 1] ``[N, C, H, W]`` (it
      normalizes them itself); BatchNorm optional (defenses that need it say so), on any device
      (the defense runs there), in train or eval mode (the result comes back in the same mode).
      ``model`` itself is not changed.
    - ``clean``: ``(x, y)`` tensors or NumPy arrays (uint8 ``[N, C, H, W]``, or float in [0, 1],
      which is quantised to the uint8 grid ftsam trains on, ``round(255 x)``), an
      :class:`~ftsam.data.ImageSet`, a ``torch.utils.data.Dataset`` of ``(image, label)`` or a
      ``DataLoader`` of ``(images, labels)`` batches. All of it is used, in the order given.
    - ``defense``: a name of :func:`ftsam.defenses.describe` (``ftsam list``).
    - ``settings``: where the defense's settings start: ``None`` for the package's defaults,
      a name of ``params/paper/`` (``"cifar10-preactresnet18"``: the paper's values for that
      setting), of ``params/robust/`` (``"robust/digits_simple_cnn"``: the best step found on a
      family of attack variants for that dataset and model) or of ``params/`` (``"offline"``; all in
      :func:`named_settings`), a params file, or a :class:`~ftsam.config.Config`.
    - ``options``: changes to those settings, checked like a params file (an unknown key is an
      error listing the valid ones): the defense's own options by name (``rho=4``), the
      fine-tuning settings by name (``epochs=20``, ``lr=0.01``, ``batch_size=128``), or dotted
      keys of the defense section (``**{"ft_sam.eta": 0.01}``).
    - ``test``: a clean test set (any form ``clean`` takes) for ACC before and after;
      ``trigger``: a function of float image batches in [0, 1] (or an ftsam ``Attack``) with the
      attack's ``target`` label (all-to-one), or ``poisoned_test``: triggered test images and the
      labels the attacker wants, ``(x, y_target)`` or ``(x, y_target, y_true)``: then ASR, RA and DER.
    - ``poisoned``: the poisoned training set, for defenses whose threat model needs it.
    """
    t0 = time.time()
    impl_cls = defense_class(defense)
    cfg = _settings(settings, seed, defense, options)
    impl = build_defense(defense, cfg.defense)
    params = list(model.parameters())
    if not params:
        raise ConfigError("purify: the model has no parameters to fine-tune")
    device = params[0].device
    clean_set = to_imageset(clean, "clean")
    _check_model_fits(model, clean_set, "clean", device)
    poisoned_set = to_imageset(poisoned, "poisoned") if poisoned is not None else None
    if "poisoned" in impl_cls.needs and poisoned_set is None:
        raise ConfigError(f"defense {defense!r} is given the poisoned training set in its threat model: "
                          "pass poisoned=(x, y) (or a Dataset/DataLoader)")
    test_set, test_bd = _test_sets(test, trigger, target, poisoned_test, model, device)

    def clean_acc(m: nn.Module) -> float:     # on the images the defense is given: a training accuracy
        return accuracy(predict(m, clean_set.x, device=device), clean_set.y)

    def measure(m: nn.Module) -> dict:
        if test_set is None:
            return {"clean_data_acc": clean_acc(m)}
        if test_bd is None:
            return {"acc": accuracy(predict(m, test_set.x, device=device), test_set.y)}
        out = evaluate(m, test_set, test_bd, device)
        if int(test_bd.y_true.min()) < 0:           # poisoned_test without true labels: no RA
            out.pop("ra")
        return out

    was_training = model.training
    before = measure(model)
    fit_before = before["clean_data_acc"] if test_set is None else clean_acc(model)
    given = Given(defense, impl.needs, model=copy.deepcopy(model), clean=clean_set, poisoned=poisoned_set,
                  new_model=lambda: _reinitialised(model), scratch_train=cfg.attack_train)
    ctx = Context(seed=cfg.seed, device=device, progress=progress,
                  evaluate=measure if test_set is not None else None)
    with seeded(cfg.seed, device):
        out = impl.run(given, ctx)
    purified = out.model.to(device)
    after = measure(purified)
    fit_after = after["clean_data_acc"] if test_set is None else clean_acc(purified)
    purified.train(was_training)
    classes = int(torch.unique(clean_set.y).numel())
    if fit_before - fit_after > COLLAPSE_POINTS:
        hint = (" On a network without BatchNorm a large rho does this (notebook 13): try a smaller rho, or "
                "warmup_epochs with ft_sam.rho_schedule 'lr'." if defense == "ft_sam" else "")
        warnings.warn(f"purify: {impl.title} lowered the accuracy on the clean data it was given from "
                      f"{fit_before:.1f}% to {fit_after:.1f}% (chance: {100 / classes:.1f}%), more than "
                      f"{COLLAPSE_POINTS:g} points: the model was broken rather than cleaned.{hint} "
                      "Check the result on a test set", CollapseWarning, stacklevel=2)
    metrics = {"before": before, "after": after}
    if "asr" in after:
        metrics["der"] = der(before["acc"], before["asr"], after["acc"], after["asr"])
    report = {"defense": defense, "title": impl.title, "settings": _settings_name(settings),
              "options": cfg.defense.section(defense), "seed": cfg.seed, "device": str(device),
              "clean": {"images": len(clean_set), "classes": classes, "shape": list(clean_set.x.shape[1:]),
                        "acc_before": fit_before, "acc_after": fit_after},
              "measured_on": "test set and trigger" if test_bd is not None else
                             "test set (no trigger: ACC only)" if test_set is not None else
                             "the clean data it was given (no test set: a training accuracy, not a test)",
              "metrics": metrics, "history": out.history, "found": out.found, "seconds": time.time() - t0}
    return Purified(purified, report)


# ---- settings ------------------------------------------------------------------------------
def named_settings() -> dict[str, Path]:
    """The names ``settings=`` takes, each with its params file: ``params/paper/`` (the supplement's
    values per dataset and model, ``"cifar10-preactresnet18"``), ``params/robust/`` as
    ``"robust/<name>"`` (the best defender's step found on issue 11's family of attack variants for
    that dataset and model, e.g. ``"robust/digits_simple_cnn"`` for a CNN without BatchNorm) and
    ``params/`` (``"offline"``)."""
    files = {p.stem: p for p in sorted((PARAMS_DIR / "paper").glob("*.yaml"))}
    files.update({f"robust/{p.stem}": p for p in sorted((PARAMS_DIR / "robust").glob("*.yaml"))})
    files.update({p.stem: p for p in sorted(PARAMS_DIR.glob("*.yaml")) if p.stem not in files})
    return files


def _settings_name(settings) -> str:
    return "defaults" if settings is None else "config" if isinstance(settings, Config) else str(settings)


def _settings(settings, seed: int, defense: str, options: dict) -> Config:
    if settings is None:
        base = Config()
    elif isinstance(settings, Config):
        base = settings
    else:
        path = Path(settings)
        if not path.suffix:
            names = named_settings()
            if str(settings) not in names:
                raise ConfigError(f"settings: unknown name {settings!r}; valid: {', '.join(names)}, "
                                  "a params file, or None for the package's defaults")
            path = names[str(settings)]
        base = load_config(path)
    keys = defense_option_keys(defense, options)
    epochs = keys.get("defense.train.epochs")
    if (isinstance(epochs, int) and "defense.train.warmup_epochs" not in keys
            and base.defense.train.warmup_epochs > epochs):
        # The settings' warmup (robust/digits_vgg19_bn: 5 epochs) is longer than the run asked for:
        # warm up over the whole run rather than fail a short trial on a key the user never set.
        keys["defense.train.warmup_epochs"] = epochs
    return base.with_overrides({"seed": seed, **keys})


def defense_option_keys(defense: str, options: dict) -> dict:
    """``purify``'s keyword options as dotted keys of the whole config: a defense's own option
    (``rho`` -> ``defense.ft_sam.rho``), a fine-tuning setting (``epochs`` -> ``defense.train.epochs``)
    or a dotted key of the defense section (``ft_sam.eta``, ``train.lr``)."""
    own = defense_class(defense).option_defaults()
    train = {f.name for f in dataclasses.fields(TrainConfig)}
    out = {}
    for key, value in options.items():
        if key in DefenseConfig.COMMON and key != "train":
            raise ConfigError(f"purify: {key!r} chooses the clean subset of a training set in the reproduction "
                              "pipeline; purify uses all the clean data it is given (pass a subset)")
        if key == "train" and isinstance(value, dict):
            out.update({f"defense.train.{k}": v for k, v in value.items()})
        elif key in own:
            out[f"defense.{defense}.{key}"] = value
        elif key in train:
            out[f"defense.train.{key}"] = value
        elif "." in key:
            out[f"defense.{key}"] = value
        else:
            raise ConfigError(f"purify: unknown option {key!r} for defense {defense!r}; valid: "
                              f"{', '.join(own) or '(no options of its own)'}; fine-tuning: {', '.join(sorted(train))}")
    return out


# ---- data ----------------------------------------------------------------------------------
def to_imageset(data, where: str) -> ImageSet:
    """An :class:`ImageSet` from any form :func:`purify` takes (see there)."""
    if isinstance(data, ImageSet):
        return data
    if isinstance(data, (tuple, list)) and len(data) == 2:
        return as_imageset(data[0], data[1], where=where)
    if isinstance(data, DataLoader):
        return _from_batches(data, where)
    if isinstance(data, Dataset) or (hasattr(data, "__getitem__") and hasattr(data, "__len__")):
        return _from_items(data, where)
    raise DatasetError(f"{where}: expected (x, y) tensors, an ImageSet, a Dataset or a DataLoader, "
                       f"got {type(data).__name__}")


def _image_tensor(img) -> torch.Tensor:
    if isinstance(img, torch.Tensor):
        return img
    import numpy as np
    a = np.asarray(img)
    if a.ndim == 3 and a.shape[-1] in (1, 3) and a.shape[0] not in (1, 3):   # a PIL image / HWC array
        a = a.transpose(2, 0, 1)
    return torch.from_numpy(np.array(a))         # a copy: PIL's arrays are read-only


def _from_items(data, where: str) -> ImageSet:
    xs, ys = [], []
    for i in range(len(data)):
        item = data[i]
        if not (isinstance(item, (tuple, list)) and len(item) >= 2):
            raise DatasetError(f"{where}: item {i} of the Dataset is a {type(item).__name__}; expected (image, label)")
        x = _image_tensor(item[0])
        if x.ndim == 2:
            x = x.unsqueeze(0)
        if xs and (x.shape != xs[0].shape or x.dtype != xs[0].dtype):
            raise DatasetError(f"{where}: item {i} of the Dataset is {x.dtype} {tuple(x.shape)}, item 0 was "
                               f"{xs[0].dtype} {tuple(xs[0].shape)}; all images must be alike [C, H, W]")
        if x.ndim != 3:
            raise DatasetError(f"{where}: item {i} of the Dataset has an image of shape {tuple(x.shape)}; expected [C, H, W]")
        xs.append(x)
        ys.append(int(item[1]))
    if not xs:
        raise DatasetError(f"{where}: the Dataset is empty")
    return as_imageset(torch.stack(xs), torch.tensor(ys), where=where)


def _from_batches(loader: DataLoader, where: str) -> ImageSet:
    xs, ys = [], []
    for i, batch in enumerate(loader):
        if not (isinstance(batch, (tuple, list)) and len(batch) >= 2):
            raise DatasetError(f"{where}: batch {i} of the DataLoader is a {type(batch).__name__}; "
                               "expected (images, labels)")
        x, y = torch.as_tensor(batch[0]), torch.as_tensor(batch[1])
        if x.ndim == 3:
            x = x.unsqueeze(1)
        if x.ndim != 4 or y.ndim != 1 or len(y) != len(x):
            raise DatasetError(f"{where}: batch {i} of the DataLoader has images {tuple(x.shape)} and labels "
                               f"{tuple(y.shape)}; expected [B, C, H, W] and [B]")
        if xs and (x.shape[1:] != xs[0].shape[1:] or x.dtype != xs[0].dtype):
            raise DatasetError(f"{where}: batch {i} of the DataLoader has images {x.dtype} {tuple(x.shape[1:])}, "
                               f"batch 0 had {xs[0].dtype} {tuple(xs[0].shape[1:])}")
        xs.append(x.cpu())
        ys.append(y.cpu())
    if not xs:
        raise DatasetError(f"{where}: the DataLoader yields no batches")
    return as_imageset(torch.cat(xs), torch.cat(ys), where=where)


def _check_model_fits(model: nn.Module, data: ImageSet, where: str, device: torch.device) -> None:
    """One forward pass on two images (eval mode, no gradient): a clear error when the model and
    the data do not fit each other, before any training."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = model(data.x[:2].to(device).float().div(255.0))
    except RuntimeError as e:
        raise DatasetError(f"{where}: the model cannot take these images ({tuple(data.x.shape[1:])} [C, H, W], "
                           f"float in [0, 1]): {str(e).splitlines()[0]}") from None
    finally:
        model.train(was_training)
    if out.ndim != 2:
        raise DatasetError(f"{where}: the model's output is {tuple(out.shape)}; a classifier gives [N, classes]")
    if int(data.y.max()) >= out.shape[1]:
        raise DatasetError(f"{where}: labels go up to {int(data.y.max())} but the model gives {out.shape[1]} classes")


def _test_sets(test, trigger, target, poisoned_test, model, device):
    if test is None:
        if trigger is not None or poisoned_test is not None:
            raise ConfigError("purify: a trigger or poisoned_test is measured against a clean test set: pass test= too")
        return None, None
    test_set = to_imageset(test, "test")
    _check_model_fits(model, test_set, "test", device)
    if poisoned_test is not None:
        if trigger is not None:
            raise ConfigError("purify: give either trigger= or poisoned_test=, not both")
        return test_set, _poisoned_test(poisoned_test)
    if trigger is None:
        return test_set, None
    if hasattr(trigger, "poison_testset"):            # an ftsam Attack
        return test_set, trigger.poison_testset(test_set)
    if not callable(trigger):
        raise ConfigError(f"purify: trigger must be a function of image batches (float, [0, 1]), got {type(trigger).__name__}")
    if target is None:
        raise ConfigError("purify: a trigger needs the attack's target label (target=)")
    keep = test_set.y != target                      # ASR counts the images whose label the attack changes
    x = test_set.x[keep]
    with torch.no_grad():
        xt = to_uint8(trigger(x.float().div(255.0)))
    if xt.shape != x.shape:
        raise DatasetError(f"purify: the trigger turned images {tuple(x.shape)} into {tuple(xt.shape)}")
    y = test_set.y[keep]
    return test_set, PoisonedTestSet(xt, torch.full_like(y, int(target)), y)


def _poisoned_test(p) -> PoisonedTestSet:
    if isinstance(p, PoisonedTestSet):
        return p
    if isinstance(p, (tuple, list)) and len(p) in (2, 3):
        s = as_imageset(p[0], p[1], where="poisoned_test")
        y_true = torch.as_tensor(p[2]).long() if len(p) == 3 else torch.full_like(s.y, -1)
        return PoisonedTestSet(s.x, s.y, y_true)
    raise ConfigError("purify: poisoned_test must be (x, y_target) or (x, y_target, y_true)")


def _reinitialised(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with every layer's parameters drawn anew (defenses that train anew)."""
    fresh = copy.deepcopy(model)
    for m in fresh.modules():
        if hasattr(m, "reset_parameters"):
            m.reset_parameters()
    return fresh

