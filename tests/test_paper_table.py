"""benchmarks/paper_table.py: our Table 1 rows beside the paper's, with the differences, and the Top-K
curves with the paper's Top-20 marked (issue 25)."""

import json
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))

import paper_table  # noqa: E402

NAMES = paper_table.PAPER["celeba"]["attributes"]


def _results(root, seed, variant, level, base):
    d = root / f"seed{seed}" / "eval" / variant
    d.mkdir(parents=True)
    top = {str(k): {**{n: level * k / 20 for n in NAMES}, "avg": level * k / 20} for k in (1, 10, 20)}
    gain = {"topk": {"20": {**{n: level - base for n in NAMES}, "avg": level - base}}}
    (d / "results.json").write_text(json.dumps({"topk": top, "gain": gain}))


def test_rows_beside_the_paper_with_differences_and_missing_rows_said(tmp_path):
    _results(tmp_path, 0, "full", 0.70, 0.30)
    _results(tmp_path, 1, "full", 0.60, 0.30)
    _results(tmp_path, 0, "rank_lg_untrained", 0.50, 0.30)
    lines = paper_table.table(str(tmp_path), "celeba", [0, 1]).splitlines()
    full = lines.index(next(ln for ln in lines if ln.startswith("| Full | ours")))
    assert lines[full].startswith("| Full | ours, 2 seeds | 0.650 ± 0.071 |")
    assert lines[full].endswith("| +0.350 ± 0.071 |")
    assert lines[full + 1].startswith("| | paper | 0.841 |") and "| 0.775 |" in lines[full + 1]
    assert (
        lines[full + 2]
        == "| | ours − paper | "
        + " | ".join(f"{0.65 - p:+.3f}" for p in paper_table.PAPER["celeba"]["rows"]["full"])
        + " | |"
    )
    assert any(ln.startswith("| AMNet | ours: no results.json |") for ln in lines)
    untrained = lines.index(next(ln for ln in lines if ln.startswith("| Rank-LG, untrained")))
    assert "ours, 1 seed |" in lines[untrained]
    # the paper has no such row: no paper line follows it
    assert lines[untrained + 1].startswith("| Rank-LG |")
    assert lines[2].startswith("| AMNet, untrained | ours: no results.json |")  # AMNet's control comes first


def test_mean_curves_and_the_paper_marks(tmp_path):
    _results(tmp_path, 0, "full", 0.70, 0.30)
    _results(tmp_path, 1, "full", 0.60, 0.30)
    _results(tmp_path, 0, "rank_lg_untrained", 0.50, 0.30)
    curves, marks = paper_table.mean_curves(str(tmp_path), "celeba", [0, 1])
    assert list(curves) == ["Rank-LG, untrained", "Full"]  # Table 1's order, rows with results only
    assert curves["Full"] == pytest.approx({1: 0.65 / 20, 10: 0.325, 20: 0.65})
    assert marks == {"Full": (20, 0.775)}


def test_variants_choose_the_rows_and_an_unknown_row_is_named(tmp_path):
    _results(tmp_path, 0, "full", 0.70, 0.30)
    _results(tmp_path, 0, "rank_lg", 0.60, 0.30)
    lines = paper_table.table(str(tmp_path), "celeba", [0], variants=("full", "rank_lg")).splitlines()
    ours = [ln.split(" | ")[0] for ln in lines if "| ours, " in ln]
    assert ours == ["| Rank-LG", "| Full"]  # Table 1's order, whatever the order asked; no AMNet line
    with pytest.raises(ValueError, match="unknown rows \\['ful'\\]"):
        paper_table.table(str(tmp_path), "celeba", [0], variants=("ful",))


def test_gains_per_attribute_with_spread_and_small_gains_marked(tmp_path):
    _results(tmp_path, 0, "full", 0.70, 0.30)  # gain +0.40 on every attribute
    _results(tmp_path, 1, "full", 0.60, 0.30)  # +0.30
    _results(tmp_path, 0, "rank_l", 0.35, 0.30)  # +0.05: under the floor
    _results(tmp_path, 0, "rank_lg_untrained", 0.31, 0.30)  # a control: never marked
    lines = paper_table.gains_table(str(tmp_path), "celeba", [0, 1]).splitlines()
    assert [ln.split(" | ")[0] for ln in lines[2:]] == ["| Rank-L", "| Rank-LG, untrained", "| Full"]
    full = lines[4].split(" | ")
    assert full[1] == "2" and full[2] == "+0.350 ± 0.071" and full[-1] == "+0.350 ± 0.071 |"
    assert lines[2].count("+0.050 †") == len(NAMES) + 1
    assert "†" not in lines[3] and "+0.010" in lines[3]
