"""4. Evaluation cost: how often the defense evaluates and what that costs (target <= 10%
of the defense's time with default settings).

The defense (``ftsam.experiment.defend``) passes a monitor to ``fit``, which calls it every
``defense.train.eval_every`` epochs and after the last: ACC, ASR, RA on the whole test set and
its triggered copy, or, with ``defense.monitor_per_class`` set (the offline settings: 5), on a
fixed class-balanced part of them; ``defend`` then evaluates the final model on the whole test
set for the reported metrics (once more only when the monitor saw a part). Measured on the offline default, end to end in a fresh process
(:mod:`benchmarks.offline_run`): FT-SAM defense, nothing cached, evaluation and checkpoint
writes timed where they are called."""
from __future__ import annotations

from benchmarks.common import Check, Section
from benchmarks.offline_run import EVAL_EVERY, result

TARGET = 10.0


def evals(epochs: int, every: int, duplicate_final: bool = True) -> int:
    n = sum(1 for e in range(1, epochs + 1) if e % every == 0 or e == epochs)
    return n + (1 if duplicate_final else 0)


def run(quick: bool = False, threads: int = 1) -> Section:
    sec = Section("4. Evaluation cost of the defense")
    sec.add(__doc__.split("\n\n", 1)[1].strip(), "")
    r = result(threads)
    d, a = r["ft_sam"], r["attack"]
    epochs, every = r["defense_epochs"], r["defense_eval_every"]
    share = 100 * d["eval_s"] / d["total_s"]
    sec.checks.append(Check("evaluation share of the FT-SAM defense (offline default, eval_every "
                            f"{every})", share, TARGET, "<=", unit="%",
                            note=f"{d['eval_n']} evaluations x {1e3 * d['eval_each_s']:.0f} ms = {d['eval_s']:.2f} s "
                                 f"of {d['total_s']:.2f} s"))
    rest = d["total_s"] - d["eval_s"]                # training, checkpoints, everything else
    rows = [["attack training (30 epochs, eval_every 1)", a["eval_n"], 1e3 * a["eval_each_s"], a["eval_s"],
             a["total_s"], 100 * a["eval_s"] / a["total_s"], 100 * a["ckpt_s"] / a["total_s"]],
            [f"FT-SAM defense ({epochs} epochs, eval_every {every}: the default)", d["eval_n"],
             1e3 * d["eval_each_s"], d["eval_s"], d["total_s"], share, 100 * d["ckpt_s"] / d["total_s"]]]
    for k in EVAL_EVERY:
        m = r[f"ft_sam_eval_every_{k}"]
        rows.append([f"FT-SAM defense, eval_every {k} (measured)", m["eval_n"], 1e3 * m["eval_each_s"], m["eval_s"],
                     m["total_s"], 100 * m["eval_s"] / m["total_s"], 100 * m["ckpt_s"] / m["total_s"]])
    sec.table(["run", "evaluations", "ms each", "evaluation (s)", "total (s)", "evaluation share (%)",
               "checkpoint writes (%)"], rows)
    t_eval = d["eval_each_s"]
    pred = []
    for k in (1, 2, 4, 5, 8, 10, 20, 40):
        if k > epochs:
            continue
        n, n1 = evals(epochs, k), evals(epochs, k, duplicate_final=False)
        pred.append([k, n, 100 * n * t_eval / (rest + n * t_eval), n1, 100 * n1 * t_eval / (rest + n1 * t_eval)])
    sec.add(f"Predicted share for other `defense.train.eval_every` values (from the measured {1e3 * t_eval:.0f} ms per "
            f"evaluation and {rest:.2f} s of everything else), with and without `defend`'s extra final evaluation "
            "(the last in-`fit` evaluation already measured the same model):", "")
    sec.table(["eval_every", "evaluations", "share (%)", "evaluations without the extra one", "share (%)"], pred)
    ok = [p for p in pred if p[2] <= TARGET]
    sec.add(f"The median evaluation takes {1e3 * t_eval:.0f} ms. A whole-test-set evaluation (the clean test set and "
            "its triggered copy, forward only) costs about as much as one FT-SAM epoch (4 steps of 32 images, two "
            "passes each) on the offline default, so the per-epoch curves use a fixed part of the test set "
            "(defense.monitor_per_class) and only the final metrics the whole of it. "
            + (f"The smallest eval_every with a predicted share <= {TARGET:.0f}% is {ok[0][0]}." if ok else ""),
            "")
    same = all(r[f"ft_sam_eval_every_{k}"]["metrics"] == d["metrics"] for k in EVAL_EVERY)
    sec.add(f"The defended model's metrics with eval_every {', '.join(map(str, EVAL_EVERY))} are "
            + ("bitwise the same as with the default (evaluation does not touch training): "
               if same else "**not** the same as with the default: ")
            + "; ".join(f"eval_every {k}: ACC {m['acc']:.2f}, ASR {m['asr']:.2f}"
                        for k, m in [(every, d["metrics"])] + [(k, r[f"ft_sam_eval_every_{k}"]["metrics"])
                                                               for k in EVAL_EVERY]) + ".", "")
    return sec
