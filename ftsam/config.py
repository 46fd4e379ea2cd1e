"""Typed experiment configuration, read from ``params/*.yaml``.

Every section is a frozen dataclass. Loading is strict: an unknown key, a value of the wrong
type or a value out of range raises :class:`ConfigError`, naming the key and the valid
choices. Nothing on the command line silently overrides the file: overrides are explicit
(``load_config(path, overrides={"defense.rho": 4.0})``) and go through the same checks.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import typing
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal

import yaml


def stable_hash(obj) -> str:
    """A short hash of a JSON-able object, independent of key order: the cache key of runs
    (:meth:`Config.digest`) and of generated attack resources (:meth:`Attack.resource_path`)."""
    blob = json.dumps(obj, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


class ConfigError(ValueError):
    """A params file or override that does not describe a valid experiment."""


DATASETS = ("digits", "fashion_mnist", "cifar10", "gtsrb", "tiny_imagenet")
MODELS = ("preactresnet18", "vgg19_bn", "simple_cnn")
DEFENSES = ("ft", "ft_sam", "ft_l2")


@dataclass(frozen=True)
class DataConfig:
    name: str = "digits"
    root: str = "data"          # where real datasets live (CIFAR-10, GTSRB, Tiny ImageNet, Fashion-MNIST)
    image_size: int = 0         # 0: the dataset's native size (digits: 8 is upsampled to this if set)
    download: bool = False      # allow torchvision to download (never on by default)
    train_per_class: int = 0    # keep at most this many training images of each class (0: all)
    test_per_class: int = 0     # the same for the test set (0: all)

    def check(self) -> None:
        _choice("data.name", self.name, DATASETS)
        _range("data.image_size", self.image_size, lo=0)
        _range("data.train_per_class", self.train_per_class, lo=0)
        _range("data.test_per_class", self.test_per_class, lo=0)


@dataclass(frozen=True)
class ModelConfig:
    name: str = "preactresnet18"
    width: int = 64             # channels of the first stage (64 in the paper)

    def check(self) -> None:
        _choice("model.name", self.name, MODELS)
        _range("model.width", self.width, lo=1)


@dataclass(frozen=True)
class AttackConfig:
    """The common part of every attack; attack-specific keys live in ``options``."""
    name: str = "badnets"
    target: int = 0
    mode: Literal["all2one", "all2all"] = "all2one"
    poison_ratio: float = 0.1
    options: dict = field(default_factory=dict)

    def check(self) -> None:
        from ftsam.attacks import attack_class  # late import: attacks depend on config
        attack_class(self.name)                 # an unknown name lists the attacks there are
        _choice("attack.mode", self.mode, ("all2one", "all2all"))
        _range("attack.target", self.target, lo=0)
        if not 0.0 < self.poison_ratio < 1.0:
            raise ConfigError(f"attack.poison_ratio must lie in (0, 1), got {self.poison_ratio!r}")


@dataclass(frozen=True)
class TrainConfig:
    """One training run: attack training or fine-tuning."""
    epochs: int = 100
    batch_size: int = 128
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: Literal["cosine", "constant", "cosine_per_iter"] = "cosine"
    cosine_t_max: int = 100             # only for cosine_per_iter (the authors' quirk: T_max in iterations)
    label_smoothing: float = 0.0
    crop_padding: int = 0               # random crop with this padding, 0 = off
    hflip: bool = False
    drop_last: bool = True
    eval_every: int = 1                 # evaluate every N epochs (and always after the last)

    def check(self, prefix: str) -> None:
        _range(f"{prefix}.epochs", self.epochs, lo=1)
        _range(f"{prefix}.batch_size", self.batch_size, lo=1)
        _range(f"{prefix}.lr", self.lr, lo=0.0, strict=True)
        _range(f"{prefix}.momentum", self.momentum, lo=0.0, hi=1.0)
        _range(f"{prefix}.weight_decay", self.weight_decay, lo=0.0)
        _choice(f"{prefix}.schedule", self.schedule, ("cosine", "constant", "cosine_per_iter"))
        _range(f"{prefix}.cosine_t_max", self.cosine_t_max, lo=1)
        _range(f"{prefix}.label_smoothing", self.label_smoothing, lo=0.0, hi=1.0)
        _range(f"{prefix}.crop_padding", self.crop_padding, lo=0)
        _range(f"{prefix}.eval_every", self.eval_every, lo=1)


@dataclass(frozen=True)
class SAMConfig:
    rho: float = 2.0
    eta: float = 0.0
    adaptive: bool = True
    perturb: Literal["all", "weights"] = "all"
    # Dynamic rho (issue 11; the supplement's "dynamic strategy ... within [2, 10]"): with
    # "lr", rho follows the learning rate, rho_t = rho_min + (rho - rho_min) * lr_t / lr, from
    # rho at the start down to rho_min (GSAM's ProportionScheduler, as the authors' code uses it).
    rho_schedule: Literal["constant", "lr"] = "constant"
    rho_min: float = 0.0

    def check(self, prefix: str = "defense.sam") -> None:
        _range(f"{prefix}.rho", self.rho, lo=0.0, strict=True)
        _range(f"{prefix}.eta", self.eta, lo=0.0)
        _choice(f"{prefix}.perturb", self.perturb, ("all", "weights"))
        _choice(f"{prefix}.rho_schedule", self.rho_schedule, ("constant", "lr"))
        _range(f"{prefix}.rho_min", self.rho_min, lo=0.0, hi=self.rho)


@dataclass(frozen=True)
class DefenseConfig:
    clean_ratio: float = 0.05
    clean_sampling: Literal["balanced", "uniform"] = "balanced"
    train: TrainConfig = field(default_factory=lambda: TrainConfig(
        epochs=100, batch_size=256, lr=0.01, label_smoothing=0.1, crop_padding=4, hflip=True))
    sam: SAMConfig = field(default_factory=SAMConfig)
    l2_gamma: float = 0.005

    def check(self) -> None:
        if not 0.0 < self.clean_ratio <= 1.0:
            raise ConfigError(f"defense.clean_ratio must lie in (0, 1], got {self.clean_ratio!r}")
        _choice("defense.clean_sampling", self.clean_sampling, ("balanced", "uniform"))
        self.train.check("defense.train")
        self.sam.check()
        _range("defense.l2_gamma", self.l2_gamma, lo=0.0)


@dataclass(frozen=True)
class Config:
    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    attack: AttackConfig = field(default_factory=AttackConfig)
    attack_train: TrainConfig = field(default_factory=lambda: TrainConfig(crop_padding=4, hflip=True))
    defense: DefenseConfig = field(default_factory=DefenseConfig)
    # Per attack, dotted overrides of ``attack.*`` / ``attack_train.*`` that
    # :func:`ftsam.experiment.with_attack` applies when a notebook switches to that attack,
    # e.g. ``{"wanet": {"attack_train.epochs": 100}}``. They do not touch the sections above.
    attack_settings: dict = field(default_factory=dict)

    def check(self) -> "Config":
        self.data.check()
        self.model.check()
        self.attack.check()
        self.attack_train.check("attack_train")
        self.defense.check()
        from ftsam.attacks import attack_class  # late import: attacks depend on config
        attack_class(self.attack.name).options_from(self.attack.options)
        for name, overrides in self.attack_settings.items():
            self.settings_for(name)      # checks the name, the keys and the values
        return self

    def settings_for(self, name: str) -> dict[str, Any]:
        """The checked overrides ``attack_settings`` holds for attack ``name`` (may be empty)."""
        from ftsam.attacks import attack_class
        if name not in self.attack_settings:
            return {}
        try:
            attack_class(name)
        except ConfigError as e:
            raise ConfigError(f"attack_settings.{name}: {e}") from None
        overrides = self.attack_settings[name]
        if not isinstance(overrides, dict):
            raise ConfigError(f"attack_settings.{name} must be a mapping of dotted keys to values, got {overrides!r}")
        for key in overrides:
            if not (isinstance(key, str) and key.startswith(("attack.", "attack_train."))) or key in ("attack.name",):
                raise ConfigError(f"attack_settings.{name}: key {key!r} is not allowed; valid keys are "
                                  f"attack.target, attack.mode, attack.poison_ratio, attack.options, attack_train.*")
        d = self.to_dict()
        d["attack_settings"] = {}
        d["attack"]["name"] = name
        if self.attack.name != name:
            d["attack"]["options"] = {}
        try:
            for key, value in overrides.items():
                _set_dotted(d, key, value)
            from_dict(d)
        except ConfigError as e:
            raise ConfigError(f"attack_settings.{name}: {e}") from None
        return dict(overrides)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def digest(self, *sections: str) -> str:
        """A short stable hash of the named sections (all when none), for caching."""
        d = self.to_dict()
        if sections:
            d = {k: d[k] for k in sections}
        return stable_hash(d)

    def with_overrides(self, overrides: dict[str, Any] | None) -> "Config":
        d = self.to_dict()
        for dotted, value in (overrides or {}).items():
            _set_dotted(d, dotted, value)
        return from_dict(d)


# --------------------------------------------------------------------------------------
def from_dict(d: dict) -> Config:
    if not isinstance(d, dict):
        raise ConfigError(f"a params file must hold a mapping at the top level, got {type(d).__name__}")
    return _build(Config, d, "").check()


def load_config(path: str | Path, overrides: dict[str, Any] | None = None) -> Config:
    """Read a params YAML file into a checked :class:`Config` (missing keys take defaults)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"params file not found: {path}")
    with open(path) as f:
        raw = yaml.safe_load(f) or {}
    try:
        cfg = from_dict(raw)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None
    return cfg.with_overrides(overrides) if overrides else cfg


