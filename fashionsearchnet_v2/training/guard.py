"""Divergence guard of the training loop: the first non-finite loss term or weight stops the run.

Every step returns its loss terms (the loop reads them on the host anyway, for the running means) and one
boolean computed inside the step's tf.function: whether every floating variable of the model is finite
after the update. Non-finite gradients land there (SGD turns an inf or NaN gradient into an inf or NaN
weight in the same update as its momentum), and so do BatchNorm moving variances, which can overflow while
the training loss (batch statistics) still looks finite. The check is one sum per variable (an inf or NaN
anywhere makes the sum non-finite), a single read of the weights: about 1% of a step at the paper's size,
measured in WORKSPACE.md (decision R1).

On the first failure the loop raises DivergenceError before anything of that step is saved, so the newest
checkpoint stays the last finite one.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf


class DivergenceError(RuntimeError):
    """Training produced a non-finite loss or weight; the message names the stage, step and term."""

    def __init__(self, message: str, *, stage: str, step: int, term: str):
        super().__init__(message)
        self.stage, self.step, self.term = stage, step, term


def checked_variables(model, optimizer=None) -> list[tf.Variable]:
    """The floating variables of the model: weights and BatchNorm statistics. (The optimizer's momentum
    goes non-finite in the same SGD update as its weight, so checking the weights covers it.)"""
    return [v for v in model.variables if tf.as_dtype(v.dtype).is_floating]


def all_finite(variables) -> tf.Tensor:
    """bool scalar for use inside the step's tf.function: every variable's sum is finite, i.e. no element
    is inf or NaN (or the weights are so large that their sum overflows: diverged all the same)."""
    if not variables:
        return tf.constant(True)
    sums = tf.stack([tf.reduce_sum(tf.cast(v, tf.float32)) for v in variables])
    return tf.reduce_all(tf.math.is_finite(sums))


def nonfinite_variables(model, optimizer=None) -> list[str]:
    """Host-side, on failure only: "layer 'conv1' (conv1/kernel: 12 of 34848 non-finite)" for every
    variable of the model (by layer) and of the optimizer that holds a non-finite value."""
    found = []
    for layer in model.layers:
        for w in layer.weights:
            if not tf.as_dtype(w.dtype).is_floating:
                continue
            value = np.asarray(w.numpy())
            bad = int(np.size(value) - np.count_nonzero(np.isfinite(value)))
            if bad:
                found.append(f"layer {layer.name!r} ({w.path}: {bad} of {value.size} non-finite)")
    for w in getattr(optimizer, "variables", []) if optimizer is not None else []:
        if tf.as_dtype(w.dtype).is_floating and not np.all(np.isfinite(w.numpy())):
            found.append(f"optimizer variable {w.path}")
    return found


def _first_nonfinite_term(values: dict[str, np.ndarray]) -> str | None:
    # The named terms (L_C, L_T, ...) first: "loss" is their weighted sum and says less.
    for key in sorted(values, key=lambda k: k == "loss"):
        if not np.all(np.isfinite(values[key])):
            return key
    return None


def check_step(
    stage: str,
    step: int,
    values: dict[str, np.ndarray],
    weights_finite: bool,
    *,
    model,
    optimizer,
    last_checkpoint,
) -> None:
    """Raises DivergenceError when a loss term in `values` (the step's results) or a weight is non-finite.

    `last_checkpoint` is a callable giving the newest checkpoint's path (called only on failure)."""
    term = _first_nonfinite_term(values)
    if term is None and weights_finite:
        return
    shown = ", ".join(f"{k} {float(np.sum(v)):.4g}" for k, v in values.items() if np.ndim(v) == 0)
    if term is not None:
        what = f"{term} is {float(np.sum(values[term]))} ({shown})"
    else:
        layers = nonfinite_variables(model, optimizer)
        where = "; ".join(layers[:3]) + (f" and {len(layers) - 3} more" if len(layers) > 3 else "")
        where = where or "weights so large that their sum overflows float32"
        what = f"the update made {where} non-finite while the losses were finite ({shown})"
        term = "weights"
    last = last_checkpoint()
    kept = f"the newest checkpoint, {last}, is the last finite one" if last else "no checkpoint was written"
    try:
        lr = float(np.asarray(optimizer.learning_rate))
        hint = f"lower the learning rate (it is {lr:g})"
    except (AttributeError, TypeError, ValueError):
        hint = "lower the learning rate"
    raise DivergenceError(
        f"[{stage}] diverged at step {step}: {what}. Stopped without saving this step: {kept}. "
        f"Try again with a smaller step: {hint}.",
        stage=stage,
        step=step,
        term=term,
    )
