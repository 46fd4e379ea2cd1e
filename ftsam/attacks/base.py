"""The attack interface.

An attack is three things: a **trigger** (a function on a batch of float images in [0, 1]),
a **target mapping** (all-to-one: every label goes to ``target``; all-to-all: ``y -> (y+1) mod C``),
and a **poisoning rule** (which training samples carry the trigger and which label they get).

Attacks that poison a fixed set of samples before training (BadNets, Blended, ...) override
:meth:`trigger`; :meth:`poison_trainset` does the rest. Attacks that poison inside the
training loop (WaNet, Input-aware) set ``on_the_fly = True`` and override
:meth:`poison_batch`, which the training loop calls on every augmented batch.

Attacks whose trigger has networks trained together with the victim (Input-aware's generator)
also set ``trainable = True``: their :meth:`poison_batch` may return a batch that keeps the
autograd graph to those networks, and the training loop (:func:`ftsam.train.fit`, argument
``trainable``) adds :meth:`extra_loss` to the loss, calls :meth:`after_step` after the
model's optimizer step, and keeps :meth:`state_tensors` in its checkpoint; the experiment
pipeline saves them beside the trained model so a cached run regenerates its test set.
"""
from __future__ import annotations

import dataclasses
import typing
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, ClassVar

import torch
from torch import nn

from ftsam.config import AttackConfig, ConfigError, _coerce, stable_hash
from ftsam.data import CacheWarning, DatasetInfo, ImageSet
from ftsam.io import DamagedFile, load_tensors


@dataclass
class PoisonedTrainSet:
    data: ImageSet               # the training set as the victim receives it
    poison_index: torch.Tensor   # indices of the samples that carry the trigger
    original_y: torch.Tensor     # labels before poisoning


@dataclass
class PoisonedTestSet:
    x: torch.Tensor              # triggered uint8 images
    y_target: torch.Tensor       # the label the attacker wants
    y_true: torch.Tensor         # the true label (for RA)


def to_float(x: torch.Tensor) -> torch.Tensor:
    return x.float().div_(255.0) if x.dtype == torch.uint8 else x


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    return x.clamp(0.0, 1.0).mul(255.0).round_().to(torch.uint8)