def _build(cls, d: dict, prefix: str):
    if not isinstance(d, dict):
        raise ConfigError(f"{prefix or 'params'} must be a mapping, got {d!r}")
    hints = typing.get_type_hints(cls)
    valid = [f.name for f in fields(cls)]
    unknown = sorted(set(d) - set(valid))
    if unknown:
        where = f" in '{prefix}'" if prefix else ""
        raise ConfigError(f"unknown key {prefix + '.' if prefix else ''}{unknown[0]}{where}; "
                          f"valid keys: {', '.join(valid)}")
    kwargs = {}
    defaults = cls()
    for name, value in d.items():
        key = f"{prefix}.{name}" if prefix else name
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            base = dataclasses.asdict(getattr(defaults, name))
            if not isinstance(value, dict):
                raise ConfigError(f"{key} must be a mapping, got {value!r}")
            # nested sections start from the parent's default (e.g. defense.train) and update it
            kwargs[name] = _build(hint, _merge(base, value), key)
        else:
            kwargs[name] = _coerce(key, value, hint)
    return replace(defaults, **kwargs)


def _merge(base: dict, upd: dict) -> dict:
    out = dict(base)
    for k, v in upd.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) and k != "options" else v
    return out


def _coerce(key: str, value: Any, hint: Any) -> Any:
    origin = typing.get_origin(hint)
    if origin is Literal:
        _choice(key, value, typing.get_args(hint))
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key} must be true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key} must be an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key} must be a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key} must be a string, got {value!r}")
        return value
    if hint is dict or origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key} must be a mapping, got {value!r}")
        return dict(value)
    return value


def _set_dotted(d: dict, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    cur = d
    for i, p in enumerate(parts[:-1]):
        if not isinstance(cur, dict) or p not in cur or not isinstance(cur[p], dict):
            raise ConfigError(f"unknown override key {dotted!r}: no section {'.'.join(parts[:i + 1])!r}")
        cur = cur[p]
    if parts[-1] not in cur and parts[-2:-1] != ["options"]:
        raise ConfigError(f"unknown override key {dotted!r}; valid keys here: {', '.join(cur)}")
    cur[parts[-1]] = value


def _choice(key: str, value: Any, choices) -> None:
    if value not in choices:
        raise ConfigError(f"{key}: unknown value {value!r}; valid choices: {', '.join(map(str, choices))}")


def _range(key: str, value, lo=None, hi=None, strict: bool = False) -> None:
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(f"{key} must be a finite number, got {value!r}")
    if lo is not None and (value <= lo if strict else value < lo):
        raise ConfigError(f"{key} must be {'>' if strict else '>='} {lo}, got {value!r}")
    if hi is not None and value > hi:
        raise ConfigError(f"{key} must be <= {hi}, got {value!r}")
