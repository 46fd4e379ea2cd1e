"""7. Cost of each defense: wall time on the offline default (BadNets-A2O) as a multiple of one
FT-SAM epoch, and the memory each needs above the loaded backdoored run.

One fresh process trains the attack into a temporary cache; then one fresh process per defense
loads that run, resets the kernel's peak-RSS mark (``/proc/self/clear_refs``), and times
``ftsam.defend`` with the params file's settings, nothing cached. "One FT-SAM epoch" is the
FT-SAM defense's wall time divided by its epochs, so it includes its share of the per-epoch
monitor. Every defense's time includes its own evaluation of the final model on the whole test
set. Peak RSS above the loaded run is what the defense itself added at its peak (its model copies,
activations, allocator caches), measured by the kernel, tensors and all."""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time

from benchmarks.common import Section, fresh_process_json

PARAMS = "params/offline.yaml"
ATTACK = "badnets-a2o"


def reset_peak_rss() -> bool:
    """Set VmHWM back to the current RSS (Linux >= 4.0); False where the kernel refuses."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def worker(args) -> dict:
    from benchmarks.common import peak_rss_mb, pin_threads, rss_mb
    pin_threads(args.threads)
    import ftsam
    import ftsam.experiment as E
    cfg = E.with_attack(ftsam.load_config(args.params), args.attack)
    t = time.perf_counter()
    run = E.train_backdoor(cfg, cache_dir=args.runs, device="cpu", progress=False)
    out = {"load_s": time.perf_counter() - t}
    if args.defense is None:
        return out
    reset = reset_peak_rss()
    base = rss_mb()
    t = time.perf_counter()
    d = E.defend(run, args.defense, progress=False)
    out.update(seconds=time.perf_counter() - t, rss_base_mb=base, peak_rss_mb=peak_rss_mb(), peak_reset=reset,
               metrics=d.metrics)
    return out


def measure(defense: str | None, runs: str, threads: int) -> dict:
    return fresh_process_json("benchmarks.defense_cost", "--worker", "--runs", runs, "--threads", str(threads),
                              *(["--defense", defense] if defense else []))


def run(quick: bool = False, threads: int = 1) -> Section:
    from ftsam.config import load_config
    from ftsam.defenses import REGISTRY
    sec = Section("7. Cost of each defense")
    sec.add(__doc__.split("\n\n", 1)[1].strip(), "")
    cfg = load_config(PARAMS)
    names = ["ft", "ft_sam"] if quick else ["ft_sam"] + sorted(n for n in REGISTRY if n != "ft_sam")
    with tempfile.TemporaryDirectory() as runs:
        measure(None, runs, threads)                       # the attack, trained once
        r = {}
        for name in names:
            print(f"    {name} ...", file=sys.stderr, flush=True)
            r[name] = measure(name, runs, threads)
    epoch = r["ft_sam"]["seconds"] / cfg.defense.train.epochs
    rows = []
    for name in names:
        m = r[name]
        rows.append([name, REGISTRY[name].title, ", ".join(sorted(REGISTRY[name].needs)), m["seconds"],
                     m["seconds"] / epoch, m["peak_rss_mb"] - m["rss_base_mb"], m["metrics"]["acc"],
                     m["metrics"]["asr"]])
    sec.add(f"Offline default ({PARAMS}), {ATTACK}, {threads} thread(s). One FT-SAM epoch: {epoch:.2f} s "
            f"({r['ft_sam']['seconds']:.1f} s / {cfg.defense.train.epochs} epochs).", "")
    sec.table(["defense", "method", "given", "wall time (s)", "FT-SAM epochs", "peak RSS above the loaded run (MiB)",
               "ACC", "ASR"], rows)
    if not all(m["peak_reset"] for m in r.values()):
        sec.add("**The kernel refused to reset the peak-RSS mark: the memory column includes the attack's loading.**",
                "")
    sec.add("ACC and ASR are this one attack's, for orientation; the comparison across attacks is "
            "`python -m ftsam.compare` (README). AC and ABL train a model from scratch on the poisoned set "
            "(attack training's settings), so they cost an attack training, not a fine-tuning.", "")
    return sec


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--worker", action="store_true", required=True)
    ap.add_argument("--runs", required=True)
    ap.add_argument("--defense")
    ap.add_argument("--attack", default=ATTACK)
    ap.add_argument("--params", default=PARAMS)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    res = worker(a)
    with open(a.out, "w") as fh:
        json.dump(res, fh, indent=1)
