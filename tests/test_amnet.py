"""AMNet as issue 24 asks: its training step lowers the triplet loss, its validation images never enter
a triplet or the memory's prototypes, its selection reads only the training split, its untrained
control is its step 0, and AMNet before issue 24 stays reachable."""

import dataclasses
import io
import json
import os

import numpy as np
import tensorflow as tf
from tensorboard.backend.event_processing import event_accumulator
from test_stage3 import _record_reads

from fashionsearchnet_v2 import configs
from fashionsearchnet_v2.data import schema
from fashionsearchnet_v2.model import amnet
from fashionsearchnet_v2.retrieval import validation
from fashionsearchnet_v2.trained import loading
from fashionsearchnet_v2.training import amnet as amnet_training
from fashionsearchnet_v2.training import amnet_selection, run, trainer

NUM_VALUES = [3, 2, 4]
KEYS = ("anchor", "manipulation", "target", "positive", "positive_labels", "negative", "negative_labels")


def _fake_gap(n=900, dim=12, seed=0):
    """Stage-1 features that carry every label (a sum of per-value directions, plus noise)."""
    rng = np.random.default_rng(seed)
    labels = np.stack([rng.integers(v, size=n) for v in NUM_VALUES], axis=1)
    directions = [rng.normal(size=(v, dim)) for v in NUM_VALUES]
    gap = sum(directions[a][labels[:, a]] for a in range(3)) + 0.5 * rng.normal(size=(n, dim))
    return {"gap": gap.astype(np.float32), "labels": labels, "ids": np.array([f"x{i}" for i in range(n)])}


def _info():
    attrs = [schema.Attribute(f"a{i}", [f"v{j}" for j in range(n)]) for i, n in enumerate(NUM_VALUES)]
    return schema.DatasetInfo(name="fake", attributes=attrs, splits={"train": 900}, seed=0, source="test")


def _task(feats, workdir=None, **am):
    cfg = configs.ExperimentConfig(stage="amnet")
    cfg.train = dataclasses.replace(cfg.train, precision="float32")
    cfg.amnet = dataclasses.replace(cfg.amnet, memory_dim=8, embedding_dim=8, batch_size=32, **am)
    return amnet_training.AmnetTask(cfg, _info(), feats, workdir)


def _train(task, workdir, steps, steps_per_call=1):
    return trainer.Trainer(task, str(workdir), trainer.make_strategy("default"), total_steps=steps,
                           steps_per_epoch=min(task.steps_per_epoch(), steps), batch_size=32, log_every=10,
                           checkpoint_every=10**6, steps_per_call=steps_per_call, out=io.StringIO()).run()  # fmt: skip


def test_several_steps_per_call_train_the_same_amnet(tmp_path):
    """AMNet trains 100 steps per call by default (decision P8): the same weights bit for bit as step by step."""
    feats = _fake_gap()
    weights = [_train(_task(feats), tmp_path / f"n{n}", 40, steps_per_call=n).get_weights() for n in (1, 7)]
    assert len(weights[0]) == len(weights[1])
    assert all(np.array_equal(a, b) for a, b in zip(*weights))
    one_step = _train(_task(feats), tmp_path / "one", 1).get_weights()
    assert not all(np.array_equal(a, b) for a, b in zip(weights[1], one_step))  # the 40 steps did run


def test_the_amnet_step_reduces_the_triplet_loss(tmp_path):
    feats = _fake_gap()
    task = _task(feats, learning_rate=1e-2)
    fixed = dict(zip(KEYS, task._fixed_triplets(task.features, task.labels, limit=512)))
    start = task.build_model()
    task.initialize(start)
    before = float(np.mean(task.batch_losses(start, fixed, False)[0]))
    model = _train(task, tmp_path, 150)
    after = float(np.mean(task.batch_losses(model, fixed, False)[0]))
    assert before > 0.05 and after < 0.5 * before, (before, after)
    # The ranking loss is logged (TensorBoard) and falls there too.
    acc = event_accumulator.EventAccumulator(os.path.join(tmp_path, "tb"), size_guidance={"tensors": 0})
    acc.Reload()
    logged = [float(tf.make_ndarray(event.tensor_proto)) for event in acc.Tensors("L_rank")]
    assert len(logged) >= 10 and np.mean(logged[-3:]) < 0.5 * logged[0]


