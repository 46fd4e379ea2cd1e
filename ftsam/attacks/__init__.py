"""Attacks, one file each, behind the interface of :mod:`ftsam.attacks.base`.

Every module in this package that defines an :class:`Attack` subclass with a ``name`` is
registered under that name; adding an attack is adding its file."""
from __future__ import annotations

import importlib
import pkgutil

from ftsam.attacks.base import Attack, PoisonedTestSet, PoisonedTrainSet
from ftsam.config import AttackConfig, ConfigError
from ftsam.data import DatasetInfo


def _discover() -> dict[str, type[Attack]]:
    found: dict[str, type[Attack]] = {}
    for mod in sorted(m.name for m in pkgutil.iter_modules(__path__) if m.name != "base"):
        module = importlib.import_module(f"{__name__}.{mod}")
        for obj in vars(module).values():
            if isinstance(obj, type) and issubclass(obj, Attack) and obj.__module__ == module.__name__ \
                    and "name" in vars(obj):
                found[obj.name] = obj
    return found


REGISTRY: dict[str, type[Attack]] = _discover()


def attack_class(name: str) -> type[Attack]:
    if name not in REGISTRY:
        raise ConfigError(f"attack.name: unknown attack {name!r}; valid choices: {', '.join(REGISTRY)}")
    return REGISTRY[name]


def build_attack(cfg: AttackConfig, info: DatasetInfo) -> Attack:
    return attack_class(cfg.name)(cfg, info)


__all__ = ["Attack", "PoisonedTestSet", "PoisonedTrainSet", "attack_class", "build_attack", "REGISTRY"]
