"""The attribute memory block M, attribute manipulation and the global representation (§3.3, Eq. 7).

M [C, D] holds one prototype attribute representation per attribute value (C = all values of all
attributes). A manipulation is a multi-hot t [C] with at most one value per attribute: for every
attribute a it names, g_a = t_a M replaces the query's fc10_a (the paper changes one attribute; several
at once is its future work, supported here). The global representation is
F = [fc10_1 λ_1, ..., g λ_a, ..., fc10_A λ_A] w_r, of dimension r.
"""

from __future__ import annotations

from collections.abc import Sequence

import keras
import numpy as np
import tensorflow as tf


def value_to_attribute(num_values: Sequence[int]) -> np.ndarray:
    """E [C, A]: E[c, a] = 1 when memory row c is a value of attribute a."""
    e = np.zeros((sum(num_values), len(num_values)), np.float32)
    start = 0
    for a, n in enumerate(num_values):
        e[start : start + n, a] = 1.0
        start += n
    return e


def build_memory_block(
    fc10: np.ndarray, labels: np.ndarray, num_values: Sequence[int]
) -> tuple[np.ndarray, np.ndarray]:
    """Means of the training representations per attribute value (§3.3).

    Args:
        fc10: [N, A, D] attribute representations of the training images.
        labels: [N, A] int, -1 = unlabelled (ignored).
    Returns:
        M [C, D] float32 (a value no image has stays zero) and counts [C] int.
    """
    fc10 = np.asarray(fc10, np.float32)
    labels = np.asarray(labels)
    n, a_count, d = fc10.shape
    if labels.shape != (n, a_count) or len(num_values) != a_count:
        raise ValueError(
            f"fc10 {fc10.shape}, labels {labels.shape} and {len(num_values)} attributes disagree"
        )
    memory = np.zeros((sum(num_values), d), np.float64)
    counts = np.zeros(sum(num_values), np.int64)
    start = 0
    for a, nv in enumerate(num_values):
        y = labels[:, a]
        ok = y >= 0
        np.add.at(memory, start + y[ok], fc10[ok, a])
        counts[start : start + nv] = np.bincount(y[ok], minlength=nv)
        start += nv
    memory /= np.maximum(counts, 1)[:, None]
    return memory.astype(np.float32), counts


def value_offsets(num_values: Sequence[int]) -> np.ndarray:
    """[A] int64: where each attribute's values start among the C = Σ num_values entries of t and M."""
    return np.concatenate([[0], np.cumsum(num_values)[:-1]]).astype(np.int64)


def manipulations(attributes, values, num_values: Sequence[int]) -> np.ndarray:
    """The manipulation indicator t of §3.3 for n searches of one manipulation each: [n, C] float32, 1 at
    `values[i]` of attribute `attributes[i]` (int [n] each). The one encoder of t, numpy side; the
    signature's graph uses `manipulations_tf`."""
    attributes, values = np.asarray(attributes, np.int64), np.asarray(values, np.int64)
    t = np.zeros((len(attributes), int(sum(num_values))), np.float32)
    t[np.arange(len(attributes)), value_offsets(num_values)[attributes] + values] = 1.0
    return t


def manipulations_tf(attributes, values, num_values: Sequence[int]) -> tf.Tensor:
    """`manipulations` in TensorFlow for several manipulations per search: int [N, M] attributes and values
    (-1 = unused slot) -> multi-hot t [N, C] float32. Indices are not checked here (the caller asserts)."""
    used = attributes >= 0
    safe = tf.where(used, attributes, 0)
    offsets = tf.constant(value_offsets(num_values).astype(np.int32))
    index = tf.where(used, tf.gather(offsets, safe) + values, -1)
    return tf.reduce_sum(tf.one_hot(index, int(sum(num_values)), dtype=tf.float32), axis=1)


def manipulation_vector(manipulations_: Sequence[tuple[int, int]], num_values: Sequence[int]) -> np.ndarray:
    """[(attribute, value), ...] -> multi-hot t [C] of one search; one value per attribute at most."""
    seen = set()
    for a, v in manipulations_:
        if a in seen:
            raise ValueError(f"attribute {a} is manipulated twice")
        if not 0 <= v < num_values[a]:
            raise ValueError(f"value {v} is outside 0..{num_values[a] - 1} for attribute {a}")
        seen.add(a)
    pairs = np.asarray(list(manipulations_), np.int64).reshape(-1, 2)
    return manipulations(pairs[:, 0], pairs[:, 1], num_values).sum(axis=0)


