"""benchmarks/trace_ops.py: a profiler trace of a training step read back, op time by layer and type."""

import os
import sys

import keras
import numpy as np
import tensorflow as tf

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
import trace_ops  # noqa: E402


def test_group_of_names_layers_backward_and_optimizer():
    assert trace_ops.group_of("model/conv7_1/BiasAdd") == "conv7"
    assert trace_ops.group_of("gradient_tape/model/fc8_a5_1/MatMul") == "backward fc8"
    assert trace_ops.group_of("model/norm1_1/LRN") == "norm1"
    assert trace_ops.group_of("adam/Sub_203") == "optimizer update"
    assert trace_ops.group_of("Sum_98") == "other"


def test_a_traced_step_is_summed_by_layer_and_op_type(tmp_path):
    x = keras.Input((16, 16, 3))
    y = keras.layers.Conv2D(32, 3, name="conv1")(x)
    y = keras.layers.GlobalAveragePooling2D()(y)
    model = keras.Model(x, keras.layers.Dense(4, name="fc8_a")(y))
    opt = keras.optimizers.SGD(0.01)
    batch = tf.constant(np.random.default_rng(0).normal(size=(8, 16, 16, 3)).astype(np.float32))

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(tf.square(model(batch, training=True)))
        opt.apply_gradients(zip(tape.gradient(loss, model.trainable_variables), model.trainable_variables))
        return loss

    step()
    summary = trace_ops.summarize(trace_ops.trace(lambda: step().numpy(), 3, str(tmp_path)), 3, top=50)
    groups = {g: ms for g, ms, _ in summary["groups"]}
    assert {"conv1", "backward conv1", "fc8"} <= set(groups), groups
    assert summary["op_ms_per_step"] > 0 and abs(sum(s for _, _, s in summary["types"]) - 1) < 0.05
    assert "Conv2D" in " ".join(t for t, _, _ in summary["types"])
    assert "| conv1 |" in trace_ops.format_summary("step", summary)
