"""One task object per stage (§3.4): stage 1 trains L_C; stage 2 trains λ_C L_C + λ_T L_T + λ_TC L_TC.

The tasks read alike (build_model, build_optimizer, build_inputs, initialize, train_step, evaluate,
summary_images) and differ only where the paper's stages differ. Which weights each loss updates:
every loss updates every trainable weight of the stage's network (the paper back-propagates all
losses, §4.1); boxes carry no gradient.
"""

from __future__ import annotations

import os

import keras
import numpy as np
import tensorflow as tf

from fashionsearchnet_v2 import configs, losses, precision
from fashionsearchnet_v2.configs import ExperimentConfig
from fashionsearchnet_v2.data import pipeline, records, schema
from fashionsearchnet_v2.model import aam, backbone, network
from fashionsearchnet_v2.retrieval import validation
from fashionsearchnet_v2.trained import checkpoints
from fashionsearchnet_v2.training import distribute, trainer

# The model fields stage 2 must share with the stage 1 it restores.
BACKBONE_FIELDS = (
    "image_size",
    "width",
    "conv5_filters",
    "conv67_filters",
    "lrn",
    "batch_norm",
    "input_scale",
)


_LEFT_OUT: dict = {}


def left_out_ids(config: ExperimentConfig, info: schema.DatasetInfo) -> list[str]:
    """The training images stages 1-2 leave out (decision 72: decision 59's validation carve, with
    `TrainConfig.exclude_validation`; none without it), kept for the process (one pass over the ids)."""
    if not config.train.exclude_validation:
        return []
    key = (info.data_dir, info.fingerprint, config.stage3.validation_fraction)
    if key not in _LEFT_OUT:
        ids = pipeline.split_ids(info, "train")
        held = validation.carve(ids, config.stage3.validation_fraction)
        _LEFT_OUT.clear()
        _LEFT_OUT[key] = [i for i, h in zip(ids, held) if h]
    return _LEFT_OUT[key]


def backbone_differences(earlier, now, fields=BACKBONE_FIELDS) -> list[tuple[str, object, object]]:
    """(field, earlier value, this value) for each of `fields` in which two ModelConfigs differ."""
    return [
        (f, getattr(earlier, f), getattr(now, f)) for f in fields if getattr(earlier, f) != getattr(now, f)
    ]


def per_attribute_accuracy(logits, labels, num_values):
    """logits [B, C], labels [B, A] -> (correct [A], labelled [A]) counts; unlabelled (-1) ignored."""
    correct, labelled = [], []
    for a, lg in enumerate(network.split_logits(logits, num_values)):
        y = labels[:, a]
        mask = tf.cast(y >= 0, tf.float32)
        hit = tf.cast(tf.equal(tf.argmax(lg, -1, output_type=tf.int32), y), tf.float32)
        correct.append(tf.reduce_sum(hit * mask))
        labelled.append(tf.reduce_sum(mask))
    return tf.stack(correct), tf.stack(labelled)


def global_batch_rows(fc10, labels):
    """The whole global batch, gathered from every replica, and this replica's rows in it.

    Args:
      fc10: `[n, A, dim]` this replica's attribute representations.
      labels: int `[n, A]`.

    Returns:
      (fc10 `[N, A, dim]`, labels `[N, A]`, rows int32 `[n]`), N the global batch; replica 0's rows
      first. With one replica the inputs themselves and `range(n)`. The gather is differentiable
      (`ReplicaContext.all_gather`): a loss on this replica's rows reaches every replica's images.
    """
    ctx = tf.distribute.get_replica_context()
    n = tf.shape(labels)[0]
    if ctx is None or ctx.num_replicas_in_sync == 1:
        return fc10, labels, tf.range(n)
    # The gather sends to its inputs' devices, and ops made in a worker's step may carry none. A worker's
    # `ctx.devices` fails (its replica id is global): one device per worker, the strategy's.
    local_devices = ctx.strategy.extended.worker_devices
    device = local_devices[0] if len(local_devices) == 1 else tf.nest.flatten(ctx.devices)[0]
    with tf.device(device):
        local = [tf.identity(x) for x in (fc10, tf.cast(labels, tf.int32), n[None])]
    # One gather per dtype (a batch of several is concatenated into one buffer).
    fc10_all = ctx.all_gather(local[0], axis=0)
    labels_all, sizes = ctx.all_gather(local[1:], axis=0)
    begin = tf.reduce_sum(sizes[: ctx.replica_id_in_sync_group])
    return fc10_all, labels_all, tf.range(begin, begin + n)


