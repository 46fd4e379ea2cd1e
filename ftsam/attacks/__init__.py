"""Attacks, one file each, behind the interface of :mod:`ftsam.attacks.base`."""
from __future__ import annotations

from ftsam.attacks.badnets import BadNets
from ftsam.attacks.base import Attack, PoisonedTestSet, PoisonedTrainSet
from ftsam.attacks.blended import Blended
from ftsam.config import ATTACKS, AttackConfig, ConfigError
from ftsam.data import DatasetInfo

REGISTRY: dict[str, type[Attack]] = {cls.name: cls for cls in (BadNets, Blended)}
assert tuple(REGISTRY) == ATTACKS


def attack_class(name: str) -> type[Attack]:
    if name not in REGISTRY:
        raise ConfigError(f"attack.name: unknown attack {name!r}; valid choices: {', '.join(REGISTRY)}")
    return REGISTRY[name]


def build_attack(cfg: AttackConfig, info: DatasetInfo) -> Attack:
    return attack_class(cfg.name)(cfg, info)


__all__ = ["Attack", "PoisonedTestSet", "PoisonedTrainSet", "attack_class", "build_attack", "REGISTRY"]
