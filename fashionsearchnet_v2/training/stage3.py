"""Stage 3 (§3.3, Eq. 7–8): global representation learning with L_G on fixed attribute representations.

The stage-2 network embeds the training split once; the memory block M starts as the per-value means
(§3.3) and λ, w_r (and M with update_memory, the paper's Full) are trained with the global ranking
loss. Triplets: the query is a training image with one attribute changed to another value; the
positive has exactly the target attributes (attributes unlabelled in the query are "don't care"); the
negative is a random training image (§3.3).
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from fashionsearchnet_v2 import losses
from fashionsearchnet_v2.model import memory_block
from fashionsearchnet_v2.training import trainer


class GlobalTripletSampler:
    """Draws (anchor, attribute, value, positive, negative) for L_G from fixed training labels.

    Positives are looked up by label rows: for an anchor with labelled-attribute mask m, the target's
    projection on m must equal the positive's. Indices are built lazily per mask pattern.
    """

    def __init__(self, labels: np.ndarray, num_values, seed: int = 0):
        self.labels = np.asarray(labels)
        self.num_values = list(num_values)
        self.rng = np.random.default_rng(seed)
        self._index: dict[bytes, dict[bytes, np.ndarray]] = {}

    def _lookup(self, mask: np.ndarray) -> dict[bytes, np.ndarray]:
        key = mask.tobytes()
        if key not in self._index:
            proj = np.where(mask[None, :], self.labels, -2).astype(np.int32)
            ok = np.all(self.labels[:, mask] >= 0, axis=1)
            rows, inverse = np.unique(proj[ok], axis=0, return_inverse=True)
            members = np.flatnonzero(ok)
            order = np.argsort(inverse.reshape(-1), kind="stable")
            splits = np.cumsum(np.bincount(inverse.reshape(-1), minlength=len(rows)))[:-1]
            groups = np.split(members[order], splits)
            self._index[key] = {r.tobytes(): g for r, g in zip(rows, groups)}
        return self._index[key]

    def sample(self, anchors: np.ndarray, tries: int = 8):
        """For each anchor index: (attribute, value, positive) with a valid target, or -1s if none found."""
        n = len(anchors)
        attr = np.full(n, -1, np.int64)
        value = np.full(n, -1, np.int64)
        pos = np.full(n, -1, np.int64)
        for i, anchor in enumerate(anchors):
            row = self.labels[anchor]
            mask = row >= 0
            labelled = np.flatnonzero(mask)
            if len(labelled) == 0:
                continue
            index = self._lookup(mask)
            for _ in range(tries):
                a = int(self.rng.choice(labelled))
                if self.num_values[a] < 2:
                    continue
                v = int(self.rng.integers(self.num_values[a] - 1))
                v = v + 1 if v >= row[a] else v  # any value but the anchor's own
                target = np.where(mask, row, -2).astype(np.int32)
                target[a] = v
                group = index.get(target.tobytes())
                if group is not None:
                    attr[i], value[i], pos[i] = a, v, int(self.rng.choice(group))
                    break
        return attr, value, pos

    def batch(self, rng: np.random.Generator, size: int, max_draws: int = 200):
        """`size` (anchor, attribute, value, positive) rows, drawn from random anchors until enough have a
        positive; arrays [size] int. Raises ValueError when `max_draws` rounds of candidates do not give
        `size` (a training split too small for its attribute combinations would otherwise hang)."""
        n = len(self.labels)
        found: list[np.ndarray] = []
        count = 0
        for _ in range(max_draws):
            cand = rng.integers(n, size=2 * size)
            a, v, p = self.sample(cand)
            ok = p >= 0
            found.append(np.stack([cand[ok], a[ok], v[ok], p[ok]], axis=1))
            count += int(ok.sum())
            if count >= size:
                rows = np.concatenate(found)[:size]
                return rows[:, 0], rows[:, 1], rows[:, 2], rows[:, 3]
        raise ValueError(
            f"only {count} of {max_draws * 2 * size} random training anchors have a training image with "
            f"the attributes of a manipulation; a batch of {size} triplets cannot be drawn (the training "
            "split is too small for its attribute combinations)"
        )


def primed(generator):
    """A generator function for tf.data that first yields the already drawn first item of `generator`, so
    errors of the first draw surface in Python (with their message) instead of inside tf.data."""
    first = next(generator)

    def gen():
        yield first
        yield from generator

    return gen


class Stage3Task:
    """Trains the GlobalRepresentation layer (λ, w_r, optionally M) with L_G on fixed fc10 features."""

    name = "stage3"

    def __init__(self, config, info, train_features: dict, memory: np.ndarray):
        self.config, self.info = config, info
        self.s3 = config.stage3
        self.fc10 = np.asarray(train_features["fc10"], np.float32)
        self.labels = np.asarray(train_features["labels"])
        self.memory = memory
        self.num_values = info.num_values
        self.global_batch = self.s3.batch_size

    def build_model(self):
        return memory_block.build_global_model(
            self.num_values,
            self.fc10.shape[-1],
            self.s3.r,
            self.s3.update_memory,
            normalize=self.s3.normalize,
        )

    def build_optimizer(self, total_steps: int):
        return trainer.make_optimizer(
            self.s3.optimizer, self.s3.learning_rate, self.s3.momentum, self.s3.lr_schedule, total_steps
        )

    def trainable_variables(self, model):
        return model.trainable_variables

    def extra_checkpoint(self) -> dict:
        return {}

    def initialize(self, model) -> str:
        model.get_layer("global_representation").memory_block.assign(self.memory)
        kind = "trained (Full)" if self.s3.update_memory else "fixed (Rank-LG)"
        return f"memory block M {self.memory.shape} from training means, {kind}; λ = 1, w_r random"

    def _batches(self, seed: int):
        sampler = GlobalTripletSampler(self.labels, self.num_values, seed)
        rng = np.random.default_rng(seed + 1)
        n, b = len(self.labels), self.s3.batch_size
        c = sum(self.num_values)
        offsets = np.concatenate([[0], np.cumsum(self.num_values)[:-1]])
        while True:
            anchors, attrs, values, positives = sampler.batch(rng, b)
            t = np.zeros((b, c), np.float32)
            t[np.arange(b), offsets[attrs] + values] = 1.0
            negatives = rng.integers(n, size=b)
            yield self.fc10[anchors], t, self.fc10[positives], self.fc10[negatives]

    def build_inputs(self, seed: int) -> tf.data.Dataset:
        a, d = self.fc10.shape[1:]
        c = sum(self.num_values)
        b = self.s3.batch_size
        spec = (
            tf.TensorSpec((b, a, d), tf.float32),
            tf.TensorSpec((b, c), tf.float32),
            tf.TensorSpec((b, a, d), tf.float32),
            tf.TensorSpec((b, a, d), tf.float32),
        )
        ds = tf.data.Dataset.from_generator(primed(self._batches(seed)), output_signature=spec)
        return ds.map(
            lambda q, t, p, n: {"anchor": q, "manipulation": t, "positive": p, "negative": n}
        ).prefetch(2)

    def train_step(self, model, optimizer, batch, step):
        zeros = tf.zeros_like(batch["manipulation"])
        with tf.GradientTape() as tape:
            f_q = model({"fc10": batch["anchor"], "manipulation": batch["manipulation"]}, training=True)[
                "global"
            ]
            f_p = model({"fc10": batch["positive"], "manipulation": zeros}, training=True)["global"]
            f_n = model({"fc10": batch["negative"], "manipulation": zeros}, training=True)["global"]
            l_g = losses.global_ranking_loss(f_q, f_p, f_n, squared=self.s3.squared_triplet)
            loss = tf.nn.compute_average_loss(l_g, global_batch_size=self.global_batch)
        variables = model.trainable_variables
        optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
        active = losses.active_triplets(f_q, f_p, f_n)
        return {
            "loss": loss,
            "L_G": loss,
            "L_G_active": tf.reduce_sum(active),
            "L_G_triplets": tf.size(active),
        }

    def scalars(self, sums: dict, steps: int) -> dict:
        out = {k: float(v) / steps for k, v in sums.items() if k in ("loss", "L_G")}
        out["L_G_active_share"] = float(sums["L_G_active"]) / max(float(sums["L_G_triplets"]), 1.0)
        return out

    def evaluate(self, model) -> dict:
        return {}

    def summary_images(self, model):
        return None