class _ClassificationTask(trainer.Task):
    """What stages 1 and 2 share: data, optimizer, held-out accuracy and AAM pictures."""

    name = "stage"
    network_stage = "stage1"

    def __init__(self, config: ExperimentConfig, info: schema.DatasetInfo, workdir: str, strategy):
        self.config, self.info, self.workdir, self.strategy = config, info, workdir, strategy
        self.num_values = info.num_values
        self.names = info.attribute_names
        self.global_batch = config.train.batch_size
        self._heldout = None
        # "auto" is resolved by training.run, which says which; a task built directly resolves it here.
        self.precision = precision.resolve(config.train.precision).precision

    # --- construction -------------------------------------------------------------------------
    def build_model(self) -> keras.Model:
        return network.build_network(
            self.num_values,
            self.names,
            self.config.model,
            self.network_stage,
            seed=self.config.train.seed,
            precision=self.precision,
            # Several replicas normalise with the global batch's statistics: the one-process step.
            synchronized_batch_norm=self.strategy.num_replicas_in_sync > 1,
        )

    def build_optimizer(self, total_steps: int):
        t = self.config.train
        return trainer.make_optimizer(
            t.optimizer, t.learning_rate, t.momentum, t.lr_schedule, total_steps, t.warmup_steps,
            fused=t.fused_update,
        )  # fmt: skip

    def build_inputs(self, seed: int, skip_steps: int = 0) -> tf.data.Dataset:
        """The training stream of `seed`, from step `skip_steps` on (a resume continues it exactly)."""
        t = self.config.train
        workers = distribute.num_workers(self.strategy)
        policy = distribute.shard_policy(self.info.shard_paths("train"), workers) if workers > 1 else None
        # Each pipeline's stream advances by what it feeds per step: the global batch, or with FILE
        # sharding its worker's share of it (its own files, rebatched by tf.distribute).
        per_step = (
            t.batch_size // workers if policy == tf.data.experimental.AutoShardPolicy.FILE else t.batch_size
        )
        # One worker: the split decoded once, when it fits (issue 26; the same batches either way).
        decoded = (
            pipeline.decoded_split_cached(self.info, "train", t.cache_decoded_mib * 2**20, progress=True)
            if workers == 1 and t.cache_decoded_mib > 0
            else None
        )
        if decoded is not None:
            self.input_note = (
                f"training split decoded once: {len(decoded)} images, {decoded.nbytes / 2**20:.0f} MiB "
                "in memory (--cache_decoded_mib=0: decode as read)"
            )
        elif skip_steps:  # a resumed stream reads past what was trained on before its first step
            self.input_note = (
                f"resuming the input stream: reading past the {skip_steps * per_step} records of the "
                f"{skip_steps} steps done before the first step (no progress line until then"
                + (
                    "; the carve's records among them are read and dropped too)"
                    if t.exclude_validation
                    else ")"
                )
            )
        ds = pipeline.make_dataset(
            self.info,
            "train",
            self.config.model.image_size,
            t.batch_size,
            training=True,
            seed=seed,
            shuffle_buffer=t.shuffle_buffer,
            skip=skip_steps * per_step,
            decoded=decoded,
            leave_out=left_out_ids(self.config, self.info),
        )
        if self.config.train.exclude_validation:
            self.input_note = (
                (self.input_note + "; " if self.input_note else "")
                + f"{len(left_out_ids(self.config, self.info))} training images left out for validation "
                "(--exclude_validation, decision 72)"
            )
        if workers > 1:  # every worker builds the same pipeline; tf.distribute gives each its part
            options = tf.data.Options()
            options.experimental_distribute.auto_shard_policy = policy
            ds = ds.with_options(options)
        return ds

    # --- logging ------------------------------------------------------------------------------
    def scalars(self, sums: dict, steps: int) -> dict:
        out = {k: float(v) / steps for k, v in sums.items() if k in ("loss", "L_C", "L_T", "L_TC")}
        if "L_T_triplets" in sums:  # share of L_T's triplets that still give a gradient
            out["L_T_active_share"] = float(sums["L_T_active"]) / max(float(sums["L_T_triplets"]), 1.0)
        for prefix in ("", "fc10_"):
            if f"{prefix}correct" in sums:
                acc = sums[f"{prefix}correct"] / np.maximum(sums[f"{prefix}labelled"], 1)
                for name, v in zip(self.names, acc):
                    out[f"accuracy{'_' + prefix[:-1] if prefix else ''}/train/{name}"] = float(v)
        return out

    def _heldout_batch(self):
        if self._heldout is None:
            n = min(self.config.train.heldout_images, self.info.splits["gallery"])
            ds = pipeline.make_dataset(self.info, "gallery", self.config.model.image_size, max(n, 1), take=n)
            self._heldout = next(iter(ds)) if n else None
        return self._heldout

    def evaluate(self, model, step: int | None = None) -> dict:
        batch = self._heldout_batch()
        if batch is None:
            return {}
        out = model(batch["image"], training=False)
        result = {}
        heads = [("accuracy", "logits")] + (
            [("accuracy_fc10", "fc10_logits")] if "fc10_logits" in out else []
        )
        for tag, key in heads:
            correct, labelled = per_attribute_accuracy(out[key], batch["labels"], self.num_values)
            acc = correct.numpy() / np.maximum(labelled.numpy(), 1)
            result.update({f"{tag}/heldout/{n}": float(v) for n, v in zip(self.names, acc)})
        return result

    def summary_images(self, model):
        """The paper's Figure 3 for a fixed handful of held-out images: AAMs with their boxes."""
        from fashionsearchnet_v2.retrieval import figures

        batch = self._heldout_batch()
        if batch is None or self.config.train.summary_images <= 0:
            return None
        k = self.config.train.summary_images
        images = batch["image"][:k]
        out = model(images, training=False)
        maps = out["maps"].numpy()
        boxes = (
            out["boxes"].numpy()
            if "boxes" in out
            else aam.boxes_from_maps(maps, self.config.model.aam_threshold)
        )
        pictures = [
            figures.overlay_maps(img, m, b, self.names)
            for img, m, b in zip(records.undo_preprocess(images.numpy()), maps, boxes)
        ]
        return np.stack(pictures).astype(np.float32) / 255.0


