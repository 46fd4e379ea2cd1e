"""The attack table of notebook 09: what it trains, and the bounds its status checks."""
from __future__ import annotations

from types import SimpleNamespace

import pytest

from ftsam import experiment
from ftsam.config import from_dict


def fake_table(bd: dict, sam: dict, clean_acc: float) -> experiment.AttackTable:
    run = SimpleNamespace(metrics=bd)
    return experiment.AttackTable(cfg=None, runs={"a": run},
                                  results={"a": {"ft_sam": SimpleNamespace(metrics=sam)}}, clean_acc=clean_acc)


@pytest.mark.parametrize("bd,sam,clean,implanted,removed", [
    ({"acc": 97.0, "asr": 85.0}, {"acc": 92.0, "asr": 10.0}, 100.0, True, True),     # every bound met exactly
    ({"acc": 96.9, "asr": 99.0}, {"acc": 95.0, "asr": 0.0}, 100.0, False, True),     # ACC 3.1 below clean
    ({"acc": 99.0, "asr": 84.9}, {"acc": 99.0, "asr": 0.0}, 100.0, False, True),     # ASR just short
    ({"acc": 99.0, "asr": 99.0}, {"acc": 93.9, "asr": 1.0}, 100.0, True, False),     # FT-SAM loses 5.1
    ({"acc": 99.0, "asr": 99.0}, {"acc": 98.0, "asr": 10.1}, 100.0, True, False),    # backdoor left
])
def test_status_bounds(bd, sam, clean, implanted, removed):
    assert fake_table(bd, sam, clean).status()["a"] == {"implanted": implanted, "removed": removed}


def test_status_takes_other_bounds():
    t = fake_table({"acc": 90.0, "asr": 60.0}, {"acc": 80.0, "asr": 20.0}, 95.0)
    assert t.status()["a"] == {"implanted": False, "removed": False}
    assert t.status(implant_asr=50, implant_acc_gap=5, removed_asr=20, removed_acc_loss=10)["a"] == \
        {"implanted": True, "removed": True}


def test_attack_table_on_a_tiny_setting(tmp_path, monkeypatch):
    cfg = from_dict({"seed": 0, "data": {"name": "digits", "train_per_class": 20, "test_per_class": 10},
                     "model": {"name": "preactresnet18", "width": 2},
                     "attack_train": {"epochs": 1, "batch_size": 32, "lr": 0.05},
                     "attack_settings": {"sig": {"attack.poison_ratio": 0.05}},
                     "defense": {"clean_ratio": 0.5, "train": {"epochs": 1, "batch_size": 32}}})
    t = experiment.attack_table(cfg, ["badnets-a2o", "badnets-a2a", "sig"], cache_dir=tmp_path, device="cpu")
    assert list(t.runs) == list(t.results) == ["BadNets-A2O", "BadNets-A2A", "SIG"]
    assert t.runs["SIG"].cfg.attack.poison_ratio == 0.05          # the attack's own settings applied
    assert t.runs["BadNets-A2A"].cfg.attack.mode == "all2all"
    assert all(set(r) == {"ft", "ft_sam"} for r in t.results.values())
    assert len(t.runs["SIG"].test) == 100 and 0.0 <= t.clean_acc <= 100.0
    assert set(t.status()) == set(t.runs)
    # a second table on the same cache trains nothing again

    def no_training(*_a, **_kw):
        raise AssertionError("a cached run was trained again")
    monkeypatch.setattr(experiment, "fit", no_training)
    again = experiment.attack_table(cfg, ["sig"], cache_dir=tmp_path, device="cpu")
    assert again.runs["SIG"].metrics == t.runs["SIG"].metrics and again.clean_acc == t.clean_acc


def test_summary_is_plain_data():
    t = fake_table({"acc": 99.0, "asr": 98.0}, {"acc": 98.0, "asr": 1.0}, 100.0)
    assert t.summary() == {"a": {"backdoored": {"acc": 99.0, "asr": 98.0}, "clean_acc": 100.0,
                                 "ft_sam": {"acc": 98.0, "asr": 1.0}}}
