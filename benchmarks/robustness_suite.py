"""The robustness suite (issue 11) from the command line: a seeded family of attack variants on
one params file, each backdoored model defended by FT and FT-SAM as the params file (plus
optional overrides) says; one JSON line per variant, then the summary.

    python -m benchmarks.robustness_suite --params params/offline.yaml --seed 1 --n 20 \\
        --out robustness.jsonl [--defense-overrides '{"train.lr": 0.05}'] [--published]

Runs are cached under ``--cache`` (default ``runs``) like every notebook run."""
from __future__ import annotations

import argparse
import json
import time


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--params", default="params/offline.yaml")
    ap.add_argument("--seed", type=int, default=0, help="seed of the variant family")
    ap.add_argument("--n", type=int, default=20, help="random variants")
    ap.add_argument("--only", default="", help="comma-separated indices of the family to run")
    ap.add_argument("--published", action="store_true", help="also the ten published attacks")
    ap.add_argument("--overrides", default="{}", help="config overrides (JSON), e.g. a model seed")
    ap.add_argument("--defense-overrides", default="{}", help="defense overrides for FT and FT-SAM (JSON)")
    ap.add_argument("--cache", default="runs")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    import torch
    torch.set_num_threads(args.threads)
    from ftsam.config import load_config
    from ftsam.data import load_dataset
    from ftsam.robustness import PUBLISHED, run_suite, summarize, variant_family

    cfg = load_config(args.params, json.loads(args.overrides))
    _, _, info = load_dataset(cfg.data)
    variants = variant_family(info, seed=args.seed, n=args.n, published=PUBLISHED if args.published else (),
                              attack_settings=cfg.attack_settings)
    if args.only:
        variants = [variants[int(i)] for i in args.only.split(",")]
    dov = json.loads(args.defense_overrides)
    defenses = {"FT": ("ft", dov), "FT-SAM": ("ft_sam", dov)}
    t0 = time.perf_counter()
    with open(args.out, "a") as f:
        def log(row):
            f.write(json.dumps({"params": args.params, "overrides": args.overrides,
                                "defense_overrides": dov, **row}) + "\n")
            f.flush()
            print(f"{row['label']:55s} bd {row['bd_acc']:5.1f}/{row['bd_asr']:5.1f}  "
                  + "  ".join(f"{d} {row[d + ' acc']:5.1f}/{row[d + ' asr']:5.1f}" for d in defenses), flush=True)
        rows = run_suite(cfg, variants, defenses, cache_dir=args.cache, device="cpu", log=log)
    for d in defenses:
        print(json.dumps(summarize(rows, d)))
    print(f"suite time: {time.perf_counter() - t0:.0f} s for {len(rows)} variants")


if __name__ == "__main__":
    main()
