"""Trained stages on disk: where each stage writes and how a later step loads it, checked.

Stage 3, the evaluation and the export all start from a trained stage; they load it through these
functions, which sit below all three (they need only the configs, the model and the checkpoints).
"""

from __future__ import annotations

import os
from typing import NamedTuple

import tensorflow as tf

from fashionsearchnet_v2 import configs
from fashionsearchnet_v2.data import schema
from fashionsearchnet_v2.model import amnet, memory_block, network
from fashionsearchnet_v2.trained import checkpoints, features, provenance


def stage_dir(workdir: str, stage: str, variant: str | None = None) -> str:
    """Where a stage writes: `<workdir>/stage1`, `<workdir>/stage2_<variant>`, `<workdir>/stage3_<variant>`."""
    return os.path.join(workdir, stage if variant is None else f"{stage}_{variant}")


def stage3_dir(workdir: str, stage2_variant: str, stage3_variant: str) -> str:
    return stage_dir(workdir, "stage3", f"{stage2_variant}_{stage3_variant}")


def trained_step(checkpoint: str) -> int | None:
    """The step a stage's checkpoint was saved at, or None where it has no step variable."""
    try:
        return int(tf.train.load_variable(checkpoint, "step/.ATTRIBUTES/VARIABLE_VALUE"))
    except (tf.errors.OpError, ValueError):
        return None


def check_finished(directory: str, cfg: configs.ExperimentConfig, what: str) -> None:
    """Refuses a stage whose newest checkpoint is short of the steps its config.json says it trains to
    (killed, diverged): what is built on it, evaluated or exported would be an unfinished model. A config
    written before `total_steps` was recorded is not checked here (`training.run.check_finished` is)."""
    path = checkpoints.latest(os.path.join(directory, "ckpt"))
    if cfg.total_steps is None or path is None:
        return
    done = trained_step(path)
    if done is not None and done < cfg.total_steps:
        raise checkpoints.RestoreError(
            f"{what} in {directory} stopped at step {done} of {cfg.total_steps} (interrupted or diverged): "
            "finish it first (run it again with the same flags; it resumes)"
        )


def built_on(workdir: str, checkpoint: str) -> str:
    """How a stage on fixed features records the checkpoint it read them from (`ExperimentConfig.built_on`):
    relative to the seed's work directory, so a moved work directory still matches."""
    return os.path.relpath(checkpoint, workdir)


def check_built_on(directory: str, cfg: configs.ExperimentConfig, now: str) -> None:
    """Refuses a stage on fixed features whose stage below has moved on (trained further) since: its
    weights were fitted to features that checkpoint no longer gives. `now`: `built_on` of today's."""
    if cfg.built_on is not None and cfg.built_on != now:
        raise checkpoints.RestoreError(
            f"{directory} was trained on the features of {cfg.built_on}, but {now} is there now (that stage "
            f"trained further): delete {directory} to train it again on the new one"
        )


def load_stage2(workdir: str, info: schema.DatasetInfo, stage2_variant: str, quick: bool | None = None):
    """(model, checkpoint path, config) of a trained stage 2, every layer restored and checked: trained
    on `info` (`provenance.check`; `quick=False` also refuses a --quick stage) and finite."""
    directory = stage_dir(workdir, "stage2", stage2_variant)
    cfg = configs.read_config(directory)
    if cfg is None:
        raise checkpoints.RestoreError(
            f"{directory} has no config.json: run experiments.stage2 --variant={stage2_variant}"
        )
    provenance.check(cfg, info, directory, quick=quick)
    check_finished(directory, cfg, f"stage 2 ({stage2_variant})")
    model = network.build_network(info.num_values, info.attribute_names, cfg.model, "full")
    names = sorted(checkpoints.layer_dict(model))
    path = checkpoints.restore_layers(
        model, os.path.join(directory, "ckpt"), names, f"stage 2 ({stage2_variant})"
    )
    return model, path, cfg


def load_stage1(workdir: str, info: schema.DatasetInfo, quick: bool | None = None):
    """(model, checkpoint path, config) of the trained stage 1, checked like `load_stage2`'s."""
    directory = stage_dir(workdir, "stage1")
    cfg = configs.read_config(directory)
    if cfg is None:
        raise checkpoints.RestoreError(f"{directory} has no config.json: run experiments.stage1 first")
    provenance.check(cfg, info, directory, quick=quick)
    check_finished(directory, cfg, "stage 1")
    model = network.build_network(info.num_values, info.attribute_names, cfg.model, "stage1")
    names = sorted(checkpoints.layer_dict(model))
    return model, checkpoints.restore_layers(model, os.path.join(directory, "ckpt"), names, "stage 1"), cfg


