"""Defenses, one file each, behind the interface of :mod:`ftsam.defenses.base`.

Every module here that defines a :class:`Defense` subclass with a ``name`` is registered under
that name, with its options section ``defense.<name>``; adding a defense is adding its file."""
from __future__ import annotations

import sys

from ftsam.config import ConfigError, DefenseConfig
from ftsam.defenses.base import Context, Defended, Defense, Given, NotApplicableError, ThreatModelError
from ftsam.registry import discover

REGISTRY: dict[str, type[Defense]] = discover(sys.modules[__name__], Defense)


def defense_class(name: str) -> type[Defense]:
    if name not in REGISTRY:
        raise ConfigError(f"unknown defense {name!r}; valid choices: {', '.join(REGISTRY)}")
    return REGISTRY[name]


def build_defense(name: str, cfg: DefenseConfig) -> Defense:
    return defense_class(name)(cfg)


def describe() -> dict[str, dict]:
    """Every defense: its title, what it is given and its options with their defaults."""
    return {name: {"title": cls.title, "given": list(cls.needs), "options": cls.option_defaults()}
            for name, cls in REGISTRY.items()}


__all__ = ["Context", "Defended", "Defense", "Given", "NotApplicableError", "ThreatModelError", "REGISTRY", "build_defense",
           "defense_class", "describe"]
