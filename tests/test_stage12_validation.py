"""benchmarks/stage12_validation.py (decision 72): settings of stages 1-2 compared on the validation split
with the carve left out of their training; the arms, the command lines, the paired table, one real run."""

import json
import os
import sys

import commands
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))

import stage12_validation as sv  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_arms_are_named_flag_sets_in_the_order_given():
    arms = sv.parse_arms(["epochs4=--epochs=4", "big=--epochs=4 --batch_size=64"])
    assert list(arms) == ["epochs4", "big"] and arms["big"] == ["--epochs=4", "--batch_size=64"]
    for bad, message in [(["nope"], "NAME=FLAGS"), (["a=--x", "a=--y"], "twice"), (["a=epochs"], "start with --"),
                         ([], "at least one")]:  # fmt: skip
        with pytest.raises(ValueError, match=message):
            sv.parse_arms(bad)


def test_both_stages_leave_the_carve_out_with_the_arms_flags_last():
    stage1, stage2 = sv.stage_commands("d", "w/a", ["--epochs=3"], ["--batch_norm"], 1)
    assert stage1[2:] == ["experiments.stage1", "--data_dir=d", "--workdir=w/a", "--seed=1", "--exclude_validation",
                          "--batch_norm", "--epochs=3"]  # fmt: skip
    assert stage2[2:4] == ["experiments.stage2", "--variant=rank_l"] and stage2[4:] == stage1[3:]


def _scored(root, arm, seed, avg, names):
    d = root / arm / f"seed{seed}"
    d.mkdir(parents=True)
    top = {n: avg for n in names} | {"avg": avg}
    results = {"k": 4, "topk": {"4": top}, "unmanipulated": {"topk": {"4": {"avg": 0.1}}},
               "gain": {"topk": {"4": {"avg": avg - 0.1}}}}  # fmt: skip
    (d / sv.SCORES).write_text(json.dumps(results))


def test_the_table_pairs_each_arm_with_the_first_by_seed(tmp_path):
    names = ["color", "hem"]
    for arm, seed, avg in [
        ("e4", 0, 0.50),
        ("e6", 0, 0.55),
        ("e4", 1, 0.52),
        ("e6", 1, 0.53),
        ("e3", 0, 0.4),
    ]:
        _scored(tmp_path, arm, seed, avg, names)
    scored = sv.scored_runs(str(tmp_path), ["e4", "e6", "e3"])
    text = sv.table(scored, ["e4", "e6", "e3"], names)
    assert [ln.split(" | ")[:2] for ln in text.splitlines() if ln.startswith("| e")] == [
        ["| e4", "0"], ["| e4", "1"], ["| e6", "0"], ["| e6", "1"], ["| e3", "0"]]  # fmt: skip
    assert "e6 − e4, validation Top-K avg, paired over 2 seed(s): +0.030 ± 0.028 (+0.050, +0.010)" in text
    assert "e3 − e4, validation Top-K avg, paired over 1 seed(s): -0.100 (one seed: no spread)" in text


def test_a_real_run_trains_both_stages_without_the_carve_and_scores_them(data_dir, tmp_path):
    work = tmp_path / "study"
    done = commands.run(
        [sys.executable, "benchmarks/stage12_validation.py", f"--data_dir={data_dir}", f"--workdir={work}",
         "--arm=two=--max_steps=2", "--seeds=0", "--flags=--image_size=64 --batch_size=8"],
        cwd=REPO, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    config = json.loads((work / "two" / "seed0" / "stage2_rank_l" / "config.json").read_text())
    assert config["train"]["exclude_validation"] is True and config["train"]["max_steps"] == 2
    scores = json.loads((work / "two" / "seed0" / sv.SCORES).read_text())
    assert str(scores["k"]) in scores["topk"] and (work / "stage12_validation.md").is_file()