def load_global_model(directory: str, num_values, dim: int, below: str | None = None):
    """(global-representation model, checkpoint path) of a trained stage 3 in `directory`: the state it
    selected on the validation split (`<directory>/selected`) when it selects, else its last step. With
    `below` (`built_on` of the stage-2 checkpoint it will run on), one trained on another is refused."""
    cfg = configs.read_config(directory)
    if cfg is None:
        raise checkpoints.RestoreError(f"{directory} has no config.json: run experiments.stage3 first")
    if below is not None:
        check_built_on(directory, cfg, below)
    check_finished(directory, cfg, "stage 3")
    s3 = cfg.stage3
    model = memory_block.build_global_model(
        num_values, dim, s3.r, s3.update_memory, normalize=s3.normalize, train_w_r=s3.train_w_r
    )
    chosen = checkpoints.selected_checkpoint(directory) if s3.select_on_validation else None
    ckpt_dir = os.path.join(directory, "ckpt")
    path = checkpoints.restore_layers(
        model, ckpt_dir, ["global_representation"], "stage 3", checkpoint=chosen
    )
    return model, path


def load_amnet(directory: str, info: schema.DatasetInfo, feature_dim: int, below: str | None = None):
    """(AMNet model, checkpoint path) in `directory` (`<workdir>/amnet` or `amnet_untrained`), checked
    against `info`: the state it selected on the validation split (`<directory>/selected`) when it selects,
    else its last step. A directory written before issue 24 reads back as `configs.old_amnet`. With
    `below` (`built_on` of the stage-1 checkpoint it will run on), one trained on another is refused."""
    cfg = configs.read_config(directory)
    if cfg is None:
        raise checkpoints.RestoreError(f"{directory} has no config.json: run the AMNet stage first")
    provenance.check(cfg, info, directory)
    if below is not None:
        check_built_on(directory, cfg, below)
    check_finished(directory, cfg, "the AMNet stage")
    am = cfg.amnet
    memory_dim = feature_dim if am.memory_init == "prototypes" else am.memory_dim
    model = amnet.build_amnet(info.num_values, feature_dim, memory_dim, am.embedding_dim)
    chosen = checkpoints.selected_checkpoint(directory) if am.select_on_validation else None
    ckpt_dir = os.path.join(directory, "ckpt")
    path = checkpoints.restore_layers(
        model, ckpt_dir, sorted(checkpoints.layer_dict(model)), "the AMNet stage", checkpoint=chosen
    )
    return model, path


class Variant(NamedTuple):
    """A trained Table 1 row of FashionSearchNet-v2 (not AMNet): its stage-2 network and global layer."""

    model: object  # the stage-2 network (keras.Model)
    checkpoint: str  # the stage-2 checkpoint
    config: configs.ExperimentConfig  # stage 2's
    layer: memory_block.GlobalRepresentation  # stage 3's, or the identity with M = the training means
    stage3_checkpoint: str | None  # None for the rows without stage 3


def load_variant(workdir: str, info: schema.DatasetInfo, variant: str, progress: bool = True) -> Variant:
    """The one loader of a Table 1 variant, for the evaluation and the export alike. Rows without stage 3
    get the identity global layer (the concatenation, §4.5) with memory block M of the training means
    (§3.3), from the cached stage-2 features of the train split. Raises checkpoints.RestoreError when a
    stage has not been trained."""
    s2_variant, s3_variant = configs.VARIANTS[variant]
    model, ckpt, cfg = load_stage2(workdir, info, s2_variant)
    if s3_variant is None:
        train = split_features(model, ckpt, info, "train", cfg.model.image_size, stage_dir(workdir, "stage2", s2_variant), progress)  # fmt: skip
        memory, _ = memory_block.build_memory_block(train["fc10"], train["labels"], info.num_values)
        return Variant(model, ckpt, cfg, memory_block.identity_global_layer(memory, info.num_values), None)
    directory = stage3_dir(workdir, s2_variant, s3_variant)
    gm, s3_ckpt = load_global_model(
        directory, info.num_values, cfg.model.fc10_size, below=built_on(workdir, ckpt)
    )
    return Variant(model, ckpt, cfg, gm.get_layer("global_representation"), s3_ckpt)


def split_features(model, ckpt_path, info, split, image_size, stage_directory, progress=True):
    """The cached features of `split` under `<stage_directory>/features` (see `features.cached_extract`)."""
    return features.cached_extract(
        model,
        info,
        split,
        image_size,
        os.path.join(stage_directory, "features"),
        ckpt_path,
        progress=progress,
    )