class Attack:
    name: ClassVar[str]
    title: ClassVar[str]                 # as the paper's tables write it
    clean_label: ClassVar[bool] = False   # poison only target-class samples and keep their labels
    on_the_fly: ClassVar[bool] = False    # poisons inside the training loop
    trainable: ClassVar[bool] = False     # has trigger networks trained with the victim

    @dataclass(frozen=True)
    class Options:
        pass

    def __init__(self, cfg: AttackConfig, info: DatasetInfo):
        if cfg.target >= info.num_classes:
            raise ConfigError(f"attack.target {cfg.target} is not a class of {info.name} "
                              f"(valid: 0..{info.num_classes - 1})")
        self.cfg, self.info = cfg, info
        self.opts = self.options_from(cfg.options)

    @classmethod
    def options_from(cls, options: dict) -> "Attack.Options":
        hints = typing.get_type_hints(cls.Options)
        valid = [f.name for f in dataclasses.fields(cls.Options)]
        for k in options:
            if k not in valid:
                raise ConfigError(f"unknown key attack.options.{k} for attack {cls.name!r}; "
                                  f"valid keys: {', '.join(valid) or '(none)'}")
        opts = cls.Options(**{k: _coerce(f"attack.options.{k}", v, hints[k]) for k, v in options.items()})
        cls.check_options(opts)
        return opts

    @classmethod
    def check_options(cls, opts) -> None:
        """Range checks of the attack-specific options; raise ConfigError."""

    # ---- what an attack is -------------------------------------------------------------
    def target_of(self, y: torch.Tensor) -> torch.Tensor:
        if self.cfg.mode == "all2one":
            return torch.full_like(y, self.cfg.target)
        return (y + 1) % self.info.num_classes

    def trigger(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """Apply the trigger to float images in [0, 1], ``[N, C, H, W]``."""
        raise NotImplementedError(f"{type(self).__name__} defines no trigger")

    def prepare(self, train: ImageSet, *, seed: int, cache_dir, key: str, device="cpu",
                clean_model: Callable[[], nn.Module] | None = None) -> None:
        """Build what the trigger needs (generated resources: a UAP, an encoder, an optimised
        trigger) from the training data and, when needed, ``clean_model()`` (a model trained on
        the clean data, built and cached on first call). Cache them under ``cache_dir`` by a
        hash of ``key`` (which identifies the data and clean model) and the attack's options.
        Nothing for attacks whose trigger is fixed."""

    def resource_path(self, cache_dir, inputs: dict, tag: str = "") -> Path | None:
        """Where :meth:`prepare` caches a generated resource: ``cache_dir/<tag>-<hash>.safetensors``
        with the hash of ``inputs`` (everything the resource depends on) and ``tag`` the attack's
        name by default; ``None`` when there is no cache."""
        if cache_dir is None:
            return None
        return Path(cache_dir) / f"{tag or self.name}-{stable_hash(inputs)}.safetensors"

    @staticmethod
    def load_resource(path: Path | None) -> dict[str, torch.Tensor] | None:
        """The tensors of a cached resource at ``path``; ``None`` when there is none, or when
        the file is damaged (then reported with its path, and :meth:`prepare` builds it again)."""
        if path is None or not path.is_file():
            return None
        try:
            return load_tensors(path)
        except DamagedFile as e:
            warnings.warn(f"damaged cache entry: {e}; building it again", CacheWarning, stacklevel=2)
            return None

    # ---- poisoning ---------------------------------------------------------------------
    def apply(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        """The trigger on uint8 images, quantised back to uint8 as a saved image would be."""
        return to_uint8(self.trigger(to_float(x), y))

    def candidates(self, y: torch.Tensor) -> torch.Tensor:
        if self.clean_label:
            return (y == self.cfg.target).nonzero().flatten()
        return (self.target_of(y) != y).nonzero().flatten()

    def poison_count(self, train: ImageSet) -> int:
        """How many training samples to poison: ``poison_ratio`` of the whole training set, or,
        for an attack whose options say ``ratio_of: target_class``, of the target class's samples."""
        if getattr(self.opts, "ratio_of", "dataset") == "target_class":
            return int(round(self.cfg.poison_ratio * int((train.y == self.cfg.target).sum())))
        return int(round(self.cfg.poison_ratio * len(train)))

    def poison_index(self, train: ImageSet, seed: int) -> torch.Tensor:
        cand = self.candidates(train.y)
        n = self.poison_count(train)
        if n > len(cand):
            hint = (f" (at most {len(cand) / len(train):.4f} of the set, or set attack.options.ratio_of: "
                    f"target_class)" if hasattr(self.opts, "ratio_of") else "")
            raise ConfigError(f"attack.poison_ratio {self.cfg.poison_ratio} asks for {n} poisoned samples "
                              f"but only {len(cand)} are eligible{hint}")
        g = torch.Generator().manual_seed(seed)
        return cand[torch.randperm(len(cand), generator=g)[:n]].sort().values

    def poison_trainset(self, train: ImageSet, seed: int) -> PoisonedTrainSet:
        idx = self.poison_index(train, seed)
        x, y = train.x.clone(), train.y.clone()
        if not self.on_the_fly and len(idx):
            x[idx] = self.apply(x[idx], y[idx])
            if not self.clean_label:
                y[idx] = self.target_of(y[idx])
        return PoisonedTrainSet(ImageSet(x, y), idx, train.y.clone())

    def poison_testset(self, test: ImageSet) -> PoisonedTestSet:
        """Triggered copies of the test images whose label the attack changes (for ASR and RA)."""
        keep = (self.target_of(test.y) != test.y).nonzero().flatten()
        x, y = test.x[keep], test.y[keep]
        return PoisonedTestSet(self.apply(x, y), self.target_of(y), y)

    def poison_batch(self, x: torch.Tensor, y: torch.Tensor, generator: torch.Generator):
        """On-the-fly poisoning of a float training batch; identity for fixed-set attacks."""
        return x, y

    # ---- trainable trigger networks (``trainable = True``); no-ops otherwise ---------------
    def extra_loss(self) -> torch.Tensor | None:
        """A loss term of the batch :meth:`poison_batch` returned last (e.g. Input-aware's
        diversity loss), added to the model's loss; ``None`` for none. Read once per batch."""
        return None

    def after_step(self, lr_factor: float = 1.0) -> None:
        """Called by the training loop after the model's optimizer step: step the attack's own
        optimizers and clear their gradients. ``lr_factor`` is the model's learning rate at this
        step over its base rate, for optimizers that follow the model's schedule."""

    def state_tensors(self) -> dict[str, torch.Tensor]:
        """Everything trained or stateful in the attack (networks, their optimizers), for the
        training checkpoint and the cached run."""
        return {}

    def load_state_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        """Restore what :meth:`state_tensors` returned (after :meth:`prepare`)."""
