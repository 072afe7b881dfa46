"""The one custom training loop all stages share: tf.distribute, tf.function steps, checkpoints,
resume, progress and TensorBoard. What differs between stages lives in their task objects.

Two guards run inside the loop: a non-finite loss term or weight, or a finite loss above its bound, stops
the run before anything of that step is saved (`guard`), and under MultiWorkerMirroredStrategy only the chief writes checkpoints and
TensorBoard logs (`distribute`); a corrupt record stops with its shard's name and position.

A task provides `build_model`, `build_optimizer(total_steps)`, `build_inputs(seed, skip_steps)`, `initialize(model)` (weights
for a fresh start: ImageNet or the previous stage), `train_step(model, optimizer, batch, step)`
(one replica's step; returns per-replica sums already divided by the global batch), and optionally
`evaluate(model)` and `summary_images(model)`.
"""

from __future__ import annotations

import json
import math
import os
import sys
import time

import keras
import numpy as np
import tensorflow as tf

from fashionsearchnet_v2.data import integrity
from fashionsearchnet_v2.retrieval import evaluation, validation
from fashionsearchnet_v2.trained import checkpoints
from fashionsearchnet_v2.training import distribute, guard, optimizers


def make_strategy(name: str) -> tf.distribute.Strategy:
    """`default` (one device), `mirrored` (all local GPUs, or CPUs), `multi_worker` (TF_CONFIG)."""
    if name == "default":
        return tf.distribute.get_strategy()
    if name == "mirrored":
        gpus = tf.config.list_logical_devices("GPU")
        cpus = tf.config.list_logical_devices("CPU")
        return tf.distribute.MirroredStrategy([d.name for d in (gpus or cpus)])
    if name == "multi_worker":
        return distribute.multi_worker_strategy()
    raise ValueError(f"--strategy must be default, mirrored or multi_worker, got {name!r}")


@keras.saving.register_keras_serializable(package="fashionsearchnet_v2")
class LinearWarmup(keras.optimizers.schedules.LearningRateSchedule):
    """`rate` (a float or a schedule) times min(1, (step + 1) / warmup_steps): the first steps of a stage
    ramp up linearly to the configured rate, which then holds (WORKSPACE.md decision 64)."""

    def __init__(self, rate, warmup_steps: int):
        self.rate, self.warmup_steps = rate, int(warmup_steps)

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        base = self.rate(step) if callable(self.rate) else tf.constant(self.rate, tf.float32)
        return base * tf.minimum(1.0, (step + 1.0) / float(max(self.warmup_steps, 1)))

    def get_config(self):
        rate = self.rate
        if isinstance(rate, keras.optimizers.schedules.LearningRateSchedule):
            rate = keras.optimizers.schedules.serialize(rate)
        return {"rate": rate, "warmup_steps": self.warmup_steps}

    @classmethod
    def from_config(cls, config):
        rate = config["rate"]
        if isinstance(rate, dict):
            rate = keras.optimizers.schedules.deserialize(rate)
        return cls(rate, config["warmup_steps"])


def make_optimizer(
    name: str,
    learning_rate: float,
    momentum: float,
    schedule: str,
    total_steps: int,
    warmup_steps: int = 0,
    fused: bool = True,
):
    """The stages' optimiser: SGD (§4.1; `momentum` 0 is plain SGD) or Adam (Keras' defaults; `momentum`
    unused), at a constant rate or decayed to 0 by a cosine over the stage, after a linear warm-up of
    `warmup_steps` (0: none, the paper). `fused`: each variable's update as one kernel (the same
    arithmetic, `training/optimizers.py`); False: Keras' optimisers as they are."""
    if schedule == "cosine":
        learning_rate = keras.optimizers.schedules.CosineDecay(learning_rate, max(1, total_steps))
    elif schedule != "constant":
        raise ValueError(f"lr_schedule must be 'constant' or 'cosine', got {schedule!r}")
    if warmup_steps:
        learning_rate = LinearWarmup(learning_rate, warmup_steps)
    if name == "sgd":
        sgd = optimizers.FusedSGD if fused else keras.optimizers.SGD
        return sgd(learning_rate=learning_rate, momentum=momentum)
    if name == "adam":
        adam = optimizers.FusedAdam if fused else keras.optimizers.Adam
        return adam(learning_rate=learning_rate)
    raise ValueError(f"optimizer must be 'sgd' or 'adam', got {name!r}")


