"""Neural Cleanse: the reversed trigger of a BadNets model's target class is the smallest and the
only outlier, a clean model has none; the MAD anomaly index, the tanh parametrisation, the
stamp, the lambda schedule, the unlearning set, resuming by class and the pipeline."""
from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from ftsam import experiment
from ftsam.attacks import build_attack
from ftsam.config import AttackConfig, ConfigError, DataConfig, TrainConfig, from_dict
from ftsam.data import ImageSet, load_dataset, per_class_indices
from ftsam.defenses.base import Context
from ftsam.defenses.nc import (NC, CostSchedule, anomaly_index, flagged_classes, mask_and_pattern, stamp,
                               to_tanh_space, unlearning_set)
from ftsam.metrics import accuracy
from ftsam.train import fit, predict


# ---- the detection on trained models -----------------------------------------------------
def _cnn() -> nn.Module:
    """A small CNN (no BatchNorm) that learns 16x16 digits and a BadNets patch in seconds."""
    return nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(128, 10))


@pytest.fixture(scope="module")
def digits16():
    train, test, info = load_dataset(DataConfig(name="digits", image_size=16))
    clean = train.subset(per_class_indices(train.y, 5, torch.Generator().manual_seed(0)))  # the defender's 50
    return train, test, info, clean


def _train(data: ImageSet) -> nn.Module:
    torch.manual_seed(0)
    model = _cnn()
    fit(model, data, TrainConfig(epochs=12, batch_size=32, lr=0.05, crop_padding=0, hflip=False), seed=0)
    return model


# Faster lambda schedule than the published one (init 1e-3, patience 5, 80 passes), so the search
# converges in 30 passes over 50 images.
FAST = {"epochs": 30, "init_cost": 0.01, "patience": 3, "early_stop_patience": 15}


def _norms(model: nn.Module, clean: ImageSet) -> torch.Tensor:
    nc = NC(from_dict({"defense": {"nc": FAST}}).defense)
    return torch.tensor([r.l1 for r in nc.reverse_all(copy.deepcopy(model), clean, Context(seed=0))])


def test_nc_flags_the_badnets_target_alone(digits16):
    train, test, info, clean = digits16
    attack = build_attack(AttackConfig(name="badnets", target=0), info)
    model = _train(attack.poison_trainset(train, 0).data)
    test_bd = attack.poison_testset(test)
    assert accuracy(predict(model, test_bd.x), test_bd.y_target) > 70      # the backdoor is in
    norms = _norms(model, clean)
    assert int(norms.argmin()) == 0
    assert anomaly_index(norms)[0] > 2 and flagged_classes(norms) == [0]
    assert norms[0] < 0.5 * norms[1:].min()                               # a 3x3 patch vs digit-sized masks


def test_nc_flags_nothing_on_a_clean_model(digits16):
    train, test, info, clean = digits16
    model = _train(train)
    norms = _norms(model, clean)
    assert flagged_classes(norms) == [] and float(anomaly_index(norms).max()) < 2


# ---- the pieces ----------------------------------------------------------------------------
def test_anomaly_index_is_the_deviation_over_1_4826_times_the_mad():
    # median 3, deviations [2, 1, 0, 1, 7], MAD 1 -> index = deviation / 1.4826
    idx = anomaly_index(torch.tensor([1.0, 2.0, 3.0, 4.0, 10.0]))
    torch.testing.assert_close(idx, torch.tensor([2, 1, 0, 1, 7], dtype=torch.float64) / 1.4826)
    assert flagged_classes(torch.tensor([1.0, 2.0, 3.0, 4.0, 10.0])) == []   # 10 is an outlier on the LARGE side
    # An even count: the median is the mean of the middle two, (2.9 + 3.0) / 2 = 2.95 (torch.median would
    # take 2.9); deviations [2.45, .05, .25, .15, .15, .05] have median .15, so class 0 scores 2.45 / (1.4826 * .15).
    norms = torch.tensor([0.5, 3.0, 3.2, 2.8, 3.1, 2.9])
    assert math.isclose(float(anomaly_index(norms)[0]), 2.45 / (1.4826 * 0.15), rel_tol=1e-5)
    assert flagged_classes(norms) == [0]
    assert flagged_classes(norms, threshold=12.0) == []
    assert anomaly_index(torch.tensor([2.0, 2.0, 2.0, 1.0])).tolist() == [0.0, 0.0, 0.0, math.inf]


def test_tanh_parametrisation_stays_in_the_unit_interval_and_inverts():
    v = torch.tensor([0.0, 0.1, 0.5, 0.9, 1.0])
    m, p = mask_and_pattern(to_tanh_space(v), to_tanh_space(v))
    torch.testing.assert_close(m, v, atol=1e-5, rtol=0)
    m, _ = mask_and_pattern(torch.tensor([-50.0, 0.0, 50.0]), torch.zeros(1))
    assert m.tolist() == [0.0, 0.5, 1.0]


def test_stamp_replaces_the_masked_pixels_by_the_pattern_in_every_channel():
    x = torch.rand(2, 3, 4, 4)
    mask = torch.zeros(1, 4, 4)
    mask[0, 3, 3], mask[0, 0, 0] = 1.0, 0.25
    pattern = torch.rand(3, 4, 4)
    out = stamp(x, mask, pattern)
    torch.testing.assert_close(out[:, :, 3, 3], pattern[:, 3, 3].expand(2, 3))
    torch.testing.assert_close(out[:, :, 0, 0], 0.75 * x[:, :, 0, 0] + 0.25 * pattern[:, 0, 0])
    torch.testing.assert_close(out[:, :, 1, 2], x[:, :, 1, 2])


