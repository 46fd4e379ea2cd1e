"""The defense interface.

A defense **declares what its threat model gives it** (``needs``) and **returns what it found**:

- ``"model"``: a copy of the backdoored model (the defense may change it in place);
- ``"clean"``: the defender's clean subset (an :class:`~ftsam.data.ImageSet`, ``defense.clean_ratio``
  of the clean training set);
- ``"poisoned"``: the poisoned training set as the victim received it, with
  :attr:`Given.new_model` (a fresh, untrained model of the same architecture) and
  :attr:`Given.scratch_train` (the attack-training settings, for defenses that train anew).

The pipeline (:func:`ftsam.defend`) hands over only what was declared: reading anything else
from :class:`Given` raises :class:`ThreatModelError`. No defense is ever given the test set
or the trigger; selections a defense makes (how far to prune, which threshold) use a held-out
part of its own data (:func:`holdout_split`).

A defense's own options are a frozen dataclass ``Options``, read from ``defense.<name>`` of the
params file and checked like every other key; its cache key covers the common defense settings,
its own options and the seed (:meth:`Defense.cache_inputs`), so changing FT-SAM's rho does not
retrain FT. ``run`` returns a :class:`Defended`: the defended model, a per-epoch history (may be
empty) and ``found``, a dict of what the defense found (pruned channels, a reversed trigger,
flagged sample indices), tensors or JSON-able values.
"""
from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, ClassVar

import torch
from torch import nn

from ftsam.config import Config, ConfigError, DefenseConfig, TrainConfig
from ftsam.data import ImageSet, per_class_indices
from ftsam.train import FitResult, Step, fit

GIVEN = ("model", "clean", "poisoned")


class ThreatModelError(PermissionError):
    """A defense asked for something its declared threat model does not give it."""


class NotApplicableError(ValueError):
    """The defense cannot be applied to this backdoored run as it stands (e.g. a defense that reads
    the poisoned training set, against an attack that poisons inside the training loop)."""


class Given:
    """What a defense is handed: only the items it declared in ``needs``."""

    def __init__(self, defense: str, needs: tuple[str, ...], *, model: nn.Module | None = None,
                 clean: ImageSet | None = None, poisoned: ImageSet | None = None,
                 new_model: Callable[[], nn.Module] | None = None, scratch_train: TrainConfig | None = None):
        unknown = sorted(set(needs) - set(GIVEN))
        if unknown:
            raise ConfigError(f"defense {defense!r} declares unknown inputs {unknown}; valid: {', '.join(GIVEN)}")
        self._defense, self._needs = defense, tuple(needs)
        self._items = {"model": model, "clean": clean, "poisoned": poisoned,
                       "new_model": new_model, "scratch_train": scratch_train}
        for k in needs:
            if self._items[k] is None:
                raise ValueError(f"defense {defense!r} needs {k!r}, but the pipeline has none to give")

    def _get(self, item: str, needed: str):
        if needed not in self._needs:
            raise ThreatModelError(f"defense {self._defense!r} is given {', '.join(self._needs) or 'nothing'}: "
                                   f"its threat model withholds {item!r}")
        return self._items[item]

    model = property(lambda self: self._get("model", "model"), doc="a copy of the backdoored model")
    clean = property(lambda self: self._get("clean", "clean"), doc="the defender's clean subset")
    poisoned = property(lambda self: self._get("poisoned", "poisoned"), doc="the poisoned training set")
    new_model = property(lambda self: self._get("new_model", "poisoned"), doc="builds a fresh, untrained model")
    scratch_train = property(lambda self: self._get("scratch_train", "poisoned"),
                             doc="the training settings for a model trained anew")

    def __getattr__(self, name):   # test_set, trigger, ...: never given to any defense
        if name.startswith("_"):
            raise AttributeError(name)
        raise ThreatModelError(f"no defense is given {name!r}; a defense is given at most: {', '.join(GIVEN)}")


