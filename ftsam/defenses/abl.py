"""ABL, Anti-Backdoor Learning (Li et al., "Anti-Backdoor Learning: Training Clean Models on
Poisoned Data", NeurIPS 2021): train a new model on the poisoned set so that the backdoor shows
itself, isolate it and unlearn it.

1. Isolation (``isolation_epochs``): train a fresh model on the poisoned set with the local
   gradient ascent loss LGA = sign(CE - gamma) * CE (``loss: lga``, gamma 0.5): whenever the
   loss falls below gamma the step ascends, so the clean task is held at a loss near gamma while
   the backdoor, learned much faster, falls below it. ``loss: flooding`` is
   |CE - gamma| + gamma (the original code's and BackdoorBench's default). As in the authors'
   code, CE is the mean over the batch.
2. Per-sample cross-entropy of every training sample (eval mode, no augmentation, in batches);
   the lowest ``isolation_ratio`` (1%) are isolated as the suspected poisons.
3. Fine-tuning (``finetune_epochs``): plain CE on the rest; the learning rate drops tenfold at
   ``finetune_drop_epoch`` (the original: 60 epochs, lr 0.1 then 0.01 from epoch 40).
4. Unlearning (``unlearning_epochs``, lr ``unlearning_lr``): gradient ascent (-CE) on the
   isolated samples, without augmentation; the result is the defended model.

One SGD optimizer (momentum, weight decay and batch size of ``given.scratch_train``, the
attack-training settings) runs through all phases, as in the authors' code; isolation and
fine-tuning use the attack training's learning rate and augmentation, with constant rates.
Defaults are the authors' code (bboylyg/ABL): 10 isolation epochs, 60 fine-tuning epochs (drop at
40), 5 unlearning epochs at lr 5e-4 (its first only evaluates). BackdoorBench's: 20 isolation
epochs, 20 unlearning epochs at lr 1e-4, per-sample losses with batch size 1. The authors' code
sorts the losses in descending order and isolates the *highest* (its ``argsort(-losses)``); the
paper, BackdoorBench and this file isolate the lowest.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from ftsam.config import Config, ConfigError
from ftsam.data import ImageSet
from ftsam.defenses.base import Defended, Defense
from ftsam.train import Loss, SGDStep, autocast, classification_loss, make_optimizer


def lga(ce: torch.Tensor, gamma: float) -> torch.Tensor:
    """Local gradient ascent: sign(CE - gamma) * CE (descends above gamma, ascends below it)."""
    return torch.sign(ce - gamma) * ce


def flooding(ce: torch.Tensor, gamma: float) -> torch.Tensor:
    """Flooding: |CE - gamma| + gamma (same gradient as LGA, a loss value that stays positive)."""
    return (ce - gamma).abs() + gamma


def isolation_loss(kind: str, gamma: float) -> Loss:
    """The isolation phase's loss on the batch-mean cross-entropy."""
    wrap = lga if kind == "lga" else flooding

    def loss(model, xb, yb):
        with autocast(xb.device):
            return wrap(F.cross_entropy(model(xb), yb), gamma)
    return loss


