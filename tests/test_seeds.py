"""`experiments.main --seeds`: one work directory per seed and a table of mean ± std with the gain.

One row, Rank-L (stages 1 and 2): the aggregation is the same for every row, and stage 3 per seed only
added time (test_training.py and test_stage3.py train it)."""

import json
import os
import sys

import commands
import cv2

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_main_with_two_seeds_aggregates_mean_std_and_gain(tmp_path):
    data, work = tmp_path / "data", tmp_path / "work"
    env = {**os.environ, "PYTHONPATH": ROOT}
    done = commands.run(
        [sys.executable, "-m", "experiments.main", "--quick", "--seeds=0,1", "--variants=rank_l", f"--data_dir={data}", f"--workdir={work}"],
        cwd=ROOT, env=env, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert sorted(p for p in os.listdir(work) if p.startswith("seed")) == ["seed0", "seed1"]
    per_seed = []
    for s in (0, 1):
        with open(work / f"seed{s}" / "eval" / "rank_l" / "results.json", encoding="utf-8") as f:
            per_seed.append(json.load(f))
        assert os.path.isdir(work / f"seed{s}" / "stage1" / "ckpt")
    with open(work / "eval" / "table.json", encoding="utf-8") as f:
        table = json.load(f)
    assert table["seeds"] == [0, 1]
    cell = table["top20"]["rank_l"]["topk"]["avg"]
    values = [r["topk"]["20"]["avg"] for r in per_seed]
    assert cell["values"] == values
    assert abs(cell["mean"] - sum(values) / 2) < 1e-9
    assert abs(cell["std"] - abs(values[0] - values[1]) / 2**0.5) < 1e-9  # sample std of two values
    gain = table["top20"]["rank_l"]["gain"]["avg"]["values"]
    assert gain == [r["topk"]["20"]["avg"] - r["unmanipulated"]["topk"]["20"]["avg"] for r in per_seed]
    text = (work / "eval" / "table.md").read_text()
    assert "Gain" in text and "±" in text and "Manipulation gain at Top-20" in text
    assert "mean ± std over seeds 0, 1" in done.stdout
    # the filter baseline's bars (decision 68) of the one row, over both seeds
    figure = cv2.imread(str(work / "eval" / "filter_baseline.png"))
    assert figure is not None and figure.shape == (520, 800, 3)
