"""Run every benchmark and write BENCHMARKS.md: ``python -m benchmarks.run`` (``make bench``).

    python -m benchmarks.run                  # all, torch's default thread count, BENCHMARKS.md
    python -m benchmarks.run --threads 1      # pin another thread count (recorded in the report)
    python -m benchmarks.run --quick --out /tmp/b.md   # fewer repetitions: a smoke run
    python -m benchmarks.run --only 1 3       # some sections only
    python -m benchmarks.run --only 5 --splice   # rerun section 5 and replace it in BENCHMARKS.md

Every timing is a median over repetitions, alternating between the things compared, after a
warm-up, with torch's intra-op threads pinned for the whole run. Background load still
moves the numbers: the report records the load average before and after; compare ratios,
and rerun on a quiet machine before trusting absolute times."""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

SECTIONS = {
    1: ("sam_overhead", "FT-SAM / FT step time"),
    2: ("data_path", "data path vs BackdoorBench-style"),
    3: ("sam_reference", "our SAM vs pytorch_optimizer's"),
    4: ("eval_cost", "evaluation share of the defense"),
    5: ("gpu_path", "GPU path"),
    6: ("memory", "memory"),
    7: ("defense_cost", "cost of each defense"),
}
TAKES_THREADS = {"eval_cost", "memory", "defense_cost"}     # they start fresh processes, which pin the same count


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's default)")
    ap.add_argument("--quick", action="store_true", help="fewer repetitions (a smoke run, not for the record)")
    ap.add_argument("--only", type=int, nargs="*", choices=sorted(SECTIONS), default=None)
    ap.add_argument("--out", default="BENCHMARKS.md")
    ap.add_argument("--splice", action="store_true",
                    help="with --only: replace those sections (and their summary rows) in the existing --out, "
                         "keeping the rest of the report")
    args = ap.parse_args(argv)
    if args.splice and not args.only:
        ap.error("--splice needs --only (the sections to replace)")

    import importlib

    import torch

    from benchmarks.common import Section, load_average, machine, pin_threads
    threads = args.threads or torch.get_num_threads()
    pin_threads(threads)
    info = machine()
    load_before = load_average()
    t0 = time.perf_counter()
    sections = []
    for num in args.only or sorted(SECTIONS):
        mod_name, title = SECTIONS[num]
        print(f"[{num}] {title} ...", file=sys.stderr, flush=True)
        mod = importlib.import_module(f"benchmarks.{mod_name}")
        t = time.perf_counter()
        load = load_average()
        try:
            sec = mod.run(quick=args.quick, threads=threads) if mod_name in TAKES_THREADS else mod.run(quick=args.quick)
        except Exception as e:    # noqa: BLE001 - one broken section must not cost the others' numbers
            import traceback
            traceback.print_exc()
            sec = Section(f"{num}. {title}")
            sec.add(f"**This section failed: {type(e).__name__}: {e}** (traceback on stderr).", "")
        sec.seconds = time.perf_counter() - t
        sec.load_at_start = load
        sections.append(sec)
        print(f"    {sec.seconds:.0f} s", file=sys.stderr, flush=True)
    total = time.perf_counter() - t0
    text = render(info, threads, load_before, load_average(), total, sections, args)
    if args.splice:
        text = splice(Path(args.out).read_text(), text, sections, info["date"])
    Path(args.out).write_text(text)
    print(f"wrote {args.out} ({total:.0f} s)", file=sys.stderr)
    misses = [c for s in sections for c in s.checks if not c.passed]
    for c in misses:
        print(f"MISS: {c.name}: {c.value:.3g} (target {c.op} {c.target:g})", file=sys.stderr)
    return 0


def render(info, threads, load_before, load_after, total, sections, args) -> str:
    from benchmarks.common import fmt

    def la(x):
        return " / ".join(f"{v:.2f}" for v in x) if x else "n/a"
    cmd = "python -m benchmarks.run" + (f" --threads {args.threads}" if args.threads else "") + \
        (" --quick" if args.quick else "") + (f" --only {' '.join(map(str, args.only))}" if args.only else "")
    out = ["# Benchmarks", "",
           f"Written by `{cmd}` (`make bench`); do not edit by hand. Timings are medians of repeated, interleaved "
           "measurements after a warm-up; ratios are what the targets are about. "
           + ("**Quick run (fewer repetitions): not for the record.** " if args.quick else ""), "",
           "## Machine", "",
           "| | |", "|---|---|",
           f"| date | {info['date']} |",
           f"| CPU | {info['cpu']}, {info['cores']} logical cores |",
           f"| torch threads (pinned) | {threads} intra-op, 1 inter-op |",
           f"| torch / torchvision | {info['torch']} / {info['torchvision']} |",
           f"| python | {info['python']} |",
           f"| platform | {info['platform']} |",
           f"| CUDA | {'available' if info['cuda'] else 'none (no GPU lent in this session)'} |",
           f"| load average (1/5/15 min) before | {la(load_before)} |",
           f"| load average (1/5/15 min) after | {la(load_after)} |",
           f"| wall time of the whole run | {total:.0f} s |", ""]
    if load_before and load_before[0] > 0.5 * (os.cpu_count() or 1):
        out += [f"**The machine was busy when this ran (1-minute load {load_before[0]:.2f} on "
                f"{os.cpu_count()} cores): absolute times are inflated and noisier; rerun on a quiet machine.**", ""]
    out += ["## Summary", "",
            "| measurement | value | target | value / target | result | detail |",
            "|---|---|---|---|---|---|"]
    for s in sections:
        for c in s.checks:
            unit = "%" if c.unit == "%" else "x"
            out.append(f"| {c.name} | {fmt(c.value)}{unit} | {c.op} {c.target:g}{unit} | {c.vs_target:.2f} | "
                       f"{'PASS' if c.passed else '**MISS**'} | {c.note} |")
    out.append("")
    for s in sections:
        out += [f"## {s.title}", "",
                f"_{s.seconds:.0f} s; load average at start {la(getattr(s, 'load_at_start', None))}_", ""]
        out += s.lines
        if out[-1] != "":
            out.append("")
    return "\n".join(out).rstrip() + "\n"


def splice(old: str, new: str, sections, date: str) -> str:
    """``old`` (a whole report) with each of ``sections`` replaced by its rendering in ``new`` (a
    report of those sections alone), and their summary rows likewise; each replaced section says
    when it was rerun, since the report's machine table describes the whole run."""
    def block(text: str, title: str) -> tuple[int, int]:
        start = text.find(f"\n## {title}\n")
        if start < 0:
            raise SystemExit(f"--splice: section {title!r} not found in the existing report")
        end = text.find("\n## ", start + 1)
        return start + 1, (len(text) if end < 0 else end + 1)
    for s in sections:
        a, b = block(new, s.title)
        body = new[a:b].replace("\n\n_", f"\n\n_rerun alone ({date}); ", 1)
        a, b = block(old, s.title)
        old = old[:a] + body + old[b:]
        for c in s.checks:
            rows = [line for line in new.splitlines() if line.startswith(f"| {c.name} |")]
            old = "\n".join(rows[0] if line.startswith(f"| {c.name} |") else line for line in old.splitlines()) + "\n"
    return old


if __name__ == "__main__":
    sys.exit(main())
