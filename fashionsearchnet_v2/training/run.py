"""Runs a stage from a resolved config: picks the task, computes the schedule, starts the Trainer.

Entry points (`experiments/stage*.py`) and the main job call these; tests call them on tiny configs.
Before training, a stage takes its directory's lock (one run per stage directory, `locks`), checks that
what it resumes or builds on was trained on this dataset (`provenance`) and that the records match
dataset.json (`integrity.check_records`); its config.json records the dataset's fingerprint. Under
MultiWorkerMirroredStrategy only the chief locks and writes config.json.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import math
import os
import sys

import tensorflow as tf

from fashionsearchnet_v2 import configs, locks, precision
from fashionsearchnet_v2.configs import ExperimentConfig
from fashionsearchnet_v2.data import integrity, pipeline, schema
from fashionsearchnet_v2.trained import checkpoints, loading, provenance
from fashionsearchnet_v2.training import distribute, stages, trainer


def schedule(cfg: ExperimentConfig, info: schema.DatasetInfo) -> tuple[int, int]:
    """(total steps, steps per epoch) of stage 1 or 2 (an epoch: the training images it reads, decision
    72's carve left out when asked). A `max_steps` shorter than an epoch leaves the epoch as it is: the
    progress lines say which fraction of one ran (the last step ends the run's epoch anyway)."""
    train = cfg.train
    per_epoch = pipeline.steps_per_epoch(info, train.batch_size, left_out=len(stages.left_out_ids(cfg, info)))
    total = train.max_steps if train.max_steps else max(1, math.ceil(train.epochs * per_epoch))
    return total, per_epoch


def check_same_model(
    cfg: ExperimentConfig, workdir: str, info: schema.DatasetInfo | None = None
) -> ExperimentConfig | None:
    """Resuming needs the model the checkpoints were made with, trained on this dataset (and a real run
    does not resume a --quick one); say so instead of failing in restore. Returns the stage's config.json
    as its earlier run wrote it (None when it has not run)."""
    old = configs.read_config(workdir)
    if old is None or not os.path.isdir(os.path.join(workdir, "ckpt")):
        return old
    if info is not None:
        provenance.check(old, info, workdir, quick=cfg.quick)
    diff = {
        f.name: (getattr(old.model, f.name), getattr(cfg.model, f.name))
        for f in dataclasses.fields(cfg.model)
        if getattr(old.model, f.name) != getattr(cfg.model, f.name)
    }
    if old.train.exclude_validation != cfg.train.exclude_validation:  # another stream of images (decision 72)
        diff["exclude_validation"] = (old.train.exclude_validation, cfg.train.exclude_validation)
    if diff:
        shown = "; ".join(f"{k}: {a} there vs {b} now" for k, a, b in ((k, *v) for k, v in diff.items()))
        raise checkpoints.RestoreError(
            f"{workdir} holds checkpoints of another model ({shown}). Use another --workdir, the same flags "
            "as before, or delete that directory to start over."
        )
    check_same_recipe(workdir, old.train, cfg.train, old.total_steps, cfg.total_steps)
    return old


#: What a resumed stage may change: how long it trains, how it reports and saves, and the speed-only
#: switches (precision by design: tests/test_precision.py). Every other field of its TrainConfig,
#: Stage3Config or AmnetConfig changes what the steps compute or which examples they read, so a resume
#: with another value would mix two recipes in one run (and config.json would name only the second).
FREE_ON_RESUME = frozenset({
    "epochs", "max_steps", "log_every_steps", "checkpoint_every_steps", "heldout_images", "summary_images",
    "precision", "fused_update", "cache_decoded_mib", "deterministic_ops", "loss_upper_bound",
    "loss_growth_limit", "steps_per_call",
})  # fmt: skip


def check_same_recipe(workdir: str, old, new, old_total: int | None = None, new_total: int | None = None):
    """Refuses a resume whose training config (`old` as config.json recorded it, `new` now: TrainConfig,
    Stage3Config or AmnetConfig) differs outside `FREE_ON_RESUME`, naming each flag; and a decaying
    learning rate (lr_schedule=cosine) asked to run another number of steps, which would jump the rate."""
    diff = {
        f.name: (getattr(old, f.name), getattr(new, f.name))
        for f in dataclasses.fields(new)
        if f.name not in FREE_ON_RESUME and getattr(old, f.name) != getattr(new, f.name)
    }
    if new.lr_schedule == "cosine" and None not in (old_total, new_total) and old_total != new_total:
        diff["epochs / max_steps (the cosine's length, in steps)"] = (old_total, new_total)
    if diff:
        shown = "; ".join(f"--{k}: {a} there vs {b} now" for k, (a, b) in diff.items())
        raise checkpoints.RestoreError(
            f"{workdir} was trained so far with another recipe ({shown}): resuming would mix the two. Give "
            "the flags it was started with (its config.json), use another --workdir, or delete that "
            "directory to start over."
        )


def check_workers_agree(cfg: ExperimentConfig, info: schema.DatasetInfo, workdir: str, strategy) -> None:
    """Under several workers, refuses a start where they differ: the recipe and model (every field, the
    resolved precision and the checkpoint interval included: a save is a collective every worker must
    join), the steps, the dataset's fingerprint, or the checkpoint they resume from (a --workdir that is
    not shared). Each worker's digest is gathered to all (a collective, so every worker runs it); without
    it workers with other flags trained together silently. One process: nothing to compare."""
    if distribute.num_workers(strategy) < 2:
        return
    latest = checkpoints.latest(os.path.join(workdir, "ckpt"))
    step = (loading.trained_step(latest) or 0) if latest else 0
    recipe = {"model": dataclasses.asdict(cfg.model), "train": dataclasses.asdict(cfg.train),
              "total_steps": cfg.total_steps, "data": info.fingerprint, "variant": cfg.variant}  # fmt: skip
    digest = hashlib.sha256(json.dumps(recipe, sort_keys=True, default=str).encode()).digest()
    mine = tf.constant([int.from_bytes(digest[:6], "big"), step], tf.int64)  # 48 bits: exact in any dtype
    # In a tf.function: eagerly, MultiWorkerMirroredStrategy warned of "significant overhead" at every start.
    gather = tf.function(lambda: strategy.gather(strategy.run(lambda: mine), axis=0), autograph=False)
    gathered = gather().numpy().reshape(-1, 2)
    if len({int(d) for d in gathered[:, 0]}) > 1:
        raise checkpoints.RestoreError(
            f"the {len(gathered)} workers of this {cfg.stage} run differ in their flags or data (digests "
            f"{', '.join(f'{int(d):012x}' for d in gathered[:, 0])}): start every worker with the same "
            "command, code and converted dataset"
        )
    if len({int(s) for s in gathered[:, 1]}) > 1:
        raise checkpoints.RestoreError(
            f"the workers of this {cfg.stage} run would start at steps {[int(s) for s in gathered[:, 1]]}: "
            "their --workdir is not one directory they all see (a shared filesystem), or a checkpoint is "
            "missing on some"
        )


def check_finished(directory: str, stage_cfg: ExperimentConfig, info: schema.DatasetInfo, what: str) -> None:
    """A stage builds on a finished previous one: refuses one that stopped early (killed, diverged)."""
    if stage_cfg.total_steps is not None:  # recorded when it trained: no schedule to recompute
        loading.check_finished(directory, stage_cfg, what)
        return
    path = checkpoints.latest(os.path.join(directory, "ckpt"))
    if path is None:
        return  # the restore says "run ... first"
    total, _ = schedule(stage_cfg, info)
    try:
        done = int(tf.train.load_variable(path, "step/.ATTRIBUTES/VARIABLE_VALUE"))
    except (tf.errors.OpError, ValueError):
        return
    if done < total:
        raise checkpoints.RestoreError(
            f"{what} in {directory} stopped at step {done} of {total} (interrupted or diverged): finish it "
            f"first (run it again with the same flags; it resumes), then this stage"
        )


def stage_lock(workdir: str, stage: str, strategy=None):
    """The stage directory's lock (held by the chief only: the other workers write elsewhere)."""
    if not distribute.is_chief(strategy):
        return contextlib.nullcontext()
    return locks.DirectoryLock(workdir, f"another {stage} run")


def _say_taken_over(lock, stage: str, out) -> None:
    if getattr(lock, "took_over", None):
        print(
            f"[{stage}] took over the lock of a run that is gone: {locks.describe(lock.took_over)}", file=out
        )


def _train(task, cfg: ExperimentConfig, info, workdir: str, strategy, out):
    total, per_epoch = schedule(cfg, info)
    cfg = dataclasses.replace(cfg, total_steps=total)
    check_workers_agree(cfg, info, workdir, strategy)  # first: every worker reaches this collective
    integrity.check_records(info)
    with stage_lock(workdir, cfg.stage, strategy) as lock:
        _say_taken_over(lock, cfg.stage, out)
        old = check_same_model(cfg, workdir, info)
        cfg = _keep_the_start(cfg, old, workdir, out)
        cfg = provenance.stamp(cfg, info)
        if distribute.is_chief(strategy):
            cfg.write(workdir)
        return trainer.Trainer(
            task, workdir, strategy, total_steps=total, steps_per_epoch=per_epoch,
            batch_size=cfg.train.batch_size, log_every=cfg.train.log_every_steps,
            checkpoint_every=cfg.train.checkpoint_every_steps, seed=cfg.train.seed,
            deterministic_ops=cfg.train.deterministic_ops, loss_upper_bound=cfg.train.loss_upper_bound,
            loss_growth_limit=cfg.train.loss_growth_limit, out=out,
        ).run()  # fmt: skip


def _keep_the_start(
    cfg: ExperimentConfig, old: ExperimentConfig | None, workdir: str, out
) -> ExperimentConfig:
    """A resumed stage continues its own checkpoint: config.json keeps the start its first run recorded
    in `old` (--alexnet_weights, --init_from), and a different one given now is said to be unread."""
    if old is None or checkpoints.latest(os.path.join(workdir, "ckpt")) is None:
        return cfg
    start = {"alexnet_weights": old.alexnet_weights, "init_from": old.init_from}
    for flag, first in start.items():
        now = getattr(cfg, flag)
        if now and now != first:
            print(f"[{cfg.stage}] resuming: --{flag}={now} is not read, the stage continues its checkpoint "
                  f"(its start: {first or 'none'})", file=out, flush=True)  # fmt: skip
    return dataclasses.replace(cfg, **start)


def resolve_precision(cfg: ExperimentConfig, out=sys.stdout) -> ExperimentConfig:
    """`cfg` with `train.precision` resolved for this device ("auto" -> float32 or bfloat16), said once
    at the start of the stage; config.json records the resolved one."""
    choice = precision.resolve(cfg.train.precision)
    print(f"[{cfg.stage}] {choice}", file=out, flush=True)
    return dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, precision=choice.precision))


