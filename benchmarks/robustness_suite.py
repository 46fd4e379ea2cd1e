"""The robustness suite (issue 11) from the command line: a seeded family of attack variants on
one params file, each backdoored model defended by FT and FT-SAM as the params file (plus
optional overrides) says; one JSON line per variant, then the summary.

    python -m benchmarks.robustness_suite --params params/offline.yaml --seed 1 --n 20 \\
        --out robustness.jsonl [--defense-overrides '{"train.lr": 0.05}'] [--published]

Several defender's settings on the same backdoored models: give ``--defense-overrides`` and
``--out`` once per setting (paired in order); each variant is trained once and each setting's
rows go to its own file. ``--defenses FT-SAM`` runs FT-SAM alone (to study its step where plain
FT at that step is not wanted: the rows then hold no FT columns).

``--clean-model`` measures instead what each variant's trigger does to a model never poisoned
(the params file's model trained on the clean data, :func:`ftsam.robustness.clean_model_asr`):
one line per variant with ``clean_acc`` and ``clean_asr``, the floor a defense has no reason to
go below. Nothing is defended, and only the one clean model is trained.

Runs are cached under ``--cache`` (default ``runs``) like every notebook run."""
from __future__ import annotations

import argparse
import json
import time


def split(row: dict, j: int) -> dict:
    """The row of defender's setting ``j`` from a suite row whose defense labels carry ``#j``
    ("FT-SAM#1 asr"): the variant's columns, and setting j's columns without the suffix."""
    out = {k: v for k, v in row.items() if "#" not in k}
    for k, v in row.items():
        label, _, rest = k.partition("#")
        num, _, column = rest.partition(" ")
        if num == str(j):
            out[f"{label} {column}"] = v
    return out


def main(argv: list[str] | None = None) -> None:
    from ftsam.robustness import DEFENSES
    ap = argparse.ArgumentParser()
    ap.add_argument("--params", default="params/offline.yaml")
    ap.add_argument("--seed", type=int, default=0, help="seed of the variant family")
    ap.add_argument("--n", type=int, default=20, help="random variants")
    ap.add_argument("--only", default="", help="comma-separated indices of the family to run")
    ap.add_argument("--published", action="store_true", help="also the ten published attacks")
    ap.add_argument("--overrides", default="{}", help="config overrides (JSON), e.g. a model seed")
    ap.add_argument("--defense-overrides", action="append",
                    help="defense overrides for the defenses run (JSON); once per --out")
    ap.add_argument("--defenses", default="FT,FT-SAM",
                    help=f"comma-separated, of {', '.join(DEFENSES)} (default both)")
    ap.add_argument("--cache", default="runs")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="cpu", help="cpu, cuda or auto")
    ap.add_argument("--skip-not-implanted", action="store_true",
                    help="do not defend variants that did not implant (they are out of the score)")
    ap.add_argument("--clean-model", action="store_true",
                    help="only each trigger's ASR on a model trained on clean data (nothing defended)")
    ap.add_argument("--out", required=True, action="append", help="rows file (JSON lines, appended)")
    args = ap.parse_args(argv)
    if args.clean_model and (args.defense_overrides or args.skip_not_implanted or len(args.out) > 1):
        ap.error("--clean-model defends nothing: give one --out and no --defense-overrides or --skip-not-implanted")
    chosen = [d for d in args.defenses.split(",") if d]
    unknown = [d for d in chosen if d not in DEFENSES]
    if unknown or not chosen:
        ap.error(f"--defenses: {', '.join(unknown) or 'none given'}; the choices are {', '.join(DEFENSES)}")
    settings = [json.loads(s) for s in (args.defense_overrides or ["{}"])]
    if len(settings) != len(args.out):
        ap.error(f"--defense-overrides given {len(settings)} times but --out {len(args.out)} times; "
                 "pair them (one file per defender's setting)")

    import torch
    torch.set_num_threads(args.threads)
    from ftsam.config import load_config
    from ftsam.data import load_dataset
    from ftsam.robustness import PUBLISHED, clean_model_asr, run_suite, summarize, variant_family
    from ftsam.train import resolve_device

    cfg = load_config(args.params, json.loads(args.overrides))
    device = str(resolve_device(args.device))
    _, _, info = load_dataset(cfg.data)
    variants = variant_family(info, seed=args.seed, n=args.n, published=PUBLISHED if args.published else (),
                              attack_settings=cfg.attack_settings)
    if args.only:
        variants = [variants[int(i)] for i in args.only.split(",")]
    if args.clean_model:
        t0 = time.perf_counter()
        rows = clean_model_asr(cfg, variants, cache_dir=args.cache, device=device)
        with open(args.out[0], "a") as f:
            for r in rows:
                f.write(json.dumps({"params": args.params, "overrides": args.overrides, "device": device, **r}) + "\n")
                asr = "no trigger without training" if r["clean_asr"] is None else f"{r['clean_asr']:5.1f}"
                print(f"{r['label']:55s} clean model: ASR {asr}", flush=True)
        print(f"clean-model time: {time.perf_counter() - t0:.0f} s for {len(rows)} variants on {device}")
        return
    names = [(label, DEFENSES[label]) for label in chosen]
    defenses = {f"{label}#{j}": (name, dov) for j, dov in enumerate(settings) for label, name in names}
    files = [open(path, "a") for path in args.out]
    t0 = time.perf_counter()

    def log(row):
        for j, (f, dov) in enumerate(zip(files, settings)):
            r = split(row, j)
            f.write(json.dumps({"params": args.params, "overrides": args.overrides, "defense_overrides": dov,
                                "device": device, **r}) + "\n")
            f.flush()
            print(f"{r['label']:55s} bd {r['bd_acc']:5.1f}/{r['bd_asr']:5.1f}  "
                  + ("  ".join(f"{d} {r[d + ' acc']:5.1f}/{r[d + ' asr']:5.1f}" for d, _ in names)
                     if r[f"{names[0][0]} acc"] is not None else "did not implant: not defended")
                  + (f"  [{args.out[j]}]" if len(files) > 1 else ""), flush=True)

    try:
        rows = run_suite(cfg, variants, defenses, cache_dir=args.cache, device=device, log=log,
                         defend_all=not args.skip_not_implanted)
    finally:
        for f in files:
            f.close()
    for j, path in enumerate(args.out):
        print(path)
        for d, _ in names:
            print(json.dumps(summarize([split(r, j) for r in rows], d)))
    print(f"suite time: {time.perf_counter() - t0:.0f} s for {len(rows)} variants on {device}")


if __name__ == "__main__":
    main()
