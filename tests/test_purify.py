"""ftsam.purify: a defense on a model and clean data the user brings. Its defining property: on the
same model, clean data and seed it gives exactly the weights ftsam.defend gives, whatever form
the data come in and whatever the model is (ftsam's, torchvision's, one without BatchNorm)."""
from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
import torchvision
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import ftsam
from ftsam import experiment
from ftsam.config import ConfigError, from_dict
from ftsam.data import clean_subset
from ftsam.datasets_byo import DatasetError
from ftsam.models import Normalize

pytestmark = pytest.mark.usefixtures("one_thread")
EPOCHS = {"epochs": 2, "batch_size": 16}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    cfg = from_dict({"data": {"name": "digits", "train_per_class": 20, "test_per_class": 5},
                     "model": {"width": 4},
                     "attack_train": {"epochs": 6, "batch_size": 32, "lr": 0.05, "crop_padding": 0, "hflip": False},
                     "defense": {"clean_ratio": 0.25, "train": {"crop_padding": 1, "hflip": False}}})
    return experiment.train_backdoor(cfg, cache_dir=tmp_path_factory.mktemp("runs"), device="cpu", progress=False)


def _clean(run):
    d = run.cfg.defense
    return run.clean_train.subset(clean_subset(run.clean_train, d.clean_ratio, run.cfg.seed, d.clean_sampling == "balanced"))


def _same_weights(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def _small_cnn(channels=1, classes=10):
    """A CNN without BatchNorm that ftsam did not build (normalizes its own input)."""
    torch.manual_seed(1)
    return nn.Sequential(Normalize((0.5,) * channels, (0.5,) * channels),
                         nn.Conv2d(channels, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 8, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(32, classes))


def _resnet18(channels=1, classes=10):
    """torchvision's ResNet-18 with its stem and head adapted to small one-channel images."""
    torch.manual_seed(2)
    m = torchvision.models.resnet18(weights=None, num_classes=classes)
    m.conv1 = nn.Conv2d(channels, 64, 3, 1, 1, bias=False)
    m.maxpool = nn.Identity()
    return m


@pytest.mark.parametrize("defense", ["ft_sam", "ft"])
def test_purify_equals_defend_on_the_same_model_data_and_seed(run, tmp_path, defense):
    by_defend = experiment.defend(dataclasses.replace(run, run_dir=tmp_path), defense,
                                  {f"train.{k}": v for k, v in EPOCHS.items()}, progress=False)
    out = ftsam.purify(run.model, _clean(run), defense=defense, settings=run.cfg, seed=run.cfg.seed,
                       test=run.test, trigger=run.attack, **EPOCHS)
    assert _same_weights(out.model, by_defend.model)
    assert not _same_weights(out.model, run.model)                    # it did fine-tune (a copy)
    for k in ("acc", "asr", "ra", "der"):
        want = by_defend.metrics[k]
        got = out.metrics["der"] if k == "der" else out.metrics["after"][k]
        assert got == pytest.approx(want)
    assert out.metrics["before"] == pytest.approx(run.metrics)
    assert out.report["options"]["train"]["epochs"] == 2 and len(out.history) == 2


@pytest.fixture(scope="module")
def reference(run):
    clean = _clean(run)
    return ftsam.purify(run.model, (clean.x, clean.y), settings=run.cfg, **EPOCHS).model


@pytest.mark.parametrize("form", ["float_tensors", "numpy", "dataset", "dataloader", "pil_dataset"])
def test_every_input_form_gives_the_same_result(run, reference, form):
    clean = _clean(run)
    x01 = clean.x.float() / 255
    if form == "float_tensors":
        data = (x01, clean.y)
    elif form == "numpy":
        data = (clean.x.numpy(), clean.y.numpy())
    elif form == "dataset":
        data = TensorDataset(x01, clean.y)
    elif form == "dataloader":
        data = DataLoader(TensorDataset(x01, clean.y), batch_size=7, shuffle=False)
    else:
        from PIL import Image
        data = [(Image.fromarray(x[0].numpy()), int(y)) for x, y in zip(clean.x, clean.y)]
    got = ftsam.purify(run.model, data, settings=run.cfg, **EPOCHS).model
    assert _same_weights(got, reference)


def test_a_model_without_batchnorm_ftsam_did_not_build(run, tmp_path):
    """A CNN without BatchNorm, in eval mode: purify leaves the user's model alone, gives the
    result back in eval mode, and agrees with ftsam.defend on an AttackRun holding that model."""
    user = _small_cnn().eval()
    kept = copy.deepcopy(user.state_dict())
    out = ftsam.purify(user, _clean(run), settings=run.cfg, test=run.test, **EPOCHS)
    assert not out.model.training and not user.training
    assert all(torch.equal(v, user.state_dict()[k]) for k, v in kept.items())
    assert not _same_weights(out.model, user)
    assert set(out.metrics["after"]) == {"acc"}                       # a test set without trigger: ACC only
    foreign = dataclasses.replace(run, model=user, run_dir=tmp_path)
    by_defend = experiment.defend(foreign, "ft_sam", {f"train.{k}": v for k, v in EPOCHS.items()}, progress=False)
    assert _same_weights(out.model, by_defend.model)


def test_torchvision_resnet18_adapted_to_the_data(run):
    user = _resnet18().eval()
    kept = copy.deepcopy(user.state_dict())
    clean = _clean(run).subset(torch.arange(0, 50, 3))
    out = ftsam.purify(user, clean, settings=run.cfg, epochs=1, batch_size=17)
    assert not out.model.training and len(out.history) == 1
    assert all(torch.equal(v, user.state_dict()[k]) for k, v in kept.items())
    changed = [k for k, v in out.model.state_dict().items() if not torch.equal(v, kept[k])]
    assert "conv1.weight" in changed and "fc.weight" in changed and "bn1.running_mean" in changed


def test_train_mode_is_kept_and_report_says_what_was_measured(run):
    user = copy.deepcopy(run.model).train()
    out = ftsam.purify(user, _clean(run), settings=run.cfg, **EPOCHS)
    assert out.model.training
    assert set(out.metrics["after"]) == {"clean_data_acc"} and "training accuracy" in out.report["measured_on"]
    assert out.report["defense"] == "ft_sam" and out.report["seconds"] > 0


def test_a_trigger_function_and_a_poisoned_test_set_measure_the_same(run):
    """A trigger given as a function (with its target) is measured as the attack's own test set."""
    one = {"epochs": 1, "batch_size": 32}
    a = ftsam.purify(run.model, _clean(run), settings=run.cfg, test=run.test, trigger=run.attack.trigger,
                     target=run.cfg.attack.target, **one)
    bd = run.test_bd
    b = ftsam.purify(run.model, _clean(run), settings=run.cfg, test=run.test,
                     poisoned_test=(bd.x, bd.y_target, bd.y_true), **one)
    for when in ("before", "after"):
        assert a.metrics[when] == pytest.approx(b.metrics[when])
    c = ftsam.purify(run.model, _clean(run), settings=run.cfg, test=run.test, poisoned_test=(bd.x, bd.y_target),
                     **one)
    assert "ra" not in c.metrics["after"] and c.metrics["after"]["asr"] == pytest.approx(a.metrics["after"]["asr"])


def test_settings_by_name_and_options_checked_like_a_params_file(run, tmp_path):
    out = ftsam.purify(run.model, _clean(run), settings="cifar10-preactresnet18", epochs=1, batch_size=64,
                       hflip=False, crop_padding=0)
    opts = out.report["options"]
    assert opts["ft_sam"]["rho"] == 2.0 and opts["train"]["eval_every"] == 5 and opts["train"]["label_smoothing"] == 0.1
    assert ftsam.purify(run.model, _clean(run), epochs=1, rho=3.0, **{"ft_sam.eta": 0.01}).report["options"]["ft_sam"] \
        == {"rho": 3.0, "eta": 0.01, "adaptive": True, "perturb": "all", "rho_schedule": "constant", "rho_min": 0.0}
    with pytest.raises(ConfigError, match="unknown option 'rhoo'.*valid: rho, eta"):
        ftsam.purify(run.model, _clean(run), rhoo=1.0)
    with pytest.raises(ConfigError, match="defense.ft_sam.rho must be > 0"):
        ftsam.purify(run.model, _clean(run), rho=-1.0)
    with pytest.raises(ConfigError, match="unknown defense 'sam'"):
        ftsam.purify(run.model, _clean(run), defense="sam")
    with pytest.raises(ConfigError, match="settings: unknown name 'cifar11'; valid: .*robust/digits_simple_cnn"):
        ftsam.purify(run.model, _clean(run), settings="cifar11")
    with pytest.raises(ConfigError, match="unknown name '../params/offline'"):    # a name, not a path out
        ftsam.purify(run.model, _clean(run), settings="../params/offline")


def test_robust_settings_by_name_are_their_params_files_defense_step(run):
    """settings="robust/<name>" starts from params/robust/<name>.yaml's defender's step (issue 11):
    the small CNN's clipped update, VGG19-BN's decayed lr 0.03 at rho 2."""
    from ftsam.config import load_config
    from ftsam.purify import PARAMS_DIR, named_settings
    names = named_settings()
    assert {"robust/digits_simple_cnn", "robust/digits_vgg19_bn", "cifar10-vgg19_bn", "offline"} <= set(names)
    for name in ("robust/digits_simple_cnn", "robust/digits_vgg19_bn"):
        want = load_config(PARAMS_DIR / f"{name}.yaml").defense
        opts = ftsam.purify(run.model, _clean(run), settings=name, epochs=1).report["options"]
        assert opts["ft_sam"] == want.section("ft_sam")["ft_sam"]
        short = ("epochs", "warmup_epochs")          # epochs=1 here; a shorter run warms up over all of it (below)
        assert {k: v for k, v in opts["train"].items() if k not in short} == \
            {k: v for k, v in want.section("ft_sam")["train"].items() if k not in short}
    vgg = load_config(PARAMS_DIR / "robust/digits_vgg19_bn.yaml").defense    # not the loop's last value
    assert vgg.train.lr == 0.03 and vgg.train.schedule == "cosine" and vgg.ft_sam.rho == 2.0
    assert vgg.train.warmup_epochs == 5


def test_a_run_shorter_than_the_settings_warmup_warms_up_over_all_of_it(run):
    """robust/digits_vgg19_bn warms up over 5 epochs: epochs=1 runs (warming up over that one
    epoch) instead of failing on warmup_epochs, a key the caller never set; an explicit warmup
    longer than the run is still an error naming the key."""
    r = ftsam.purify(run.model, _clean(run), settings="robust/digits_vgg19_bn", epochs=1)
    assert r.report["options"]["train"]["warmup_epochs"] == 1
    r = ftsam.purify(run.model, _clean(run), settings="robust/digits_vgg19_bn", epochs=8)
    assert r.report["options"]["train"]["warmup_epochs"] == 5
    with pytest.raises(ConfigError, match="defense.train.warmup_epochs"):
        ftsam.purify(run.model, _clean(run), settings="robust/digits_vgg19_bn", epochs=2, warmup_epochs=3)


def test_bad_data_are_clear_errors(run):
    clean = _clean(run)
    x01 = clean.x.float() / 255
    flat = DataLoader(TensorDataset(x01.flatten(1), clean.y), batch_size=8)
    with pytest.raises(DatasetError, match=r"batch 0 of the DataLoader has images \(8, 64\)"):
        ftsam.purify(run.model, flat)
    with pytest.raises(DatasetError, match=r"model cannot take these images \(\(3, 8, 8\)"):
        ftsam.purify(run.model, (clean.x.repeat(1, 3, 1, 1), clean.y))
    with pytest.raises(DatasetError, match=r"float images must lie in \[0, 1\]"):
        ftsam.purify(run.model, ((x01 - 0.5) / 0.5, clean.y))
    with pytest.raises(DatasetError, match="labels go up to 12 but the model gives 10"):
        ftsam.purify(run.model, (clean.x, clean.y + 3))
    with pytest.raises(DatasetError, match="item 3 of the Dataset"):
        ftsam.purify(run.model, [(x, int(y)) for x, y in zip(x01[:3], clean.y)] + [(x01[0, :, :4], 0)])


def test_a_defense_given_the_poisoned_set_gets_it_and_a_fresh_model(run, monkeypatch):
    from ftsam import defenses
    from ftsam.defenses.base import Defended, Defense
    seen = {}

    class Retrain(Defense):
        title = "retrain"
        needs = ("model", "clean", "poisoned")

        def run(self, given, ctx):
            seen["poisoned"], fresh = given.poisoned, given.new_model()
            seen["fresh_differs"] = not _same_weights(fresh, given.model)
            return Defended(fresh, found={"flagged": [1, 2]})
    Retrain.name = "ft"           # borrow a registered name and options section
    monkeypatch.setitem(defenses.REGISTRY, "ft", Retrain)
    with pytest.raises(ConfigError, match="poisoned training set.*pass poisoned="):
        ftsam.purify(run.model, _clean(run), defense="ft")
    data = run.poisoned.data
    out = ftsam.purify(run.model, _clean(run), defense="ft", poisoned=(data.x, data.y))
    assert torch.equal(seen["poisoned"].x, data.x) and seen["fresh_differs"] and out.found == {"flagged": [1, 2]}


def test_a_fine_tuning_that_breaks_the_model_is_warned_about(run):
    """The report holds the accuracy on the defender's clean images before and after; a step so
    large that the model ends far below where it started on its own training images (lr 30) warns
    with CollapseWarning naming both numbers, and an ordinary run does not warn."""
    import warnings

    from ftsam.purify import COLLAPSE_POINTS, CollapseWarning
    clean = _clean(run)
    with warnings.catch_warnings():
        warnings.simplefilter("error", CollapseWarning)
        ok = ftsam.purify(run.model, (clean.x, clean.y), progress=False, **EPOCHS)
    c = ok.report["clean"]
    assert c["acc_before"] - c["acc_after"] <= COLLAPSE_POINTS
    with pytest.warns(CollapseWarning, match=r"from \d+\.\d% to \d+\.\d%") as rec:
        broken = ftsam.purify(run.model, (clean.x, clean.y), progress=False, lr=30.0, **EPOCHS)
    c = broken.report["clean"]
    assert c["acc_before"] - c["acc_after"] > COLLAPSE_POINTS
    assert f"{c['acc_after']:.1f}%" in str(rec[0].message)