def run_stage1(cfg: ExperimentConfig, info: schema.DatasetInfo, strategy=None, out=sys.stdout):
    """Stage 1 in `<workdir>/stage1`; returns the trained Keras model."""
    strategy = strategy or trainer.make_strategy(cfg.strategy)
    cfg = resolve_precision(dataclasses.replace(cfg, stage="stage1"), out)
    workdir = loading.stage_dir(cfg.workdir, "stage1")
    return _train(stages.Stage1Task(cfg, info, workdir, strategy), cfg, info, workdir, strategy, out)


def run_stage2(cfg: ExperimentConfig, info: schema.DatasetInfo, strategy=None, out=sys.stdout):
    """Stage 2 of `cfg.variant` in `<workdir>/stage2_<variant>`, starting from `<workdir>/stage1`."""
    strategy = strategy or trainer.make_strategy(cfg.strategy)
    cfg = dataclasses.replace(
        cfg,
        stage="stage2",
        model=configs.variant_model_config(cfg.variant, cfg.model),
        train=configs.variant_train_config(cfg.variant, cfg.train),
    )
    stage1_dir = loading.stage_dir(cfg.workdir, "stage1")
    workdir = loading.stage_dir(cfg.workdir, "stage2", cfg.variant)
    stage1_cfg = configs.read_config(stage1_dir)
    if stage1_cfg is None:
        raise checkpoints.RestoreError(
            f"{stage1_dir} has no config.json: run stage 1 first (experiments.stage1)"
        )
    provenance.check(stage1_cfg, info, stage1_dir, quick=cfg.quick)
    check_finished(stage1_dir, stage1_cfg, info, "stage 1")
    if stage1_cfg.train.exclude_validation != cfg.train.exclude_validation:  # decision 72: both or neither
        said = "left out" if stage1_cfg.train.exclude_validation else "trained on"
        raise checkpoints.RestoreError(
            f"{stage1_dir} {said} the validation carve (--exclude_validation="
            f"{str(stage1_cfg.train.exclude_validation).lower()}); stage 2 must do the same, or the carve "
            "is not held out: pass the same --exclude_validation"
        )
    cfg = resolve_precision(cfg, out)
    task = stages.Stage2Task(cfg, info, workdir, strategy, stage1_dir, stage1_cfg)
    return _train(task, cfg, info, workdir, strategy, out)


