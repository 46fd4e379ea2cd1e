"""6. Memory: peak RSS of the offline default run (attack training + FT-SAM defense) and the
memory one FT-SAM step needs.

Whole run: the peak RSS (VmHWM) of a fresh process running it (:mod:`benchmarks.offline_run`), next
to its RSS before torch is imported and after ftsam is. One step: a fresh process per model
runs FT and FT-SAM steps (``fit``'s loop body); the RSS before and after the first FT-SAM
step of each model is read from /proc, and the tensor memory of a steady-state step from
torch.profiler's memory timeline (every tensor allocation and
free; the peak of live tensor bytes, by category, over the step). tracemalloc does not see
tensor memory, hence the profiler."""
from __future__ import annotations

import argparse
import json

from benchmarks.common import Section, fresh_process_json
from benchmarks.offline_run import result

def tensor_timeline(fn) -> dict | None:
    """Peak live tensor bytes while ``fn`` runs, from the profiler's memory timeline (private API)."""
    import torch
    from torch.profiler import ProfilerActivity, profile
    try:
        from torch.profiler._memory_profiler import _CATEGORY_TO_INDEX, MemoryProfileTimeline
        names = {i + 1: (c.name.lower().replace("_", " ") if c is not None else "unknown")
                 for c, i in _CATEGORY_TO_INDEX.items()}          # column 0 is unused
        with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True,
                     with_stack=True) as prof:
            fn()
        _, sizes = MemoryProfileTimeline(prof._memory_profile())._coalesce_timeline(torch.device("cpu"))
    except Exception as e:          # noqa: BLE001 - a private API: report, do not fail the benchmark
        return {"error": f"{type(e).__name__}: {e}"}
    totals = [sum(s) for s in sizes]
    i = max(range(len(totals)), key=totals.__getitem__)
    return {"start_mb": totals[0] / 2**20, "peak_mb": totals[i] / 2**20,
            "by_category_at_peak_mb": {names.get(j, str(j)): v / 2**20 for j, v in enumerate(sizes[i]) if v}}


def step_worker(threads: int) -> dict:
    from benchmarks.common import pin_threads, rss_mb
    pin_threads(threads)
    import copy

    from benchmarks.sam_overhead import Stepper, settings
    out = {}
    for label, model, data, tcfg, scfg, _ in settings(quick=True):
        fs = Stepper(copy.deepcopy(model), data, tcfg, scfg)
        ft = Stepper(copy.deepcopy(model), data, tcfg, None)
        rss0 = rss_mb()
        fs.step()                                   # the first FT-SAM step of this model
        first = {"rss_before_mb": rss0, "rss_growth_mb": rss_mb() - rss0}
        for _ in range(3):
            fs.step()
            ft.step()
        n_params = sum(p.numel() for p in model.parameters())
        out[label] = {"params_mb": 4 * n_params / 2**20, "first_ftsam_step": first,
                      "ft_step": tensor_timeline(ft.step), "ftsam_step": tensor_timeline(fs.step)}
    return out


def step_result(threads: int) -> dict:
    return fresh_process_json("benchmarks.memory", "--step-worker", "--threads", str(threads))


def run(quick: bool = False, threads: int = 1) -> Section:
    sec = Section("6. Memory")
    sec.add(__doc__.split("\n\n", 1)[1].strip(), "")
    r = result(threads)
    sec.table(["offline default, one fresh process", "MiB"], [
        ["RSS before importing torch", r["rss_start_mb"]],
        ["RSS after importing torch and ftsam", r["rss_imported_mb"]],
        ["peak RSS after attack training (30 epochs)", r["attack"]["peak_rss_mb"]],
        ["peak RSS of the whole run (attack training + FT-SAM defense)", r["peak_rss_mb"]],
        ["of which above the imports", r["peak_rss_mb"] - r["rss_imported_mb"]],
    ])
    s = step_result(threads)
    rows = []
    for label, v in s.items():
        short = label.split(":")[0].split(",")[0]
        for kind in ("ft_step", "ftsam_step"):
            t = v[kind]
            if t is None or "error" in t:
                rows.append([short, kind, "n/a", "n/a", "n/a", (t or {}).get("error", "")])
                continue
            cats = ", ".join(f"{k} {mb:.1f}" for k, mb in sorted(t["by_category_at_peak_mb"].items(),
                                                                  key=lambda kv: -kv[1]))
            rows.append([short, "FT step" if kind == "ft_step" else "FT-SAM step", t["start_mb"], t["peak_mb"],
                         t["peak_mb"] - t["start_mb"], cats])
    sec.add("Tensor memory of one steady-state step (torch.profiler memory timeline, MiB):", "")
    sec.table(["model", "step", "live at start", "peak", "peak - start", "at the peak, by category"], rows)
    sec.table(["model", "parameters (MiB, float32)", "RSS before its first FT-SAM step (MiB)",
               "RSS after - before that step (MiB)"],
              [[label.split(":")[0].split(",")[0], v["params_mb"], v["first_ftsam_step"]["rss_before_mb"],
                v["first_ftsam_step"]["rss_growth_mb"]] for label, v in s.items()])
    sec.add("The profiler's categories are torch's own guesses (`torch.profiler._memory_profiler`); eps and T_w "
            "land in 'unknown' or 'gradient'. The RSS difference is what the process keeps after the step "
            "(allocator caches, oneDNN scratch), not the step's peak: that is the profiler's number.", "")
    sec.add("FT-SAM holds, beyond FT, eps (in the first pass's gradient tensors) while the second pass runs: "
            "one parameter-sized tensor (two with eta > 0, for T_w's buffer); the second pass's activations "
            "replace the first's.", "")
    return sec


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--step-worker", action="store_true")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    with open(args.out, "w") as f:
        json.dump(step_worker(args.threads), f, indent=1)
