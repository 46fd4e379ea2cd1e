"""FT: plain fine-tuning of the backdoored model on the defender's clean subset."""
from ftsam.defenses.base import FineTuning
from ftsam.train import sgd_step


class FT(FineTuning):
    name, title = "ft", "FT"

    def step(self, model):
        return sgd_step(model, self.cfg.train)