def _stage3_task(
    cfg: ExperimentConfig, info: schema.DatasetInfo, s3_variant: str, workdir: str | None = None
):
    """(task, config, work directory) of stage 3 on top of `<workdir>/stage2_<variant>`: the stage-2
    network embeds the training split once (cached); only the training split is read."""
    from fashionsearchnet_v2.training import stage3

    model, ckpt, s2_cfg = loading.load_stage2(cfg.workdir, info, cfg.variant, quick=cfg.quick)
    s2_dir = loading.stage_dir(cfg.workdir, "stage2", cfg.variant)
    check_finished(s2_dir, s2_cfg, info, f"stage 2 ({cfg.variant})")
    feats = loading.split_features(model, ckpt, info, "train", s2_cfg.model.image_size, s2_dir)
    s3 = cfg.stage3
    if s3.w_r_init == "identity":  # w_r = s·I: the representation keeps the concatenation's A·D dimensions
        s3 = dataclasses.replace(s3, r=info.num_attributes * s2_cfg.model.fc10_size)
    cfg = dataclasses.replace(
        cfg, stage="stage3", model=s2_cfg.model, stage3=s3, built_on=loading.built_on(cfg.workdir, ckpt)
    )
    workdir = workdir or loading.stage3_dir(cfg.workdir, cfg.variant, s3_variant)
    return stage3.Stage3Task(cfg, info, feats, workdir), cfg, workdir