def test_validation_images_never_enter_a_triplet_or_the_prototypes():
    feats = _fake_gap()
    task = _task(feats)
    held = validation.carve(feats["ids"], task.am.validation_fraction)
    assert set(task.ids).isdisjoint(feats["ids"][held]) and len(task.ids) == (~held).sum()
    assert task.validation is not None and len(task.validation) > 50
    train_rows = {r.tobytes() for r in feats["gap"][~held]}
    batch = next(task._batches(0))
    for part in (batch[0], batch[3], batch[5]):  # anchors, positives, negatives
        assert all(r.tobytes() in train_rows for r in part)
    np.testing.assert_allclose(
        task.memory, amnet.prototypes(feats["gap"][~held], feats["labels"][~held], NUM_VALUES), rtol=1e-6
    )
    # A prototype is its value's mean feature: color 1's row is the mean of the images with color 1.
    rows = feats["labels"][~held][:, 0] == 1
    np.testing.assert_allclose(task.memory[1], feats["gap"][~held][rows].mean(0), rtol=1e-5, atol=1e-6)
    # The validation searches read AMNet's signed indicator: +1 at the new value, -1 at the query's.
    t, m = task.validation._t, task.validation.manipulations
    assert (t == 1).sum(1).tolist() == [1] * len(m) and (t == -1).sum(1).tolist() == [1] * len(m)


def test_amnet_reads_only_the_training_split_and_the_control_is_its_step_0(info, tmp_path, monkeypatch):
    cfg = configs.quick(configs.ExperimentConfig(dataset="synthetic", workdir=str(tmp_path)))
    run.run_stage1(cfg, info, out=io.StringIO())
    read = _record_reads(monkeypatch)
    # The selection: two candidates on validation only.
    rows = amnet_selection.run_selection(
        cfg, info, ["old", "proto-adam1e-3"], str(tmp_path / "sel"), epochs=1.0, out=io.StringIO()
    )
    assert [r["name"] for r in rows] == ["old", "proto-adam1e-3"]
    # AMNet at a zero learning rate stays where it started; the control is that start, saved.
    still = dataclasses.replace(
        cfg, amnet=dataclasses.replace(cfg.amnet, learning_rate=0.0, select_on_validation=False)
    )
    model = run.run_amnet(still, info, out=io.StringIO())
    control = run.run_amnet_untrained(cfg, info, out=io.StringIO())
    assert set(read) == {"train"}, f"AMNet read {sorted(set(read))}"
    for x, y in zip(model.weights, control.weights):
        np.testing.assert_array_equal(x.numpy(), y.numpy())
    dim = control.get_layer("amnet_memory").memory.shape[1]  # prototypes: the feature's width
    kept, _ = loading.load_amnet(str(tmp_path / "amnet_untrained"), info, dim)
    for x, y in zip(kept.weights, control.weights):
        np.testing.assert_array_equal(x.numpy(), y.numpy())
    kept = run.run_amnet_untrained(cfg, info, out=io.StringIO())  # already saved: loaded, not rebuilt
    for x, y in zip(kept.weights, control.weights):
        np.testing.assert_array_equal(x.numpy(), y.numpy())


def test_selection_keeps_step_0_when_learning_makes_validation_worse(tmp_path):
    task = _task(
        _fake_gap(), str(tmp_path), optimizer="sgd", learning_rate=100.0, lambda_attr=0.0, margin=0.2
    )
    _train(task, tmp_path, 40)
    with open(os.path.join(tmp_path, "selection.json"), encoding="utf-8") as f:
        sel = json.load(f)
    assert sel["history"][0]["step"] == 0 and len(sel["history"]) >= 2
    assert sel["history"][-1]["top20"] < sel["history"][0]["top20"]
    assert sel["selected"]["step"] == 0


def test_old_amnet_stays_reachable_and_old_directories_read_as_it():
    old = configs.old_amnet(configs.AmnetConfig())
    assert (old.memory_init, old.sampling, old.optimizer, old.learning_rate, old.epochs) == (
        "random", "images", "sgd", 0.01, 2.0
    )  # fmt: skip
    assert old.validation_fraction == 0.0 and not old.select_on_validation
    obj = configs.ExperimentConfig().to_json()
    obj.pop("amnet")  # a config.json written before issue 24
    assert configs.ExperimentConfig.from_json(obj).amnet == old
    assert (
        configs.ExperimentConfig.from_json(configs.ExperimentConfig().to_json()).amnet
        == configs.AmnetConfig()
    )


def test_every_candidate_is_a_valid_config_within_stage_3s_budget():
    assert len(amnet_selection.CANDIDATES) <= amnet_selection.BUDGET == 25
    cfg = configs.ExperimentConfig()
    for name in amnet_selection.CANDIDATES:
        am = amnet_selection.candidate_config(cfg, name, 2.0).amnet
        assert am.select_on_validation and am.validation_fraction == 0.2 and am.epochs == 2.0
    # Candidates mean what they meant when the search ran, whatever the defaults it chose.
    base = amnet_selection.candidate_config(cfg, "proto-adam1e-3", 6.0).amnet
    assert (base.margin, base.lambda_attr, base.learning_rate) == (0.2, 1.0, 1e-3)
    assert (
        amnet_selection.candidate_config(cfg, "proto-adam1e-3-attr0.1-m0.5", 6.0).amnet
        == configs.AmnetConfig()
    )
