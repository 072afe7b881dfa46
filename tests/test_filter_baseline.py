"""benchmarks/filter_baseline.py: Full beside the filter baseline (decision 68), per attribute, with the
paired difference over seeds, from the results.json files `search.evaluate` writes."""

import json
import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))

import filter_baseline  # noqa: E402

from fashionsearchnet_v2.retrieval import metrics, search  # noqa: E402


def _write(root, seed, shift, filtered=True):
    """A results.json of `search.evaluate` on a small random case (a stand-in model whose manipulation
    moves the query by `shift`)."""
    rng = np.random.default_rng(seed)
    num_values = [3, 4]
    q, g = (
        rng.integers(0, 3, (15, 2)) % np.array(num_values),
        rng.integers(0, 3, (80, 2)) % np.array(num_values),
    )
    m = metrics.enumerate_manipulations(q, g, num_values)
    own = rng.standard_normal((15, 4)).astype(np.float32)
    gallery = (rng.standard_normal((80, 4)) + g[:, :1]).astype(np.float32)
    predicted = np.where(rng.random(g.shape) < 0.8, g, 0)  # a classifier right 80% of the time
    out = search.evaluate(
        lambda i: own[m.query_index[i]] + shift * m.value[i, None], gallery, g, m, ["color", "sleeve"],
        ks=(1, 20), ndcg_k=20, unmanipulated_vectors_fn=lambda i: own[m.query_index[i]],
        gallery_filter_values=predicted if filtered else None,
    )  # fmt: skip
    d = root / f"seed{seed}" / "eval" / "full"
    d.mkdir(parents=True)
    (d / "results.json").write_text(json.dumps(out))
    return out


def test_rows_and_the_paired_difference_are_the_results_files_numbers(tmp_path):
    runs = [_write(tmp_path, 0, 1.0), _write(tmp_path, 1, 0.5)]
    lines = filter_baseline.table(str(tmp_path), [0, 1, 2], ["full", "rank_lg"], 20).splitlines()
    assert lines[0] == "**Full**, Top-20, seeds 0, 1"  # seed 2 has no results: left out, not filled in
    assert lines[2] == "| row | color | sleeve | avg |"

    def cells(label):
        row = next(ln for ln in lines if ln.startswith(f"| {label}"))
        return [c.strip() for c in row.strip("|").split("|")[1:]]

    def want(values, sign=""):
        return f"{np.mean(values):{sign}.3f} ± {np.std(values, ddof=1):.3f}"

    for a in ("color", "sleeve", "avg"):
        col = ["color", "sleeve", "avg"].index(a)
        full = [r["topk"]["20"][a] for r in runs]
        base = [r["filtered"]["unmanipulated"]["topk"]["20"][a] for r in runs]
        assert cells("the query manipulated")[col] == want(full)
        assert cells("filter baseline")[col] == want(base)
        assert cells("manipulated, among")[col] == want(
            [r["filtered"]["manipulated"]["topk"]["20"][a] for r in runs]
        )
        assert cells("manipulated − filter")[col] == want(np.subtract(full, base), "+")
    assert "Rank-LG: no results.json for seeds [0, 1, 2]" in lines


def test_results_written_before_the_filter_baseline_are_named_with_the_command_that_adds_it(tmp_path):
    _write(tmp_path, 0, 1.0, filtered=False)
    with pytest.raises(KeyError, match=r"seed0/eval/full/results.json was written before the filter baseline: "
                                       r"python -m experiments.evaluate --workdir=.*seed0 --variant=full"):  # fmt: skip
        filter_baseline.table(str(tmp_path), [0], ["full"], 20)


def test_filter_rows_and_the_plot_are_the_results_files_numbers(tmp_path):
    runs = [_write(tmp_path, 0, 1.0), _write(tmp_path, 1, 0.5)]
    rows = search.filter_rows(runs, 20)
    assert list(rows) == [name for name, _ in search.FILTER_ROWS]
    assert list(rows["manipulated"]) == ["color", "sleeve", "avg"]  # "all" left out
    assert rows["filter_baseline"]["color"] == [
        r["filtered"]["unmanipulated"]["topk"]["20"]["color"] for r in runs
    ]
    assert rows["unmanipulated"]["avg"] == [r["unmanipulated"]["topk"]["20"]["avg"] for r in runs]
    out = filter_baseline.plot(str(tmp_path), [0, 1, 2], "full", 20, str(tmp_path / "bars.png"))
    assert out == str(tmp_path / "bars.png") and os.path.getsize(out) > 1000
    with pytest.raises(KeyError, match="rank_lg/results.json for seeds"):
        filter_baseline.plot(str(tmp_path), [0], "rank_lg", 20, str(tmp_path / "none.png"))
    with pytest.raises(KeyError):
        search.filter_rows([{"topk": {"20": {"color": 0.5}}}], 20)  # written before the filter baseline
