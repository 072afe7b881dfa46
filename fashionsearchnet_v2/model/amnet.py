"""AMNet, the baseline of Table 1 (Zhao et al., CVPR 2017, "Memory-augmented attribute manipulation
networks for interactive fashion search"), on this project's backbone and data pipeline.

AMNet keeps a memory of attribute-value prototypes, reads it with a manipulation vector and fuses what
it reads with the query image's feature into the representation used for retrieval:

    f      = image feature                                  [B, F]   (here: GAP(conv7) of stage 1)
    t      = manipulation indicator, +1 desired value,
             -1 the value to remove, 0 elsewhere             [B, C]
    r      = t M                                            [B, Dm]  (memory read; M learned, starting
                                                                      at the values' prototypes: Dm = F)
    e      = ReLU(W_f [f ; r] + b)                           [B, De]  (fusion)
    logits = W_c e                                          [B, C]   (attribute prediction)
    embedding = e / ‖e‖                                     [B, De]  (ranked by the triplet loss; searched)

trained with a triplet ranking loss on e (anchor: manipulated query, positive: an image with the target
attributes, negative: a random image) plus attribute prediction of the target attributes. Gallery
images are embedded with t = 0. What this reproduction had to assume is listed in WORKSPACE.md (A1-A12).
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from fashionsearchnet_v2 import precision as precision_lib
from fashionsearchnet_v2.model import memory_block


def signed_manipulation(labels, attributes, values, num_values) -> np.ndarray:
    """AMNet's t [B, C]: +1 at each search's new value, -1 at the query's current value of that attribute."""
    attributes = np.asarray(attributes, np.int64)
    t = memory_block.manipulations(attributes, values, num_values)
    offsets, rows = memory_block.value_offsets(num_values), np.arange(len(attributes))
    old = np.asarray(labels)[rows, attributes]
    known = old >= 0
    t[rows[known], offsets[attributes[known]] + old[known]] = -1.0
    return t


def prototypes(features, labels, num_values) -> np.ndarray:
    """AMNet's memory start [C, F]: per attribute value, the mean feature of the images with that value
    (a value no image has stays zero); unlabelled (-1) entries are ignored."""
    features = np.asarray(features, np.float32)
    n, f = features.shape
    view = np.broadcast_to(features[:, None, :], (n, len(num_values), f))
    return memory_block.build_memory_block(view, labels, num_values)[0]


@keras.saving.register_keras_serializable(package="fashionsearchnet_v2")
class AmnetMemory(keras.layers.Layer):
    """r = t M: the memory block of attribute prototypes [C, Dm], read with a signed indicator t."""

    def __init__(self, num_values, dim=256, **kwargs):
        super().__init__(**kwargs)
        self.num_values, self.dim = [int(n) for n in num_values], int(dim)

    def build(self, input_shape):
        self.memory = self.add_weight(
            name="memory",
            shape=(sum(self.num_values), self.dim),
            initializer=keras.initializers.RandomNormal(0.0, 0.1),
        )

    def call(self, t):
        return tf.matmul(t, self.memory)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.dim)

    def get_config(self):
        return {**super().get_config(), "num_values": self.num_values, "dim": self.dim}


def build_amnet(
    num_values, feature_dim: int, memory_dim: int = 256, embedding_dim: int = 256, precision: str = "float32"
) -> keras.Model:
    """{features [B, F], manipulation [B, C]} -> {"embedding": [B, De], "logits": [B, C]}, float32.

    The embedding is L2-normalised inside the model: the margin triplet ranks normalised vectors, so the
    search must rank the same ones (searching the raw fusion output ranks by a norm the loss never saw).
    `precision` "bfloat16" computes the fusion layer in bfloat16; the memory, the attribute logits and
    the normalised embedding (the distances) stay float32, as do all variables.
    """
    policy = precision_lib.layer_policy(precision)
    features = keras.Input((feature_dim,), name="features")
    t = keras.Input((sum(num_values),), name="manipulation")
    r = AmnetMemory(num_values, memory_dim, name="amnet_memory", dtype="float32")(t)
    fused = keras.layers.Concatenate(name="amnet_concat", dtype=policy)([features, r])
    e = keras.layers.Dense(embedding_dim, activation="relu", name="amnet_fusion", dtype=policy)(fused)
    logits = keras.layers.Dense(sum(num_values), name="amnet_attributes", dtype="float32")(e)
    embedding = keras.layers.UnitNormalization(axis=-1, name="amnet_embedding", dtype="float32")(e)
    return keras.Model(
        {"features": features, "manipulation": t}, {"embedding": embedding, "logits": logits}, name="amnet"
    )


def margin_triplet(anchor, positive, negative, margin: float = 0.2):
    """max(0, m + ‖a−p‖² − ‖a−n‖²) on L2-normalised [B, D] embeddings -> [B] (AMNet's ranking loss).

    The model's embeddings are already unit vectors; normalising again changes nothing and keeps the loss
    correct for raw inputs."""
    a, p, n = (tf.math.l2_normalize(x, axis=-1) for x in (anchor, positive, negative))
    d_ap = tf.reduce_sum(tf.square(a - p), -1)
    d_an = tf.reduce_sum(tf.square(a - n), -1)
    return tf.nn.relu(margin + d_ap - d_an)