class Stage1Task(_ClassificationTask):
    """Stage 1 (§3.2, Eq. 1–2): the GAP classifiers w_a and the backbone, trained with L_C only."""

    name = "stage1"
    network_stage = "stage1"

    def initialize(self, model) -> str:
        t = self.config.train
        start = ""
        if t.classifier_init == "zeros":  # the first loss is chance, Σ_a ln C_a (decision 64)
            for w in model.get_layer("attribute_classifier").kernels:
                w.assign(tf.zeros_like(w))
            start = "; w_a start at zero"
        if t.warmup_steps:
            start += f"; lr warms up over {t.warmup_steps} steps"
        path = self.config.alexnet_weights
        if self.config.init_from:
            if path:
                raise ValueError("--alexnet_weights and --init_from both name stage 1's start: pass one")
            return self.initialize_from_earlier_run(model) + start
        if not path:
            return f"no --alexnet_weights: training from scratch (the paper starts from ImageNet up to conv4){start}"
        loaded = backbone.load_alexnet_weights(model, path)
        return f"loaded ImageNet weights for {', '.join(loaded)} from {path}; the rest starts fresh{start}"

    def initialize_from_earlier_run(self, model) -> str:
        """Restores the backbone (every stage-1 layer but w_a) from `config.init_from`, a stage directory
        of an earlier run, through the checked partial restore stage 2 uses: its backbone settings must
        be this run's (the image size may differ: convolutions do not depend on it)."""
        source = self.config.init_from
        what, ckpt_dir = f"--init_from={source}", os.path.join(source, "ckpt")
        if checkpoints.latest(ckpt_dir) is None:
            raise checkpoints.RestoreError(
                f"{what}: no checkpoint in {ckpt_dir}; expected a stage directory of "
                "an earlier run, such as work/<dataset>/seed0/stage1 or .../stage2_rank_l"
            )
        earlier = configs.read_config(source)
        if earlier is not None:
            fields = [f for f in BACKBONE_FIELDS if f != "image_size"]
            mismatched = [
                f"{f}: {a} there, {b} here"
                for f, a, b in backbone_differences(earlier.model, self.config.model, fields)
            ]
            if mismatched:
                raise checkpoints.RestoreError(
                    f"{what}: its backbone differs from this run's ({'; '.join(mismatched)}); pass the "
                    "same --batch_norm/--quick as the earlier run, or start from --alexnet_weights"
                )
        names = sorted(n for n in checkpoints.layer_dict(model) if n != "attribute_classifier")
        path = checkpoints.restore_layers(model, ckpt_dir, names, what)
        return (
            f"started {len(names)} backbone layers ({', '.join(names)}) from {path} (--init_from); "
            "the attribute classifiers w_a start fresh"
        )

    def train_step(self, model, optimizer, batch, step):
        labels = batch["labels"]
        with tf.GradientTape() as tape:
            out = model(batch["image"], training=True)
            l_c = losses.classification_loss(network.split_logits(out["logits"], self.num_values), labels)
            total, _ = losses.joint_loss({"L_C": l_c}, {"L_C": self.config.train.lambda_c})
            loss = tf.nn.compute_average_loss(total, global_batch_size=self.global_batch)
        variables = self.trainable_variables(model)
        optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
        correct, labelled = per_attribute_accuracy(out["logits"], labels, self.num_values)
        return {
            "loss": loss,
            "L_C": tf.nn.compute_average_loss(l_c, global_batch_size=self.global_batch),
            "correct": correct,
            "labelled": labelled,
        }


