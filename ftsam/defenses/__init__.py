"""Defenses, one file each."""
from ftsam.config import DEFENSES, ConfigError, DefenseConfig
from ftsam.defenses.base import Defense
from ftsam.defenses.ft import FT
from ftsam.defenses.ft_l2 import FTL2
from ftsam.defenses.ft_sam import FTSAM

REGISTRY: dict[str, type[Defense]] = {cls.name: cls for cls in (FT, FTSAM, FTL2)}
assert tuple(REGISTRY) == DEFENSES


def build_defense(name: str, cfg: DefenseConfig) -> Defense:
    if name not in REGISTRY:
        raise ConfigError(f"unknown defense {name!r}; valid choices: {', '.join(REGISTRY)}")
    return REGISTRY[name](cfg)


__all__ = ["Defense", "REGISTRY", "build_defense"]
