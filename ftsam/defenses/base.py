"""The defense interface: a backdoored model plus the defender's clean subset in, a
defended model out. The fine-tuning defenses share :func:`ftsam.train.fit` and differ only
in what they pass to it (:meth:`Defense.fit_options`)."""
from __future__ import annotations

from typing import Callable, ClassVar

from torch import nn

from ftsam.config import DefenseConfig
from ftsam.data import ImageSet
from ftsam.train import FitResult, fit


class Defense:
    name: ClassVar[str]
    title: ClassVar[str]

    def __init__(self, cfg: DefenseConfig):
        self.cfg = cfg

    def fit_options(self) -> dict:
        """What this defense adds to the shared fine-tuning loop."""
        return {}

    def run(self, model: nn.Module, clean: ImageSet, *, seed: int, device="cpu",
            evaluate: Callable[[nn.Module], dict] | None = None, checkpoint=None,
            progress: bool | None = None, on_update=None) -> FitResult:
        """Defend ``model`` in place on ``clean``; return the per-epoch history."""
        return fit(model, clean, self.cfg.train, seed=seed, device=device, evaluate=evaluate,
                   checkpoint=checkpoint, on_update=on_update, desc=self.title, progress=progress,
                   **self.fit_options())