def manipulate(fc10, t, memory, value_attr):
    """Replaces the manipulated attributes' representations with their memory prototypes.

    Args:
        fc10: [B, A, D]; t: [B, C] multi-hot (all zero = no manipulation); memory: [C, D];
        value_attr: E [C, A] from `value_to_attribute`.
    Returns:
        [B, A, D] with fc10[b, a] replaced by g = t_a M wherever t names a value of attribute a.
    """
    t = tf.convert_to_tensor(t, tf.float32)
    replaced = tf.matmul(t, value_attr) > 0  # [B, A]
    g = tf.einsum("bc,cd,ca->bad", t, memory, value_attr)
    return tf.where(replaced[..., None], g, fc10)


@keras.saving.register_keras_serializable(package="fashionsearchnet_v2")
class GlobalRepresentation(keras.layers.Layer):
    """Eq. 7: λ-weighted attribute representations, manipulated from M, reduced by w_r to dimension r.

    Inputs [fc10 [B, A, D], t [B, C]] -> F [B, r]. Weights: `lambda` [A] (init 1), `w_r` [A*D, r],
    `memory_block` [C, D] (trainable only with update_memory: the paper's Full vs Rank-LG); `train_w_r=False`
    keeps w_r at its start (only λ, and M with update_memory, learn).
    `identity=True` gives the plain concatenation (no λ, no w_r; r = A*D), the representation of the
    Table 1 rows trained without global ranking (w/o Rank, Rank, Rank-L). `normalize=True` divides F by
    its norm (L_G then compares unit vectors and the search ranks them; see Stage3Config.normalize).
    """

    def __init__(
        self,
        num_values,
        dim,
        r=256,
        update_memory=False,
        identity=False,
        normalize=False,
        train_w_r=True,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.normalize, self.train_w_r = bool(normalize), bool(train_w_r)
        self.num_values = [int(n) for n in num_values]
        self.dim, self.r, self.update_memory, self.identity = (
            int(dim),
            int(r),
            bool(update_memory),
            bool(identity),
        )
        self.value_attr = tf.constant(value_to_attribute(self.num_values))

    @property
    def output_dim(self) -> int:
        return len(self.num_values) * self.dim if self.identity else self.r

    def build(self, input_shape):
        a, c = len(self.num_values), sum(self.num_values)
        self.memory_block = self.add_weight(
            name="memory_block", shape=(c, self.dim), initializer="zeros", trainable=self.update_memory
        )
        if not self.identity:
            self.lambdas = self.add_weight(name="lambda", shape=(a,), initializer="ones")
            self.w_r = self.add_weight(
                name="w_r",
                shape=(a * self.dim, self.r),
                initializer="glorot_uniform",
                trainable=self.train_w_r,
            )

    def call(self, inputs):
        fc10, t = inputs
        x = manipulate(fc10, t, self.memory_block, self.value_attr)
        if not self.identity:
            x = x * self.lambdas[None, :, None]
        flat = tf.reshape(x, [-1, len(self.num_values) * self.dim])
        out = flat if self.identity else tf.matmul(flat, self.w_r)
        return tf.math.l2_normalize(out, axis=-1) if self.normalize else out

    def compute_output_shape(self, input_shape):
        return (input_shape[0][0], self.output_dim)

    def get_config(self):
        return {
            **super().get_config(),
            "num_values": self.num_values,
            "dim": self.dim,
            "r": self.r,
            "update_memory": self.update_memory,
            "identity": self.identity,
            "normalize": self.normalize,
            "train_w_r": self.train_w_r,
        }


def identity_global_layer(memory: np.ndarray, num_values: Sequence[int]) -> GlobalRepresentation:
    """The plain-concatenation global layer of the variants without stage 3 (w_r = I, λ = 1), holding
    memory block M [C, D]."""
    memory = np.asarray(memory, np.float32)
    layer = GlobalRepresentation(num_values, memory.shape[1], identity=True, name="global_representation")
    layer.build([(None, len(num_values), memory.shape[1]), (None, sum(num_values))])
    layer.memory_block.assign(memory)
    return layer


def build_global_model(
    num_values, dim, r=256, update_memory=False, identity=False, normalize=False, train_w_r=True
) -> keras.Model:
    """Functional model {fc10 [B, A, D], manipulation [B, C]} -> {"global": [B, r]}."""
    fc10 = keras.Input((len(num_values), dim), name="fc10")
    t = keras.Input((sum(num_values),), name="manipulation")
    layer = GlobalRepresentation(
        num_values, dim, r, update_memory, identity, normalize, train_w_r, name="global_representation"
    )
    return keras.Model(
        {"fc10": fc10, "manipulation": t}, {"global": layer([fc10, t])}, name="global_representation"
    )
