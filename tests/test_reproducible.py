"""Same seed, same command, same machine: the same checkpoints and the same results.json (issue 9);
another seed gives other weights."""

import dataclasses
import io
import json
import os

import numpy as np
import pytest
import tensorflow as tf

from fashionsearchnet_v2 import configs
from fashionsearchnet_v2.training import ablation, run


def _cfg(workdir, seed):
    cfg = configs.quick(configs.ExperimentConfig(dataset="synthetic", workdir=str(workdir)))
    cfg.train = dataclasses.replace(cfg.train, seed=seed, max_steps=3)
    cfg.stage3 = dataclasses.replace(cfg.stage3, seed=seed, max_steps=3)
    return cfg


def _variables(ckpt_dir):
    path = tf.train.latest_checkpoint(ckpt_dir)
    reader = tf.train.load_checkpoint(path)
    return {
        name: reader.get_tensor(name) for name, _ in tf.train.list_variables(path) if "VARIABLE_VALUE" in name
    }


def _run(info, tmp_path, name, seed):
    cfg = _cfg(tmp_path / name / f"seed{seed}", seed)
    log = io.StringIO()
    ablation.run_ablation([cfg], info, ["full", "amnet"], str(tmp_path / name / "eval"), out=log)
    # Stage 1 is trained once for both rows, not entered again for AMNet to find it finished.
    assert log.getvalue().count("=== stage 1:") == 1 and "already trained" not in log.getvalue()
    assert (
        f"=== Table 1, seed {seed}: 0 of 2 rows evaluated already; to train and evaluate: Full · AMNet"
        in log.getvalue()
    )
    with open(os.path.join(cfg.workdir, "eval", "full", "results.json"), encoding="utf-8") as f:
        results = json.load(f)
    results.pop("seconds")
    return cfg.workdir, results


def test_same_seed_same_checkpoints_and_results(info, tmp_path):
    a_dir, a = _run(info, tmp_path, "a", seed=3)
    # Run again, as a resumed run of hours is: the plan says both rows are done, and nothing trains.
    again = io.StringIO()
    ablation.run_ablation([_cfg(a_dir, 3)], info, ["full", "amnet"], str(tmp_path / "a" / "eval"), out=again)
    assert "=== Table 1, seed 3: 2 of 2 rows evaluated already (Full · AMNet)\n" in again.getvalue()
    assert "=== evaluate" not in again.getvalue()
    b_dir, b = _run(info, tmp_path, "b", seed=3)
    assert a == b
    for stage in ("stage1", "stage2_rank_l", "stage3_rank_l_full", "amnet"):
        va, vb = (
            _variables(os.path.join(a_dir, stage, "ckpt")),
            _variables(os.path.join(b_dir, stage, "ckpt")),
        )
        assert va.keys() == vb.keys() and va
        for name in va:
            np.testing.assert_array_equal(va[name], vb[name], err_msg=f"{stage}: {name}")
    # Another seed starts elsewhere: the stage-1 weights differ (stage 1 alone is enough to show it).
    c_cfg = _cfg(tmp_path / "c" / "seed4", 4)
    run.run_stage1(c_cfg, info, out=io.StringIO())
    va, vc = (
        _variables(os.path.join(a_dir, "stage1", "ckpt")),
        _variables(os.path.join(c_cfg.workdir, "stage1", "ckpt")),
    )
    assert any(not np.array_equal(va[n], vc[n]) for n in va if n.startswith("conv1"))


def test_triplet_sampler_says_when_no_positive_exists():
    from fashionsearchnet_v2.training.stage3 import GlobalTripletSampler

    # Two images that differ in both attributes: changing one attribute never gives the other image.
    sampler = GlobalTripletSampler(np.array([[0, 0], [1, 1]]), [2, 2], seed=0)
    with pytest.raises(ValueError, match="too small for its attribute combinations"):
        sampler.batch(np.random.default_rng(0), 4, max_draws=5)
    # With a partner that differs in one attribute, batches come.
    sampler = GlobalTripletSampler(np.array([[0, 0], [1, 0]]), [2, 2], seed=0)
    anchors, attrs, values, positives = sampler.batch(np.random.default_rng(0), 4)
    np.testing.assert_array_equal(attrs, 0)
    np.testing.assert_array_equal(positives, 1 - anchors)
