"""FT with an l2 weight penalty: min E[l(f_w(x), y)] + gamma ||w||^2 (supplement eq. 6, the
Table 9 ablation: does a plain penalty on large weights do what FT-SAM does?)."""
from dataclasses import dataclass

from ftsam.config import ConfigError
from ftsam.defenses.base import FineTuning
from ftsam.train import classification_loss, sgd_step


class FTL2(FineTuning):
    name, title = "ft_l2", "FT-l2"

    @dataclass(frozen=True)
    class Options:
        gamma: float = 0.005     # weight of ||w||^2, over every trainable parameter

    @classmethod
    def check_options(cls, opts):
        if not opts.gamma >= 0.0:
            raise ConfigError(f"defense.ft_l2.gamma must be >= 0, got {opts.gamma!r}")

    def step(self, model):
        ce, gamma = classification_loss(self.cfg.train.label_smoothing), self.opts.gamma
        params = [p for p in model.parameters() if p.requires_grad]

        def loss(m, xb, yb):
            return ce(m, xb, yb) + gamma * sum(p.pow(2).sum() for p in params)
        return sgd_step(model, self.cfg.train, loss)
