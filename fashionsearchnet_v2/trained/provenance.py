"""What a trained stage was trained on, and the check that whoever resumes or builds on it uses the same.

Each stage's config.json records the dataset's directory, its content fingerprint, its attributes with
their value counts and whether it was a --quick smoke check (`stamp`). Resuming a stage, starting stage 2 from stage 1,
stage 3 from stage 2, and loading a stage for evaluation or export all go through `check`, which refuses
a stage trained on another version of the dataset (converted again into the same directory), on other
attributes, or (for a real run) by a --quick run. A stage written before fingerprints existed records
none and is accepted as it is (it cannot be checked).
"""

from __future__ import annotations

import dataclasses
import os

from fashionsearchnet_v2.configs import ExperimentConfig
from fashionsearchnet_v2.data import schema
from fashionsearchnet_v2.trained.checkpoints import RestoreError


class ProvenanceError(RestoreError):
    """A trained stage does not belong to this dataset or run; the message says what differs and what to do."""


def attributes_of(info: schema.DatasetInfo) -> dict[str, int]:
    return {a.name: a.num_values for a in info.attributes}


def stamp(cfg: ExperimentConfig, info: schema.DatasetInfo) -> ExperimentConfig:
    """`cfg` with the dataset's fingerprint, attributes and absolute directory recorded (written to
    config.json by the run): later commands on the stage find the dataset without being told
    (`experiments.common.resolve_dirs`), and check it with `check`."""
    return dataclasses.replace(
        cfg,
        dataset_fingerprint=info.fingerprint,
        attributes=attributes_of(info),
        data_dir=os.path.abspath(info.data_dir),
    )


def _attribute_difference(theirs: dict[str, int], ours: dict[str, int]) -> str:
    parts = []
    missing = [n for n in theirs if n not in ours]
    added = [n for n in ours if n not in theirs]
    if missing:
        parts.append(f"missing here: {', '.join(missing)}")
    if added:
        parts.append(f"new here: {', '.join(added)}")
    counts = [
        f"{n} has {theirs[n]} values there, {ours[n]} here"
        for n in theirs
        if n in ours and theirs[n] != ours[n]
    ]
    parts += counts
    if not parts:
        parts.append(f"another order: {', '.join(theirs)} there, {', '.join(ours)} here")
    return "; ".join(parts)


def check(
    stage_cfg: ExperimentConfig, info: schema.DatasetInfo, directory: str, *, quick: bool | None = None
) -> None:
    """Raises ProvenanceError unless the stage in `directory` (its config `stage_cfg`) was trained on
    `info`'s attributes and content; with `quick=False` (a real run) also unless it was a real run."""
    if quick is False and stage_cfg.quick:
        raise ProvenanceError(
            f"{directory} was written by a --quick smoke check (a tiny model); a real run does not build "
            "on it. Run without --quick in the default work directory, or delete it."
        )
    ours = attributes_of(info)
    if stage_cfg.attributes and list(stage_cfg.attributes.items()) != list(ours.items()):
        raise ProvenanceError(
            f"{directory} was trained on other attributes than {info.data_dir} has "
            f"({_attribute_difference(stage_cfg.attributes, ours)}). Use the dataset it was trained on, or "
            "train again in another --workdir."
        )
    theirs = stage_cfg.dataset_fingerprint
    if theirs and theirs != info.fingerprint:
        legacy = (
            " (this dataset has no content fingerprint: it was converted before fingerprints existed and "
            "its files changed since; convert it again to get one)"
            if info.fingerprint.startswith(schema.LEGACY_PREFIX)
            else ""
        )
        raise ProvenanceError(
            f"{directory} was trained on another version of the dataset (fingerprint {schema.short(theirs)}); "
            f"{info.data_dir} now holds {schema.short(info.fingerprint)}{legacy}: other content (converted from "
            "other files or with other flags since; the same files and flags give the same fingerprint): "
            "train again in another --workdir (or delete this stage), or restore the dataset it was "
            "trained on."
        )
