"""Training of the AMNet baseline on fixed stage-1 features (see model/amnet.py; WORKSPACE.md A1-A12).

AMNet's CNN is this project's stage-1 network (attribute classification on the same backbone); its
memory, fusion and attribute layers are trained here on GAP(conv7) features computed once, with the
triplet ranking loss on the fused representation and attribute prediction on it.

As stage 3 (decisions 59-61): the training split's validation share (the same images, by id hash) is
held out of every triplet and of the memory's prototypes; an epoch walks every manipulation of the rest
once; after every epoch and at step 0 AMNet is scored on the validation split with the paper's protocol
and the best state is kept in `<workdir>/selected` (`selection.json` has every evaluation).
"""

from __future__ import annotations

import itertools

import numpy as np
import tensorflow as tf

from fashionsearchnet_v2 import losses, precision
from fashionsearchnet_v2.model import amnet, network
from fashionsearchnet_v2.retrieval import validation
from fashionsearchnet_v2.trained import checkpoints
from fashionsearchnet_v2.training import trainer
from fashionsearchnet_v2.training.stage3 import (
    GlobalTripletSampler,
    ManipulationEnumerator,
    fixed_triplets,
    near_negatives,
    primed,
)

# The arrays of one AMNet batch, in the order the sampler yields them.
BATCH_KEYS = (
    "anchor",
    "manipulation",
    "target",
    "positive",
    "positive_labels",
    "negative",
    "negative_labels",
)