def run_stage3(
    cfg: ExperimentConfig, info: schema.DatasetInfo, out=sys.stdout, stage3_dir: str | None = None
):
    """Stage 3 on top of `<workdir>/stage2_<variant>` into `<workdir>/stage3_<variant>_<lg|full>` (or
    `stage3_dir`: the validation sweep trains its candidates side by side).

    Fixed features of the training split (its validation share held out, see `training.stage3`); stage 3
    runs on one device whatever `--strategy` says, its model being a few matrices.
    """
    s3_variant = "full" if cfg.stage3.update_memory else "lg"
    task, cfg, workdir = _stage3_task(cfg, info, s3_variant, stage3_dir)
    return _train_on_features(task, cfg, workdir, out)


def run_stage3_untrained(cfg: ExperimentConfig, info: schema.DatasetInfo, out=sys.stdout):
    """The control of stage 3 (Table 1's "Rank-LG, untrained"): the Rank-LG model exactly as stage 3
    starts it (same seed, M, λ = 1, w_r), saved without a training step into
    `<workdir>/stage3_<variant>_untrained`. What Rank-LG gains over it is what L_G learned."""
    cfg = dataclasses.replace(cfg, stage3=dataclasses.replace(cfg.stage3, update_memory=False))
    task, cfg, workdir = _stage3_task(cfg, info, "untrained")
    cfg = dataclasses.replace(cfg, stage3=dataclasses.replace(cfg.stage3, max_steps=0))

    def load():
        return loading.load_global_model(workdir, info.num_values, task.fc10.shape[-1])[0]

    return _save_untrained(task, cfg, info, workdir, cfg.stage3.seed, load, out)


def _save_untrained(task, cfg: ExperimentConfig, info, workdir: str, seed: int, load, out):
    """Builds and initialises `task`'s model as its training starts (same seed) and saves it without a
    step into `<workdir>/ckpt`; a control already saved there is loaded with `load()` instead."""
    with stage_lock(workdir, cfg.stage) as lock:
        _say_taken_over(lock, cfg.stage, out)
        ckpt_dir = os.path.join(workdir, "ckpt")
        old = configs.read_config(workdir)
        if old is not None and checkpoints.latest(ckpt_dir):
            provenance.check(old, info, workdir, quick=cfg.quick)
            loading.check_built_on(workdir, old, cfg.built_on)
            print(f"[{cfg.stage}] untrained control already saved in {workdir}", file=out)
            return load()
        cfg = provenance.stamp(dataclasses.replace(cfg, total_steps=0), info)
        cfg.write(workdir)
        import keras

        keras.utils.set_random_seed(seed)  # as the Trainer does before building the model
        model = task.build_model()
        print(f"[{cfg.stage}] untrained control: {task.initialize(model)}", file=out, flush=True)
        ckpt = tf.train.Checkpoint(step=tf.Variable(0, dtype=tf.int64), **checkpoints.layer_dict(model))
        tf.train.CheckpointManager(ckpt, ckpt_dir, max_to_keep=1).save(checkpoint_number=0)
        return model


