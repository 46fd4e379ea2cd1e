"""The sanitizer `make nbval` hands nbval (tests/nbval_sanitize.cfg): outputs that differ only in
the numbers a CPU's rounding moves (and the column widths that follow them) compare equal; a
changed word, label or row does not."""
import re
from pathlib import Path

from nbval.plugin import get_sanitize_patterns

CFG = Path(__file__).with_name("nbval_sanitize.cfg")


def sanitize(text: str) -> str:
    for regex, replace in get_sanitize_patterns(CFG.read_text()):
        text = re.sub(regex, replace, text)
    return text


XEON = """variant                                    backdoored          FT    FT-SAM
-----------------------------------------  ----------  ----------  --------
v02 badnets 4px white top_right t0 r0.030  100.0/99.8   99.6/94.8  98.9/4.7
loss -1.5e-03 after 40 epochs
epoch 1 Spearman +0.12 Input-aware True True"""
EPYC = """variant                                    backdoored          FT     FT-SAM
-----------------------------------------  ----------  ----------  ---------
v02 badnets 4px white top_right t0 r0.030   99.8/99.8   99.3/98.5  98.4/20.7
loss 2.25e-02 after 40 epochs
epoch 1 Spearman -0.05 Input-aware False True"""


def test_rounding_differences_compare_equal():
    assert sanitize(XEON) == sanitize(EPYC)


def test_words_and_rows_still_count():
    assert sanitize(XEON) != sanitize(XEON.replace("FT-SAM", "FT-l2"))
    assert sanitize(XEON) != sanitize(XEON.replace("top_right", "top_left"))
    assert sanitize(XEON) != sanitize(XEON + "\nv03 badnets 4px white top_left t5 r0.080  1/2  3/4  5/6")


def test_make_nbval_uses_it():
    makefile = (CFG.parent.parent / "Makefile").read_text()
    assert "--nbval-sanitize-with tests/nbval_sanitize.cfg" in makefile


def test_committed_outputs_hold_no_stderr():
    # A warning on stderr carries the checkout's absolute path (/work/main/... here, /check/work/...
    # on CI), which no sanitizer should have to guess; and a warning in a reference is a defect of
    # the notebook (session 16: pyplot's "more than 20 figures" in notebook 13 failed CI).
    import json

    for path in sorted((CFG.parent.parent / "notebooks").glob("*.ipynb")):
        for cell in json.loads(path.read_text())["cells"]:
            for out in cell.get("outputs", []):
                assert not (out.get("output_type") == "stream" and out.get("name") == "stderr"), \
                    (path.name, "".join(cell.get("source", ""))[:80], "".join(out["text"])[:300])