class Stage2Task(_ClassificationTask):
    """Stage 2 (§3.2, §3.4): localization, ROI pooling and attribute branches; L_C + L_T + L_TC.

    Starts from stage 1 through a checked partial restore of the backbone and the classifiers w_a.
    """

    name = "stage2"
    network_stage = "full"

    def __init__(
        self, config, info, workdir, strategy, stage1_dir: str, stage1_config: ExperimentConfig | None
    ):
        super().__init__(config, info, workdir, strategy)
        self.stage1_dir = stage1_dir
        if stage1_config is not None:
            mismatched = [
                f"{f}: stage 1 {a} vs {b}"
                for f, a, b in backbone_differences(stage1_config.model, config.model)
            ]
            if mismatched:
                raise checkpoints.RestoreError(
                    f"stage 2's model does not match stage 1 in {stage1_dir}: {'; '.join(mismatched)}. "
                    "Run both stages with the same --image_size/--quick."
                )

    def stage1_layer_names(self) -> list[str]:
        stage1 = network.build_network(self.num_values, self.names, self.config.model, "stage1")
        return sorted(checkpoints.layer_dict(stage1))

    def initialize(self, model) -> str:
        names = self.stage1_layer_names()
        path = checkpoints.restore_layers(model, os.path.join(self.stage1_dir, "ckpt"), names, "stage 1")
        warm = (
            f"; lr warms up over {self.config.train.warmup_steps} steps"
            if self.config.train.warmup_steps
            else ""
        )
        return f"restored {len(names)} stage-1 layers ({', '.join(names)}) from {path}{warm}"

    def train_step(self, model, optimizer, batch, step):
        t = self.config.train
        labels = batch["labels"]
        # Every replica mines the same triplets over the whole global batch (one seed per step): a
        # multi-worker step is the one-process step of the same global batch.
        seed = tf.stack([tf.cast(step, tf.int32) + t.seed * 1000003, 0])
        with tf.GradientTape() as tape:
            out = model(batch["image"], training=True)
            l_c = losses.classification_loss(network.split_logits(out["logits"], self.num_values), labels)
            l_tc = losses.classification_loss(
                network.split_logits(out["fc10_logits"], self.num_values), labels
            )
            fc10_all, labels_all, rows = global_batch_rows(out["fc10"], labels)
            pos, neg, valid = (tf.gather(x, rows) for x in losses.mine_triplets(labels_all, seed))
            l_t = losses.attribute_ranking_loss(
                fc10_all, pos, neg, valid, squared=t.squared_triplet, anchors=out["fc10"]
            )
            total, parts = losses.joint_loss(
                {"L_C": l_c, "L_T": l_t, "L_TC": l_tc},
                {"L_C": t.lambda_c, "L_T": t.lambda_t, "L_TC": t.lambda_tc},
            )
            loss = tf.nn.compute_average_loss(total, global_batch_size=self.global_batch)
        variables = self.trainable_variables(model)
        optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
        correct, labelled = per_attribute_accuracy(out["logits"], labels, self.num_values)
        fc10_correct, fc10_labelled = per_attribute_accuracy(out["fc10_logits"], labels, self.num_values)
        l_t_active, l_t_triplets = losses.attribute_triplets_active(
            fc10_all, pos, neg, valid, anchors=out["fc10"]
        )
        result = {
            k: tf.nn.compute_average_loss(v, global_batch_size=self.global_batch) for k, v in parts.items()
        }
        result.update(
            loss=loss,
            correct=correct,
            labelled=labelled,
            fc10_correct=fc10_correct,
            fc10_labelled=fc10_labelled,
            L_T_active=l_t_active,
            L_T_triplets=l_t_triplets,
        )
        return result
