"""Every defense against every attack on one setting: the layout of the supplement's Tables 1-7
at whatever scale the params file sets. ``python -m ftsam.compare [--params P] [--defenses ...]``
trains (or reuses from the cache) each attack's backdoored model, applies each defense, prints
ACC / ASR / RA / DER (and a detection defense's precision and recall of flagged samples), and
writes the numbers to ``results/compare/<params>.json``.

Every defense runs with the one setting its params-file section gives, the same for every
attack: nothing here is tuned per attack."""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from ftsam.config import ConfigError, load_config
from ftsam.defenses import REGISTRY, defense_class
from ftsam.experiment import AttackTable, attack_table
from ftsam.io import save_json
from ftsam.report import baseline_markdown, defense_table

ATTACKS = ("badnets-a2o", "badnets-a2a", "blended", "sig", "lf", "ssba", "trojan", "wanet", "input_aware", "cla")


def compare(params: str | Path, attacks=ATTACKS, defenses=None, cache_dir: str | Path = "runs",
            device: str = "auto") -> AttackTable:
    """:func:`ftsam.experiment.attack_table` with every registered defense by default."""
    defenses = tuple(defenses or REGISTRY)
    for name in defenses:
        defense_class(name)            # an unknown name lists the defenses there are
    return attack_table(load_config(params), list(attacks), cache_dir=cache_dir, device=device, defenses=defenses)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--params", default="params/offline.yaml", help="a params/*.yaml file (default: %(default)s)")
    ap.add_argument("--attacks", nargs="+", default=list(ATTACKS), help="attack specs (default: the ten of the tables)")
    ap.add_argument("--defenses", nargs="+", help=f"defenses (default: all: {', '.join(REGISTRY)})")
    ap.add_argument("--cache-dir", default="runs", help="where trained models are cached (default: %(default)s)")
    ap.add_argument("--results-dir", default="results/compare", help="where the JSON goes (default: %(default)s)")
    ap.add_argument("--device", default="auto", help="auto, cpu or cuda (default: %(default)s)")
    args = ap.parse_args(argv)
    t0 = time.time()
    try:
        table = compare(args.params, args.attacks, args.defenses, args.cache_dir, args.device)
    except ConfigError as e:
        print(f"ftsam.compare: {e}", file=sys.stderr)
        return 2
    print(defense_table(table.runs, table.results))
    out = Path(args.results_dir) / f"{Path(args.params).stem}.json"
    summary = table.summary()
    save_json(out, {"params": str(args.params), "clean_acc": table.clean_acc, "table": summary,
                    "not_applicable": table.skipped,
                    "seconds": round(time.time() - t0, 1)})
    for label, why in table.skipped.items():
        for d, reason in why.items():
            print(f"not applicable: {label} / {d}: {reason}")
    print("\n" + baseline_markdown(summary, list(args.defenses or REGISTRY)))
    print(f"\nwritten: {out} ({time.time() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
