"""Checkpoints by layer name: resumable stage checkpoints and the checked partial restore between stages.

Every layer with weights is saved under its own name, so a stage-2 network (which shares stage 1's
layer names) can restore exactly the stage-1 layers it needs, and the restore asserts that each of
them was found with matching shapes instead of hoping names line up.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable

import keras
import numpy as np
import tensorflow as tf


class RestoreError(RuntimeError):
    """A stage hand-off could not find what it needs; the message says which stage to run first."""


class NonFiniteError(RestoreError):
    """A checkpoint or model holds inf or NaN weights (its training diverged); the message names the layer."""


def nonfinite_layers(layers: dict[str, keras.layers.Layer]) -> list[str]:
    """ "name (variable path)" of every layer in `layers` with a non-finite floating weight."""
    bad = []
    for name, layer in layers.items():
        for w in layer.weights:
            if tf.as_dtype(w.dtype).is_floating and not np.all(np.isfinite(np.asarray(w.numpy()))):
                bad.append(f"{name} ({w.path})")
    return bad


def check_finite(layers: dict[str, keras.layers.Layer], where: str) -> None:
    """Raises NonFiniteError naming the layers of `layers` that hold inf or NaN weights (BatchNorm moving
    variances included): a diverged model must not be used, served or built upon."""
    bad = nonfinite_layers(layers)
    if bad:
        more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
        raise NonFiniteError(
            f"{where}: non-finite weights in layer {', '.join(bad[:3])}{more}: the training that wrote it "
            "diverged. Train that stage again (with a lower learning rate) in a fresh work directory."
        )


def layer_dict(model: keras.Model, names: Iterable[str] | None = None) -> dict[str, keras.layers.Layer]:
    """{layer name: layer} for the layers of `model` that hold weights (or only `names`)."""
    if names is None:
        return {layer.name: layer for layer in model.layers if layer.weights}
    return {name: model.get_layer(name) for name in names}


def latest(directory: str) -> str | None:
    return tf.train.latest_checkpoint(directory) if os.path.isdir(directory) else None


def selected_checkpoint(directory: str) -> str | None:
    """The checkpoint a stage that selects on validation (stage 3, AMNet) kept: `<directory>/selected/
    ckpt-<step>` of the step its `selection.json` names (the newest in `selected/` for a directory written
    before the file named it reliably). None when nothing was selected there."""
    selected_dir = os.path.join(directory, "selected")
    path = os.path.join(directory, "selection.json")
    if not os.path.isfile(path):
        return latest(selected_dir)
    try:
        with open(path, encoding="utf-8") as f:
            chosen = json.load(f).get("selected")
    except (OSError, ValueError, AttributeError) as e:
        raise RestoreError(f"{path}: not a readable selection file ({e}); train that stage again") from e
    if not chosen:
        return None
    named = os.path.join(selected_dir, f"ckpt-{int(chosen['step'])}")
    if not tf.io.gfile.exists(named + ".index"):
        raise RestoreError(
            f"{path} names step {chosen['step']}, but {selected_dir} has no ckpt-{chosen['step']}: the "
            "directory was changed by hand; train that stage again"
        )
    return named


def restore_layers(
    model: keras.Model, checkpoint_dir: str, names: Iterable[str], what: str, checkpoint: str | None = None
) -> str:
    """Restores the layers `names` of `model` from the newest checkpoint in `checkpoint_dir` (or from
    `checkpoint`, a checkpoint path, when given).

    Raises RestoreError when there is no checkpoint or when any of the named layers (or any of their
    variables) is missing from it; shape mismatches raise as well. Returns the checkpoint path.
    """
    path = checkpoint or latest(checkpoint_dir)
    if path is None:
        raise RestoreError(f"no checkpoint in {checkpoint_dir}: run {what} first")
    names = list(names)
    saved = [name for name, _ in tf.train.list_variables(path)]
    for name in names:
        n_saved = sum(
            1 for v in saved if v.startswith(f"{name}/") and v.endswith("/.ATTRIBUTES/VARIABLE_VALUE")
        )
        n_model = len(model.get_layer(name).weights)
        if n_saved != n_model:
            raise RestoreError(
                f"{path}: layer {name!r} has {n_saved} saved variables, the model's has {n_model} ({what})"
            )
    try:
        status = tf.train.Checkpoint(**layer_dict(model, names)).read(path)
        status.assert_existing_objects_matched()
        status.expect_partial()  # the optimizer and other stages' layers are left behind on purpose
    except (AssertionError, ValueError, tf.errors.OpError) as e:
        raise RestoreError(
            f"{path} does not hold the layers {names} that this stage needs from {what}: {e}"
        ) from e
    check_finite(layer_dict(model, names), f"{path} ({what})")
    return path


RNG_KEY = "rng_state"


def rng_state(model: keras.Model) -> dict[str, list]:
    """{layer name: [variables]} of the state that is not a weight: the seed generators of the dropout
    layers (Keras' `Layer.weights` leaves them out, so `layer_dict` does not save them)."""
    out = {}
    for layer in model.layers:
        weights = {id(w) for w in layer.weights}
        extra = [v for v in layer.variables if id(v) not in weights]
        if extra:
            out[layer.name] = extra
    return out


def has_rng_state(path: str) -> bool:
    """Whether the checkpoint at `path` holds `rng_state` (checkpoints of earlier versions do not)."""
    return any(name.startswith(f"{RNG_KEY}/") for name, _ in tf.train.list_variables(path))


def stage_checkpoint(
    model: keras.Model, optimizer, step: tf.Variable, rng: bool = True, **extra
) -> tf.train.Checkpoint:
    """What a stage saves to resume: its step, its optimizer's state, every layer by name and (`rng`) the
    random-number state of its dropout layers."""
    state = rng_state(model) if rng else {}
    if state:
        extra[RNG_KEY] = state
    return tf.train.Checkpoint(step=step, optimizer=optimizer, **extra, **layer_dict(model))