class AmnetTask(trainer.FixedFeatureTask):
    """Trains AMNet's memory, fusion and attribute layers: margin triplet + λ · attribute prediction."""

    name = "amnet"

    def __init__(self, config, info, train_features: dict, workdir: str | None = None):
        self.config, self.info, self.workdir = config, info, workdir
        self.am = self.schedule = config.amnet
        self.num_values, self.names = info.num_values, info.attribute_names
        self.global_batch = self.am.batch_size
        self.precision = precision.resolve(config.train.precision).precision  # resolved by training.run
        gap = np.asarray(train_features["gap"], np.float32)
        labels = np.asarray(train_features["labels"])
        ids = np.asarray(train_features["ids"]).astype(str) if "ids" in train_features else None
        held = (
            validation.carve(ids, self.am.validation_fraction)
            if ids is not None and self.am.validation_fraction > 0
            else np.zeros(len(labels), bool)
        )
        self.features, self.labels = gap[~held], labels[~held]
        self.ids = ids[~held] if ids is not None else None
        self.memory = (
            amnet.prototypes(self.features, self.labels, self.num_values)
            if self.am.memory_init == "prototypes"
            else None
        )
        self.set_up_validation(gap, labels, ids, held, manipulation=self._signed)
        self.enumerator = (
            ManipulationEnumerator(self.labels, self.num_values) if self.am.sampling == "enumerate" else None
        )
        self.load_selection()  # resuming: what was evaluated so far

    def _signed(self, labels, attributes, values):
        return amnet.signed_manipulation(labels, np.asarray(attributes), np.asarray(values), self.num_values)

    def _target(self, labels, anchors, attrs, values):
        target = labels[anchors].copy()  # unlabelled stays -1: don't care
        target[np.arange(len(anchors)), attrs] = values
        return target

    def _negatives(self, rng, target):
        if self.am.negatives == "near":
            return near_negatives(self.labels, target, self.num_values, rng)
        return rng.integers(len(self.labels), size=len(target))

    def _arrays(self, features, labels, anchors, attrs, values, positives, negatives):
        t = amnet.signed_manipulation(labels[anchors], attrs, values, self.num_values)
        target = self._target(labels, anchors, attrs, values)
        return (
            features[anchors], t, target.astype(np.int32),
            features[positives], labels[positives].astype(np.int32),
            features[negatives], labels[negatives].astype(np.int32),
        )  # fmt: skip

    def _fixed_triplets(self, features, labels, limit: int = 2048):
        """Validation triplets (paper's random negatives) for L_rank on validation images, or None."""
        t = fixed_triplets(labels, self.num_values, limit)
        return None if t is None else self._arrays(features, labels, *t)

    def _batches(self, seed: int):
        rng = np.random.default_rng(seed + 1)
        b = self.am.batch_size
        if self.enumerator is not None:
            enum = self.enumerator
            if len(enum) == 0:
                raise ValueError(
                    f"no manipulation of the {len(self.labels)} training images has a positive: the training "
                    "split is too small for its attribute combinations"
                )
            while True:  # an epoch walks every manipulation once (fewer than a batch: drawn with repeats)
                order = rng.permutation(len(enum)) if len(enum) >= b else rng.integers(len(enum), size=b)
                for i in range(len(order) // b):
                    idx = order[i * b : (i + 1) * b]
                    anchors, a, v = enum.anchor[idx], enum.attribute[idx], enum.value[idx]
                    positives = enum.positives(idx, rng)
                    negatives = self._negatives(rng, self._target(self.labels, anchors, a, v))
                    yield self._arrays(self.features, self.labels, anchors, a, v, positives, negatives)
        # "images": one manipulation per random training image (AMNet before issue 24, batch for batch).
        sampler = GlobalTripletSampler(self.labels, self.num_values, seed)
        while True:
            anchors, attrs, values, positives = sampler.batch(rng, b)
            negatives = self._negatives(rng, self._target(self.labels, anchors, attrs, values))
            yield self._arrays(self.features, self.labels, anchors, attrs, values, positives, negatives)

    def build_inputs(self, seed: int, skip_steps: int = 0) -> tf.data.Dataset:
        """Batches of `seed` from step `skip_steps` on (see Stage3Task.build_inputs)."""
        f, c, a, b = self.features.shape[1], sum(self.num_values), len(self.num_values), self.am.batch_size
        spec = (
            tf.TensorSpec((b, f), tf.float32), tf.TensorSpec((b, c), tf.float32), tf.TensorSpec((b, a), tf.int32),
            tf.TensorSpec((b, f), tf.float32), tf.TensorSpec((b, a), tf.int32),
            tf.TensorSpec((b, f), tf.float32), tf.TensorSpec((b, a), tf.int32),
        )  # fmt: skip
        keys = BATCH_KEYS
        ds = tf.data.Dataset.from_generator(
            primed(itertools.islice(self._batches(seed), skip_steps, None)), output_signature=spec
        )
        return ds.map(tf.autograph.experimental.do_not_convert(lambda *x: dict(zip(keys, x)))).prefetch(2)

    # --- model --------------------------------------------------------------------------------
    def build_model(self):
        dim = self.features.shape[-1] if self.am.memory_init == "prototypes" else self.am.memory_dim
        return amnet.build_amnet(
            self.num_values, self.features.shape[-1], memory_dim=dim, embedding_dim=self.am.embedding_dim,
            precision=self.precision,
        )  # fmt: skip

    def initialize(self, model) -> str:
        """Step 0: the memory at the values' prototypes (or random), fusion and attribute layers random;
        scored on validation, which is the first candidate of the selection."""
        if self.memory is not None:
            model.get_layer("amnet_memory").memory.assign(self.memory)
            memory = f"memory {self.memory.shape} at the training prototypes (validation images left out)"
        else:
            memory = f"memory {tuple(model.get_layer('amnet_memory').memory.shape)} random"
        self.history, self.selected = [], None
        msg = f"AMNet on fixed stage-1 GAP features, {memory}; fusion random; {self.describe_data()}"
        if self.validation is not None:
            msg += f"; step 0: {self.epoch_message(self.evaluate(model, step=0))}"
        return msg

    # --- steps --------------------------------------------------------------------------------
    def batch_losses(self, model, batch, training: bool):
        """Per-example L_rank [B] and L_attr [B] of a batch (dict of arrays or tensors)."""
        batch = {k: tf.convert_to_tensor(v) for k, v in batch.items()}
        zeros = tf.zeros_like(batch["manipulation"])
        q = model({"features": batch["anchor"], "manipulation": batch["manipulation"]}, training=training)
        p = model({"features": batch["positive"], "manipulation": zeros}, training=training)
        n = model({"features": batch["negative"], "manipulation": zeros}, training=training)
        l_rank = amnet.margin_triplet(q["embedding"], p["embedding"], n["embedding"], self.am.margin)
        split = lambda x: network.split_logits(x, self.num_values)  # noqa: E731
        l_attr = (
            losses.classification_loss(split(q["logits"]), batch["target"])
            + losses.classification_loss(split(p["logits"]), batch["positive_labels"])
            + losses.classification_loss(split(n["logits"]), batch["negative_labels"])
        ) / 3.0
        return l_rank, l_attr

    def train_step(self, model, optimizer, batch, step):
        with tf.GradientTape() as tape:
            l_rank, l_attr = self.batch_losses(model, batch, True)
            total = l_rank + self.am.lambda_attr * l_attr
            loss = tf.nn.compute_average_loss(total, global_batch_size=self.global_batch)
        variables = self.trainable_variables(model)
        optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
        avg = lambda x: tf.nn.compute_average_loss(x, global_batch_size=self.global_batch)  # noqa: E731
        active = tf.cast(l_rank > 0, tf.float32)
        return {"loss": loss, "L_rank": avg(l_rank), "L_attr": avg(l_attr),
                "L_rank_active": tf.reduce_sum(active), "L_rank_triplets": tf.cast(tf.size(active), tf.float32)}  # fmt: skip

    def scalars(self, sums: dict, steps: int) -> dict:
        out = {k: float(v) / steps for k, v in sums.items() if k in ("loss", "L_rank", "L_attr")}
        if "L_rank_active" in sums:
            out["L_rank_active_share"] = float(sums["L_rank_active"]) / max(
                float(sums["L_rank_triplets"]), 1.0
            )
        return out

    # --- validation and selection -------------------------------------------------------------
    def vectors(self, model):
        """features [n, F], t [n, C] or None -> AMNet's unit embedding [n, De] (the validation search)."""
        if getattr(self, "_vectors_model", None) is not model:  # one traced function per model
            self._vectors_model = model
            self._vectors_fn = tf.function(
                lambda f, t: model({"features": f, "manipulation": t}, training=False)["embedding"],
                reduce_retracing=True,
                autograph=False,
            )
        fn, c = self._vectors_fn, sum(self.num_values)

        def run(x, t=None):
            t = np.zeros((len(x), c), np.float32) if t is None else t
            out = [fn(x[i : i + 4096], t[i : i + 4096]).numpy() for i in range(0, len(x), 4096)]
            return np.concatenate(out) if out else np.zeros((0, self.am.embedding_dim), np.float32)

        return run

    def evaluate(self, model, step: int | None = None) -> dict:
        """Validation Top-K (avg, per attribute, the gain over the unmanipulated query), L_rank and L_attr
        on validation triplets; with `select_on_validation` the best state so far goes to `selected/`."""
        if self.validation is None:
            return {}
        k = str(self.validation.ks[0])
        res = self.validation.evaluate(self.vectors(model))
        top, gain = res["topk"][k], res["gain"]["topk"][k]
        out = {f"validation/top{k}/{n}": top[n] for n in self.names if top.get(n) is not None}
        out[f"validation/top{k}/avg"] = top["avg"]
        out[f"validation/gain{k}/avg"] = gain["avg"]
        if self._val_triplets is not None:
            keys = BATCH_KEYS
            l_rank, l_attr = self.batch_losses(model, dict(zip(keys, self._val_triplets)), False)
            out["L_rank/validation"] = float(tf.reduce_mean(l_rank))
            out["L_attr/validation"] = float(tf.reduce_mean(l_attr))
        step = int(step if step is not None else -1)
        record = {"step": step, f"top{k}": top["avg"], f"gain{k}": gain["avg"],
                  "per_attribute": {n: top.get(n) for n in self.names},
                  "gain_per_attribute": {n: gain.get(n) for n in self.names},
                  "L_rank_validation": out.get("L_rank/validation"), "L_attr_validation": out.get("L_attr/validation")}  # fmt: skip
        self.keep(record, f"top{k}", checkpoints.layer_dict(model), step)
        return out

    def epoch_message(self, scores: dict) -> str:
        k = self.validation.ks[0] if self.validation else self.am.validation_k
        avg = scores.get(f"validation/top{k}/avg", float("nan"))
        gain = scores.get(f"validation/gain{k}/avg", float("nan"))
        best = f"; selected: step {self.selected['step']}" if self.selected else ""
        return (
            f"validation Top-{k} avg {avg:.4f} (gain {gain:+.4f}), L_rank {scores.get('L_rank/validation', float('nan')):.4f}, "
            f"L_attr {scores.get('L_attr/validation', float('nan')):.4f}{best}"
        )
