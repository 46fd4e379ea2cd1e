"""Plain-text result tables (stable across runs, so nbval can compare them)."""
from __future__ import annotations


def fmt(v) -> str:
    if v is None:
        return "-"
    return f"{v:.1f}" if isinstance(v, float) else str(v)


def table(header: list[str], rows: list[list]) -> str:
    cells = [header] + [[fmt(v) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    line = lambda r: "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths)))  # noqa: E731
    return "\n".join([line(cells[0]), "  ".join("-" * w for w in widths)] + [line(r) for r in cells[1:]])


def defense_table(attack_runs: dict, defense_runs: dict) -> str:
    """Backdoored ACC/ASR/RA and, per defense, ACC/ASR/RA/DER: one row per (attack, model)."""
    rows = []
    for attack, run in attack_runs.items():
        m = run.metrics
        rows.append([attack, "Backdoored", m["acc"], m["asr"], m["ra"], None])
        for dr in defense_runs.get(attack, {}).values():
            d = dr.metrics
            rows.append([attack, dr.title, d["acc"], d["asr"], d["ra"], d["der"]])
    return table(["attack", "model", "ACC", "ASR", "RA", "DER"], rows)
