"""The paper's metrics, all in percent.

- ACC: accuracy on the clean test set.
- ASR: share of triggered test images classified as the attack's target, over the test images
  whose label the attack changes (all-to-one: those not of the target class).
- RA: accuracy of those same triggered images against their true labels.
- DER = [max(0, ASR_bd - ASR_def) - max(0, ACC_bd - ACC_def) + 1] / 2, computed on fractions and
  reported in percent (so 50 means no change and 100 a perfect defense).
"""
from __future__ import annotations

import torch
from torch import nn

from ftsam.attacks.base import PoisonedTestSet
from ftsam.data import ImageSet
from ftsam.train import predict


def accuracy(pred: torch.Tensor, y: torch.Tensor) -> float:
    return 100.0 * (pred == y).float().mean().item() if len(y) else float("nan")


def evaluate(model: nn.Module, test: ImageSet, test_bd: PoisonedTestSet, device="cpu", batch_size: int = 512) -> dict:
    """ACC, ASR and RA of ``model`` (percent)."""
    pred_clean = predict(model, test.x, batch_size, device)
    pred_bd = predict(model, test_bd.x, batch_size, device)
    return {"acc": accuracy(pred_clean, test.y),
            "asr": accuracy(pred_bd, test_bd.y_target),
            "ra": accuracy(pred_bd, test_bd.y_true)}


def der(acc_bd: float, asr_bd: float, acc_def: float, asr_def: float) -> float:
    """Defense effectiveness rating in percent, from metrics given in percent."""
    gain = max(0.0, asr_bd - asr_def) / 100.0
    loss = max(0.0, acc_bd - acc_def) / 100.0
    return 100.0 * (gain - loss + 1.0) / 2.0
