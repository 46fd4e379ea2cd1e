"""The benchmark report's machinery (not its numbers, which are measurements): rerunning some
sections replaces them, and only them, in the existing report."""
from __future__ import annotations

import pytest

from benchmarks.common import Section
from benchmarks.gpu_path import recorded_gpu_runs
from benchmarks.run import splice

OLD = """# Benchmarks

## Summary

| measurement | value |
|---|---|
| a ratio | 1.00x |
| b ratio | 2.00x |

## 1. One

_3 s; load_

old one

## 2. Two

_4 s; load_

old two
"""


class _Check:
    name = "b ratio"


def test_splice_replaces_the_rerun_section_and_its_summary_row_only():
    new = "# Benchmarks\n\n## Summary\n\n| b ratio | 9.00x |\n\n## 2. Two\n\n_5 s; load_\n\nnew two\n"
    sec = Section("2. Two")
    sec.checks.append(_Check())
    out = splice(OLD, new, [sec], "2026-11-28 04:00 UTC")
    assert "old one" in out and "| a ratio | 1.00x |" in out
    assert "old two" not in out and "new two" in out
    assert "| b ratio | 9.00x |" in out and "| b ratio | 2.00x |" not in out
    assert "_rerun alone (2026-11-28 04:00 UTC); 5 s; load_" in out
    assert out.index("## 1. One") < out.index("## 2. Two")


def test_splice_names_a_section_missing_from_the_report():
    with pytest.raises(SystemExit, match="3. Three"):
        splice(OLD, "## 3. Three\n\nx\n", [Section("3. Three")], "now")


def test_recorded_gpu_rows_render_with_their_device_and_derived_epoch_times(tmp_path):
    import json
    base = {"date": "2026-11-28", "gpu": "Some GPU", "gpu_torch": "2.x", "measurement": "alone",
            "overrides": "{}", "FT s": 1.0, "FT-SAM s": 2.0}
    rows = [{**base, "run": "preact64_e1", "attack_s": 10.0}, {**base, "run": "preact64_e3", "attack_s": 16.0,
                                                                "FT s": 3.0, "FT-SAM s": 6.0}]
    (tmp_path / "x.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    sec = Section("5. GPU path")
    recorded_gpu_runs(sec, tmp_path)
    text = "\n".join(sec.lines)
    assert "Some GPU" in text and "one epoch of attack training 3.0 s" in text
    assert "of FT 1.00 s and of FT-SAM 2.00 s" in text
    empty = Section("5. GPU path")
    recorded_gpu_runs(empty, tmp_path / "none")
    assert empty.lines == []
