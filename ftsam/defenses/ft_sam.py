"""FT-SAM (Zhu et al., ICCV 2023): fine-tune the backdoored model on the clean subset with
adaptive sharpness-aware minimization. Each step takes two passes (:class:`ftsam.sam.SAM`
holds the perturbation eps = rho T_w^2 g / ||T_w g||, T_w = diag(|w| + eta)):

1. loss and gradient at the weights w;
2. move to the worst case w + eps inside the ellipsoid ||T_w^-1 eps|| <= rho (ascent), take the
   loss and gradient there with BatchNorm's running statistics frozen, come back to w and let
   SGD descend with the gradient found at w + eps.

Large weights are shaken most (T_w scales the ellipsoid by |w|), and those are the neurons a
backdoor leans on, so fine-tuning leaves the backdoor's sharp minimum while clean accuracy,
which sits in a flat one, stays."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ftsam.config import SAMConfig, TrainConfig
from ftsam.defenses.base import FineTuning
from ftsam.sam import SAM, frozen_bn, rho_at
from ftsam.train import Loss, classification_loss, make_optimizer


@dataclass
class SAMStep:
    model: nn.Module
    optimizer: torch.optim.Optimizer
    loss: Loss
    minimizer: SAM
    sam: SAMConfig | None = None      # for a dynamic rho (rho_schedule "lr"): rho follows the learning rate
    base_lr: float = 0.0

    def __call__(self, xb, yb, before_update=None):
        if self.sam is not None and self.sam.rho_schedule != "constant" and self.base_lr:
            lr_factor = self.optimizer.param_groups[0]["lr"] / self.base_lr
            self.minimizer.rho = rho_at(self.sam.rho, lr_factor, self.sam.rho_schedule, self.sam.rho_min)
        loss = self.loss(self.model, xb, yb)
        loss.backward()                               # pass 1: g = grad L(w)
        self.minimizer.ascent_step()                  # w <- w + eps
        with frozen_bn(self.model):
            self.loss(self.model, xb, yb).backward()  # pass 2: grad L(w + eps)
        if before_update is not None:
            before_update()
        self.minimizer.descent_step()                 # w <- w - eps; SGD with grad L(w + eps)
        return loss


def sam_step(model: nn.Module, cfg: TrainConfig, sam: SAMConfig, optimizer: torch.optim.Optimizer | None = None) -> SAMStep:
    """FT-SAM's step with ``cfg``'s optimizer and label-smoothed cross-entropy."""
    optimizer = optimizer or make_optimizer(model, cfg)
    return SAMStep(model, optimizer, classification_loss(cfg.label_smoothing),
                   SAM(optimizer, model, sam.rho, sam.eta, sam.adaptive, sam.perturb), sam, cfg.lr)


class FTSAM(FineTuning):
    name, title = "ft_sam", "FT-SAM"
    Options = SAMConfig

    def step(self, model):
        return sam_step(model, self.cfg.train, self.opts)
