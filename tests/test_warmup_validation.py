"""benchmarks/warmup_validation.py (issue 25, step 0): the table it writes keeps every run scored in its
work directory, whichever command scored it, with the warm-up's paired difference per seed."""

import json
import os
import sys

import commands

from fashionsearchnet_v2.data import schema

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _scored(root, recipe, warmup, seed, avg, names):
    d = root / f"{recipe}-warmup{warmup}" / f"seed{seed}"
    d.mkdir(parents=True)
    top = {n: avg for n in names} | {"avg": avg}
    results = {"k": 4, "topk": {"4": top}, "unmanipulated": {"topk": {"4": {"avg": 0.1}}},
               "gain": {"topk": {"4": {"avg": avg - 0.1}}}}  # fmt: skip
    (d / "validation_rank_l.json").write_text(json.dumps(results))


def test_the_written_table_keeps_earlier_runs_and_pairs_by_seed(data_dir, tmp_path):
    names = schema.load_dataset_info(data_dir).attribute_names
    for warmup, seed, avg in [(0, 0, 0.40), (100, 0, 0.35), (0, 1, 0.41), (100, 1, 0.36)]:
        _scored(tmp_path, "adam_bn", warmup, seed, avg, names)
    _scored(tmp_path, "sgd", 100, 0, 0.30, names)  # no warm-up-0 partner: listed, not paired
    (tmp_path / "notes-warmupX").mkdir()  # not a run directory: ignored
    # This command asks for one run only (already scored): the file still gets all five.
    done = commands.run(
        [sys.executable, "benchmarks/warmup_validation.py", f"--data_dir={data_dir}", f"--workdir={tmp_path}",
         "--recipes=adam_bn", "--warmups=100", "--seeds=1", "--table_only"],
        cwd=REPO, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    text = (tmp_path / "warmup_validation.md").read_text()
    rows = [ln for ln in text.splitlines() if ln.startswith("| adam_bn") or ln.startswith("| sgd")]
    assert [ln.split(" | ")[:3] for ln in rows] == [["| adam_bn", "0", "0"], ["| adam_bn", "0", "1"],
                                                   ["| adam_bn", "100", "0"], ["| adam_bn", "100", "1"],
                                                   ["| sgd", "100", "0"]]  # fmt: skip
    assert (
        "adam_bn: warm-up 100 − warm-up 0, validation Top-K avg, paired over 2 seed(s): -0.050 ± 0.000"
        in text
    )
    assert "sgd: warm-up" not in text
