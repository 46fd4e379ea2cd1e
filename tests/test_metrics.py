"""DER against the formula and the paper's Table 1; evaluate() on models whose answers are known."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from ftsam.attacks import build_attack
from ftsam.config import AttackConfig
from ftsam.data import DatasetInfo, ImageSet
from ftsam.metrics import accuracy, der, evaluate


# der(acc_bd, asr_bd, acc_def, asr_def); DER = [max(0, dASR) - max(0, dACC) + 1] / 2 in percent
@pytest.mark.parametrize("args, expected", [
    ((90.0, 100.0, 90.0, 0.0), 100.0),      # ASR removed, ACC kept: (1 - 0 + 1) / 2
    ((90.0, 100.0, 90.0, 100.0), 50.0),     # nothing changes
    ((90.0, 100.0, 80.0, 0.0), 95.0),       # (1 - 0.1 + 1) / 2
    ((90.0, 100.0, 70.0, 40.0), 70.0),      # (0.6 - 0.2 + 1) / 2
    ((100.0, 0.0, 0.0, 100.0), 0.0),        # the worst case: ASR up (ignored), ACC lost entirely
    ((90.0, 10.0, 90.0, 50.0), 50.0),       # an ASR *increase* counts as 0
    ((80.0, 60.0, 75.0, 30.0), 62.5),       # (0.3 - 0.05 + 1) / 2
    # the paper's Table 1, GTSRB BadNets all-to-one: backdoored ACC 96.35, ASR 95.02
    ((96.35, 95.02, 96.36, 0.17), 97.425),  # FT-SAM: (0.9485 - 0 + 1) / 2 -> 97.43 in the table
    ((96.35, 95.02, 97.60, 45.77), 74.625),  # FT: (0.4925 - 0 + 1) / 2 -> 74.63 in the table
])
def test_der_hand_computed(args, expected):
    assert der(*args) == pytest.approx(expected, abs=1e-9)


@pytest.mark.parametrize("args, table", [
    ((96.35, 95.02, 96.36, 0.17), 97.43),
    ((96.35, 95.02, 97.60, 45.77), 74.63),
])
def test_der_matches_the_paper_table(args, table):
    assert abs(der(*args) - table) <= 0.01


def test_acc_gain_does_not_raise_der():
    base = der(90.0, 100.0, 90.0, 20.0)            # (0.8 + 1) / 2 = 90
    assert base == pytest.approx(90.0)
    for acc_def in (90.5, 95.0, 100.0):
        assert der(90.0, 100.0, acc_def, 20.0) == pytest.approx(base)


def test_der_is_bounded():
    for acc_bd, asr_bd, acc_def, asr_def in [(0, 0, 0, 0), (100, 100, 100, 0), (100, 0, 0, 100), (55, 70, 40, 3)]:
        assert 0.0 <= der(acc_bd, asr_bd, acc_def, asr_def) <= 100.0


def test_accuracy():
    assert accuracy(torch.tensor([1, 2, 3, 4]), torch.tensor([1, 2, 0, 0])) == 50.0
    assert accuracy(torch.tensor([], dtype=torch.long), torch.tensor([], dtype=torch.long)) != \
        accuracy(torch.tensor([], dtype=torch.long), torch.tensor([], dtype=torch.long))  # nan


# ---- evaluate ----------------------------------------------------------------------------
C = 10


class Always(nn.Module):
    """Predicts ``label`` for every input."""

    def __init__(self, label: int):
        super().__init__()
        self.label = label

    def forward(self, x):
        out = torch.zeros(len(x), C)
        out[:, self.label] = 1.0
        return out


class ReadsLabel(nn.Module):
    """A perfect clean classifier on images that carry their label in the top-left pixel
    (BadNets stamps the bottom-right corner, so it ignores the trigger)."""

    def forward(self, x):
        label = (x[:, 0, 0, 0] * 255).round().long()
        return nn.functional.one_hot(label, C).float()


def labelled_images(n=100, seed=0) -> ImageSet:
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, C, (n,), generator=g)
    x = torch.randint(0, 256, (n, 1, 16, 16), dtype=torch.uint8, generator=g)
    x[:, 0, 0, 0] = y.to(torch.uint8)
    return ImageSet(x, y)


INFO = DatasetInfo("test", 1, 16, C, (0.5,), (0.5,))


@pytest.mark.parametrize("batch_size", [7, 512])
def test_evaluate_always_target_all2one(batch_size):
    test = labelled_images()
    attack = build_attack(AttackConfig(target=4), INFO)
    m = evaluate(Always(4), test, attack.poison_testset(test), batch_size=batch_size)
    assert m["asr"] == 100.0
    assert m["ra"] == 0.0
    assert m["acc"] == pytest.approx(100.0 * (test.y == 4).float().mean().item())


def test_evaluate_always_target_all2all():
    test = labelled_images()
    attack = build_attack(AttackConfig(mode="all2all"), INFO)
    bd = attack.poison_testset(test)
    m = evaluate(Always(4), test, bd)
    assert m["asr"] == pytest.approx(100.0 * (test.y == 3).float().mean().item())   # (3 + 1) % 10 = 4
    assert m["ra"] == pytest.approx(100.0 * (test.y == 4).float().mean().item())


def test_evaluate_clean_model():
    test = labelled_images()
    attack = build_attack(AttackConfig(target=4), INFO)
    m = evaluate(ReadsLabel(), test, attack.poison_testset(test))
    assert m == {"acc": 100.0, "asr": 0.0, "ra": 100.0}


def test_evaluate_restores_training_mode():
    model = ReadsLabel().train()
    test = labelled_images(20)
    evaluate(model, test, build_attack(AttackConfig(target=4), INFO).poison_testset(test))
    assert model.training
