"""Attacks, one file each, behind the interface of :mod:`ftsam.attacks.base`.

Every module in this package that defines an :class:`Attack` subclass with a ``name`` is
registered under that name; adding an attack is adding its file."""
from __future__ import annotations

import sys

from ftsam.attacks.base import Attack, PoisonedTestSet, PoisonedTrainSet
from ftsam.config import AttackConfig, ConfigError
from ftsam.data import DatasetInfo
from ftsam.registry import discover

REGISTRY: dict[str, type[Attack]] = discover(sys.modules[__name__], Attack)


def attack_class(name: str) -> type[Attack]:
    if name not in REGISTRY:
        raise ConfigError(f"attack.name: unknown attack {name!r}; valid choices: {', '.join(REGISTRY)}")
    return REGISTRY[name]


def build_attack(cfg: AttackConfig, info: DatasetInfo) -> Attack:
    return attack_class(cfg.name)(cfg, info)


__all__ = ["Attack", "PoisonedTestSet", "PoisonedTrainSet", "attack_class", "build_attack", "REGISTRY"]