def test_lambda_schedule_follows_the_authors():
    o = NC.Options(init_cost=1e-3, patience=2, cost_multiplier=2.0)
    s = CostSchedule(o)
    s.update(1.0, 5.0)
    assert s.cost == 0.0                       # lambda starts at 0
    s.update(1.0, 5.0)
    assert s.cost == 1e-3                      # ... set after `patience` successful passes
    s.update(1.0, 5.0)
    s.update(1.0, 5.0)
    assert s.cost == 2e-3 and s.went_up        # up by the multiplier
    s.update(0.5, 5.0)
    s.update(0.5, 5.0)
    assert math.isclose(s.cost, 2e-3 / 2 ** 1.5) and s.went_down    # down by multiplier ** 1.5


def test_unlearning_set_stamps_a_share_and_keeps_the_labels():
    data = ImageSet(torch.zeros(10, 1, 4, 4, dtype=torch.uint8), torch.arange(10))
    mask = torch.zeros(1, 4, 4)
    mask[0, 0, 0] = 1.0
    out = unlearning_set(data, [(mask, torch.ones(1, 4, 4))], 0.2, torch.Generator().manual_seed(0))
    changed = (out.x != data.x).flatten(1).any(1)
    assert int(changed.sum()) == 2 and torch.equal(out.y, data.y)
    assert (out.x[changed][:, 0, 0, 0] == 255).all() and int(out.x.sum()) == 2 * 255


def test_options_are_checked():
    with pytest.raises(ConfigError, match=r"defense\.nc\.unlearn_share"):
        from_dict({"defense": {"nc": {"unlearn_share": 0.0}}})
    with pytest.raises(ConfigError, match=r"defense\.nc\.cost_multiplier"):
        from_dict({"defense": {"nc": {"cost_multiplier": 1.0}}})


# ---- resuming and the pipeline -----------------------------------------------------------------
def _tiny_run(tmp_path, nc_options):
    cfg = from_dict({"data": {"name": "digits", "image_size": 8, "train_per_class": 10, "test_per_class": 5},
                     "model": {"width": 2}, "attack_train": {"epochs": 1, "batch_size": 32},
                     "defense": {"clean_ratio": 0.5, "nc": nc_options,
                                 "train": {"epochs": 1, "batch_size": 16, "crop_padding": 0, "hflip": False}}})
    return experiment.train_backdoor(cfg, cache_dir=tmp_path, device="cpu", progress=False)


def test_search_resumes_from_the_classes_it_finished(tmp_path, monkeypatch):
    run = _tiny_run(tmp_path, {"epochs": 1})
    clean = run.clean_train.subset(torch.arange(0, len(run.clean_train), 4))
    nc = NC(run.cfg.defense)
    ctx = Context(seed=0, state_dir=tmp_path / "state")
    first = nc.reverse_all(copy.deepcopy(run.model), clean, ctx)
    assert len(list((tmp_path / "state").glob("nc_state_class*.safetensors"))) == 10
    monkeypatch.setattr("ftsam.defenses.nc.reverse_engineer", lambda *a, **k: pytest.fail("searched again"))
    again = nc.reverse_all(copy.deepcopy(run.model), clean, ctx)
    assert [r.l1 for r in again] == [r.l1 for r in first]
    assert all(torch.equal(a.mask, b.mask) for a, b in zip(again, first))


def test_nc_through_the_pipeline_reports_what_it_found_and_caches(tmp_path, monkeypatch):
    run = _tiny_run(tmp_path, {"epochs": 2, "threshold": 0.01})   # a tiny threshold: something is flagged
    d = experiment.defend(run, "nc", progress=False)
    assert {"masks", "patterns", "l1", "anomaly_index", "flagged"} <= set(d.found)
    assert d.found["masks"].shape == (10, 1, 8, 8) and d.found["patterns"].shape == (10, 1, 8, 8)
    assert len(d.found["l1"]) == 10 and d.found["flagged"] and d.found["mitigated"]
    # NC flags classes, not samples: no precision or recall of "flagged samples" is made up for it
    assert "precision" not in d.metrics and "recall" not in d.metrics
    assert not list(run.run_dir.glob("nc-*/*state*"))          # the per-class files are cleaned up
    monkeypatch.setattr(NC, "run", lambda *a, **k: pytest.fail("the cached result was not reused"))
    again = experiment.defend(run, "nc", progress=False)
    assert again.metrics == d.metrics and again.found["flagged"] == d.found["flagged"]
    assert torch.equal(again.found["masks"], d.found["masks"])


def test_nothing_flagged_returns_the_model_unchanged(tmp_path):
    run = _tiny_run(tmp_path, {"epochs": 1, "threshold": 1e9})
    d = experiment.defend(run, "nc", progress=False)
    assert d.found["flagged"] == [] and not d.found["mitigated"]
    for k, v in run.model.state_dict().items():
        assert torch.equal(d.model.state_dict()[k].cpu(), v.cpu())