def build_state(task, strategy, total_steps: int):
    """(model, optimizer with its slots built, step counter) of a task, under `strategy`'s scope."""
    with strategy.scope():
        model = task.build_model()
        optimizer = task.build_optimizer(total_steps)
        optimizer.build(task.trainable_variables(model))
        step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
    return model, optimizer, step


def _counted_step(task, strategy, model, optimizer, step, checked, batch):
    """One training step on every replica, inside the caller's `tf.function`: the task's step, its results
    summed over replicas, the step counted, and whether every `checked` variable is finite."""
    results = strategy.run(task.train_step, args=(model, optimizer, batch, step))
    reduced = {k: strategy.reduce("SUM", v, axis=None) for k, v in results.items()}
    step.assign_add(1)
    return reduced, guard.all_finite(checked)


def step_function(task, strategy, model, optimizer, step, guarded: bool = True, jit_compile: bool = False):
    """The training step as the trainer runs it, in `tf.function`: the task's step on every replica, the
    results summed, the step counted, and (`guarded`) one flag saying every checked variable is finite
    (the divergence check, decision R1). Returns `batch -> (results, finite)`. `jit_compile` compiles the
    step with XLA (measured by `benchmarks/bench_train.py`'s `_xla` rows; training never sets it: on
    these CPUs XLA was slower than TensorFlow's oneDNN kernels, docs/performance.md)."""
    checked = guard.checked_variables(model, optimizer) if guarded else []

    # autograph=False: the step has no Python control flow on tensors (the boxes' loop is a tf.while_loop),
    # so converting its source changes nothing but costs seconds of tracing per stage (decision P9).
    @tf.function(jit_compile=jit_compile, autograph=False)
    def distributed_step(batch):
        return _counted_step(task, strategy, model, optimizer, step, checked, batch)

    return distributed_step


def steps_function(task, strategy, model, optimizer, step, guarded: bool = True):
    """Several training steps in one `tf.function` call: `(iterator, n) -> (results, finite)`, each [n],
    one row per step as `step_function` gives them step by step (the same step in a `tf.while_loop`;
    tests/test_stage3.py checks the weights are the same bit for bit). For the small models on fixed
    features (stage 3, AMNet), whose step is about 3 ms of ops here: one call per step added about 1 ms
    of call, input hand-over and host reads to each (decision P8)."""
    checked = guard.checked_variables(model, optimizer) if guarded else []

    # An explicit tf.while_loop and autograph=False: autograph would convert this loop and, with it, the
    # source of every function the step calls (the task's step and losses), seconds per trace (P9).
    @tf.function(autograph=False)
    def distributed_steps(iterator, n):
        first, ok = _counted_step(task, strategy, model, optimizer, step, checked, next(iterator))
        keys = list(first)
        arrays = [tf.TensorArray(first[k].dtype, size=n).write(0, first[k]) for k in keys]
        oks = tf.TensorArray(tf.bool, size=n).write(0, ok)

        def body(i, arrays, oks):
            results, ok = _counted_step(task, strategy, model, optimizer, step, checked, next(iterator))
            return i + 1, [a.write(i, results[k]) for a, k in zip(arrays, keys)], oks.write(i, ok)

        _, arrays, oks = tf.while_loop(lambda i, *_: i < n, body, (tf.constant(1), arrays, oks))
        return {k: a.stack() for k, a in zip(keys, arrays)}, oks.stack()

    return distributed_steps


class Task:
    """What the Trainer runs, one object per stage (stages 1 and 2, stage 3, AMNet) with the same method
    names, so the stages read alike and differ where the paper does. A stage defines `name`,
    `build_model`, `build_optimizer`, `initialize`, `build_inputs`, `train_step`, `scalars` and
    `evaluate`; the defaults below are what a stage without the rest does (a misspelt override then
    fails at its call, instead of being skipped by a `hasattr`)."""

    name = "stage"
    #: The dataset the stage reads from shards (a damaged shard is then named), or None.
    info = None
    #: One line on how the input is read, logged when training starts ("" for none).
    input_note = ""

    def trainable_variables(self, model) -> list:
        """The weights the optimizer is built for and every step updates."""
        return model.trainable_variables

    def extra_checkpoint(self) -> dict:
        """More trackables to save beside the model and the optimizer (e.g. a random-number state)."""
        return {}

    def summary_images(self, model):
        """[N, H, W, 3] images for TensorBoard at each epoch's end, or None."""
        return None

    def epoch_message(self, scores: dict) -> str | None:
        """The line logged at an epoch's end from `evaluate`'s scores; None: the held-out means."""
        return None

    def missed_epoch_end(self, step: int) -> bool:
        """Whether the epoch that ends at `step` (saved) was never evaluated: a kill between the epoch's
        checkpoint and its `evaluate`. A stage whose evaluation chooses what it keeps says True, and the
        resumed run evaluates that step first; stages 1-2 (held-out accuracy for TensorBoard) say False."""
        return False