@dataclass
class Context:
    """How a defense runs (not what it sees): the seed, the device, a directory for its
    resumable state, a progress switch and the monitors that draw the notebooks' curves.
    ``evaluate`` and ``on_update`` are for the history only: a defense passes them on to
    :func:`ftsam.train.fit` and never decides anything by them."""
    seed: int
    device: torch.device = torch.device("cpu")
    state_dir: Path | None = None
    progress: bool | None = None
    evaluate: Callable[[nn.Module], dict] | None = None
    on_update: Callable[[int, int, nn.Module], None] | None = None

    def state_file(self, name: str) -> Path | None:
        """A resumable-state file of this run (``None``: no checkpointing, e.g. while watched)."""
        return None if self.state_dir is None or self.on_update is not None else self.state_dir / f"{name}.safetensors"

    def fit(self, model: nn.Module, data: ImageSet, cfg: TrainConfig, step: Step | None = None, *,
            desc: str, state: str = "train_state", monitor: bool = True, **kwargs) -> FitResult:
        """:func:`ftsam.train.fit` with this run's seed, device, checkpoint and progress; the
        monitors only when ``monitor`` (the defended model's own curve, not a teacher's)."""
        return fit(model, data, cfg, step, seed=self.seed, device=self.device, checkpoint=self.state_file(state),
                   evaluate=self.evaluate if monitor else None, on_update=self.on_update if monitor else None,
                   desc=desc, progress=self.progress, **kwargs)


@dataclass
class Defended:
    model: nn.Module
    history: list[dict] = field(default_factory=list)   # fit's rows (epoch, loss, and the monitor's metrics)
    found: dict = field(default_factory=dict)           # what the defense found: tensors or JSON-able values


class Defense:
    name: ClassVar[str]
    title: ClassVar[str]                          # as the paper's tables write it
    needs: ClassVar[tuple[str, ...]] = ("model", "clean")
    # The key of ``found`` that holds the training samples the defense suspects (indices into the
    # poisoned set), which the pipeline scores against the attack's poisons; None for a defense
    # that flags no samples (NC's ``found["flagged"]`` names classes, not samples).
    flags_samples: ClassVar[str | None] = None
    # Keys of ``found`` small enough to stand beside the metrics in a results table (NC: the
    # flagged classes); AttackTable.summary copies them.
    reported: ClassVar[tuple[str, ...]] = ()

    @dataclass(frozen=True)
    class Options:
        pass

    def __init__(self, cfg: DefenseConfig):
        self.cfg = cfg
        self.opts = cfg.options[self.name]

    @classmethod
    def check_options(cls, opts) -> None:
        """Range checks of the defense's own options (``defense.<name>.*``); raise ConfigError.
        By default the options' own ``check(prefix)``, where they have one."""
        if hasattr(opts, "check"):
            opts.check(f"defense.{cls.name}")

    @classmethod
    def option_defaults(cls) -> dict:
        """The defense's options and their defaults (for ``ftsam list`` and the README)."""
        return dataclasses.asdict(cls.Options())

    @classmethod
    def option_types(cls) -> dict:
        return {f.name: typing.get_type_hints(cls.Options)[f.name] for f in dataclasses.fields(cls.Options)}

    def cache_inputs(self, cfg: Config) -> dict:
        """Everything the defended model depends on besides the backdoored run: the common
        defense settings, this defense's options and the seed (defenses that train anew add the
        training settings they use)."""
        return {"seed": cfg.seed, "defense": cfg.defense.section(self.name)}

    def run(self, given: Given, ctx: Context) -> Defended:
        raise NotImplementedError(f"{type(self).__name__} does not define run()")

    def restore(self, model: nn.Module, found: dict) -> nn.Module:
        """Rebuild, on a fresh copy of the backdoored model, any change of structure the defense
        made (e.g. a pruning mask), so that a cached state dict loads into it. Default: none."""
        return model


class FineTuning(Defense):
    """A defense that fine-tunes the backdoored model on the clean subset with one step
    function: FT, FT-SAM, FT-l2. Subclasses define :meth:`step`."""

    def step(self, model: nn.Module) -> Step:
        raise NotImplementedError

    def run(self, given: Given, ctx: Context) -> Defended:
        model = given.model
        fitted = ctx.fit(model, given.clean, self.cfg.train, self.step(model), desc=self.title)
        return Defended(model, fitted.history)


def holdout_split(data: ImageSet, fraction: float, seed: int) -> tuple[ImageSet, ImageSet]:
    """Split the defender's own data into (rest, held-out): ``fraction`` of every class held
    out (at least one image of each), drawn with ``seed``. For selections a defense makes on
    data it was given (FP's stopping point, ANP's threshold), never on the test set."""
    if not 0.0 < fraction < 1.0:
        raise ConfigError(f"held-out fraction must lie in (0, 1), got {fraction!r}")
    counts = torch.bincount(data.y)
    n = max(1, int(round(fraction * int(counts[counts > 0].min()))))
    held = per_class_indices(data.y, n, torch.Generator().manual_seed(seed))
    keep = torch.ones(len(data), dtype=torch.bool)
    keep[held] = False
    if not keep.any():
        raise ConfigError("the defender's clean data is too small to hold out a part of it")
    return data.subset(keep.nonzero().flatten()), data.subset(held)
