"""What every benchmark shares: thread pinning, interleaved median timing, the machine's
description, and the one result type the report is written from."""
from __future__ import annotations

import datetime as _dt
import os
import platform
import statistics
import time
from dataclasses import dataclass, field
from typing import Callable

import torch


@dataclass
class Check:
    """One measurement against its target: ``value <= target`` (``op="<="``) or ``>=``."""
    name: str
    value: float
    target: float
    op: str                     # "<=" or ">="
    unit: str = "x"
    note: str = ""

    @property
    def passed(self) -> bool:
        return self.value <= self.target if self.op == "<=" else self.value >= self.target

    @property
    def vs_target(self) -> float:
        return self.value / self.target if self.target else float("nan")


@dataclass
class Section:
    """A benchmark's contribution to BENCHMARKS.md: its checks, and markdown details."""
    title: str
    checks: list[Check] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def add(self, *lines: str) -> None:
        self.lines.extend(lines)

    def table(self, header: list[str], rows: list[list]) -> None:
        self.lines.append("| " + " | ".join(header) + " |")
        self.lines.append("|" + "|".join("---" for _ in header) + "|")
        for r in rows:
            self.lines.append("| " + " | ".join(fmt(v) for v in r) + " |")
        self.lines.append("")


def fmt(v) -> str:
    if isinstance(v, float):
        if v != v:
            return "n/a"
        if abs(v) >= 100:
            return f"{v:.0f}"
        if abs(v) >= 10:
            return f"{v:.1f}"
        return f"{v:.3g}" if abs(v) < 1 else f"{v:.2f}"
    return str(v)


def pin_threads(n: int) -> None:
    """Use ``n`` intra-op threads and 1 inter-op thread, for every benchmark alike."""
    torch.set_num_threads(n)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:        # already set (only possible before any parallel work)
        pass


def interleaved(fns: dict[str, Callable[[], object]], rounds: int, per_round: int = 1,
                warmup: int = 2) -> dict[str, list[float]]:
    """Time each function ``rounds * per_round`` times, alternating between them round by
    round so that a change of background load hits all alike. Returns every time (seconds)."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            for _ in range(per_round):
                t = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - t)
    return times


def median(xs: list[float]) -> float:
    return statistics.median(xs)


def ms(x: float) -> float:
    return 1e3 * x


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load_average() -> tuple[float, float, float] | None:
    try:
        return os.getloadavg()
    except OSError:
        return None


def machine() -> dict:
    import torchvision
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "platform": platform.platform(),
        "date": _dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
        "cuda": torch.cuda.is_available(),
        "mkldnn": torch.backends.mkldnn.is_available(),
    }


def rss_mb() -> float:
    """Current resident set size of this process (Linux /proc), in MiB."""
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, in MiB: VmHWM from /proc (Linux).

    Not ``ru_maxrss``: Linux carries that over an exec from the process that started this
    one (with vfork, the parent's peak), so a subprocess would report its parent's peak."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def fresh_process_json(module: str, *args: str) -> dict:
    """Run ``python -m module *args --out FILE`` in a fresh process (its own peak RSS, its own
    thread pool) and return the JSON it wrote to FILE."""
    import json
    import subprocess
    import sys
    import tempfile
    with tempfile.NamedTemporaryFile(suffix=".json") as f:
        subprocess.run([sys.executable, "-m", module, *args, "--out", f.name], check=True)
        with open(f.name) as g:
            return json.load(g)
