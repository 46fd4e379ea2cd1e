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


def grid(attack_runs: dict, variants: dict[str, dict]) -> str:
    """The layout of the supplement's Tables 8 and 9: one row per variant, one column per attack
    with ACC/ASR/DER, and the average. ``variants[name][attack]`` is a DefenseRun."""
    attacks = list(attack_runs)
    rows = [["Backdoored"] + [f"{attack_runs[a].metrics['acc']:.1f}/{attack_runs[a].metrics['asr']:.1f}/-" for a in attacks]
            + [f"{mean(attack_runs[a].metrics['acc'] for a in attacks):.1f}/{mean(attack_runs[a].metrics['asr'] for a in attacks):.1f}/-"]]
    for name, by_attack in variants.items():
        ms = [by_attack[a].metrics for a in attacks]
        rows.append([name] + [f"{m['acc']:.1f}/{m['asr']:.1f}/{m['der']:.1f}" for m in ms]
                    + ["/".join(f"{mean(m[k] for m in ms):.1f}" for k in ("acc", "asr", "der"))])
    return table(["ACC/ASR/DER"] + attacks + ["Avg"], rows)


def mean(values) -> float:
    values = list(values)
    return sum(values) / len(values)


def paper_vs_ours(table_no: int, ours: dict) -> str:
    """The supplement's Table ``table_no`` beside our numbers, one row per cell we have.

    ``ours[(attack, defense)]`` is a dict with "acc", "asr" and optionally "der" (percent), or
    anything with such a ``.metrics`` (a DefenseRun, an AttackRun for the "Backdoored" row).
    Keys use the labels of :mod:`ftsam.paper_tables` (e.g. ("BadNets-A2O", "FT-SAM"),
    ("Blended", "w/ Adaptive"), ("Trojan", "gamma=0.05")). Each metric gets the paper's value,
    ours and the difference ours - paper; "-" where either side has none (a cell the paper
    does not print, Backdoored DER, Table 5 DER). Rows follow the paper's order; cells the
    paper lacks come last."""
    from ftsam.paper_tables import METRICS, TABLES

    if table_no not in TABLES:
        raise KeyError(f"no Table {table_no!r} in the supplement; valid: {sorted(TABLES)}")
    t = TABLES[table_no]
    order = {key: i for i, key in enumerate(t.rows)}
    rank = {key: (order.get(tuple(key), len(order)), i) for i, key in enumerate(ours)}
    keys = sorted(ours, key=rank.__getitem__)
    two = lambda v: "-" if v is None else f"{v:.2f}"  # noqa: E731
    rows = []
    for key in keys:
        mine = getattr(ours[key], "metrics", ours[key])
        paper = t.rows.get(tuple(key), {})
        row = list(key)
        for m in METRICS:
            p, o = paper.get(m), mine.get(m)
            row += [two(p), two(o), "-" if p is None or o is None else f"{o - p:+.2f}"]
        rows.append(row)
    header = ["attack", "defense"] + [f"{m.upper()}{s}" for m in METRICS for s in (" paper", " ours", " diff")]
    title = (f"Table {t.number}: {t.dataset}, {t.model}, {t.poisoning_ratio:g}% poisoning, "
             f"{t.clean_ratio:g}% clean data (diff = ours - paper)")
    return title + "\n" + table(header, rows)


def baseline_markdown(summary: dict, defenses: list[str] | None = None) -> str:
    """The layout of the supplement's Tables 1-4: one row per attack (its backdoored ACC/ASR), one
    column per defense with ACC / ASR / DER in %, from :meth:`ftsam.experiment.AttackTable.summary`
    (what ``python -m ftsam.compare`` writes). A defense that flags training samples adds its
    precision / recall in parentheses; one that reports flagged classes (NC) adds them in brackets.
    Markdown, for the README and notes."""
    from ftsam.defenses import defense_class
    skip = {"backdoored", "clean_acc"}
    defenses = defenses or list(dict.fromkeys(d for row in summary.values() for d in row if d not in skip))
    titles = [defense_class(d).title for d in defenses]
    lines = ["| attack (backdoored ACC/ASR) | " + " | ".join(titles) + " |", "|---" * (len(defenses) + 1) + "|"]
    for attack, row in summary.items():
        bd = row["backdoored"]
        cells = [f"{attack} ({bd['acc']:.1f}/{bd['asr']:.1f})"]
        for d in defenses:
            m = row.get(d)
            if m is None:
                cells.append("–")
                continue
            cell = f"{m['acc']:.1f}/{m['asr']:.1f}/{m['der']:.1f}"
            if "precision" in m:
                cell += f" ({fmt(m['precision'])}/{fmt(m['recall'])})"
            if "flagged" in m:
                cell += f" [{','.join(map(str, m['flagged']))}]"
            cells.append(cell)
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)
