"""The robustness suite (issue 11): FT-SAM against a seeded family of attack variants nobody
tuned it for.

:func:`variant_family` draws, for a dataset, BadNets variants (random target, patch size 2-5
pixels, position anywhere, white / checkerboard / random pattern) and Blended variants (random
image, alpha 0.1-0.2), each with a poison ratio of 1-10%, and can append the published attacks
(with the params file's ``attack_settings``). :func:`run_suite` trains every variant, applies
each defense with one fixed configuration (the params file's, never one per attack) and returns
one row per variant; :func:`summarize` gives the numbers the issue asks for: the share of
implanted variants whose ASR the defense brings to <= 10%, and the median / max ACC loss.
Variants that do not implant (backdoored ASR below ``implant_asr``) are kept in the table,
marked, and left out of the summary."""
from __future__ import annotations

import random
import statistics
import time
from pathlib import Path
from typing import NamedTuple

from ftsam.config import Config
from ftsam.data import DatasetInfo

PATCH_SIZES = (2, 5)                  # inclusive
ALPHAS = (0.1, 0.2)
RATIOS = (0.01, 0.10)
CORNERS = ("bottom_right", "bottom_left", "top_left", "top_right")
PATTERNS = ("white", "checkerboard", "random")
BLEND_IMAGES = ("china", "flower", "noise")
# The suite's defense labels (the rows' column prefixes) and the defenses they run.
DEFENSES = {"FT": "ft", "FT-SAM": "ft_sam"}
PUBLISHED = ("badnets-a2o", "badnets-a2a", "blended", "sig", "lf", "ssba", "trojan", "wanet", "input_aware", "cla")


class Variant(NamedTuple):
    label: str
    overrides: dict       # dotted config overrides: attack.name, .mode, .target, .poison_ratio, .options, ...


def variant_family(info: DatasetInfo, seed: int = 0, n: int = 20, badnets_share: float = 0.6,
                   published: tuple[str, ...] = (), attack_settings: dict | None = None) -> list[Variant]:
    """``n`` random attack variants for ``info`` (a seeded draw: the same seed, the same list),
    then one variant per name in ``published`` (e.g. :data:`PUBLISHED`), which takes its
    ``attack_settings`` (a params file's per-attack overrides) as they are.

    The first ``round(n * badnets_share)`` are BadNets, the rest Blended; each random variant is
    all-to-one with a target drawn from the dataset's classes and a poison ratio drawn uniformly
    from 1-10% (three decimals)."""
    rng = random.Random(f"ftsam-robustness-{seed}")
    n_bad = round(n * badnets_share)
    out = []
    for i in range(n):
        target = rng.randrange(info.num_classes)
        ratio = round(rng.uniform(*RATIOS), 3)
        if i < n_bad:
            p = rng.randint(*PATCH_SIZES)
            if rng.random() < 0.5:
                position = rng.choice(CORNERS)
                where = position
            else:
                position = [rng.randint(0, info.size - p), rng.randint(0, info.size - p)]
                where = f"({position[0]},{position[1]})"
            pattern = rng.choice(PATTERNS)
            options = {"patch_size": p, "position": position, "pattern": pattern}
            if pattern == "random":
                options["pattern_seed"] = rng.randrange(10_000)
            label = f"v{i:02d} badnets {p}px {pattern} {where} t{target} r{ratio:.3f}"
            name = "badnets"
        else:
            image = rng.choice(BLEND_IMAGES)
            if image == "noise":
                image = f"noise:{rng.randrange(10_000)}"
            alpha = round(rng.uniform(*ALPHAS), 3)
            options = {"image": image, "alpha": alpha}
            label = f"v{i:02d} blended {image} a{alpha:.3f} t{target} r{ratio:.3f}"
            name = "blended"
        out.append(Variant(label, {"attack.name": name, "attack.mode": "all2one", "attack.target": target,
                                   "attack.poison_ratio": ratio, "attack.options": options}))
    for spec in published:
        name, _, suffix = spec.partition("-")
        mode = "all2all" if suffix == "a2a" else "all2one"
        ov = {"attack.name": name, "attack.mode": mode, "attack.target": 0, "attack.poison_ratio": 0.1,
              "attack.options": {}}
        ov.update({k: v for k, v in (attack_settings or {}).get(name, {}).items()
                   if not (suffix and k == "attack.mode")})
        out.append(Variant(f"published {spec}", ov))
    return out