def _train_on_features(task, cfg: ExperimentConfig, workdir: str, out):
    """Stage 3 and AMNet: small models on fixed features, one device; the schedule is the task's
    (stage 3's Stage3Config, AMNet's AmnetConfig)."""
    s3 = task.schedule
    per_epoch = task.steps_per_epoch()
    total = s3.max_steps if s3.max_steps else max(1, math.ceil(s3.epochs * per_epoch))
    cfg = dataclasses.replace(cfg, total_steps=total)
    with stage_lock(workdir, cfg.stage) as lock:
        _say_taken_over(lock, cfg.stage, out)
        old = configs.read_config(workdir)
        if old is not None and checkpoints.latest(os.path.join(workdir, "ckpt")):
            provenance.check(old, task.info, workdir, quick=cfg.quick)
            loading.check_built_on(workdir, old, cfg.built_on)
            field = "amnet" if cfg.stage == "amnet" else "stage3"
            check_same_recipe(workdir, getattr(old, field), s3, old.total_steps, total)
        cfg = provenance.stamp(cfg, task.info)
        cfg.write(workdir)
        return trainer.Trainer(
            task, workdir, tf.distribute.get_strategy(), total_steps=total,
            steps_per_epoch=min(per_epoch, total), batch_size=s3.batch_size, log_every=s3.log_every_steps,
            checkpoint_every=max(1, per_epoch // 2), seed=s3.seed,
            deterministic_ops=cfg.train.deterministic_ops, loss_upper_bound=cfg.train.loss_upper_bound,
            loss_growth_limit=cfg.train.loss_growth_limit, steps_per_call=s3.steps_per_call, out=out,
        ).run()  # fmt: skip


def _amnet_task(cfg: ExperimentConfig, info: schema.DatasetInfo, workdir: str | None = None, out=sys.stdout):
    """(task, config, work directory) of AMNet on fixed stage-1 features of the training split (cached)."""
    from fashionsearchnet_v2.training import amnet

    model, ckpt, s1_cfg = loading.load_stage1(cfg.workdir, info, quick=cfg.quick)
    s1_dir = loading.stage_dir(cfg.workdir, "stage1")
    check_finished(s1_dir, s1_cfg, info, "stage 1")
    feats = loading.split_features(model, ckpt, info, "train", s1_cfg.model.image_size, s1_dir)
    cfg = dataclasses.replace(
        cfg, stage="amnet", variant="amnet", model=s1_cfg.model, built_on=loading.built_on(cfg.workdir, ckpt)
    )
    cfg = resolve_precision(cfg, out)
    workdir = workdir or os.path.join(cfg.workdir, "amnet")
    return amnet.AmnetTask(cfg, info, feats, workdir), cfg, workdir


def run_amnet(cfg: ExperimentConfig, info: schema.DatasetInfo, out=sys.stdout, amnet_dir: str | None = None):
    """The AMNet baseline on fixed stage-1 features into `<workdir>/amnet` (or `amnet_dir`: the
    validation sweep trains its candidates side by side), with `cfg.amnet`'s schedule (WORKSPACE.md A9).
    """
    task, cfg, workdir = _amnet_task(cfg, info, amnet_dir, out)
    return _train_on_features(task, cfg, workdir, out)


def run_amnet_untrained(cfg: ExperimentConfig, info: schema.DatasetInfo, out=sys.stdout):
    """AMNet's control (Table 1's "AMNet, untrained"): AMNet exactly as its training starts (same seed,
    memory at the prototypes, random fusion), saved without a step into `<workdir>/amnet_untrained`.
    What AMNet gains over it is what its training learned."""
    workdir = os.path.join(cfg.workdir, "amnet_untrained")
    am = dataclasses.replace(cfg.amnet, max_steps=0, select_on_validation=False)
    task, cfg, workdir = _amnet_task(dataclasses.replace(cfg, amnet=am), info, workdir, out)
    cfg = dataclasses.replace(cfg, variant="amnet_untrained")
    task.workdir = None  # its step-0 validation score is AMNet's own (amnet/selection.json)

    def load():
        return loading.load_amnet(workdir, info, task.features.shape[-1])[0]

    return _save_untrained(task, cfg, info, workdir, am.seed, load, out)
