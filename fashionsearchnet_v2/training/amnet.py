"""Training of the AMNet baseline on fixed stage-1 features (see model/amnet.py).

AMNet's CNN is this project's stage-1 network (attribute classification on the same backbone); its
memory and fusion network are trained here on GAP(conv7) features computed once, with the triplet
ranking loss and attribute prediction, the same way stage 3 trains on fixed features.
"""

from __future__ import annotations

import itertools

import numpy as np
import tensorflow as tf

from fashionsearchnet_v2 import losses, precision
from fashionsearchnet_v2.model import amnet, network
from fashionsearchnet_v2.training import trainer
from fashionsearchnet_v2.training.stage3 import GlobalTripletSampler, primed


class AmnetTask(trainer.FixedFeatureTask):
    """Trains AMNet's memory, fusion and attribute layers: margin triplet + λ · attribute prediction."""

    name = "amnet"

    def __init__(self, config, info, train_features: dict, margin: float = 0.2, lambda_attr: float = 1.0):
        self.config, self.info = config, info
        self.s3 = config.stage3  # batch size, lr, epochs as for stage 3
        self.features = np.asarray(train_features["gap"], np.float32)
        self.labels = np.asarray(train_features["labels"])
        self.num_values = info.num_values
        self.margin, self.lambda_attr = margin, lambda_attr
        self.global_batch = self.s3.batch_size
        self.precision = precision.resolve(config.train.precision).precision  # resolved by training.run

    def build_model(self):
        return amnet.build_amnet(self.num_values, self.features.shape[-1], precision=self.precision)

    def initialize(self, model) -> str:
        return f"AMNet on fixed stage-1 GAP features {self.features.shape}; memory and fusion start random"

    def _batches(self, seed: int):
        sampler = GlobalTripletSampler(self.labels, self.num_values, seed)
        rng = np.random.default_rng(seed + 1)
        n, b = len(self.labels), self.s3.batch_size
        while True:
            anchors, attrs, values, positives = sampler.batch(rng, b)
            t = amnet.signed_manipulation(self.labels[anchors], attrs, values, self.num_values)
            target = self.labels[anchors].copy()
            target[np.arange(b), attrs] = values
            negatives = rng.integers(n, size=b)
            yield (
                self.features[anchors], t, target.astype(np.int32),
                self.features[positives], self.labels[positives].astype(np.int32),
                self.features[negatives], self.labels[negatives].astype(np.int32),
            )  # fmt: skip

    def build_inputs(self, seed: int, skip_steps: int = 0) -> tf.data.Dataset:
        """Batches of `seed` from step `skip_steps` on (see Stage3Task.build_inputs)."""
        f, c, a, b = self.features.shape[1], sum(self.num_values), len(self.num_values), self.s3.batch_size
        spec = (
            tf.TensorSpec((b, f), tf.float32), tf.TensorSpec((b, c), tf.float32), tf.TensorSpec((b, a), tf.int32),
            tf.TensorSpec((b, f), tf.float32), tf.TensorSpec((b, a), tf.int32),
            tf.TensorSpec((b, f), tf.float32), tf.TensorSpec((b, a), tf.int32),
        )  # fmt: skip
        keys = (
            "anchor",
            "manipulation",
            "target",
            "positive",
            "positive_labels",
            "negative",
            "negative_labels",
        )
        ds = tf.data.Dataset.from_generator(
            primed(itertools.islice(self._batches(seed), skip_steps, None)), output_signature=spec
        )
        return ds.map(lambda *x: dict(zip(keys, x))).prefetch(2)

    def train_step(self, model, optimizer, batch, step):
        zeros = tf.zeros_like(batch["manipulation"])
        with tf.GradientTape() as tape:
            q = model({"features": batch["anchor"], "manipulation": batch["manipulation"]}, training=True)
            p = model({"features": batch["positive"], "manipulation": zeros}, training=True)
            n = model({"features": batch["negative"], "manipulation": zeros}, training=True)
            l_rank = amnet.margin_triplet(q["embedding"], p["embedding"], n["embedding"], self.margin)
            split = lambda x: network.split_logits(x, self.num_values)  # noqa: E731
            l_attr = (
                losses.classification_loss(split(q["logits"]), batch["target"])
                + losses.classification_loss(split(p["logits"]), batch["positive_labels"])
                + losses.classification_loss(split(n["logits"]), batch["negative_labels"])
            ) / 3.0
            total = l_rank + self.lambda_attr * l_attr
            loss = tf.nn.compute_average_loss(total, global_batch_size=self.global_batch)
        variables = model.trainable_variables
        optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
        avg = lambda x: tf.nn.compute_average_loss(x, global_batch_size=self.global_batch)  # noqa: E731
        return {"loss": loss, "L_rank": avg(l_rank), "L_attr": avg(l_attr)}

    def scalars(self, sums: dict, steps: int) -> dict:
        return {k: float(v) / steps for k, v in sums.items()}

    def evaluate(self, model, step: int | None = None) -> dict:
        return {}
