"""The divergence guard (issue 10, item 1): training stops at the first non-finite loss term or weight
without saving that step, and restoring, exporting, embedding and indexing refuse a diverged model,
naming the layer or output."""

import dataclasses
import io
import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from fashionsearchnet_v2 import configs
from fashionsearchnet_v2.data import synthetic
from fashionsearchnet_v2.model import memory_block, network
from fashionsearchnet_v2.serving import export, indexing
from fashionsearchnet_v2.serving import index as index_lib
from fashionsearchnet_v2.trained import checkpoints, loading
from fashionsearchnet_v2.training import guard, run, stages, trainer


class ToyTask(trainer.Task):
    """A linear regression task (the Trainer's `trainer.Task` interface); at step `fault_step` it makes the loss NaN, or (fault="statistic") sets a
    non-trainable statistic to inf while the loss stays finite, like an overflowing BatchNorm variance, or
    (fault="explode") multiplies the loss by 1e4 from that step on: finite, but exploded."""

    name = "toy"

    def __init__(self, fault_step: int, fault: str = "loss"):
        self.fault_step, self.fault = fault_step, fault

    def build_model(self):
        inputs = keras.Input((3,))
        self.bn = keras.layers.BatchNormalization(name="bn")
        return keras.Model(inputs, keras.layers.Dense(1, name="dense")(self.bn(inputs)))

    def build_optimizer(self, total_steps=None):
        return keras.optimizers.SGD(0.01)

    def initialize(self, model):
        return "toy"

    def build_inputs(self, seed, skip_steps=0):
        x = np.random.default_rng(seed).normal(size=(64, 3)).astype(np.float32)
        y = x.sum(axis=1, keepdims=True)
        return (
            tf.data.Dataset.from_tensor_slices((x, y)).batch(8, drop_remainder=True).repeat().skip(skip_steps)
        )

    def train_step(self, model, optimizer, batch, step):
        x, y = batch
        nan = tf.constant(np.nan, tf.float32)
        fault = tf.equal(step + 1, self.fault_step)
        with tf.GradientTape() as tape:
            err = tf.reduce_mean(tf.square(model(x) - y))
            if self.fault == "loss":
                err = tf.where(fault, nan, err)
            if self.fault == "explode":
                err = tf.where(step + 1 >= self.fault_step, 1e4 * err, err)
        grads = tape.gradient(err, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        if self.fault == "statistic":  # what a huge step does to BatchNorm's moving variance
            var = self.bn.moving_variance
            var.assign(tf.where(fault, tf.fill([3], np.inf), var))
        return {"loss": err, "L_toy": err}

    def scalars(self, sums, steps):
        return {k: float(v) / steps for k, v in sums.items()}

    def evaluate(self, model, step=None):
        return {}


def _toy_run(tmp_path, task, total=6, **bounds):
    return trainer.Trainer(task, str(tmp_path), tf.distribute.get_strategy(), total_steps=total, steps_per_epoch=total,
                           batch_size=8, log_every=2, checkpoint_every=2, out=io.StringIO(), **bounds).run()  # fmt: skip


@pytest.mark.parametrize(
    "fault,term,message",
    [
        ("loss", "L_toy", r"\[toy\] diverged at step 5: L_toy is nan"),
        (
            "statistic",
            "weights",
            r"\[toy\] diverged at step 5: the update made layer 'bn' \(bn/moving_variance: 3 of 3 non-finite\) non-finite while the losses were finite",
        ),
    ],
)
def test_first_nonfinite_step_stops_and_keeps_the_last_finite_checkpoint(tmp_path, fault, term, message):
    with pytest.raises(guard.DivergenceError, match=message) as e:
        _toy_run(tmp_path, ToyTask(fault_step=5, fault=fault))
    assert (e.value.stage, e.value.step, e.value.term) == ("toy", 5, term)
    assert "ckpt-4, is the last finite one" in str(e.value)
    # Nothing of step 5 (or later) was saved: the newest checkpoint is step 4's, and it is finite.
    latest = checkpoints.latest(os.path.join(tmp_path, "ckpt"))
    assert latest.endswith("ckpt-4")
    reader = tf.train.load_checkpoint(latest)
    for name in reader.get_variable_to_shape_map():
        value = reader.get_tensor(name)
        if isinstance(value, np.ndarray) and value.dtype.kind == "f":
            assert np.isfinite(value).all(), name


def test_a_finite_explosion_stops_like_a_nonfinite_loss(tmp_path):
    """Model Garden's loss_upper_bound idea: a loss that explodes and stays finite stops the run at the
    step where its running mean passes the bound, before that step is saved."""
    message = (
        r"\[toy\] diverged at step 5: the loss exploded while staying finite: its mean over the last 5 steps "
        r"is .*, more than --loss_growth_limit=100 times its first value"
    )
    with pytest.raises(guard.DivergenceError, match=message) as e:
        _toy_run(
            tmp_path, ToyTask(fault_step=5, fault="explode"), loss_upper_bound=1e6, loss_growth_limit=100
        )
    assert (e.value.stage, e.value.step, e.value.term) == ("toy", 5, "loss")
    assert "ckpt-4, was saved before the loss passed its bound" in str(e.value)
    assert checkpoints.latest(os.path.join(tmp_path, "ckpt")).endswith("ckpt-4")
    # Switched off (0), the same run finishes.
    _toy_run(
        tmp_path / "off", ToyTask(fault_step=5, fault="explode"), loss_upper_bound=0, loss_growth_limit=0
    )
    assert checkpoints.latest(os.path.join(tmp_path, "off", "ckpt")).endswith("ckpt-6")


def test_loss_bound_is_on_the_mean_of_the_last_steps():
    """Hand-computed, window 10: one spike does not stop a run, a loss that stays up does; the absolute
    bound holds from the first step; 0 switches a check off."""
    bound = guard.LossBound(upper_bound=0, growth_limit=100)
    assert [bound.exceeded(1.0) for _ in range(9)] == [None] * 9
    assert bound.exceeded(900.0) is None  # (9 + 900) / 10 = 90.9
    assert bound.exceeded(1.0) is None  # (8 + 900 + 1) / 10 = 90.9
    said = bound.exceeded(1000.0)  # (7 + 900 + 1 + 1000) / 10 = 190.8 > 100 x 1.0
    assert said == (
        "the loss exploded while staying finite: its mean over the last 10 steps is 191, more than "
        "--loss_growth_limit=100 times its first value 1"
    )
    assert guard.LossBound(1e6, 0).exceeded(2e6) == (
        "the loss exploded while staying finite: its mean over the last 1 step is 2e+06, above "
        "--loss_upper_bound=1e+06"
    )
    off = guard.LossBound(0, 0)
    assert [off.exceeded(x) for x in (1.0, 1e30, 1e30)] == [None] * 3


def test_a_loss_that_starts_near_zero_is_measured_from_the_floor():
    """Stage 3's L_G started at 3.05e-5 and was 0.008 a step later (a bfloat16 main job stopped there):
    that is not an explosion. Growth counts from max(first loss, 1); a run that starts at 3e-5 and then
    holds 150 still stops."""
    bound = guard.LossBound(upper_bound=1e6, growth_limit=100)
    assert [bound.exceeded(x) for x in (3.05e-5, 0.008253, 0.02, 0.5)] == [None] * 4
    spiking = guard.LossBound(upper_bound=0, growth_limit=100)
    assert spiking.exceeded(3.05e-5) is None
    assert spiking.exceeded(300.0) == (
        "the loss exploded while staying finite: its mean over the last 2 steps is 150, more than "
        "--loss_growth_limit=100 times 1 (its first value 3.05e-05 is below 1)"
    )


def test_the_guard_costs_little(tmp_path):
    """The check is one reduction per variable inside the step: on a stage-2-sized variable set (the
    tiny test network here, so the bound is loose) it must cost far less than a step."""
    model = network.build_network([8, 4, 4], ["a", "b", "c"], _tiny_model_config(), "full")
    variables = guard.checked_variables(model, keras.optimizers.SGD(0.01))
    check = tf.function(lambda: guard.all_finite(variables))
    assert bool(check())
    check()
    reps = 20
    import time

    t0 = time.perf_counter()
    for _ in range(reps):
        check()
    per_call = (time.perf_counter() - t0) / reps
    assert per_call < 0.05, per_call  # the tiny network's training step takes ~0.1-0.3 s here


def _tiny_model_config():
    return configs.quick(configs.ExperimentConfig()).model


def _config(workdir, **train):
    cfg = configs.quick(configs.ExperimentConfig(dataset="synthetic", workdir=str(workdir)))
    cfg.train = dataclasses.replace(cfg.train, **train)
    return cfg


def _poison(workdir, info, cfg, layer_name="conv3"):
    """Rewrites stage 1's newest checkpoint with a NaN in `layer_name`'s kernel (as a checkpoint written
    by a diverged run before the guard existed)."""
    task = stages.Stage1Task(cfg, info, str(workdir), tf.distribute.get_strategy())
    model, optimizer = task.build_model(), task.build_optimizer(cfg.train.max_steps)
    optimizer.build(model.trainable_variables)
    step = tf.Variable(0, dtype=tf.int64)
    ckpt = checkpoints.stage_checkpoint(model, optimizer, step)
    path = checkpoints.latest(os.path.join(workdir, "stage1", "ckpt"))
    ckpt.restore(path).assert_existing_objects_matched()
    w = model.get_layer(layer_name).weights[0]
    value = w.numpy()
    value.flat[0] = np.nan
    w.assign(value)
    ckpt.write(path)


def test_restoring_a_diverged_stage_is_refused_naming_the_layer(info, tmp_path):
    cfg = _config(tmp_path, max_steps=2)
    run.run_stage1(cfg, info, out=io.StringIO())
    _poison(tmp_path, info, cfg)
    with pytest.raises(checkpoints.NonFiniteError, match=r"non-finite weights in layer conv3 \(conv3/"):
        loading.load_stage1(str(tmp_path), info)
    with pytest.raises(checkpoints.NonFiniteError, match="layer conv3"):
        run.run_stage2(cfg, info, out=io.StringIO())  # stage 2 does not build on it
    with pytest.raises(checkpoints.NonFiniteError, match="layer conv3"):
        run.run_stage1(_config(tmp_path, max_steps=4), info, out=io.StringIO())  # nor does a resume


VOCAB = export.Vocabulary(tuple(synthetic.ATTRIBUTES))


def _module(poison_global: bool = False, poison_net: bool = False):
    cfg = dataclasses.replace(_tiny_model_config(), box_backend="tf")
    net = network.build_network(VOCAB.num_values, VOCAB.names, cfg, "full")
    rng = np.random.default_rng(0)
    memory = rng.normal(size=(sum(VOCAB.num_values), cfg.fc10_size)).astype(np.float32)
    if poison_global:
        memory[0, 0] = np.inf
    if poison_net:  # (a NaN in a conv kernel can vanish behind ReLU and max-pooling; fc10 is linear)
        layer_name = next(layer.name for layer in net.layers if layer.name.startswith("fc10_"))
        w = net.get_layer(layer_name).weights[0]
        w.assign(np.full(w.shape, np.nan, np.float32))
    layer = memory_block.identity_global_layer(memory, VOCAB.num_values)
    return export.ServingModule(net, layer, VOCAB, cfg.image_size)


def test_export_refuses_nonfinite_weights_naming_the_layer(tmp_path):
    with pytest.raises(export.ExportError, match=r"non-finite weights in layer fc10_color \(fc10_color/"):
        export.save(_module(poison_net=True), VOCAB, str(tmp_path / "e" / "1"))
    with pytest.raises(export.ExportError, match="layer global_representation"):
        export.save(_module(poison_global=True), VOCAB, str(tmp_path / "e" / "1"))
    assert not os.path.exists(tmp_path / "e" / "1")


def test_embed_and_index_refuse_nonfinite_outputs(tmp_path, monkeypatch):
    """An export whose outputs are not finite (as one written before exports were checked): `embed`
    fails naming the output, and an index built from its vectors is refused before anything is written."""
    module = _module(poison_global=True, poison_net=True)
    with pytest.raises(export.ExportError, match="non-finite weights"):
        export.save(module, VOCAB, str(tmp_path / "e" / "1"))
    monkeypatch.setattr(export, "check_finite_module", lambda module: None)
    with pytest.raises(export.ExportError, match="embed is not finite on a test image .*output"):
        export.save(module, VOCAB, str(tmp_path / "e" / "1"))
    assert not (tmp_path / "e" / "1").exists()
    monkeypatch.setattr(export, "probe_vector", lambda module: None)  # as written before both checks
    out = export.save(module, VOCAB, str(tmp_path / "e" / "1"))
    assert "probe" not in json.loads((tmp_path / "e" / "1" / export.EXPORT_JSON).read_text())
    model = export.ExportedModel(out)
    image = np.zeros((40, 50, 3), np.uint8)
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"embed: output \w+ is not finite"):
        model.embed([image])
    fake = {"global_representation": np.full((2, 4), np.nan, np.float32),
            "predicted_values": np.zeros((2, 6), np.int32), "predicted_probabilities": np.ones((2, 6), np.float32)}  # fmt: skip
    with pytest.raises(
        index_lib.IndexFileError, match=r"non-finite global representations for 2 of 2 images \(first: a\)"
    ):
        indexing._from_embeddings(model, fake, ["a", "b"], ["", ""], np.zeros((2, 6)), {})
    # manipulate refuses NaN attribute representations, and a manipulation through the poisoned memory
    # block is refused instead of answered with inf.
    fc10 = np.zeros((1, 6, 16), np.float32)
    with pytest.raises(tf.errors.InvalidArgumentError, match="attribute_representations holds NaN or inf"):
        model.manipulate(fc10 + np.nan, [[-1]], [[-1]])
    with pytest.raises(
        tf.errors.InvalidArgumentError, match="manipulate: output global_representation is not finite"
    ):
        model.manipulate(fc10, [[0]], [[0]])


def test_global_model_of_stage3_is_checked_too(tmp_path):
    model = memory_block.build_global_model([2, 3], 4, 5, update_memory=True)
    layer = model.get_layer("global_representation")
    layer.memory_block.assign(np.full((5, 4), np.nan, np.float32))
    with pytest.raises(checkpoints.NonFiniteError, match="global_representation"):
        checkpoints.check_finite(checkpoints.layer_dict(model), "stage 3")
