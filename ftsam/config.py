"""Typed experiment configuration, read from ``params/*.yaml``.

Every section is a frozen dataclass. Loading is strict: an unknown key, a value of the wrong
type or a value out of range raises :class:`ConfigError`, naming the key and the valid
choices. Nothing on the command line silently overrides the file: overrides are explicit
(``load_config(path, overrides={"defense.rho": 4.0})``) and go through the same checks.
"""
from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import math
import re
import typing
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Literal

import yaml


# Options added after runs were cached, each with the value that means "off". A cache key leaves
# such an option out while it is off, so the runs cached before the option existed keep their keys.
KEY_NEUTRAL: dict[str, Any] = {"max_grad_norm": 0.0, "warmup_epochs": 0}


def _without_neutral(obj):
    if isinstance(obj, dict):
        return {k: _without_neutral(v) for k, v in obj.items()
                if not (k in KEY_NEUTRAL and v == KEY_NEUTRAL[k])}
    if isinstance(obj, (list, tuple)):
        return [_without_neutral(v) for v in obj]
    return obj


def stable_hash(obj) -> str:
    """A short hash of a JSON-able object, independent of key order and of the options in
    :data:`KEY_NEUTRAL` while they are off: the cache key of runs (:meth:`Config.digest`) and of
    generated attack resources (:meth:`Attack.resource_path`)."""
    blob = json.dumps(_without_neutral(obj), sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


class ConfigError(ValueError):
    """A params file or override that does not describe a valid experiment."""


DATASETS = ("digits", "fashion_mnist", "cifar10", "gtsrb", "tiny_imagenet")
MODELS = ("preactresnet18", "vgg19_bn", "simple_cnn")
MIN_IMAGE_SIZE = 8   # digits' own size; PreAct-ResNet18 halves it three times, to 1x1


@dataclass(frozen=True)
class DataConfig:
    name: str = "digits"
    root: str = "data"          # where real datasets live (CIFAR-10, GTSRB, Tiny ImageNet, Fashion-MNIST)
    image_size: int = 0         # 0: the dataset's native size (digits: 8 is upsampled to this if set)
    download: bool = False      # allow torchvision to download (never on by default)
    train_per_class: int = 0    # keep at most this many training images of each class (0: all)
    test_per_class: int = 0     # the same for the test set (0: all)

    def check(self) -> None:
        from ftsam.datasets_byo import check_dataset_name   # late import: built-in, folder, arrays, registered
        check_dataset_name(self.name)
        _range("data.image_size", self.image_size, lo=0)
        if 0 < self.image_size < MIN_IMAGE_SIZE:
            raise ConfigError(f"data.image_size must be 0 (the dataset's own size) or at least {MIN_IMAGE_SIZE}, "
                              f"got {self.image_size}: the models halve it three times, and a trigger would "
                              "cover the whole image")
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
    # Clip the gradient each update uses (FT-SAM: the one at w + eps) to this L2 norm over all
    # parameters; 0 = off. Not in the paper: a standard stabilizer, for models whose first
    # fine-tuning steps meet gradients hundreds of times the usual (params/robust/digits_simple_cnn.yaml).
    max_grad_norm: float = 0.0
    # Raise the learning rate linearly from ~0 over this many epochs (per update), multiplying the
    # schedule; 0 = off. Not in the paper: a standard stabilizer for a fine-tuning step whose first
    # updates at full rate knock a model's accuracy down before it can relearn
    # (params/robust/digits_vgg19_bn.yaml).
    warmup_epochs: int = 0

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
        _range(f"{prefix}.max_grad_norm", self.max_grad_norm, lo=0.0)
        _range(f"{prefix}.warmup_epochs", self.warmup_epochs, lo=0, hi=self.epochs)


@dataclass(frozen=True)
class SAMConfig:
    """FT-SAM's own options (``defense.ft_sam``): the radius and shape of the perturbation."""
    rho: float = 2.0
    eta: float = 0.0
    adaptive: bool = True
    perturb: Literal["all", "weights"] = "all"
    # Dynamic rho (issue 11; the supplement's "dynamic strategy ... within [2, 10]"): with
    # "lr", rho follows the learning rate, rho_t = rho_min + (rho - rho_min) * lr_t / lr, from
    # rho at the start down to rho_min (GSAM's ProportionScheduler, as the authors' code uses it).
    rho_schedule: Literal["constant", "lr"] = "constant"
    rho_min: float = 0.0

    def check(self, prefix: str = "defense.ft_sam") -> None:
        _range(f"{prefix}.rho", self.rho, lo=0.0, strict=True)
        _range(f"{prefix}.eta", self.eta, lo=0.0)
        _choice(f"{prefix}.perturb", self.perturb, ("all", "weights"))
        _choice(f"{prefix}.rho_schedule", self.rho_schedule, ("constant", "lr"))
        _range(f"{prefix}.rho_min", self.rho_min, lo=0.0, hi=self.rho)


def _defense_registry() -> dict:
    from ftsam.defenses import REGISTRY  # late import: defenses depend on config
    return REGISTRY


def _default_defense_options() -> dict:
    return {name: cls.Options() for name, cls in _defense_registry().items()}


@dataclass(frozen=True)
class DefenseConfig:
    """The ``defense`` section: what every defense shares (the defender's clean subset, the
    fine-tuning settings) and one section per defense, ``defense.<name>``, with that defense's
    own options (its ``Options`` dataclass; e.g. ``defense.ft_sam.rho``). Read a defense's
    options as ``cfg.defense.ft_sam`` or ``cfg.defense.options["ft_sam"]``."""
    clean_ratio: float = 0.05
    clean_sampling: Literal["balanced", "uniform"] = "balanced"
    train: TrainConfig = field(default_factory=lambda: TrainConfig(
        epochs=100, batch_size=256, lr=0.01, label_smoothing=0.1, crop_padding=4, hflip=True))
    # The per-epoch curves (the monitor) on a fixed class-balanced subset of the test set with this
    # many images of each class (0: the whole test set); the reported metrics always use all of it.
    monitor_per_class: int = 0
    options: dict = field(default_factory=_default_defense_options)

    COMMON: typing.ClassVar[tuple[str, ...]] = ("clean_ratio", "clean_sampling", "train", "monitor_per_class")

    def __getattr__(self, name: str):
        if name != "options" and not name.startswith("__"):
            options = self.__dict__.get("options", {})
            if name in options:
                return options[name]
        raise AttributeError(f"{type(self).__name__} has no attribute {name!r}")

    def check(self) -> None:
        if not 0.0 < self.clean_ratio <= 1.0:
            raise ConfigError(f"defense.clean_ratio must lie in (0, 1], got {self.clean_ratio!r}")
        _choice("defense.clean_sampling", self.clean_sampling, ("balanced", "uniform"))
        _range("defense.monitor_per_class", self.monitor_per_class, lo=0)
        self.train.check("defense.train")
        for name, cls in _defense_registry().items():
            cls.check_options(self.options[name])

    def to_dict(self) -> dict:
        """Flat, as in a params file: the common keys and one mapping per defense."""
        d = {k: dataclasses.asdict(v) if dataclasses.is_dataclass(v) else v
             for k, v in ((k, getattr(self, k)) for k in self.COMMON)}
        d.update({name: dataclasses.asdict(opts) for name, opts in self.options.items()})
        return d

    def section(self, name: str) -> dict:
        """What defense ``name``'s result depends on in this section: the common keys and its own
        options (the part of its cache key that comes from here)."""
        d = self.to_dict()
        return {k: d[k] for k in (*self.COMMON, name)}


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
        return _asdict(self)

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
    """Read a params YAML file into a checked :class:`Config` (missing keys take defaults).

    The file must set something (an empty file is refused, not run on the library defaults),
    and may not repeat a key. A relative ``data.root`` is resolved against the file's
    :func:`project_root`, so the same file finds the same data from any working directory."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"params file not found: {path}")
    raw = read_yaml(path)
    if raw is None or raw == {}:
        raise ConfigError(f"{path} is empty: a params file must set the experiment (see params/offline.yaml); "
                          "it is not run on the library defaults")
    try:
        cfg = from_dict(raw)
        if overrides:
            cfg = cfg.with_overrides(overrides)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None
    root = Path(cfg.data.root).expanduser()
    if not root.is_absolute():
        root = project_root(path.resolve().parent) / root
    return replace(cfg, data=replace(cfg.data, root=str(root)))


def project_root(start: str | Path) -> Path:
    """The project a path belongs to, against which relative paths in its params files are
    resolved (one rule for the library, the notebooks, papermill and make): the nearest
    directory at or above ``start`` that holds a ``pyproject.toml``; ``start`` itself when
    there is none."""
    start = Path(start).resolve()
    for d in (start, *start.parents):
        if (d / "pyproject.toml").is_file():
            return d
    return start


# YAML 1.1 reads 1e-3 (no dot, unsigned exponent forms) as a string; the user meant a number.
_FLOAT_WITHOUT_DOT = re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$")


class _ParamsLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that reads ``1e-3`` as a float."""


_ParamsLoader.add_implicit_resolver("tag:yaml.org,2002:float", _FLOAT_WITHOUT_DOT, list("-+0123456789."))


def read_yaml(path: str | Path) -> Any:
    """Parse a YAML file safely; a key repeated in the same mapping (which YAML would let
    replace the first silently) or a syntax error raises :class:`ConfigError` naming the file,
    the dotted key and the lines."""
    path = Path(path)
    loader = _ParamsLoader(path.read_text())
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _refuse_duplicate_keys(node, "", path)
        return loader.construct_document(node)
    except yaml.MarkedYAMLError as e:
        mark = e.problem_mark or e.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        what = "; ".join(x for x in (e.context, e.problem) if x)
        raise ConfigError(f"{path}: not valid YAML{where}: {what}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    finally:
        loader.dispose()


def _refuse_duplicate_keys(node, prefix: str, path: Path) -> None:
    if isinstance(node, yaml.MappingNode):
        seen: dict = {}
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else repr(key_node)
            dotted = f"{prefix}.{key}" if prefix else str(key)
            if key in seen:
                raise ConfigError(f"{path}: key {dotted} is given twice (lines {seen[key] + 1} and "
                                  f"{key_node.start_mark.line + 1}); the second would silently replace the first")
            seen[key] = key_node.start_mark.line
            _refuse_duplicate_keys(value_node, dotted, path)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _refuse_duplicate_keys(item, f"{prefix}[{i}]", path)


def _asdict(obj) -> dict:
    """``dataclasses.asdict``, with the defense section flat as a params file writes it."""
    if isinstance(obj, DefenseConfig):
        return obj.to_dict()
    return {f.name: _asdict(v) if dataclasses.is_dataclass(v) else copy.deepcopy(v)
            for f in fields(obj) for v in (getattr(obj, f.name),)}


def _build_defense(d: dict, prefix: str) -> DefenseConfig:
    """The defense section: its common keys, then each defense's own section through that
    defense's ``Options`` (a section left out takes the defense's defaults)."""
    registry = _defense_registry()
    common = {k: v for k, v in d.items() if k not in registry}
    if "options" in common:
        raise ConfigError(f"unknown key {prefix}.options; a defense's options go in {prefix}.<name> "
                          f"(defenses: {', '.join(registry)})")
    base = _build_fields(DefenseConfig, common, prefix, also_valid=tuple(registry))
    options = {}
    for name, cls in registry.items():
        section = d.get(name) or {}
        if not isinstance(section, dict):
            raise ConfigError(f"{prefix}.{name} must be a mapping of {cls.title}'s options, got {section!r}")
        options[name] = _build(cls.Options, _merge(_asdict(cls.Options()), section), f"{prefix}.{name}")
    return replace(base, options=options)


def _build(cls, d: dict, prefix: str):
    if not isinstance(d, dict):
        raise ConfigError(f"{prefix or 'params'} must be a mapping, got {d!r}")
    if cls is DefenseConfig:
        return _build_defense(d, prefix)
    return _build_fields(cls, d, prefix)


def _build_fields(cls, d: dict, prefix: str, also_valid: tuple[str, ...] = ()):
    """``cls`` from the mapping ``d``: every key a field of ``cls`` (or one of ``also_valid``,
    which the caller builds itself), every value checked against the field's type."""
    hints = typing.get_type_hints(cls)
    valid = [f.name for f in fields(cls) if not (cls is DefenseConfig and f.name == "options")] + list(also_valid)
    unknown = sorted(set(d) - set(valid))
    if unknown:
        where = f" in '{prefix}'" if prefix else ""
        raise ConfigError(f"unknown key {prefix + '.' if prefix else ''}{unknown[0]}{where}; "
                          f"valid keys: {', '.join(valid)}")
    kwargs = {}
    defaults = cls()
    for name, value in d.items():
        if name in also_valid:
            continue
        key = f"{prefix}.{name}" if prefix else name
        hint = hints[name]
        if dataclasses.is_dataclass(hint):
            base = _asdict(getattr(defaults, name))
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