def run_suite(cfg: Config, variants: list[Variant], defenses: dict[str, tuple[str, dict]] | None = None,
              cache_dir="runs", device: str = "auto", implant_asr: float = 80.0,
              progress: bool | None = False, log=None, defend_all: bool = True) -> list[dict]:
    """Train each variant on ``cfg`` (cached like every backdoored model), apply each defense
    ``label -> (defense name, defense overrides)`` (default: FT and FT-SAM as the params file
    says), and return one row per variant: the backdoored ACC/ASR, ``implanted`` (ASR >=
    ``implant_asr``), and per defense label its ACC, ASR, ACC loss and seconds.

    With ``defend_all=False`` a variant that did not implant is not defended (it is left out of
    the score anyway): its defense columns are None."""
    from ftsam.experiment import defend, train_backdoor
    defenses = defenses or {label: (name, {}) for label, name in DEFENSES.items()}
    rows = []
    for v in variants:
        t0 = time.perf_counter()
        run = train_backdoor(cfg.with_overrides(v.overrides), cache_dir=cache_dir, device=device, progress=progress)
        bd = run.metrics
        row = {"label": v.label, "attack": v.overrides["attack.name"], "target": run.cfg.attack.target,
               "poison_ratio": run.cfg.attack.poison_ratio, "bd_acc": bd["acc"], "bd_asr": bd["asr"],
               "implanted": bd["asr"] >= implant_asr, "attack_s": time.perf_counter() - t0}
        for label, (name, overrides) in defenses.items():
            if not (defend_all or row["implanted"]):
                for col in ("acc", "asr", "acc_loss", "s"):
                    row[f"{label} {col}"] = None
                continue
            t0 = time.perf_counter()
            r = defend(run, name, overrides, progress=progress)
            row[f"{label} acc"], row[f"{label} asr"] = r.metrics["acc"], r.metrics["asr"]
            row[f"{label} acc_loss"] = bd["acc"] - r.metrics["acc"]
            row[f"{label} s"] = time.perf_counter() - t0
        rows.append(row)
        if log is not None:
            log(row)
    return rows


def clean_model_asr(cfg: Config, variants: list[Variant], cache_dir="runs", device: str = "auto",
                    progress: bool | None = False) -> list[dict]:
    """The ASR each variant's trigger reaches on a model that was never poisoned: ``cfg``'s model
    trained on the clean training set with the attack's step (:func:`ftsam.experiment.train_clean`,
    cached once per setting). It is the share of triggered test images that a clean model already
    puts in the target class: a defense that does not know the trigger has no reason to go below
    it, so a variant whose floor is near the 10% line is not evidence that the defense failed.

    One row per variant: its label, ``clean_acc`` and ``clean_asr`` (percent). Attacks whose
    trigger networks train with the victim (Input-aware) have no trigger without that training:
    their ``clean_asr`` is None."""
    from ftsam.attacks import build_attack
    from ftsam.data import load_dataset
    from ftsam.experiment import prepared_attack, train_clean
    from ftsam.metrics import evaluate
    from ftsam.train import resolve_device

    device = str(resolve_device(device))
    train, test, info = load_dataset(cfg.data)
    rows = []
    for v in variants:
        vcfg = cfg.with_overrides(v.overrides)
        row = {"label": v.label, "attack": vcfg.attack.name, "target": vcfg.attack.target}
        if build_attack(vcfg.attack, info).trainable:
            row["clean_acc"] = row["clean_asr"] = None
        else:   # the victim's clean twin: a variant's own attack-step settings (WaNet's epochs) included
            model = train_clean(vcfg, cache_dir, device, progress)
            attack = prepared_attack(vcfg, info, train, cache_dir, device, progress)
            m = evaluate(model, test, attack.poison_testset(test), device)
            row["clean_acc"], row["clean_asr"] = m["acc"], m["asr"]
        rows.append(row)
    return rows


def summarize(rows: list[dict], defense: str, removed_asr: float = 10.0) -> dict:
    """For defense label ``defense``, over the implanted variants: how many, the share whose
    ASR ends <= ``removed_asr``, the median / max ACC loss, the median / max ASR, and the
    variants left out because they did not implant."""
    kept = [r for r in rows if r["implanted"]]
    asr = [r[f"{defense} asr"] for r in kept]
    loss = [r[f"{defense} acc_loss"] for r in kept]
    return {"defense": defense, "variants": len(rows), "implanted": len(kept),
            "excluded": [r["label"] for r in rows if not r["implanted"]],
            "removed_share": sum(a <= removed_asr for a in asr) / len(kept) if kept else float("nan"),
            "median_asr": statistics.median(asr) if kept else float("nan"),
            "max_asr": max(asr) if kept else float("nan"),
            "median_acc_loss": statistics.median(loss) if kept else float("nan"),
            "max_acc_loss": max(loss) if kept else float("nan"),
            "over_5_points": sum(x > 5.0 for x in loss)}


