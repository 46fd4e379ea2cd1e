"""The defense interface: self-filling registry, per-defense options and cache keys, the
threat model (a defense reads only what it declared), steps as the training loop's unit,
any optimizer's state and the global random state (dropout) in a resumable fit."""
from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from torch import nn

from ftsam import defenses, experiment
from ftsam.config import ConfigError, TrainConfig, from_dict
from ftsam.data import ImageSet
from ftsam.defenses.base import Context, Defended, Defense, Given, ThreatModelError, holdout_split
from ftsam.models.vgg import VGG19BN
from ftsam.train import SGDStep, classification_loss, fit

from synthetic import imageset


def test_registry_fills_itself_and_unknown_names_list_it():
    assert {"ft", "ft_sam", "ft_l2"} <= set(defenses.REGISTRY)
    with pytest.raises(ConfigError) as e:
        defenses.defense_class("fine_pruning")
    for name in defenses.REGISTRY:
        assert name in str(e.value)
    d = defenses.describe()
    assert d["ft_sam"]["options"]["rho"] == 2.0 and d["ft_sam"]["given"] == ["model", "clean"]
    assert d["ft_l2"]["options"] == {"gamma": 0.005} and d["ft"]["options"] == {}


def test_each_defense_has_its_own_section_checked_like_every_key():
    cfg = from_dict({"defense": {"ft_sam": {"rho": 4}, "ft_l2": {"gamma": 0.1}}})
    assert cfg.defense.ft_sam.rho == 4.0 and cfg.defense.ft_l2.gamma == 0.1
    assert cfg.defense.options["ft_sam"] is cfg.defense.ft_sam
    with pytest.raises(ConfigError, match=r"defense\.ft_l2\.gamma"):
        from_dict({"defense": {"ft_l2": {"gamma": -1.0}}})
    with pytest.raises(ConfigError, match=r"defense\.ft_sam.*rhoo|rhoo.*defense\.ft_sam"):
        from_dict({"defense": {"ft_sam": {"rhoo": 1.0}}})
    with pytest.raises(ConfigError, match="ft_sam"):        # the old spelling lists the sections there are
        from_dict({"defense": {"sam": {"rho": 1.0}}})
    assert from_dict(cfg.to_dict()) == cfg


def test_cache_key_of_a_defense_ignores_other_defenses_options():
    a = from_dict({})
    b = a.with_overrides({"defense.ft_sam.rho": 7.0})
    key = lambda cfg, name: experiment.stable_hash(defenses.build_defense(name, cfg.defense).cache_inputs(cfg))
    assert key(a, "ft") == key(b, "ft") and key(a, "ft_l2") == key(b, "ft_l2")
    assert key(a, "ft_sam") != key(b, "ft_sam")
    c = a.with_overrides({"defense.train.epochs": 3})
    assert all(key(a, n) != key(c, n) for n in ("ft", "ft_sam", "ft_l2"))


def test_overrides_take_bare_option_names_and_section_keys():
    assert experiment.defense_overrides("ft_sam", {"rho": 3.0, "train.epochs": 2, "clean_ratio": 0.2}) == \
        {"defense.ft_sam.rho": 3.0, "defense.train.epochs": 2, "defense.clean_ratio": 0.2}
    assert experiment.defense_overrides("ft_l2", {"gamma": 0.1}) == {"defense.ft_l2.gamma": 0.1}


# ---- the threat model -------------------------------------------------------------------
def _given(needs, **kw):
    data = imageset(8, 2, 1, 8)
    items = dict(model=nn.Linear(2, 2), clean=data, poisoned=data, new_model=lambda: nn.Linear(2, 2),
                 scratch_train=TrainConfig())
    items.update(kw)
    return Given("probe", needs, **items)


def test_a_clean_data_defense_cannot_read_the_poisoned_set_or_the_test_set():
    g = _given(("model", "clean"))
    assert isinstance(g.model, nn.Linear) and len(g.clean) == 8
    for name in ("poisoned", "new_model", "scratch_train"):
        with pytest.raises(ThreatModelError, match="withholds"):
            getattr(g, name)
    for name in ("test", "test_set", "trigger", "test_bd"):
        with pytest.raises(ThreatModelError, match="no defense is given"):
            getattr(g, name)


def test_a_data_free_defense_is_given_the_model_only():
    g = _given(("model",))
    assert isinstance(g.model, nn.Linear)
    with pytest.raises(ThreatModelError):
        g.clean


def test_a_defense_that_trains_anew_gets_no_backdoored_model():
    g = _given(("poisoned",))
    assert len(g.poisoned) == 8 and isinstance(g.new_model(), nn.Linear)
    with pytest.raises(ThreatModelError):
        g.model
    with pytest.raises(ThreatModelError):
        g.clean


def test_declaring_an_unknown_input_is_an_error():
    with pytest.raises(ConfigError, match="test"):
        _given(("model", "test"))


def test_pipeline_hands_a_defense_only_what_it_declared(tmp_path, monkeypatch):
    """A defense that asks for the poisoned set while declaring clean data fails inside defend()."""
    class Snoop(Defense):
        title = "snoop"
        needs = ("model", "clean")

        def run(self, given, ctx):
            given.poisoned
            return Defended(given.model)
    Snoop.name = "ft"       # borrow a registered name and options section for the pipeline
    monkeypatch.setitem(defenses.REGISTRY, "ft", Snoop)
    cfg = from_dict({"data": {"name": "digits", "train_per_class": 10, "test_per_class": 5},
                     "model": {"width": 2}, "attack_train": {"epochs": 1, "batch_size": 32},
                     "defense": {"clean_ratio": 0.2}})      # 2 clean images a class, the least allowed
    run = experiment.train_backdoor(cfg, cache_dir=tmp_path, device="cpu", progress=False)
    with pytest.raises(ThreatModelError, match="poisoned"):
        experiment.defend(run, "ft", progress=False)


def test_holdout_split_is_per_class_disjoint_and_seeded():
    data = ImageSet(torch.zeros(40, 1, 4, 4, dtype=torch.uint8), torch.arange(40) % 4)
    rest, held = holdout_split(data, 0.2, seed=3)
    assert len(held) == 8 and len(rest) == 32
    assert torch.bincount(held.y).tolist() == [2, 2, 2, 2]
    again = holdout_split(data, 0.2, seed=3)[1]
    assert torch.equal(held.y, again.y)


# ---- steps, optimizer state and random state in fit --------------------------------------
def test_sgd_step_is_one_backward_and_one_update():
    torch.manual_seed(0)
    model = nn.Linear(3, 2)
    ref = copy.deepcopy(model)
    x, y = torch.randn(4, 3), torch.tensor([0, 1, 1, 0])
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    seen = []
    loss = SGDStep(model, opt, classification_loss())(x, y, lambda: seen.append(model.weight.grad.clone()))
    torch.nn.functional.cross_entropy(ref(x), y).backward()
    assert torch.equal(seen[0], ref.weight.grad)
    torch.testing.assert_close(model.weight, ref.weight - 0.1 * ref.weight.grad)
    assert model.weight.grad is None and loss.requires_grad


class _Interrupted(Exception):
    pass


def _stop_at(epoch):
    calls = []

    def ev(m):
        calls.append(1)
        if len(calls) == epoch:
            raise _Interrupted
        return {}
    return ev


def _adam_step(model, cfg):
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    return SGDStep(model, opt, classification_loss())


CFG = TrainConfig(epochs=3, batch_size=16, lr=0.01, crop_padding=1)


def _vgg(seed):
    torch.manual_seed(seed)
    return VGG19BN(1, 4, (0.5,), (0.5,), width=4)     # dropout in its classifier