class FixedFeatureTask(Task):
    """What the tasks on fixed features (stage 3, AMNet) share: their schedule (`self.schedule`: stage 3's
    Stage3Config or AMNet's AmnetConfig, which name their optimiser, epoch and validation fields alike),
    every weight of their small model trained, no pictures."""

    schedule = None
    workdir: str | None = None

    def build_optimizer(self, total_steps: int):
        s3 = self.schedule
        # Keras' own update: these models are small, a fused kernel would save nothing (issue 26).
        return make_optimizer(
            s3.optimizer, s3.learning_rate, s3.momentum, s3.lr_schedule, total_steps, fused=False
        )

    # --- data: an epoch of the enumeration (decision 60) or one manipulation per image -------------
    def steps_per_epoch(self) -> int:
        n = len(self.enumerator) if self.enumerator is not None else len(self.labels)
        return max(1, n // self.schedule.batch_size)

    def describe_data(self) -> str:
        what = (
            f"{len(self.enumerator)} manipulations of {len(self.labels)} training images per epoch"
            if self.enumerator is not None
            else f"one manipulation per training image, {len(self.labels)} per epoch"
        )
        val = self.validation.describe() if self.validation else self._no_validation
        return f"{what} = {self.steps_per_epoch()} steps of {self.schedule.batch_size}; {self.schedule.negatives} negatives; {val}"

    def set_up_validation(self, features, labels, ids, held, manipulation=None) -> None:
        """Decision 59's validation searches over the `held` training images (their `features`), or None
        with the reason when there are none or too few for a single search (tiny test sets: nothing to
        select on, the last step is kept); fixed validation triplets for TensorBoard."""
        self.validation, self._val_triplets = None, None
        self._no_validation = "no validation split (validation_fraction 0): the last step is kept"
        if not held.any():
            return
        searches = validation.ValidationSearches(
            features[held], labels[held], ids[held], self.num_values, self.names,
            self.schedule.validation_query_share, (self._validation_k(ids[held]),), manipulation=manipulation,
        )  # fmt: skip
        self.validation = searches if len(searches) else None
        self._no_validation = (
            f"a validation split of {int(held.sum())} images has no search: the last step is kept"
        )
        self._val_triplets = self._fixed_triplets(features[held], labels[held])

    def _validation_k(self, held_ids) -> int:
        """Config's validation_k, or Top-20's share of the test gallery applied to the validation gallery
        (decision 59: the same K for stage 3 and AMNet)."""
        if self.schedule.validation_k:
            return int(self.schedule.validation_k)
        n = int((~validation.query_mask(held_ids, self.schedule.validation_query_share)).sum())
        return validation.top20_share(n, self.info.splits.get("gallery", 0))

    # --- what was validated: every scored epoch, and the best one kept (decisions 61, A8) ----------
    @property
    def selection_path(self) -> str:
        return os.path.join(self.workdir or ".", "selection.json")

    def missed_epoch_end(self, step: int) -> bool:
        return self.validation is not None and all(r.get("step") != step for r in self.history)

    def load_selection(self) -> None:
        """`history` and `selected` as `selection.json` left them (a resumed run), else empty."""
        self.history, self.selected = [], None
        if self.workdir and os.path.isfile(self.selection_path):
            with open(self.selection_path, encoding="utf-8") as f:
                saved = json.load(f)
            self.history, self.selected = saved.get("history", []), saved.get("selected")

    def keep(self, record: dict, key: str, weights: dict, step: int) -> None:
        """Adds a validated state's `record` to the history; with `schedule.select_on_validation` a record
        whose `key` beats the selected one's becomes selected and `weights` ({name: trackable}) are saved
        in `<workdir>/selected` as `ckpt-<step>`. Writes `selection.json` either way, after the save: the
        file names the selected step, and the previous selected checkpoint is kept beside the new one, so
        a kill between the two writes leaves `selection.json` naming a checkpoint that is there
        (`checkpoints.selected_checkpoint` reads the one it names)."""
        self.history.append(record)
        select = self.schedule.select_on_validation
        if select and (self.selected is None or record[key] > self.selected[key]):
            self.selected = record
            if self.workdir:
                manager = tf.train.CheckpointManager(
                    tf.train.Checkpoint(**weights), os.path.join(self.workdir, "selected"), max_to_keep=2
                )
                manager.save(checkpoint_number=step)
        if not self.workdir:
            return
        os.makedirs(self.workdir, exist_ok=True)
        obj = {"validation": self.validation.describe(), "k": self.validation.ks[0],
               "select_on_validation": select, "selected": self.selected, "history": self.history}  # fmt: skip
        evaluation.write_json(self.selection_path, obj)


def last_logged_step(tb_dir: str) -> int:
    """The highest step with a summary in `tb_dir`'s event files, -1 for none. A resumed stage trains the
    steps between its checkpoint and the kill again; it does not log those twice (TensorBoard would draw
    each of them from two files, its readers disagreeing on which to keep). A file cut by the kill
    counts up to its last whole record."""
    from tensorflow.core.util import event_pb2

    last = -1
    for path in tf.io.gfile.glob(os.path.join(tb_dir, "events.out.tfevents.*")):
        try:
            for record in tf.data.TFRecordDataset(path):
                event = event_pb2.Event.FromString(record.numpy())
                if event.HasField("summary") and event.step > last:
                    last = int(event.step)
        except tf.errors.DataLossError:
            pass
    return last


def format_seconds(s: float) -> str:
    if not math.isfinite(s):
        return "?"
    s = int(s)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


class Trainer:
    """Runs `task` for `total_steps` in `workdir` (checkpoints in `ckpt/`, TensorBoard in `tb/`)."""

    def __init__(
        self,
        task,
        workdir: str,
        strategy: tf.distribute.Strategy,
        *,
        total_steps: int,
        steps_per_epoch: int,
        batch_size: int,
        log_every: int,
        checkpoint_every: int,
        seed: int = 0,
        deterministic_ops: bool = False,
        loss_upper_bound: float = 0.0,
        loss_growth_limit: float = 0.0,
        steps_per_call: int = 1,
        out=sys.stdout,
    ):
        """`loss_upper_bound`, `loss_growth_limit`: `guard.LossBound`'s (0: off; `run` passes the
        TrainConfig's). `steps_per_call`: steps run in one `tf.function` call (`steps_function`); a call
        never runs past a log line, a checkpoint or an epoch's end, so what is logged, saved and
        evaluated is the same as step by step."""
        if steps_per_call < 1:
            raise ValueError(f"steps_per_call must be >= 1, got {steps_per_call}")
        self.steps_per_call = int(steps_per_call)
        self.task, self.workdir, self.strategy = task, workdir, strategy
        self.loss_upper_bound, self.loss_growth_limit = loss_upper_bound, loss_growth_limit
        self.total_steps, self.steps_per_epoch = total_steps, steps_per_epoch
        self.batch_size, self.log_every, self.checkpoint_every = batch_size, log_every, checkpoint_every
        self.seed, self.deterministic_ops, self.out = seed, deterministic_ops, out
        self.ckpt_dir = os.path.join(workdir, "ckpt")
        self.tb_dir = os.path.join(workdir, "tb")

    def log(self, msg: str) -> None:
        print(msg, file=self.out, flush=True)

    def run(self):
        """Trains up to `total_steps`, resuming from the newest checkpoint; returns the model."""
        save_dir, tb_dir, tmp = distribute.write_dirs(self.workdir, self.ckpt_dir, self.tb_dir, self.strategy)
        try:
            return self._run(save_dir, tb_dir)
        except tf.errors.DataLossError as e:
            if self.task.info is None:
                raise
            raise integrity.corrupt_shard_error(self.task.info, e) from e
        finally:
            distribute.remove_temp(tmp)

    def _run(self, save_dir: str, tb_dir: str | None):
        os.makedirs(self.workdir, exist_ok=True)
        # Everything random in a stage derives from its seed: weight initialisers (Keras' global seed
        # generator, in layer order), dropout masks (per-layer seeds from the config), the input order
        # (tf.data shuffles with the seed), in-batch triplets (stateless, from seed and step) and stage 3's
        # samplers (numpy generators from the seed). Same seed, same command: the same checkpoints.
        keras.utils.set_random_seed(self.seed)
        if self.deterministic_ops:
            tf.config.experimental.enable_op_determinism()  # process-wide, like TensorFlow's own switch
        model, optimizer, step = build_state(self.task, self.strategy, self.total_steps)
        latest = checkpoints.latest(self.ckpt_dir)
        # The random-number state (dropout masks) is saved too, so a resumed run equals an uninterrupted
        # one; a checkpoint written before it was saved resumes without it (and says so).
        with_rng = not latest or not checkpoints.rng_state(model) or checkpoints.has_rng_state(latest)
        ckpt = checkpoints.stage_checkpoint(
            model, optimizer, step, rng=with_rng, **self.task.extra_checkpoint()
        )
        # Every worker saves (saving runs collectives) but only the chief into ckpt/; all resume from it.
        manager = tf.train.CheckpointManager(ckpt, save_dir, max_to_keep=3)
        if latest and not with_rng:
            self.log(f"[{self.task.name}] {latest} has no random-number state: dropout after the resume "
                     "differs from an uninterrupted run")  # fmt: skip
        if latest:
            ckpt.restore(latest).assert_existing_objects_matched()
            checkpoints.check_finite(checkpoints.layer_dict(model), latest)
            self.log(f"[{self.task.name}] resumed from {latest} at step {int(step.numpy())}")
        else:
            self.log(f"[{self.task.name}] {self.task.initialize(model)}")
        start = int(step.numpy())
        replicas = self.strategy.num_replicas_in_sync
        if replicas > 1:
            batch = getattr(self.task, "global_batch", None)
            share = f", each {batch // replicas} of the global batch of {batch}" if batch else ""
            self.log(f"[{self.task.name}] {replicas} replicas{share}")
        writer = None
        at_epoch_end = start % self.steps_per_epoch == 0 or start == self.total_steps
        if latest and start > 0 and at_epoch_end and tb_dir and self.task.missed_epoch_end(start):
            # Killed after the epoch's checkpoint, before its evaluation: without this, a stage that keeps
            # its best validated epoch would never see that one.
            self.log(
                f"[{self.task.name}] step {start} was saved but not evaluated (interrupted): evaluating it"
            )
            writer = tf.summary.create_file_writer(tb_dir)
            self._epoch_end(model, writer, start)
            writer.flush()
        if start >= self.total_steps:
            self.log(f"[{self.task.name}] already trained ({start}/{self.total_steps} steps): nothing to do")
            return model
        if writer is None:
            writer = tf.summary.create_file_writer(tb_dir) if tb_dir else tf.summary.create_noop_writer()
        logged = last_logged_step(tb_dir) if latest and tb_dir else -1
        if logged > start:
            self.log(f"[{self.task.name}] TensorBoard holds steps up to {logged} from before the kill: they "
                     "train again and are not logged twice")  # fmt: skip
        quiet = tf.summary.create_noop_writer()
        # A resumed run continues the same input stream where it stopped (the skipped examples are read,
        # not decoded): with the restored weights, optimizer and random state it repeats the run that never
        # stopped (tests/test_training.py).
        dataset = self.task.build_inputs(self.seed, skip_steps=start)
        if self.task.input_note:
            self.log(f"[{self.task.name}] {self.task.input_note}")
        iterator = iter(self.strategy.experimental_distribute_dataset(dataset))

        make = steps_function if self.steps_per_call > 1 else step_function
        run_steps = make(self.task, self.strategy, model, optimizer, step)
        bound = guard.LossBound(self.loss_upper_bound, self.loss_growth_limit)
        # The growth limit is measured from the stage's first loss, which a resumed run did not see: it is
        # kept beside the checkpoints (else a resume would measure from a loss 10x lower, and stop where
        # the run that never stopped goes on).
        reference = os.path.join(self.workdir, "loss_reference.json")
        if latest and os.path.isfile(reference):
            with open(reference, encoding="utf-8") as f:
                bound.first = float(json.load(f)["first_loss"])
        keep_reference = bound.first is None and tb_dir is not None  # the chief writes it

        t0 = time.time()
        window_start, window_images = time.time(), 0
        sums: dict[str, np.ndarray] = {}
        for s, values, finite in self._steps(start, iterator, run_steps):
            guard.check_step(self.task.name, s + 1, values, finite, model=model, optimizer=optimizer,
                             last_checkpoint=lambda: checkpoints.latest(self.ckpt_dir), bound=bound)  # fmt: skip
            if keep_reference and bound.first is not None:
                evaluation.write_json(reference, {"first_loss": bound.first, "step": s + 1})
                keep_reference = False
            window_images += self.batch_size
            for k, v in values.items():
                sums[k] = sums.get(k, 0) + v
            done = s + 1
            end_of_epoch = done % self.steps_per_epoch == 0 or done == self.total_steps
            if done % self.log_every == 0 or end_of_epoch:
                elapsed = time.time() - window_start
                ips = window_images / max(elapsed, 1e-9)
                n = max(1, window_images // self.batch_size)
                scalars = self.task.scalars(sums, n)
                eta = (self.total_steps - done) * self.batch_size / max(ips, 1e-9)
                with (writer if done > logged else quiet).as_default(step=done):
                    for k, v in scalars.items():
                        tf.summary.scalar(k, v)
                    tf.summary.scalar("images_per_second", ips)
                    tf.summary.scalar("learning_rate", float(optimizer.learning_rate.numpy()))
                shown = " ".join(f"{k} {v:.3f}" for k, v in scalars.items() if not k.startswith("accuracy"))
                epoch = done / self.steps_per_epoch
                self.log(
                    f"[{self.task.name}] step {done}/{self.total_steps} ({100 * done / self.total_steps:.0f}%) "
                    f"epoch {epoch:.2f} {shown} | {ips:.1f} img/s | ETA {format_seconds(eta)}"
                )
                sums, window_start, window_images = {}, time.time(), 0
            if end_of_epoch or self._periodic_save(done):
                manager.save(checkpoint_number=done)
            if end_of_epoch and tb_dir:  # held-out accuracy and pictures: the chief's
                self._epoch_end(model, writer if done > logged else quiet, done)
        writer.flush()
        self.log(
            f"[{self.task.name}] done: {self.total_steps - start} steps in {format_seconds(time.time() - t0)}"
        )
        return model

    def _steps(self, start: int, iterator, fn):
        """(step index, its results as numpy, its weights-finite flag) for every step from `start`, run
        one per call or, with `steps_per_call` > 1, in calls that end where a step is logged, saved or
        ends an epoch (those happen after a call's last step, on the state it left)."""
        s = start
        while s < self.total_steps:
            if self.steps_per_call == 1:
                results, finite = fn(next(iterator))
                yield s, {k: v.numpy() for k, v in results.items()}, bool(finite)
                s += 1
                continue
            n = self._call_length(s)
            results, finite = fn(iterator, tf.constant(n, tf.int32))
            values, finite = {k: v.numpy() for k, v in results.items()}, finite.numpy()
            for i in range(n):
                yield s + i, {k: v[i] for k, v in values.items()}, bool(finite[i])
            s += n

    def _call_length(self, s: int) -> int:
        """How many steps the call starting after step `s` runs: at most `steps_per_call`, and it stops at
        the next step that is logged, may be saved (every `checkpoint_every`) or ends an epoch."""
        n = min(self.steps_per_call, self.total_steps - s)
        for every in (self.log_every, self.checkpoint_every, self.steps_per_epoch):
            n = min(n, every - s % every)  # >= 1: s < total_steps and s % every < every
        return n

    def _periodic_save(self, done: int) -> bool:
        """Every `checkpoint_every` steps, except when the epoch's end (which saves anyway) is less than
        half that away: a stage-2 checkpoint is 0.3 GB, and saving at step 200 and again at the epoch's end
        at 203 cost the main job seconds for nothing (issue 26). A resume loses at most 1.5x
        `checkpoint_every` steps."""
        if done % self.checkpoint_every:
            return False
        epoch_end = min((done // self.steps_per_epoch + 1) * self.steps_per_epoch, self.total_steps)
        return not 0 < epoch_end - done < self.checkpoint_every / 2

    def _epoch_end(self, model, writer, done):
        heldout = self.task.evaluate(model, step=done)
        images = self.task.summary_images(model)
        with writer.as_default(step=done):
            for k, v in heldout.items():
                tf.summary.scalar(k, v)
            if images is not None:
                tf.summary.image("aam_boxes/heldout", images, step=done, max_outputs=len(images))
        message = self.task.epoch_message(heldout) if heldout else None
        if message is not None:
            self.log(f"[{self.task.name}] {message}")
        elif heldout:
            groups: dict[str, list[float]] = {}
            for k, v in heldout.items():
                groups.setdefault(k.rsplit("/", 1)[0], []).append(v)
            parts = " ".join(f"{g} {np.mean(v):.3f}" for g, v in sorted(groups.items()))
            self.log(f"[{self.task.name}] held-out mean accuracy: {parts}")
