"""The fused optimiser updates (training/optimizers.py) against Keras' own, and their checkpoints."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from fashionsearchnet_v2.training import optimizers, trainer

SHAPES = [(37, 19), (19,), (3, 3, 4, 8)]


def _run(optimizer, steps=6, seed=0):
    rng = np.random.default_rng(seed)
    variables = [tf.Variable(rng.normal(size=s).astype(np.float32)) for s in SHAPES]
    optimizer.build(variables)
    grads = [[tf.constant(rng.normal(size=s).astype(np.float32)) for s in SHAPES] for _ in range(steps)]

    @tf.function
    def apply(g):
        optimizer.apply_gradients(zip(g, variables))

    for g in grads:
        apply(g)
    return [v.numpy() for v in variables], optimizer


@pytest.mark.parametrize(
    "make",
    [
        lambda fused: trainer.make_optimizer("adam", 1e-2, 0.0, "constant", 10, fused=fused),
        lambda fused: trainer.make_optimizer("sgd", 0.1, 0.0, "constant", 10, fused=fused),
        lambda fused: trainer.make_optimizer("sgd", 0.1, 0.9, "constant", 10, fused=fused),
        lambda fused: trainer.make_optimizer("adam", 1e-2, 0.0, "cosine", 10, warmup_steps=3, fused=fused),
    ],
    ids=["adam", "sgd", "sgd_momentum", "adam_warmup_cosine"],
)
def test_fused_update_equals_keras_update(make):
    fused, fused_opt = _run(make(True))
    plain, plain_opt = _run(make(False))
    assert type(fused_opt).__name__.startswith("Fused") and not type(plain_opt).__name__.startswith("Fused")
    start = [np.random.default_rng(0).normal(size=s).astype(np.float32) for s in SHAPES]
    for f, p, s in zip(fused, plain, start):
        assert not np.allclose(p, s)  # the weights moved
        # The same arithmetic: equal up to float32 rounding of a few operations per step.
        np.testing.assert_allclose(f, p, rtol=1e-5, atol=1e-6)


def test_fused_adam_checkpoint_loads_into_keras_adam(tmp_path):
    weights, fused = _run(trainer.make_optimizer("adam", 1e-2, 0.0, "constant", 10, fused=True))
    variables = [tf.Variable(w) for w in weights]
    ckpt = tf.train.Checkpoint(optimizer=fused, variables=variables)
    path = ckpt.save(str(tmp_path / "ckpt"))
    plain = trainer.make_optimizer("adam", 1e-2, 0.0, "constant", 10, fused=False)
    fresh = [tf.Variable(tf.zeros_like(w)) for w in weights]
    plain.build(fresh)
    tf.train.Checkpoint(optimizer=plain, variables=fresh).restore(path).assert_consumed()
    assert int(plain.iterations.numpy()) == 6
    for a, b in zip(fused.variables, plain.variables):
        np.testing.assert_array_equal(a.numpy(), b.numpy())  # slots, step count: Keras' own


def test_fused_falls_back_where_kernels_do_not_apply():
    """AMSGrad has no fused kernel: FusedAdam then runs Keras' update (so the results stay Keras')."""
    a, _ = _run(optimizers.FusedAdam(learning_rate=1e-2, amsgrad=True))
    b, _ = _run(keras.optimizers.Adam(learning_rate=1e-2, amsgrad=True))
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
