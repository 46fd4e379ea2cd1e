"""The offline default end to end (attack training, then the FT-SAM defense), in a fresh
process, instrumented: time spent in evaluation and in checkpoint writes, and peak RSS.

Run by :mod:`benchmarks.eval_cost` and :mod:`benchmarks.memory` as
``python -m benchmarks.offline_run --threads N --out result.json``; nothing is cached (a
temporary ``runs`` directory), so it measures a first run."""
from __future__ import annotations

import argparse
import json
import tempfile
import time


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--params", default="params/offline.yaml")
    ap.add_argument("--eval-every", type=int, nargs="*", default=[],
                    help="also run the defense with these defense.train.eval_every values")
    args = ap.parse_args()

    import os
    with open("/proc/self/statm") as f:          # before torch is imported
        rss_start = int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    import torch

    from benchmarks.common import peak_rss_mb, pin_threads, rss_mb
    pin_threads(args.threads)
    import ftsam
    import ftsam.checkpoint
    import ftsam.experiment as E
    rss_imported = rss_mb()

    clock = {"eval": [], "ckpt": []}

    def timed(kind, fn):
        def wrapper(*a, **k):
            t = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                clock[kind].append(time.perf_counter() - t)
        return wrapper

    E.evaluate = timed("eval", E.evaluate)                  # what train_backdoor and defend call
    ftsam.checkpoint.save_train_state = timed("ckpt", ftsam.checkpoint.save_train_state)  # fit imports it per call

    def phase(fn):
        for v in clock.values():
            v.clear()
        t = time.perf_counter()
        result = fn()
        total = time.perf_counter() - t
        return result, {"total_s": total, "eval_s": sum(clock["eval"]), "eval_n": len(clock["eval"]),
                        "eval_each_s": sorted(clock["eval"])[len(clock["eval"]) // 2] if clock["eval"] else 0.0,
                        "ckpt_s": sum(clock["ckpt"]), "ckpt_n": len(clock["ckpt"]), "peak_rss_mb": peak_rss_mb()}

    cfg = ftsam.load_config(args.params)
    out = {"threads": args.threads, "torch": torch.__version__, "rss_start_mb": rss_start,
           "rss_imported_mb": rss_imported, "defense_epochs": cfg.defense.train.epochs,
           "defense_eval_every": cfg.defense.train.eval_every, "attack_epochs": cfg.attack_train.epochs}
    with tempfile.TemporaryDirectory() as runs:
        run, out["attack"] = phase(lambda: E.train_backdoor(cfg, cache_dir=runs, device="cpu", progress=False))
        d, out["ft_sam"] = phase(lambda: E.defend(run, "ft_sam", progress=False))
        out["ft_sam"]["metrics"] = d.metrics
        out["ft_sam"]["history_rows"] = len(d.history)
        out["peak_rss_mb"] = peak_rss_mb()
        for k in args.eval_every:
            d, out[f"ft_sam_eval_every_{k}"] = phase(
                lambda: E.defend(run, "ft_sam", {"train.eval_every": k}, progress=False))
            out[f"ft_sam_eval_every_{k}"]["metrics"] = d.metrics
            out[f"ft_sam_eval_every_{k}"]["history_rows"] = len(d.history)
    with open(args.out, "w") as f:
        json.dump(out, f, indent=1)


_CACHE: dict[int, dict] = {}
EVAL_EVERY = (5, 10)


def result(threads: int) -> dict:
    """The instrumented run's numbers, from a subprocess started once per thread count."""
    if threads not in _CACHE:
        from benchmarks.common import fresh_process_json
        _CACHE[threads] = fresh_process_json("benchmarks.offline_run", "--threads", str(threads),
                                             "--eval-every", *map(str, EVAL_EVERY))
    return _CACHE[threads]


if __name__ == "__main__":
    main()