@pytest.mark.parametrize("adam", [False, True], ids=["sgd", "adam"])
def test_dropout_model_resumes_bitwise_and_repeats_in_one_process(tmp_path, adam):
    data = imageset(48, 4, 1, 16, seed=2)
    step = (lambda m: _adam_step(m, CFG)) if adam else (lambda m: None)
    ref = _vgg(0)
    fit(ref, data, CFG, step(ref), seed=5, progress=False)
    twice = _vgg(0)
    torch.manual_seed(123)                     # whatever the global state was before
    fit(twice, data, CFG, step(twice), seed=5, progress=False)
    ckpt = tmp_path / "s.safetensors"
    first = _vgg(0)
    with pytest.raises(_Interrupted):
        fit(first, data, CFG, step(first), seed=5, evaluate=_stop_at(2), checkpoint=ckpt, progress=False)
    resumed = _vgg(9)
    torch.rand(7)                              # the global state moved on meanwhile
    fit(resumed, data, CFG, step(resumed), seed=5, checkpoint=ckpt, progress=False)
    for (k, a), b, c in zip(ref.state_dict().items(), twice.state_dict().values(), resumed.state_dict().values()):
        assert torch.equal(a, b), k
        assert torch.equal(a, c), k


def test_checkpoint_keeps_adam_state(tmp_path):
    from ftsam.checkpoint import load_train_state, save_train_state
    model = nn.Linear(3, 2)
    opt = torch.optim.Adam(model.parameters(), lr=0.1)
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    save_train_state(tmp_path / "s.safetensors", model, opt, 1, [])
    m2 = nn.Linear(3, 2)
    opt2 = torch.optim.Adam(m2.parameters(), lr=0.1)
    load_train_state(tmp_path / "s.safetensors", m2, opt2)
    for p, q in zip(model.parameters(), m2.parameters()):
        for key in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(opt.state[p][key], opt2.state[q][key]), key


def test_context_fit_checkpoints_only_when_not_watched(tmp_path):
    ctx = Context(seed=0, state_dir=tmp_path)
    assert ctx.state_file("train_state") == tmp_path / "train_state.safetensors"
    watched = Context(seed=0, state_dir=tmp_path, on_update=lambda *a: None)
    assert watched.state_file("train_state") is None


def test_monitor_subset_is_fixed_and_balanced_and_final_metrics_use_the_whole_test_set(tmp_path):
    from ftsam.metrics import evaluate
    cfg = from_dict({"data": {"name": "digits", "train_per_class": 12, "test_per_class": 8},
                     "model": {"width": 2}, "attack_train": {"epochs": 1, "batch_size": 32},
                     "defense": {"clean_ratio": 0.5, "monitor_per_class": 3,
                                 "train": {"epochs": 2, "batch_size": 16, "crop_padding": 0, "hflip": False,
                                           "schedule": "constant"}}})
    run = experiment.train_backdoor(cfg, cache_dir=tmp_path, device="cpu", progress=False)
    test, bd = experiment.monitor_subset(run.test, run.test_bd, 3)
    assert torch.bincount(test.y).tolist() == [3] * 10
    assert torch.bincount(bd.y_true, minlength=10)[1:].tolist() == [3] * 9
    again = experiment.monitor_subset(run.test, run.test_bd, 3)[0]
    assert torch.equal(test.x, again.x)
    r = experiment.defend(run, "ft", progress=False)
    full = evaluate(r.model, run.test, run.test_bd)
    assert {k: r.metrics[k] for k in full} == full
    assert {k: r.history[-1][k] for k in full} == full           # the curve ends at the reported numbers
    # epoch 1's row is the monitor subset's numbers for the model after one epoch (constant lr, so
    # a one-epoch run is the first epoch of the two-epoch one)
    one = experiment.defend(run, "ft", {"train.epochs": 1}, progress=False)
    assert {k: r.history[1][k] for k in full} == evaluate(one.model, test, bd)


@pytest.mark.parametrize("defense", ["ac", "abl"])
def test_a_defense_that_reads_the_poisoned_set_refuses_an_attack_that_poisons_on_the_fly(defense):
    from types import SimpleNamespace

    from ftsam.attacks import attack_class
    from ftsam.config import load_config
    from ftsam.defenses import NotApplicableError
    from ftsam.experiment import defend
    for name in ("wanet", "input_aware"):
        assert attack_class(name).on_the_fly
        run = SimpleNamespace(cfg=load_config(Path(__file__).parents[1] / "params" / "offline.yaml", {"attack.name": name}),
                              attack=attack_class(name))
        with pytest.raises(NotApplicableError, match=f"{defense}.*{name}.*inside the training loop"):
            defend(run, defense)
