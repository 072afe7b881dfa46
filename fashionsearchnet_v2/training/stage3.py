"""Stage 3 (§3.3, Eq. 7–8): global representation learning with L_G on fixed attribute representations.

The stage-2 network embeds the training split once; a fifth of it (by id hash, decision 59) is set aside as
the validation split (`retrieval.validation`). The memory block M starts as the per-value means of the rest
(§3.3) and λ, w_r (and M with update_memory, the paper's Full) are trained with the global ranking
loss. Triplets: the query is a training image with one attribute changed to another value (an epoch walks
every such manipulation that has a positive, §3.3); the positive has exactly the target attributes
(attributes unlabelled in the query are "don't care"); the negative is a random training image (§3.3), or
with `negatives="near"` one that misses the target by one attribute. After every epoch the model is
scored on the validation split with the paper's protocol and the best state (step 0 included) is kept.
"""

from __future__ import annotations

import itertools

import numpy as np
import tensorflow as tf

from fashionsearchnet_v2 import losses
from fashionsearchnet_v2.model import memory_block
from fashionsearchnet_v2.retrieval import metrics, validation
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


class ManipulationEnumerator:
    """Every manipulation of a training split that has a positive (§3.3: "the same procedure is applied
    to all possible attribute manipulation options"), and the positives of each.

    A manipulation is (anchor image, labelled attribute a, value v != anchor's); its target is the anchor's
    labels with a := v (unlabelled attributes: don't care), and its positives are the training images that
    have every target attribute. Manipulations whose target no training image has are left out.
    """

    def __init__(self, labels: np.ndarray, num_values):
        labels = np.asarray(labels)
        m = metrics.enumerate_manipulations(labels, labels, num_values)
        self.anchor, self.attribute, self.value, self.target = m.query_index, m.attribute, m.value, m.target
        self.members, self.start, self.count = metrics.match_ranges(m.target, labels)

    def __len__(self) -> int:
        return len(self.anchor)

    def positives(self, idx: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """One uniformly drawn positive per manipulation in `idx` [n] -> [n] training rows."""
        pick = np.minimum((rng.random(len(idx)) * self.count[idx]).astype(np.int64), self.count[idx] - 1)
        return self.members[self.start[idx] + pick]


def fixed_triplets(labels: np.ndarray, num_values, limit: int = 2048):
    """The same triplets on every call (seed 0) for scoring a loss on held-out images: up to `limit` of
    `labels`' [n, A] manipulations drawn without replacement, one uniformly drawn positive each and a
    random negative (the paper's). Returns (anchor, attribute, value, positive, negative), each [m]
    (rows of `labels` for images), or None where `labels` has no manipulation with a positive."""
    enum = ManipulationEnumerator(labels, num_values)
    if len(enum) == 0:
        return None
    rng = np.random.default_rng(0)
    idx = rng.permutation(len(enum))[:limit]
    neg = rng.integers(len(labels), size=len(idx))
    return enum.anchor[idx], enum.attribute[idx], enum.value[idx], enum.positives(idx, rng), neg


def near_negatives(
    labels: np.ndarray, target: np.ndarray, num_values, rng: np.random.Generator
) -> np.ndarray:
    """Per target [n, A]: a training image with the target's attributes but one (a random labelled
    attribute set to another value), the confusers a search for the target must rank below its hits;
    a random image where no such image exists. Returns [n] rows of `labels`."""
    n = len(target)
    rows = np.arange(n)
    nv = np.asarray(num_values, np.int64)
    changeable = (target >= 0) & (nv[None, :] > 1)
    pick = np.argmax(rng.random(target.shape) * changeable, axis=1)  # a random changeable attribute
    w = rng.integers(0, np.maximum(nv[pick] - 1, 1))
    w = w + (w >= target[rows, pick])  # any value but the target's
    other = target.copy()
    other[rows, pick] = w
    out = rng.integers(len(labels), size=n)
    members, start, count = metrics.match_ranges(other, labels)
    ok = changeable[rows, pick] & (count > 0)
    draw = np.minimum((rng.random(int(ok.sum())) * count[ok]).astype(np.int64), count[ok] - 1)
    out[ok] = members[start[ok] + draw]
    return out


class Stage3Task(trainer.FixedFeatureTask):
    """Trains the GlobalRepresentation layer (λ, w_r, optionally M) with L_G on fixed fc10 features.

    The training split's features are cut in two by `validation.carve`: the validation images never enter
    a triplet or the memory block M; after every epoch (and at step 0) the model is scored on them with
    the paper's protocol, and with `select_on_validation` the best of those states is what stage 3 keeps
    (`<workdir>/selected`, chosen by `selection.json`).
    """

    name = "stage3"

    def __init__(self, config, info, train_features: dict, workdir: str | None = None):
        self.config, self.info, self.workdir = config, info, workdir
        self.s3 = self.schedule = config.stage3
        self.num_values = info.num_values
        self.names = info.attribute_names
        self.global_batch = self.s3.batch_size
        fc10 = np.asarray(train_features["fc10"], np.float32)
        labels = np.asarray(train_features["labels"])
        ids = np.asarray(train_features["ids"]).astype(str)
        held = validation.carve(ids, self.s3.validation_fraction)
        self.fc10, self.labels, self.ids = fc10[~held], labels[~held], ids[~held]
        self.memory, _ = memory_block.build_memory_block(self.fc10, self.labels, self.num_values)
        self.set_up_validation(fc10, labels, ids, held)
        self.enumerator = (
            ManipulationEnumerator(self.labels, self.num_values) if self.s3.sampling == "enumerate" else None
        )
        self.load_selection()  # resuming: what was evaluated so far

    def _fixed_triplets(self, fc10, labels, limit: int = 2048):
        """Validation triplets for L_G on validation images (fixed; for TensorBoard), or None."""
        t = fixed_triplets(labels, self.num_values, limit)
        return None if t is None else self._arrays(fc10, *t)

    def _arrays(self, fc10, anchors, attrs, values, positives, negatives):
        t = memory_block.manipulations(attrs, values, self.num_values)
        return fc10[anchors], t, fc10[positives], fc10[negatives]

    def _negatives(self, rng, anchors, attrs, values):
        if self.s3.negatives == "near":
            target = self.labels[anchors].copy()  # unlabelled stays -1: don't care
            target[np.arange(len(anchors)), attrs] = values
            return near_negatives(self.labels, target, self.num_values, rng)
        return rng.integers(len(self.labels), size=len(anchors))

    def _batches(self, seed: int):
        rng = np.random.default_rng(seed + 1)
        b = self.s3.batch_size
        if self.enumerator is not None:
            enum = self.enumerator
            if len(enum) == 0:
                raise ValueError(
                    f"no manipulation of the {len(self.labels)} training images has a positive (no other "
                    "training image has its target's attributes): the training split is too small for its "
                    "attribute combinations"
                )
            while True:  # an epoch walks every manipulation once (fewer than a batch: drawn with repeats)
                order = rng.permutation(len(enum)) if len(enum) >= b else rng.integers(len(enum), size=b)
                for i in range(len(order) // b):
                    idx = order[i * b : (i + 1) * b]
                    a, v = enum.attribute[idx], enum.value[idx]
                    anchors = enum.anchor[idx]
                    yield self._arrays(
                        self.fc10,
                        anchors,
                        a,
                        v,
                        enum.positives(idx, rng),
                        self._negatives(rng, anchors, a, v),
                    )
        sampler = GlobalTripletSampler(self.labels, self.num_values, seed)
        while True:
            anchors, attrs, values, positives = sampler.batch(rng, b)
            yield self._arrays(
                self.fc10, anchors, attrs, values, positives, self._negatives(rng, anchors, attrs, values)
            )

    def build_inputs(self, seed: int, skip_steps: int = 0) -> tf.data.Dataset:
        """Batches of `seed` from step `skip_steps` on (the skipped ones are drawn and dropped, so a
        resume continues the uninterrupted run's sequence)."""
        a, d = self.fc10.shape[1:]
        c = sum(self.num_values)
        b = self.s3.batch_size
        spec = (
            tf.TensorSpec((b, a, d), tf.float32),
            tf.TensorSpec((b, c), tf.float32),
            tf.TensorSpec((b, a, d), tf.float32),
            tf.TensorSpec((b, a, d), tf.float32),
        )
        ds = tf.data.Dataset.from_generator(
            primed(itertools.islice(self._batches(seed), skip_steps, None)), output_signature=spec
        )
        named = tf.autograph.experimental.do_not_convert(
            lambda q, t, p, n: {"anchor": q, "manipulation": t, "positive": p, "negative": n}
        )
        return ds.map(named).prefetch(2)

    # --- model --------------------------------------------------------------------------------
    def build_model(self):
        return memory_block.build_global_model(
            self.num_values, self.fc10.shape[-1], self.s3.r, self.s3.update_memory,
            normalize=self.s3.normalize, train_w_r=self.s3.train_w_r,
        )  # fmt: skip

    def initialize(self, model) -> str:
        """Step 0: M from the training means (validation images left out), λ = 1, w_r as configured;
        scored on validation, which is the first candidate of the selection."""
        layer = model.get_layer("global_representation")
        layer.memory_block.assign(self.memory)
        if self.s3.w_r_init == "identity":
            a, d = self.fc10.shape[1:]
            if layer.r != a * d:
                raise ValueError(f"w_r_init=identity needs r = A·D = {a * d}, got r = {layer.r}")
            scale = 1.0 / max(
                float(np.mean(np.linalg.norm(self.fc10.reshape(len(self.fc10), -1), axis=1))), 1e-12
            )
            layer.w_r.assign(np.eye(a * d, dtype=np.float32) * scale)
            w_r = f"w_r = {scale:.3g}·I (r = {a * d})"
        else:
            w_r = f"w_r random (glorot, r = {layer.r})"
        kind = "trained (Full)" if self.s3.update_memory else "fixed (Rank-LG)"
        self.history, self.selected = [], None
        msg = f"memory block M {self.memory.shape} from training means, {kind}; λ = 1, {w_r}; {self.describe_data()}"
        if self.validation is not None:
            scores = self.evaluate(model, step=0)
            msg += f"; step 0: {self.epoch_message(scores)}"
        return msg

    # --- steps --------------------------------------------------------------------------------
    def _global(self, model, fc10, t, training):
        return model({"fc10": fc10, "manipulation": t}, training=training)["global"]

    def train_step(self, model, optimizer, batch, step):
        zeros = tf.zeros_like(batch["manipulation"])
        with tf.GradientTape() as tape:
            f_q = self._global(model, batch["anchor"], batch["manipulation"], True)
            f_p = self._global(model, batch["positive"], zeros, True)
            f_n = self._global(model, batch["negative"], zeros, True)
            l_g = losses.global_ranking_loss(f_q, f_p, f_n, squared=self.s3.squared_triplet)
            loss = tf.nn.compute_average_loss(l_g, global_batch_size=self.global_batch)
        variables = self.trainable_variables(model)
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

    # --- validation and selection -------------------------------------------------------------
    def vectors(self, model):
        """fc10 [n, A, D], t [n, C] or None -> F [n, r] through `model` (for the validation search)."""
        if getattr(self, "_vectors_model", None) is not model:  # one traced function per model
            self._vectors_model = model
            self._vectors_fn = tf.function(
                lambda f, t: self._global(model, f, t, False), reduce_retracing=True, autograph=False
            )
        fn, c = self._vectors_fn, sum(self.num_values)

        def run(fc10, t=None):
            t = np.zeros((len(fc10), c), np.float32) if t is None else t
            out = [fn(fc10[i : i + 4096], t[i : i + 4096]).numpy() for i in range(0, len(fc10), 4096)]
            return np.concatenate(out) if out else np.zeros((0, model.output["global"].shape[-1]), np.float32)

        return run

    def evaluate(self, model, step: int | None = None) -> dict:
        """Validation Top-K (avg, per attribute, gain), L_G on validation triplets, λ and M's shift; with
        `select_on_validation` the best state so far goes to `<workdir>/selected`."""
        if self.validation is None:
            return {}
        layer = model.get_layer("global_representation")
        k = str(self.validation.ks[0])
        res = self.validation.evaluate(self.vectors(model))
        top, gain = res["topk"][k], res["gain"]["topk"][k]
        lambdas = [float(x) for x in layer.lambdas.numpy()]
        m = layer.memory_block.numpy()
        shift = float(np.linalg.norm(m - self.memory) / max(np.linalg.norm(self.memory), 1e-12))
        out = {f"validation/top{k}/{n}": top[n] for n in self.names if top.get(n) is not None}
        out[f"validation/top{k}/avg"] = top["avg"]
        out[f"validation/gain{k}/avg"] = gain["avg"]
        out.update({f"lambda/{n}": v for n, v in zip(self.names, lambdas)})
        out["memory_shift"] = shift
        if self._val_triplets is not None:
            q, t, p, n = self._val_triplets
            zeros = np.zeros_like(t)
            l_g = losses.global_ranking_loss(self._global(model, q, t, False), self._global(model, p, zeros, False),
                                             self._global(model, n, zeros, False), squared=self.s3.squared_triplet)  # fmt: skip
            out["L_G/validation"] = float(tf.reduce_mean(l_g))
        step = int(
            step if step is not None else model.optimizer.iterations if hasattr(model, "optimizer") else -1
        )
        record = {"step": step, f"top{k}": top["avg"], f"gain{k}": gain["avg"], "per_attribute": {n: top.get(n) for n in self.names},
                  "L_G_validation": out.get("L_G/validation"), "lambda": dict(zip(self.names, lambdas)), "memory_shift": shift}  # fmt: skip
        self.keep(record, f"top{k}", {"global_representation": layer}, step)
        return out

    def epoch_message(self, scores: dict) -> str:
        k = self.validation.ks[0] if self.validation else self.s3.validation_k
        avg = next(
            (v for key, v in scores.items() if key.startswith("validation/top") and key.endswith("/avg")),
            None,
        )
        lam = " ".join(f"{scores[f'lambda/{n}']:.2f}" for n in self.names if f"lambda/{n}" in scores)
        best = f"; selected: step {self.selected['step']}" if self.selected else ""
        return f"validation Top-{k} avg {avg:.4f}, L_G {scores.get('L_G/validation', float('nan')):.4f}, λ [{lam}]{best}"
