"""The robustness suite's variant family (cheap: no training) and its summary."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from ftsam.attacks import build_attack
from ftsam.config import Config
from ftsam.data import DatasetInfo
from ftsam.robustness import PUBLISHED, summarize, variant_family

REPO = Path(__file__).resolve().parent.parent


def info(size=16, classes=10):
    return DatasetInfo("test", 1, size, classes, (0.5,), (0.25,))


def test_seeded_and_at_least_twenty():
    a, b, c = variant_family(info(), seed=0), variant_family(info(), seed=0), variant_family(info(), seed=1)
    assert a == b and a != c
    assert len(a) >= 20 and len({v.label for v in a}) == len(a)


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("size, classes", [(16, 10), (28, 10), (32, 43)])
def test_ranges_respected_and_every_variant_is_a_valid_config(seed, size, classes):
    fam = variant_family(info(size, classes), seed=seed, n=30)
    kinds = [v.overrides["attack.name"] for v in fam]
    assert kinds.count("badnets") == 18 and kinds.count("blended") == 12
    for v in fam:
        ov = v.overrides
        assert 0 <= ov["attack.target"] < classes
        assert 0.01 <= ov["attack.poison_ratio"] <= 0.10
        opts = ov["attack.options"]
        if ov["attack.name"] == "badnets":
            assert 2 <= opts["patch_size"] <= 5
            assert opts["pattern"] in ("white", "checkerboard", "random")
            if isinstance(opts["position"], list):
                assert all(0 <= x <= size - opts["patch_size"] for x in opts["position"])
        else:
            assert 0.1 <= opts["alpha"] <= 0.2
        cfg = Config().with_overrides(ov)          # a valid config: checks keys and values
        build_attack(cfg.attack, info(size, classes))


def test_family_varies_what_it_should():
    fam = variant_family(info(), seed=0, n=40)
    bad = [v.overrides for v in fam if v.overrides["attack.name"] == "badnets"]
    assert len({o["attack.target"] for o in bad}) > 3
    assert len({o["attack.options"]["patch_size"] for o in bad}) == 4
    assert len({o["attack.options"]["pattern"] for o in bad}) == 3
    assert any(isinstance(o["attack.options"]["position"], list) for o in bad)
    assert any(isinstance(o["attack.options"]["position"], str) for o in bad)


def test_published_attacks_take_their_settings():
    fam = variant_family(info(), n=0, published=PUBLISHED, attack_settings={"wanet": {"attack_train.epochs": 100}})
    assert [v.label for v in fam] == [f"published {s}" for s in PUBLISHED]
    by = {v.label: v.overrides for v in fam}
    assert by["published badnets-a2a"]["attack.mode"] == "all2all"
    assert by["published wanet"]["attack_train.epochs"] == 100


def test_summarize_excludes_variants_that_did_not_implant():
    rows = [{"label": "a", "implanted": True, "FT-SAM asr": 5.0, "FT-SAM acc_loss": 1.0},
            {"label": "b", "implanted": True, "FT-SAM asr": 30.0, "FT-SAM acc_loss": 3.0},
            {"label": "c", "implanted": False, "FT-SAM asr": 0.0, "FT-SAM acc_loss": 9.0}]
    s = summarize(rows, "FT-SAM")
    assert s["implanted"] == 2 and s["excluded"] == ["c"]
    assert s["removed_share"] == 0.5 and s["median_acc_loss"] == 2.0 and s["max_acc_loss"] == 3.0
    assert s["over_5_points"] == 0


def test_recorded_rows_load_with_the_last_row_of_a_variant_winning_and_bad_lines_named(tmp_path):
    from ftsam.robustness import load_rows, rows_table
    row = {"label": "v00 badnets", "implanted": True, "bd_acc": 99.0, "bd_asr": 100.0,
           "FT acc": 98.0, "FT asr": 50.0, "FT acc_loss": 1.0, "FT-SAM acc": 97.0, "FT-SAM asr": 1.0, "FT-SAM acc_loss": 2.0}
    path = tmp_path / "suite.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in (row, {**row, "label": "v01 blended"},
                                                        {**row, "FT-SAM asr": 3.0})) + "\n")
    rows = load_rows(path)
    assert [r["label"] for r in rows] == ["v00 badnets", "v01 blended"] and rows[0]["FT-SAM asr"] == 3.0
    assert "98.0/50.0" in rows_table(rows, ["FT", "FT-SAM"])
    path.write_text(json.dumps(row) + "\n{not json\n")
    with pytest.raises(ValueError, match=r"suite.jsonl, line 2"):
        load_rows(path)


def test_suite_command_pairs_each_defender_setting_with_its_file(tmp_path, monkeypatch):
    """Two settings on one command: each variant is trained once, and each setting's FT/FT-SAM
    columns land unsuffixed in its own file; a count mismatch is refused, naming both options."""
    import benchmarks.robustness_suite as cli
    import ftsam.robustness as rob
    seen = {}

    def fake_run_suite(cfg, variants, defenses, cache_dir, device, log, defend_all):
        seen["defenses"] = defenses
        rows = []
        for v in variants:
            row = {"label": v.label, "bd_acc": 99.0, "bd_asr": 100.0, "implanted": True}
            for label, (_, dov) in defenses.items():
                row[f"{label} acc"], row[f"{label} asr"] = 98.0 - dov.get("x", 0), 1.0 + dov.get("x", 0)
                row[f"{label} acc_loss"] = 1.0 + dov.get("x", 0)
            log(row)
            rows.append(row)
        return rows

    monkeypatch.setattr(rob, "run_suite", fake_run_suite)
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    cli.main(["--params", "params/offline.yaml", "--seed", "1", "--only", "0,3",
              "--defense-overrides", '{"x": 0}', "--out", str(a), "--defense-overrides", '{"x": 5}', "--out", str(b)])
    assert set(seen["defenses"]) == {"FT#0", "FT-SAM#0", "FT#1", "FT-SAM#1"}
    ra, rb = rob.load_rows(a), rob.load_rows(b)
    assert [r["label"][:3] for r in ra] == ["v00", "v03"] == [r["label"][:3] for r in rb]
    assert all(r["FT-SAM asr"] == 1.0 and r["defense_overrides"] == {"x": 0} for r in ra)
    assert all(r["FT-SAM asr"] == 6.0 and r["defense_overrides"] == {"x": 5} for r in rb)
    assert not any("#" in k for r in ra + rb for k in r)
    assert rob.defenses_in(ra) == ["FT", "FT-SAM"]
    with pytest.raises(SystemExit):
        cli.main(["--defense-overrides", "{}", "--defense-overrides", "{}", "--out", str(a)])
    # FT-SAM alone: no FT is run and its rows hold no FT columns; an unknown label is refused.
    c = tmp_path / "c.jsonl"
    cli.main(["--params", "params/offline.yaml", "--seed", "1", "--only", "1", "--defenses", "FT-SAM",
              "--out", str(c)])
    assert set(seen["defenses"]) == {"FT-SAM#0"}
    rc = rob.load_rows(c)
    assert rob.defenses_in(rc) == ["FT-SAM"] and not any(k.startswith("FT ") for k in rc[0])
    for bad in ("FT,SAM", ""):
        with pytest.raises(SystemExit):
            cli.main(["--defenses", bad, "--out", str(c)])


def test_variants_that_did_not_implant_can_be_left_undefended(monkeypatch):
    """defend_all=False: a variant under the implant threshold gets no defense run (its columns are
    None, shown as '-'), an implanted one is defended; the score is unchanged."""
    import types
    import ftsam.experiment as exp
    from ftsam.robustness import Variant, rows_table, run_suite
    asr = {"a": 95.0, "b": 40.0}
    calls = []
    monkeypatch.setattr(exp, "train_backdoor", lambda cfg, **kw: types.SimpleNamespace(
        cfg=cfg, metrics={"acc": 99.0, "asr": asr[cfg.attack.name[-1]]}))

    def fake_defend(run, name, overrides, progress=False):
        calls.append(name)
        return types.SimpleNamespace(metrics={"acc": 97.0, "asr": 2.0})
    monkeypatch.setattr(exp, "defend", fake_defend)

    class Cfg:
        def with_overrides(self, ov):
            return types.SimpleNamespace(attack=types.SimpleNamespace(name=ov["attack.name"], target=0,
                                                                      poison_ratio=0.1))
    vs = [Variant("va", {"attack.name": "xa"}), Variant("vb", {"attack.name": "xb"})]
    rows = run_suite(Cfg(), vs, defend_all=False)
    assert calls == ["ft", "ft_sam"]                      # only the implanted variant was defended
    assert rows[1]["FT-SAM asr"] is None and rows[1]["FT acc_loss"] is None
    assert rows[0]["FT-SAM asr"] == 2.0 and rows[0]["FT-SAM acc_loss"] == 2.0
    assert summarize(rows, "FT-SAM")["implanted"] == 1
    table = rows_table(rows, ["FT", "FT-SAM"])
    assert table.splitlines()[-1].split() == ["vb", "(x)", "99.0/40.0", "-", "-"]


@pytest.mark.parametrize("rows_file, params_file", [
    ("fashion_mnist_small_lr003_cos90.jsonl", "fashion_mnist_small_preactresnet18.yaml"),
    # the clip5 rows ran before the warmup and the rate-following rho (session 16)
    ("digits_simple_cnn_w5dyn_seed1.jsonl", "digits_simple_cnn.yaml"),
    ("digits_simple_cnn_w5dyn_seed2.jsonl", "digits_simple_cnn.yaml"),
    ("digits_simple_cnn_w5dyn_seed3.jsonl", "digits_simple_cnn.yaml"),
    ("digits_simple_cnn_w5dyn_seed4.jsonl", "digits_simple_cnn.yaml"),
    ("digits_vgg19_bn_w5_seed3.jsonl", "digits_vgg19_bn.yaml"),   # lr003_cos(_seed2) ran before the warmup
    ("digits_vgg19_bn_w5_seed4.jsonl", "digits_vgg19_bn.yaml"),
    ("fashion_mnist_small_simple_cnn_w5dyn.jsonl", "fashion_mnist_small_simple_cnn.yaml"),   # the .jsonl before: no warmup
    # the .jsonl before: rho 2; _rho1: 60 epochs
    ("fashion_mnist_small_vgg19_bn_rho1_e90.jsonl", "fashion_mnist_small_vgg19_bn.yaml"),
])
def test_robust_params_file_is_the_recorded_rows_setting(rows_file, params_file):
    """A params/robust file claims to be the config its recorded rows ran as (the rows' params
    file plus their defense overrides), so a suite run on it reuses every cached model; a drift
    in either file would silently make that claim false."""
    from ftsam.config import load_config
    from ftsam.experiment import defense_overrides
    rows = REPO / "benchmarks" / "robustness" / rows_file
    first = json.loads(rows.read_text().splitlines()[0])
    base = load_config(REPO / first["params"], defense_overrides("ft_sam", first["defense_overrides"]))
    robust = load_config(REPO / "params" / "robust" / params_file)
    assert robust == base
    assert first["defense_overrides"]               # the rows name the step they ran, not "whatever the file says"


CLEAN_DIR = REPO / "benchmarks" / "robustness" / "clean_model"


@pytest.mark.parametrize("rows_file", sorted((REPO / "benchmarks" / "robustness").glob("*.jsonl")), ids=lambda p: p.stem)
def test_clean_model_rows_are_the_twin_of_their_recorded_setting(rows_file):
    """The clean-model rows that robustness.clean_rows_file finds for a recorded rows file hold the
    clean-model ASR of exactly its variants (the same labels), from a clean model of the same data,
    model, attack step and seed (what the clean model's cache key holds), so notebook 13 may set
    them side by side; every clean-model file serves at least one recorded file."""
    from ftsam.config import load_config
    from ftsam.robustness import clean_rows_file
    path = clean_rows_file(rows_file.stem, CLEAN_DIR)
    if path is None:
        return
    clean = [json.loads(s) for s in path.read_text().splitlines()]
    recorded = [json.loads(s) for s in rows_file.read_text().splitlines()]
    assert sorted(r["label"] for r in clean) == sorted(r["label"] for r in recorded)
    a, b = load_config(REPO / clean[0]["params"]), load_config(REPO / recorded[0]["params"])
    assert (a.data, a.model, a.attack_train, a.seed) == (b.data, b.model, b.attack_train, b.seed)


def test_clean_rows_file_takes_the_exact_name_or_the_longest_prefix(tmp_path):
    """X.jsonl serves X and X_step; of two prefixes the longer wins; a name that only shares a
    beginning without the "_" boundary gets none; every recorded clean-model file serves a rows file."""
    from ftsam.robustness import clean_rows_file
    for stem in ("a", "a_b", "c"):
        (tmp_path / f"{stem}.jsonl").write_text("")
    assert clean_rows_file("a", tmp_path).stem == "a" and clean_rows_file("a_x", tmp_path).stem == "a"
    assert clean_rows_file("a_b_x", tmp_path).stem == "a_b"
    assert clean_rows_file("cc", tmp_path) is None and clean_rows_file("d", tmp_path) is None
    served = {clean_rows_file(p.stem, CLEAN_DIR) for p in (REPO / "benchmarks" / "robustness").glob("*.jsonl")}
    assert set(CLEAN_DIR.glob("*.jsonl")) <= served


def test_the_clean_baseline_trains_on_the_defenders_clean_subset_alone():
    """benchmarks.clean_baseline fits a fresh model on exactly the subset a defense is given
    (defense.clean_ratio of the training set, balanced) and reports its clean test accuracy; the
    fresh model's initial weights come from the run's seed, so a rerun measures the same."""
    from benchmarks.clean_baseline import clean_baseline
    from ftsam.config import load_config
    from ftsam.data import clean_subset, load_dataset
    cfg = load_config(REPO / "params" / "offline.yaml")
    train, _, _ = load_dataset(cfg.data)
    want = len(clean_subset(train, 0.2, cfg.seed, balanced=cfg.defense.clean_sampling == "balanced"))
    r = clean_baseline(str(REPO / "params" / "offline.yaml"), epochs=2, clean_ratio=0.2, progress=False)
    assert r["n_clean"] == want and r["clean_ratio"] == 0.2 and r["epochs"] == 2
    assert 10.0 < r["acc"] <= 100.0          # two epochs on digits beat chance (10 classes)
    assert clean_baseline(str(REPO / "params" / "offline.yaml"), epochs=2, clean_ratio=0.2, progress=False) == r


def test_clean_model_asr_measures_each_trigger_on_the_never_poisoned_model(tmp_path, monkeypatch):
    """clean_model_asr evaluates every variant's triggered test set on the clean model of the
    variant's own config (train_clean): with a stand-in clean model that answers class 3 whatever
    it sees, a trigger targeting class 3 scores 100% and every other 0%, and the clean accuracy is
    class 3's share of the test set. Input-aware has no trigger before training: None. The
    command's --clean-model mode writes these rows and refuses defense options."""
    import torch

    import benchmarks.robustness_suite as cli
    import ftsam.experiment as exp
    from ftsam.config import load_config
    from ftsam.data import load_dataset
    from ftsam.robustness import clean_model_asr

    class Always3(torch.nn.Module):
        def forward(self, x):
            out = torch.zeros(len(x), 10)
            out[:, 3] = 1.0
            return out

    keys = []
    monkeypatch.setattr(exp, "train_clean", lambda cfg, *a, **kw: keys.append(exp.clean_key(cfg)) or Always3())
    cfg = load_config(REPO / "params" / "offline.yaml")
    _, test, info = load_dataset(cfg.data)
    fam = variant_family(info, seed=1, n=20, published=("input_aware",), attack_settings=cfg.attack_settings)
    pick = [v for v in fam if v.overrides["attack.target"] == 3][:1] + \
        [v for v in fam if v.overrides["attack.target"] != 3][:2] + [fam[-1]]
    rows = clean_model_asr(cfg, pick, cache_dir=tmp_path)
    share3 = 100.0 * (test.y == 3).float().mean().item()
    assert [r["clean_asr"] for r in rows[:3]] == [100.0, 0.0, 0.0]
    assert all(abs(r["clean_acc"] - share3) < 1e-4 for r in rows[:3])
    assert rows[3]["label"] == "published input_aware" and rows[3]["clean_asr"] is None
    assert len(set(keys)) == 1 and len(keys) == 3     # one clean model, the victim's twin
    out = tmp_path / "clean.jsonl"
    cli.main(["--params", "params/offline.yaml", "--seed", "1", "--only", "0,1", "--clean-model",
              "--cache", str(tmp_path), "--out", str(out)])
    lines = [json.loads(s) for s in out.read_text().splitlines()]
    assert [r["label"][:3] for r in lines] == ["v00", "v01"] and all("clean_asr" in r for r in lines)
    with pytest.raises(SystemExit):
        cli.main(["--clean-model", "--defense-overrides", "{}", "--out", str(out)])


def test_misses_table_sets_each_miss_beside_the_clean_models_asr():
    """Only implanted variants above 10% are listed; a miss at or below its trigger's ASR on a
    never-poisoned model is marked, one above it is not, one without a clean row shows '-'."""
    from ftsam.robustness import misses_table
    rows = [{"label": "a", "implanted": True, "FT-SAM asr": 12.0},
            {"label": "b", "implanted": True, "FT-SAM asr": 30.0},
            {"label": "c", "implanted": True, "FT-SAM asr": 4.0},
            {"label": "d", "implanted": False, "FT-SAM asr": None},
            {"label": "e", "implanted": True, "FT-SAM asr": 11.0}]
    clean = [{"label": "a", "clean_asr": 16.8}, {"label": "b", "clean_asr": 7.5}, {"label": "c", "clean_asr": 1.0}]
    lines = misses_table(rows, "FT-SAM", clean).splitlines()[2:]
    assert [ln.split() for ln in lines] == [["a", "12.0", "16.8", "yes"], ["b", "30.0", "7.5", "no"],
                                            ["e", "11.0", "-", "-"]]
    assert "every implanted variant" in misses_table(rows[2:4], "FT-SAM", clean)


def test_collapse_probe_traces_ftsams_first_updates_and_surveys_the_models(monkeypatch):
    """benchmarks.collapse_probe on a stand-in backdoored run (a small CNN on digits, untrained):
    trace records one row per update, the first loss at w being the loss of the first batch the
    run's seed draws, the gradient norm at w + eps before the clip (so above the clip where the
    gradient is large), the same rows on a rerun; survey gives each ReLU layer's active share and
    each layer's weight norm."""
    import types

    import torch

    import benchmarks.collapse_probe as probe
    import ftsam.experiment as exp
    from ftsam.config import load_config
    from ftsam.data import load_dataset
    from ftsam.models import build_model
    cfg = load_config(REPO / "params" / "robust" / "digits_simple_cnn.yaml")
    train, _, info = load_dataset(cfg.data)

    def fake_run(c, progress=False):
        with torch.random.fork_rng():
            torch.manual_seed(0)
            model = build_model(c.model, info)
        return types.SimpleNamespace(cfg=c, model=model, clean_train=train, metrics={"asr": 100.0})
    monkeypatch.setattr(exp, "train_backdoor", fake_run)
    over = {"train.max_grad_norm": 0.01}
    rows = probe.trace(str(REPO / "params" / "robust" / "digits_simple_cnn.yaml"), 3, 0, updates=3, defense_overrides=over)
    assert [r["update"] for r in rows] == [0, 1, 2]
    assert all(r["grad_at_w_eps"] > 0.01 for r in rows)            # the norm before the clip
    x, y = probe._clean_images(fake_run(cfg), cfg.defense)
    first = torch.randperm(len(y), generator=torch.Generator().manual_seed(cfg.seed))[:cfg.defense.train.batch_size]
    m = fake_run(cfg).model.train()
    assert abs(rows[0]["loss_w"] - torch.nn.functional.cross_entropy(m(x[first]), y[first]).item()) < 1e-5
    assert probe.trace(str(REPO / "params" / "robust" / "digits_simple_cnn.yaml"), 3, 0, updates=3,
                       defense_overrides=over) == rows
    s = probe.survey(str(REPO / "params" / "robust" / "digits_simple_cnn.yaml"), 3, n=2)
    assert len(s) == 2 and len(s[0]["active"]) == 5 and len(s[0]["weight_norms"]) == 6
    assert all(0.0 <= a <= 1.0 for a in s[0]["active"])
