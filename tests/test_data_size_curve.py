"""benchmarks/data_size_curve.py: Top-K per training-set size read from each run's results.json, the fit
in ln(n) and its extrapolation (issue 25, item 4)."""

import json
import math
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))

import data_size_curve  # noqa: E402


def _results(workdir, seed, variant, avg, base):
    d = workdir / f"seed{seed}" / "eval" / variant
    d.mkdir(parents=True)
    topk = {"20": {"hair_color": avg, "avg": avg, "all": avg}}
    gain = {"topk": {"20": {"hair_color": avg - base, "avg": avg - base}}}
    (d / "results.json").write_text(json.dumps({"topk": topk, "gain": gain}))


def test_collect_fit_and_extrapolate(tmp_path):
    # Full follows 0.1 + 0.05 ln(n) exactly on two seeds offset by +-0.01; w/o Rank is missing at one size.
    runs = {}
    for n in (1000, 4000, 16000):
        runs[n] = str(tmp_path / f"train{n}")
        for seed, offset in ((0, -0.01), (1, 0.01)):
            _results(tmp_path / f"train{n}", seed, "full", 0.1 + 0.05 * math.log(n) + offset, 0.2)
        if n != 4000:
            _results(tmp_path / f"train{n}", 0, "wo_rank", 0.3, 0.25)
    data = data_size_curve.collect(runs, [0, 1], ["full", "wo_rank"], 20)
    assert data["full"]["avg"][4000] == pytest.approx(
        [0.09 + 0.05 * math.log(4000), 0.11 + 0.05 * math.log(4000)]
    )
    assert sorted(data["wo_rank"]["avg"]) == [1000, 16000]
    a, b = data_size_curve.fit_log(data["full"]["avg"])
    assert a == pytest.approx(0.1) and b == pytest.approx(0.05)
    at, lo, hi = data_size_curve.extrapolate(data["full"]["avg"], 182599)
    assert (
        at == pytest.approx(0.1 + 0.05 * math.log(182599))
        and lo == pytest.approx(at)
        and hi == pytest.approx(at)
    )
    assert data_size_curve.fit_log({1000: [0.5, 0.6]}) is None  # one size: no fit
    text = data_size_curve.report(data, [1000, 4000, 16000], 20, 0.775, 182599)
    assert "| wo_rank | 4,000 | not run | not run |" in text
    assert f"at 182,599 images {at:.3f}" in text and "11.4x the largest size run" in text


def test_leaving_a_size_out_shows_a_bent_curve(tmp_path):
    # A curve that flattens: the fit leaving out the largest size extrapolates higher than the others.
    points = {1000: [0.40], 4000: [0.60], 16000: [0.65]}
    at, lo, hi = data_size_curve.extrapolate(points, 182599)
    assert lo < at < hi
    assert hi == pytest.approx(0.40 + (0.20 / math.log(4)) * math.log(182599 / 1000))


def test_the_recipe_after_the_double_dash_is_passed_on_unparsed():
    args, recipe = data_size_curve.parse_args(
        ["--data_dirs=a,b", "--workdir=w", "--seeds=0,1", "--", "--epochs=2", "--batch_norm"]
    )
    assert args.data_dirs == "a,b" and args.seeds == "0,1" and recipe == ["--epochs=2", "--batch_norm"]
    assert data_size_curve.parse_args(["--data_dirs=a", "--workdir=w"])[1] == []
