"""The comparison table of every defense against every attack (``python -m ftsam.compare``): its
markdown layout and its errors (the runs themselves are the pipeline's, tested elsewhere)."""
from ftsam import compare
from ftsam.report import baseline_markdown

SUMMARY = {
    "badnets-a2o": {"backdoored": {"acc": 99.5, "asr": 100.0}, "clean_acc": 99.0,
                    "ft_sam": {"acc": 98.0, "asr": 1.0, "der": 98.75},
                    "nc": {"acc": 97.0, "asr": 0.0, "der": 98.75, "flagged": [0]},
                    "ac": {"acc": 99.0, "asr": 90.0, "der": 54.75, "precision": 12.5, "recall": None}},
    "blended": {"backdoored": {"acc": 98.0, "asr": 99.0}, "clean_acc": 99.0,
                "ft_sam": {"acc": 97.0, "asr": 2.0, "der": 98.0},
                "nc": {"acc": 98.0, "asr": 99.0, "der": 50.0, "flagged": []}},
}


def test_markdown_has_a_row_per_attack_and_a_column_per_defense_with_what_each_found():
    md = baseline_markdown(SUMMARY).splitlines()
    assert md[0] == "| attack (backdoored ACC/ASR) | FT-SAM | NC | AC |"
    assert md[1] == "|---|---|---|---|"
    assert md[2] == "| badnets-a2o (99.5/100.0) | 98.0/1.0/98.8 | 97.0/0.0/98.8 [0] | 99.0/90.0/54.8 (12.5/-) |"
    assert md[3] == "| blended (98.0/99.0) | 97.0/2.0/98.0 | 98.0/99.0/50.0 [] | – |"     # AC not run there
    assert len(md) == 4


def test_markdown_follows_the_order_of_the_defenses_asked_for():
    assert baseline_markdown(SUMMARY, ["nc", "ft_sam"]).splitlines()[0] == "| attack (backdoored ACC/ASR) | NC | FT-SAM |"


def test_an_unknown_defense_is_refused_with_the_valid_choices(capsys):
    assert compare.main(["--defenses", "ft_sam", "magic", "--attacks", "badnets-a2o"]) == 2
    err = capsys.readouterr().err
    assert "magic" in err and "ft_sam" in err and "nc" in err
