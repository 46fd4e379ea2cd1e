"""ftsam: FT-SAM (ICCV 2023) backdoor purification, reproducible and readable.

The pieces, one small module each: :mod:`ftsam.config` (typed params), :mod:`ftsam.data`
(uint8 tensor datasets), :mod:`ftsam.models`, :mod:`ftsam.attacks`, :mod:`ftsam.sam`
(adaptive SAM), :mod:`ftsam.train` (the one loop), :mod:`ftsam.defenses`, :mod:`ftsam.metrics`,
:mod:`ftsam.experiment` (what the notebooks call).
"""
from ftsam.config import Config, ConfigError, load_config
from ftsam.experiment import AttackRun, DefenseRun, defend, train_backdoor
from ftsam.datasets_byo import register_dataset
from ftsam.purify import Purified, purify

__version__ = "0.1.0"
__all__ = ["Config", "ConfigError", "load_config", "train_backdoor", "defend", "AttackRun", "DefenseRun",
           "purify", "Purified", "register_dataset"]
