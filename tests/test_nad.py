"""NAD: the attention map (channel-pooled |f|^p, normalised), a loss that vanishes between
identical models, gradients that reach only the student, the layers it distils, and one run
through the pipeline (cached, with what it found)."""
from __future__ import annotations

import copy
import math

import pytest
import torch

from ftsam import experiment
from ftsam.config import ConfigError, from_dict
from ftsam.defenses.nad import NADStep, attention_loss, attention_map, captured, default_points
from ftsam.models.preact_resnet import PreActResNet18
from ftsam.models.vgg import VGG19BN
from ftsam.train import classification_loss

POINTS = [("layer2", "output"), ("layer3", "output"), ("layer4", "output")]


def tiny(seed=0):
    torch.manual_seed(seed)
    return PreActResNet18(1, 10, (0.5,), (0.5,), width=2)


def test_attention_map_is_channel_pooled_squares_normalised_per_sample():
    f = torch.tensor([[[[1.0, 2.0]], [[-3.0, 0.0]]],          # sample 0: channels (1, 2), (-3, 0)
                      [[[0.0, 0.0]], [[0.0, 5.0]]]])          # sample 1
    a = attention_map(f, p=2.0)
    s = math.sqrt(10.0 ** 2 + 4.0 ** 2)                       # pooled: 1 + 9 = 10, 4 + 0 = 4
    torch.testing.assert_close(a, torch.tensor([[10 / s, 4 / s], [0.0, 1.0]]), atol=1e-6, rtol=1e-5)
    assert attention_map(f, p=1.0)[0, 0] == pytest.approx(4 / math.sqrt(16 + 4), rel=1e-5)   # |1| + |-3|


def test_attention_loss_is_zero_between_identical_models_and_positive_otherwise():
    student, x = tiny(), torch.rand(4, 1, 16, 16)
    teacher = copy.deepcopy(student).eval()
    student.eval()
    with captured(student, POINTS) as s, captured(teacher, POINTS) as t:
        student(x), teacher(x)
    assert [tuple(m.shape[1:]) for m in s] == [(4, 8, 8), (8, 4, 4), (16, 2, 2)] and None not in t
    assert attention_loss(s, t, (500.0, 1000.0, 1000.0)).item() == 0.0
    other = tiny(seed=1).eval()
    with captured(other, POINTS) as o:
        other(x)
    assert attention_loss(s, o, (500.0, 1000.0, 1000.0)).item() > 0.0


def test_the_step_trains_the_student_only_and_its_attention_term_has_a_gradient():
    student, teacher = tiny(), tiny(seed=1)
    frozen = copy.deepcopy(teacher.state_dict())
    before = copy.deepcopy(student.state_dict())
    x, y = torch.rand(8, 1, 16, 16), torch.randint(0, 10, (8,))
    opt = torch.optim.SGD(student.parameters(), lr=0.1)
    grads = []
    step = NADStep(student, opt, classification_loss(), teacher, POINTS, (500.0, 1000.0, 1000.0))
    student.train()
    step(x, y, lambda: grads.append(student.layer2[0].conv1.weight.grad.clone()))
    assert all(p.grad is None for p in teacher.parameters())
    assert all(torch.equal(v, frozen[k]) for k, v in teacher.state_dict().items())   # BN statistics too
    assert not torch.equal(student.layer2[0].conv1.weight, before["layer2.0.conv1.weight"])
    # the same batch with cross-entropy alone gives another gradient: the attention term reaches the student
    ref = copy.deepcopy(student)
    ref.load_state_dict(before)
    ref.train()
    classification_loss()(ref, x, y).backward()
    assert not torch.allclose(grads[0], ref.layer2[0].conv1.weight.grad)


def test_default_layers_are_residual_groups_or_maps_entering_the_last_pooling_stages():
    assert default_points(tiny(), torch.rand(2, 1, 16, 16), 3) == POINTS
    vgg = VGG19BN(1, 10, (0.5,), (0.5,), width=8)
    points = default_points(vgg, torch.rand(2, 1, 16, 16), 3)
    assert all(w == "input" for _, w in points) and len(points) == 3
    with captured(vgg.eval(), points) as maps:
        vgg(torch.rand(2, 1, 16, 16))
    assert [m.shape[-1] for m in maps] == [8, 4, 2]      # 16 -> 8 -> 4 -> 2 -> 1: the 1-pixel ones are skipped


def test_options_are_checked():
    with pytest.raises(ConfigError, match=r"defense\.nad\.layers"):
        from_dict({"defense": {"nad": {"layers": ["layer3"]}}})
    with pytest.raises(ConfigError, match=r"defense\.nad\.teacher_epochs"):
        from_dict({"defense": {"nad": {"teacher_epochs": 0}}})
    assert from_dict({"defense": {"nad": {"layers": ["a", "b"], "betas": [1, 2]}}}).defense.nad.betas == [1, 2]


def test_nad_through_the_pipeline_is_cached_and_reports_its_layers(tmp_path, monkeypatch):
    cfg = from_dict({"data": {"name": "digits", "train_per_class": 10, "test_per_class": 5},
                     "model": {"width": 2}, "attack_train": {"epochs": 1, "batch_size": 32},
                     "defense": {"clean_ratio": 0.5, "train": {"batch_size": 16},
                                 "nad": {"teacher_epochs": 1}}})
    run = experiment.train_backdoor(cfg, cache_dir=tmp_path, device="cpu", progress=False)
    out = experiment.defend(run, "nad", progress=False)
    assert out.found["layers"] == ["layer2:output", "layer3:output", "layer4:output"]
    assert [r["epoch"] for r in out.history] == [0, 1]
    assert not list(run.run_dir.glob("nad-*/*state*"))       # both phases' checkpoints removed when done
    monkeypatch.setattr(NADStep, "__call__", lambda *a, **k: pytest.fail("NAD ran again"))
    again = experiment.defend(run, "nad", progress=False)
    assert again.metrics == out.metrics and again.found == out.found


@pytest.mark.parametrize("nad_lr, expected", [(0.0, 0.05), (0.007, 0.007)])
def test_nad_lr_sets_both_phases_step_and_zero_keeps_the_shared_one(tmp_path, monkeypatch, nad_lr, expected):
    import ftsam.defenses.nad as nad
    seen = []
    real_sgd_step, real_make_optimizer = nad.sgd_step, nad.make_optimizer
    monkeypatch.setattr(nad, "sgd_step", lambda m, cfg, *a, **k: seen.append(("teacher", cfg.lr)) or real_sgd_step(m, cfg, *a, **k))
    monkeypatch.setattr(nad, "make_optimizer", lambda m, cfg: seen.append(("student", cfg.lr)) or real_make_optimizer(m, cfg))
    cfg = from_dict({"data": {"name": "digits", "train_per_class": 10, "test_per_class": 5},
                     "model": {"width": 2}, "attack_train": {"epochs": 1, "batch_size": 32},
                     "defense": {"clean_ratio": 0.5, "train": {"batch_size": 16, "lr": 0.05},
                                 "nad": {"teacher_epochs": 1, "lr": nad_lr}}})
    run = experiment.train_backdoor(cfg, cache_dir=tmp_path, device="cpu", progress=False)
    experiment.defend(run, "nad", progress=False)
    assert seen == [("teacher", expected), ("student", expected)]
    with pytest.raises(ConfigError, match=r"defense\.nad\.lr"):
        from_dict({"defense": {"nad": {"lr": -0.1}}})
