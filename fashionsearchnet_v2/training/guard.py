"""Divergence guard of the training loop: the first non-finite loss term or weight stops the run, and so
does a loss that explodes while staying finite.

Every step returns its loss terms (the loop reads them on the host anyway, for the running means) and one
boolean computed inside the step's tf.function: whether every floating variable of the model is finite
after the update. Non-finite gradients land there (SGD turns an inf or NaN gradient into an inf or NaN
weight in the same update as its momentum), and so do BatchNorm moving variances, which can overflow while
the training loss (batch statistics) still looks finite. The check is one sum per variable (an inf or NaN
anywhere makes the sum non-finite), a single read of the weights: about 1% of a step at the paper's size,
measured in WORKSPACE.md (decision R1).

A loss can also explode and stay finite (Adam at lr 1e4 on the embedded default: 5.7e5, 7.2e5, 5.5e6,
then chance accuracy). `LossBound` follows Model Garden's `loss_upper_bound`: the mean loss of the last
LOSS_WINDOW steps above an absolute bound, or above a multiple of the run's first step's loss, stops the
run the same way (`TrainConfig.loss_upper_bound`, `TrainConfig.loss_growth_limit`; WORKSPACE.md R17).

On the first failure the loop raises DivergenceError before anything of that step is saved, so the newest
checkpoint stays the last finite one (the last one before the loss passed its bound).
"""

from __future__ import annotations

import collections

import numpy as np
import tensorflow as tf

#: Steps over which the loss is averaged before it is compared with its bounds: one noisy step does not
#: stop a run, a loss that stays up does.
LOSS_WINDOW = 10


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


#: The growth check measures from max(first loss, GROWTH_FLOOR): a loss that starts near 0 (stage 3's soft
#: triplet L_G, bounded by 1 per triplet, started at 3e-5 and was 0.008 one step later) is not 100x
#: "exploding"; losses that start at chance (L_C ≈ Σ ln C_a, 8-25 here) are measured from their start.
GROWTH_FLOOR = 1.0


class LossBound:
    """The running loss (mean of the last `window` steps' "loss") against `upper_bound` and against
    `growth_limit` times max(the stage's first loss, GROWTH_FLOOR) (0 switches a check off). `first` is
    the first loss this object sees unless set before (the Trainer sets it on resume from
    `loss_reference.json`, the first run's)."""

    def __init__(self, upper_bound: float, growth_limit: float, window: int = LOSS_WINDOW):
        self.upper_bound, self.growth_limit = float(upper_bound), float(growth_limit)
        self.recent: collections.deque = collections.deque(maxlen=window)
        self.first: float | None = None

    def exceeded(self, loss: float) -> str | None:
        """Adds a step's loss; a sentence saying which bound the running loss passed, or None."""
        loss = float(loss)
        if self.first is None:
            self.first = loss
        self.recent.append(loss)
        running = float(np.mean(self.recent))
        n = len(self.recent)
        what = f"the loss exploded while staying finite: its mean over the last {n} step{'s' * (n > 1)} is "
        what += f"{running:.3g}"
        if self.upper_bound > 0 and running > self.upper_bound:
            return f"{what}, above --loss_upper_bound={self.upper_bound:g}"
        reference = max(abs(self.first), GROWTH_FLOOR)
        if self.growth_limit > 0 and running > self.growth_limit * reference:
            start = f"its first value {self.first:.3g}" if reference == abs(self.first) else (
                f"{reference:g} (its first value {self.first:.3g} is below {GROWTH_FLOOR:g})"
            )  # fmt: skip
            return f"{what}, more than --loss_growth_limit={self.growth_limit:g} times {start}"
        return None


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
    bound: LossBound | None = None,
) -> None:
    """Raises DivergenceError when a loss term in `values` (the step's results) or a weight is non-finite,
    or when `bound` says the running loss exploded.

    `last_checkpoint` is a callable giving the newest checkpoint's path (called only on failure)."""
    term = _first_nonfinite_term(values)
    exploded = None
    if term is None and weights_finite and bound is not None and "loss" in values:
        exploded = bound.exceeded(float(np.sum(values["loss"])))
    if term is None and weights_finite and exploded is None:
        return
    shown = ", ".join(f"{k} {float(np.sum(v)):.4g}" for k, v in values.items() if np.ndim(v) == 0)
    if exploded is not None:
        what = f"{exploded} (this step: {shown})"
        term = "loss"
    elif term is not None:
        what = f"{term} is {float(np.sum(values[term]))} ({shown})"
    else:
        layers = nonfinite_variables(model, optimizer)
        where = "; ".join(layers[:3]) + (f" and {len(layers) - 3} more" if len(layers) > 3 else "")
        where = where or "weights so large that their sum overflows float32"
        what = f"the update made {where} non-finite while the losses were finite ({shown})"
        term = "weights"
    last = last_checkpoint()
    if not last:
        kept = "no checkpoint was written"
    elif exploded is not None:
        kept = f"the newest checkpoint, {last}, was saved before the loss passed its bound"
    else:
        kept = f"the newest checkpoint, {last}, is the last finite one"
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