def ascent_loss(model: nn.Module, xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
    """-CE: an SGD step on it is a gradient ascent step on the cross-entropy (unlearning)."""
    with autocast(xb.device):
        return -F.cross_entropy(model(xb), yb)


@torch.no_grad()
def per_sample_losses(model: nn.Module, data: ImageSet, device: torch.device, batch_size: int = 256) -> torch.Tensor:
    """Cross-entropy of every sample, in index order (eval mode, no augmentation), float32 on the CPU."""
    was_training = model.training
    model.eval()
    out = []
    for i in range(0, len(data), batch_size):
        xb = data.x[i:i + batch_size].to(device).float().div_(255.0)
        with autocast(device):
            logits = model(xb)
        out.append(F.cross_entropy(logits.float(), data.y[i:i + batch_size].to(device), reduction="none").cpu())
    model.train(was_training)
    return torch.cat(out) if out else torch.empty(0)


def lowest(losses: torch.Tensor, ratio: float) -> torch.Tensor:
    """Indices (sorted) of the ``ratio`` share of samples with the lowest loss (at least one)."""
    k = max(1, int(len(losses) * ratio))
    return torch.sort(torch.argsort(losses, stable=True)[:k]).values


class ABL(Defense):
    name, title = "abl", "ABL"
    needs = ("poisoned",)
    flags_samples = "isolated"

    @dataclass(frozen=True)
    class Options:
        loss: Literal["lga", "flooding"] = "lga"
        gamma: float = 0.5
        isolation_ratio: float = 0.01
        isolation_epochs: int = 10
        finetune_epochs: int = 60
        finetune_drop_epoch: int = 40      # lr / 10 from this fine-tuning epoch on
        unlearning_epochs: int = 5
        unlearning_lr: float = 5e-4

    @classmethod
    def check_options(cls, o):
        def bad(key, why):
            raise ConfigError(f"defense.abl.{key} {why}, got {getattr(o, key)!r}")
        if o.loss not in ("lga", "flooding"):
            bad("loss", "must be one of lga, flooding")
        if not o.gamma > 0.0:
            bad("gamma", "must be > 0")
        if not 0.0 < o.isolation_ratio < 1.0:
            bad("isolation_ratio", "must lie in (0, 1)")
        for key in ("isolation_epochs", "unlearning_epochs"):
            if getattr(o, key) < 1:
                bad(key, "must be >= 1")
        if o.finetune_epochs < 0:
            bad("finetune_epochs", "must be >= 0")
        if not 0 <= o.finetune_drop_epoch <= o.finetune_epochs:
            bad("finetune_drop_epoch", f"must lie in [0, finetune_epochs = {o.finetune_epochs}]")
        if not o.unlearning_lr > 0.0:
            bad("unlearning_lr", "must be > 0")

    def cache_inputs(self, cfg: Config) -> dict:
        # Not the fine-tuning settings or the clean subset (ABL uses neither).
        return {"seed": cfg.seed, "abl": dataclasses.asdict(self.opts),
                "scratch_train": dataclasses.asdict(cfg.attack_train)}

    def run(self, given, ctx):
        o, train, data = self.opts, given.scratch_train, given.poisoned
        model = given.new_model()
        opt = make_optimizer(model, train)                  # one optimizer through all phases
        phases = []

        def phase(name, subset, cfg, loss, desc):
            fitted = ctx.fit(model, subset, cfg, SGDStep(model, opt, loss), desc=desc, state=f"abl_{name}")
            phases.append((name, fitted.history))

        const = dataclasses.replace(train, schedule="constant")
        phase("isolation", data, dataclasses.replace(const, epochs=o.isolation_epochs),
              isolation_loss(o.loss, o.gamma), "ABL: isolation")
        losses = per_sample_losses(model, data, ctx.device)
        isolated = lowest(losses, o.isolation_ratio)
        keep = torch.ones(len(data), dtype=torch.bool)
        keep[isolated] = False
        rest = data.subset(keep.nonzero().flatten())
        ce = classification_loss(train.label_smoothing)
        high, low = o.finetune_drop_epoch, o.finetune_epochs - o.finetune_drop_epoch
        if high:
            phase("finetune", rest, dataclasses.replace(const, epochs=high), ce, "ABL: fine-tuning")
        if low:
            phase("finetune_low", rest, dataclasses.replace(const, epochs=low, lr=train.lr / 10), ce,
                  "ABL: fine-tuning (lr / 10)")
        # The isolated samples as they are (no augmentation), as the authors' unlearning loader.
        unlearn = dataclasses.replace(const, epochs=o.unlearning_epochs, lr=o.unlearning_lr, crop_padding=0,
                                      hflip=False, drop_last=False)
        phase("unlearning", data.subset(isolated), unlearn, ascent_loss, "ABL: unlearning")
        return Defended(model, chain_histories(phases), {"isolated": isolated, "losses": losses})


def chain_histories(phases: list[tuple[str, list[dict]]]) -> list[dict]:
    """The phases' histories as one curve: epochs counted on across phases, each row with its phase."""
    out, offset = [], 0
    for name, history in phases:
        out += [{**row, "epoch": offset + row["epoch"], "phase": name} for row in history]
        offset += len(history)
    return out