def load_rows(path) -> list[dict]:
    """The rows a suite run wrote (``python -m benchmarks.robustness_suite --out PATH``: one JSON
    object per variant and line, appended), the last row of each variant label winning, in the
    order the variants first appear. A line that is not a row is an error naming the file."""
    import json
    rows: dict[str, dict] = {}
    for i, line in enumerate(Path(path).read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            rows[row["label"]] = row
        except (json.JSONDecodeError, KeyError, TypeError) as e:
            raise ValueError(f"{path}, line {i}: not a robustness-suite row ({type(e).__name__}: {e})") from None
    return list(rows.values())


def defenses_in(rows: list[dict]) -> list[str]:
    """The suite's defense labels (:data:`DEFENSES`) whose columns every row holds: both for a
    default run, FT-SAM alone for one with ``--defenses FT-SAM``."""
    return [d for d in DEFENSES if rows and all(f"{d} asr" in r for r in rows)]


def rows_table(rows: list[dict], defenses: list[str]) -> str:
    """One line per variant: backdoored ACC/ASR, then each defense's ACC/ASR (x: did not implant;
    -: not defended)."""
    from ftsam.report import table
    return table(["variant", "backdoored"] + defenses,
                 [[r["label"] + ("" if r["implanted"] else " (x)"), f"{r['bd_acc']:.1f}/{r['bd_asr']:.1f}"]
                  + ["-" if r[f"{d} acc"] is None else f"{r[f'{d} acc']:.1f}/{r[f'{d} asr']:.1f}" for d in defenses]
                  for r in rows])


def summary_table(summaries: dict[str, dict]) -> str:
    """:func:`summarize`'s results, one line per ``name -> summary``."""
    from ftsam.report import table
    return table(["setting / defense", "implanted", "ASR <= 10%", "median ASR", "max ASR", "median ACC loss",
                  "max ACC loss", "ACC loss > 5"],
                 [[name, f"{s['implanted']}/{s['variants']}", f"{100 * s['removed_share']:.0f}%",
                   f"{s['median_asr']:.1f}", f"{s['max_asr']:.1f}", f"{s['median_acc_loss']:.1f}",
                   f"{s['max_acc_loss']:.1f}", s["over_5_points"]] for name, s in summaries.items()])


def clean_rows_file(name: str, clean_dir) -> Path | None:
    """The clean-model rows (:func:`clean_model_asr`, ``clean_dir/STEM.jsonl``) for the recorded
    rows file ``name``: the one named like it, else the longest ``STEM`` with ``name`` starting
    ``STEM_`` (``X_w5dyn`` holds X's setting and family at another defender's step, and the clean
    model depends on neither); None where there is none."""
    stems = sorted((p.stem for p in Path(clean_dir).glob("*.jsonl")), key=len, reverse=True)
    stem = next((s for s in stems if name == s or name.startswith(s + "_")), None)
    return None if stem is None else Path(clean_dir) / f"{stem}.jsonl"


def misses_table(rows: list[dict], defense: str, clean_rows: list[dict] | None = None,
                 removed_asr: float = 10.0) -> str:
    """The implanted variants that ``defense`` leaves above ``removed_asr``, each beside what its
    trigger does to a model never poisoned (``clean_rows``, :func:`clean_model_asr`'s rows, matched
    by label; "-" where there is none). A miss at or below that floor is what a clean model does
    with the trigger too, not a backdoor the defense left; the score still counts it as a miss."""
    from ftsam.report import table
    floor = {r["label"]: r["clean_asr"] for r in clean_rows or []}
    out = []
    for r in rows:
        asr = r.get(f"{defense} asr")
        if not r["implanted"] or asr is None or asr <= removed_asr:
            continue
        f = floor.get(r["label"])
        out.append([r["label"], f"{asr:.1f}", "-" if f is None else f"{f:.1f}",
                    "-" if f is None else ("yes" if asr <= f else "no")])
    return table(["variant", f"{defense} ASR", "clean model's ASR", "at or below it"], out) if out else \
        f"{defense} brings every implanted variant to <= {removed_asr:g}% ASR"


def plot_suite(rows: list[dict], defenses: list[str], title: str = ""):
    """Post-defense ASR and ACC loss of the implanted variants, one column of points per defense
    (the distribution figure of the suite). Returns the matplotlib figure."""
    import matplotlib.pyplot as plt
    kept = [r for r in rows if r["implanted"]]
    fig, axes = plt.subplots(1, 2, figsize=(8, 3.2))
    for ax, key, ylabel, line in ((axes[0], "asr", "ASR after defense (%)", 10.0),
                                  (axes[1], "acc_loss", "ACC loss (points)", 2.0)):
        data = [[r[f"{d} {key}"] for r in kept] for d in defenses]
        ax.boxplot(data, showfliers=False)
        for i, vals in enumerate(data, start=1):
            jitter = [i + 0.08 * ((j * 7919) % 11 - 5) / 5 for j in range(len(vals))]
            ax.scatter(jitter, vals, s=10, alpha=0.7)
        ax.set_xticks(range(1, len(defenses) + 1), defenses)
        ax.axhline(line, color="grey", ls="--", lw=0.8)
        ax.set_ylabel(ylabel)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig
