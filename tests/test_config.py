"""Strict params loading: bad input is refused with an error naming the key and the choices."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import yaml

from ftsam.attacks import REGISTRY as ATTACKS
from ftsam.config import (DATASETS, MODELS, Config, ConfigError, DefenseConfig, TrainConfig,
                          from_dict, load_config)

REPO = Path(__file__).resolve().parents[1]
PARAMS = sorted(p for ext in ("yaml", "yml") for p in (REPO / "params").glob(f"**/*.{ext}"))


def write(tmp_path: Path, d: dict, name: str = "p.yaml") -> Path:
    p = tmp_path / name
    p.write_text(yaml.safe_dump(d))
    return p


def error_of(d: dict) -> str:
    with pytest.raises(ConfigError) as e:
        from_dict(d)
    return str(e.value)


# ---- unknown keys -----------------------------------------------------------------------
def test_unknown_top_level_key():
    msg = error_of({"sed": 1})
    assert "sed" in msg
    for k in ("seed", "data", "model", "attack", "attack_train", "defense"):
        assert k in msg


def test_unknown_nested_key():
    msg = error_of({"defense": {"train": {"foo": 1}}})
    assert "defense.train.foo" in msg
    for k in ("epochs", "batch_size", "lr", "schedule", "eval_every"):
        assert k in msg


def test_unknown_section_key():
    msg = error_of({"defense": {"sma": {"rho": 1.0}}})
    assert "defense.sma" in msg and "sam" in msg and "clean_ratio" in msg


def test_unknown_key_error_names_the_file(tmp_path):
    p = write(tmp_path, {"model": {"widht": 8}})
    with pytest.raises(ConfigError) as e:
        load_config(p)
    assert str(p) in str(e.value) and "model.widht" in str(e.value) and "width" in str(e.value)


# ---- values out of range ----------------------------------------------------------------
@pytest.mark.parametrize("rho", [-1, 0, 0.0])
def test_bad_rho(rho):
    msg = error_of({"defense": {"ft_sam": {"rho": rho}}})
    assert "defense.ft_sam.rho" in msg and str(rho) in msg


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_numbers_refused(value):
    assert "defense.ft_sam.rho" in error_of({"defense": {"ft_sam": {"rho": value}}})
    assert "attack_train.lr" in error_of({"attack_train": {"lr": value}})


@pytest.mark.parametrize("ratio", [0, 0.0, 1, 1.5, -0.1])
def test_bad_poison_ratio(ratio):
    msg = error_of({"attack": {"poison_ratio": ratio}})
    assert "attack.poison_ratio" in msg and str(float(ratio)) in msg


@pytest.mark.parametrize("ratio", [0, 1.01])
def test_bad_clean_ratio(ratio):
    assert "defense.clean_ratio" in error_of({"defense": {"clean_ratio": ratio}})


def test_clean_ratio_one_is_fine():
    assert from_dict({"defense": {"clean_ratio": 1}}).defense.clean_ratio == 1.0


@pytest.mark.parametrize("key,value", [
    ("epochs", 0), ("batch_size", -4), ("lr", 0.0), ("momentum", 1.5), ("label_smoothing", 2.0),
    ("weight_decay", -1e-4), ("crop_padding", -1), ("eval_every", 0), ("cosine_t_max", 0)])
def test_bad_train_ranges(key, value):
    for section, d in (("attack_train", {"attack_train": {key: value}}),
                       ("defense.train", {"defense": {"train": {key: value}}})):
        msg = error_of(d)
        assert f"{section}.{key}" in msg and repr(value) in msg


# ---- unknown choices --------------------------------------------------------------------
@pytest.mark.parametrize("section,key,bad,choices", [
    ("attack", "name", "no_such_attack", tuple(ATTACKS)),
    ("data", "name", "imagenet", DATASETS),
    ("model", "name", "resnet50", MODELS),
    ("attack", "mode", "all2some", ("all2one", "all2all")),
    ("attack_train", "schedule", "step", ("cosine", "constant", "cosine_per_iter")),
    ("defense", "clean_sampling", "random", ("balanced", "uniform")),
])
def test_unknown_choice(section, key, bad, choices):
    msg = error_of({section: {key: bad}})
    assert f"{section}.{key}" in msg and bad in msg and "valid choices" in msg
    for c in choices:
        assert c in msg


def test_unknown_sam_perturb():
    msg = error_of({"defense": {"ft_sam": {"perturb": "bias"}}})
    assert "defense.ft_sam.perturb" in msg and "all" in msg and "weights" in msg


# ---- wrong types ------------------------------------------------------------------------
@pytest.mark.parametrize("d,key", [
    ({"attack_train": {"epochs": "ten"}}, "attack_train.epochs"),
    ({"defense": {"train": {"epochs": "ten"}}}, "defense.train.epochs"),
    ({"defense": {"train": {"epochs": 10.5}}}, "defense.train.epochs"),
    ({"seed": True}, "seed"),
    ({"attack_train": {"lr": "0.1"}}, "attack_train.lr"),
    ({"attack_train": {"hflip": "yes"}}, "attack_train.hflip"),
    ({"data": {"root": 3}}, "data.root"),
    ({"data": "digits"}, "data"),
    ({"attack": {"options": [1, 2]}}, "attack.options"),
])
def test_wrong_type(d, key):
    assert key in error_of(d)


def test_wrong_type_message():
    msg = error_of({"attack_train": {"epochs": "ten"}})
    assert "integer" in msg and "'ten'" in msg


def test_top_level_must_be_mapping(tmp_path):
    p = tmp_path / "list.yaml"
    p.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(p)


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")


@pytest.mark.parametrize("text", ["", "\n", "# only a comment\n", "{}\n", "---\n"])
def test_empty_file_is_refused(tmp_path, text):
    """Issue 12: an empty file must not run the library defaults (width 64, 100 epochs)."""
    p = tmp_path / "empty.yaml"
    p.write_text(text)
    with pytest.raises(ConfigError, match="empty") as e:
        load_config(p)
    assert str(p) in str(e.value)


# ---- attack options ---------------------------------------------------------------------
def test_unknown_attack_option():
    msg = error_of({"attack": {"name": "badnets", "options": {"foo": 1}}})
    assert "attack.options.foo" in msg and "badnets" in msg
    assert "patch_size" in msg and "value" in msg


def test_attack_option_checks():
    assert "attack.options.patch_size" in error_of({"attack": {"options": {"patch_size": -1}}})
    assert "attack.options.patch_size" in error_of({"attack": {"options": {"patch_size": "3"}}})
    assert "attack.options.alpha" in error_of({"attack": {"name": "blended", "options": {"alpha": 1.5}}})
    assert "attack.options.image" in error_of({"attack": {"name": "blended", "options": {"image": "/no/such.png"}}})
    cfg = from_dict({"attack": {"name": "blended", "options": {"alpha": 0.2, "image": "flower"}}})
    assert cfg.attack.options == {"alpha": 0.2, "image": "flower"}


def test_options_of_another_attack_refused():
    msg = error_of({"attack": {"name": "badnets", "options": {"alpha": 0.2}}})
    assert "attack.options.alpha" in msg and "patch_size" in msg


# ---- overrides --------------------------------------------------------------------------
def test_overrides_go_through_the_checks(tmp_path):
    p = write(tmp_path, {"seed": 3})
    cfg = load_config(p, overrides={"defense.ft_sam.rho": 4.0, "attack.options.patch_size": 2})
    assert cfg.defense.ft_sam.rho == 4.0 and cfg.attack.options == {"patch_size": 2} and cfg.seed == 3
    with pytest.raises(ConfigError, match="defense.ft_sam.rho"):
        load_config(p, overrides={"defense.ft_sam.rho": -1})
    with pytest.raises(ConfigError, match="attack.options.foo"):
        load_config(p, overrides={"attack.options.foo": 1})


@pytest.mark.parametrize("key,needle", [
    ("defense.rhoo", "valid keys here: clean_ratio"),
    ("defence.sam.rho", "no section 'defence'"),
    ("rho", "valid keys here: seed"),
    ("seed.foo", "no section 'seed'"),            # descending into a value, not a section
    ("data.name.x", "no section 'data.name'"),
    ("defense.train.foo.bar", "no section 'defense.train.foo'"),
])
def test_bad_override_key(tmp_path, key, needle):
    p = write(tmp_path, {"seed": 0})
    with pytest.raises(ConfigError) as e:
        load_config(p, overrides={key: 1})
    msg = str(e.value)
    assert "unknown override key" in msg and needle in msg


def test_bad_override_key_lists_valid_keys(tmp_path):
    p = write(tmp_path, {"seed": 0})
    with pytest.raises(ConfigError) as e:
        load_config(p, overrides={"defense.ft_sam.rhoo": 1.0})
    for k in ("rho", "eta", "adaptive", "perturb"):
        assert k in str(e.value)


def test_overrides_do_not_mutate_defaults():
    base = Config()
    base.with_overrides({"attack.options.patch_size": 2})
    assert base.attack.options == {} and Config().attack.options == {}


# ---- defaults ---------------------------------------------------------------------------
def test_partial_file_fills_defaults(tmp_path):
    p = write(tmp_path, {"seed": 7, "data": {"name": "digits", "image_size": 16}, "model": {"width": 8}})
    cfg = load_config(p)
    assert cfg.seed == 7 and cfg.data.image_size == 16 and cfg.model.width == 8
    assert cfg.model.name == Config().model.name
    assert cfg.attack == Config().attack
    assert cfg.defense == Config().defense
    assert cfg.attack_train == Config().attack_train


def test_nested_defaults_are_kept(tmp_path):
    """defense.train has its own defaults (not TrainConfig's): giving a few keys keeps the rest."""
    p = write(tmp_path, {"defense": {"train": {"epochs": 5, "lr": 0.02}, "ft_sam": {"rho": 1.0}}})
    cfg = load_config(p)
    default = DefenseConfig().train
    assert cfg.defense.train == dataclasses.replace(default, epochs=5, lr=0.02)
    assert cfg.defense.train.label_smoothing == 0.1 and cfg.defense.train.crop_padding == 4
    assert cfg.defense.train.hflip is True and cfg.defense.train.batch_size == 256
    assert cfg.defense.ft_sam.adaptive is True and cfg.defense.ft_sam.rho == 1.0
    assert cfg.defense.clean_ratio == DefenseConfig().clean_ratio
    # attack_train's defaults likewise differ from TrainConfig()'s
    p2 = write(tmp_path, {"attack_train": {"epochs": 3}}, "p2.yaml")
    at = load_config(p2).attack_train
    assert at == dataclasses.replace(Config().attack_train, epochs=3)
    assert at.crop_padding == 4 and at.hflip is True and at != dataclasses.replace(TrainConfig(), epochs=3)


def test_ints_accepted_for_floats(tmp_path):
    cfg = load_config(write(tmp_path, {"defense": {"ft_sam": {"rho": 2}}}))
    assert isinstance(cfg.defense.ft_sam.rho, float) and cfg.defense.ft_sam.rho == 2.0


def test_round_trip_through_dict():
    cfg = from_dict({"seed": 1, "defense": {"train": {"epochs": 3}}, "attack": {"options": {"patch_size": 2}}})
    assert from_dict(cfg.to_dict()) == cfg


# ---- digest -----------------------------------------------------------------------------
def test_digest_stable_and_sensitive(tmp_path):
    p = write(tmp_path, {"seed": 1, "defense": {"ft_sam": {"rho": 2.0}}})
    a, b = load_config(p), load_config(p)
    assert a.digest() == b.digest() and len(a.digest()) == 16
    assert a.digest("attack", "data") == b.digest("attack", "data")
    # the same values written in another order or spelling give the same digest
    p2 = tmp_path / "q.yaml"
    p2.write_text("defense:\n  ft_sam:\n    rho: 2\nseed: 1\n")
    assert load_config(p2).digest() == a.digest()
    c = a.with_overrides({"defense.ft_sam.rho": 3.0})
    assert c.digest() != a.digest()
    assert c.digest("attack", "data", "model") == a.digest("attack", "data", "model")
    assert c.digest("defense") != a.digest("defense")
    assert a.with_overrides({"attack.options.patch_size": 2}).digest("attack") != a.digest("attack")


# ---- the shipped params files -----------------------------------------------------------
@pytest.mark.parametrize("path", PARAMS, ids=[str(p.relative_to(REPO)) for p in PARAMS])
def test_shipped_params_load(path):
    cfg = load_config(path)
    assert isinstance(cfg, Config)


def test_there_are_shipped_params():
    assert (REPO / "params" / "offline.yaml") in PARAMS


# ---- per-attack settings ----------------------------------------------------------------
@pytest.mark.parametrize("settings, needle", [
    ({"nope": {}}, "attack_settings.nope: attack.name: unknown attack 'nope'; valid choices: badnets"),
    ({"wanet": {"attack_train.epochs": 0}}, "attack_settings.wanet: attack_train.epochs must be >= 1"),
    ({"wanet": {"defense.train.lr": 1.0}}, "attack_settings.wanet: key 'defense.train.lr' is not allowed"),
    ({"wanet": {"attack.name": "sig"}}, "key 'attack.name' is not allowed"),
    ({"wanet": {"attack.options": {"zz": 1}}}, "unknown key attack.options.zz for attack 'wanet'; valid keys: k"),
    ({"wanet": 3}, "attack_settings.wanet must be a mapping"),
])
def test_bad_attack_settings(settings, needle):
    assert needle in error_of({"attack_settings": settings})


def test_attack_settings_apply_only_to_their_attack():
    from ftsam.experiment import with_attack
    cfg = from_dict({"attack_settings": {"wanet": {"attack_train.epochs": 7, "attack.options": {"s": 0.75}},
                                         "sig": {"attack.poison_ratio": 0.05}}})
    wanet = with_attack(cfg, "wanet")
    assert wanet.attack.name == "wanet" and wanet.attack_train.epochs == 7 and wanet.attack.options == {"s": 0.75}
    sig = with_attack(cfg, "sig")
    assert sig.attack.poison_ratio == 0.05 and sig.attack_train.epochs == cfg.attack_train.epochs
    badnets = with_attack(cfg, "badnets-a2a")
    assert badnets.attack_train == cfg.attack_train and badnets.attack.poison_ratio == cfg.attack.poison_ratio
    assert cfg.attack_train.epochs != 7      # the sections of the file itself are untouched
