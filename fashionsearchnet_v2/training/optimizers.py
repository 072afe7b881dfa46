"""Keras' Adam and SGD with each variable's update as one fused TensorFlow kernel (issue 26).

Keras 3 writes Adam's update as about a dozen elementwise ops per variable (g - m, · (1 - β1), m += ..,
g², ..., √v, + ε, ÷, var -= ..), each a full pass over the variable in memory. On CPU, for stage 2's
26.5 million weights (the attribute branches' fc8 are 80% of them) that was a fifth of the step
(`benchmarks/profile_step.py`). `tf.raw_ops.ResourceApplyAdam` does the same arithmetic, written in the
same order (α = lr·√(1 - β2^t)/(1 - β1^t); m += (g - m)(1 - β1); v += (g² - v)(1 - β2);
var -= m·α / (√v + ε)), in one pass. Results agree with Keras' to float32 rounding (the kernel's compiler
may contract a multiply-add); tests/test_optimizers.py checks the agreement and that a checkpoint of
either loads into the other (the slot variables are Keras' own). SGD: `ResourceApplyGradientDescent`
(momentum 0, the paper's plain SGD) and `ResourceApplyKerasMomentum` (Keras' momentum formula).

Anything the kernels do not cover falls back to Keras' own update: AMSGrad, Nesterov, weight decay is
Keras' separate step either way, sparse gradients, and variables of a distribution strategy
(MirroredStrategy's replicas: the kernels need one device's variable).
`TrainConfig.fused_update=False` (`--nofused_update`) uses Keras' optimisers unchanged.
"""

from __future__ import annotations

import keras
import tensorflow as tf

__all__ = ["FusedAdam", "FusedSGD"]


def _plain(*variables) -> bool:
    """Every variable is a single-device tf.Variable (not a distributed one): the kernels can take it."""
    return all(
        isinstance(v, tf.Variable)
        and not isinstance(v, tf.distribute.DistributedValues)
        and hasattr(v, "handle")
        for v in variables
    )


def _tf_variable(v):
    return v.value if isinstance(v, keras.Variable) else v


@keras.saving.register_keras_serializable(package="fashionsearchnet_v2")
class FusedAdam(keras.optimizers.Adam):
    """keras.optimizers.Adam whose per-variable update is `ResourceApplyAdam` (module docstring)."""

    def update_step(self, gradient, variable, learning_rate):
        index = self._get_variable_index(variable)
        m = _tf_variable(self._momentums[index])
        v = _tf_variable(self._velocities[index])
        if self.amsgrad or isinstance(gradient, tf.IndexedSlices) or not _plain(variable, m, v):
            return super().update_step(gradient, variable, learning_rate)
        dtype = variable.dtype
        step = tf.cast(self.iterations + 1, dtype)
        beta_1, beta_2 = tf.cast(self.beta_1, dtype), tf.cast(self.beta_2, dtype)
        tf.raw_ops.ResourceApplyAdam(
            var=variable.handle,
            m=m.handle,
            v=v.handle,
            beta1_power=tf.pow(beta_1, step),
            beta2_power=tf.pow(beta_2, step),
            lr=tf.cast(learning_rate, dtype),
            beta1=beta_1,
            beta2=beta_2,
            epsilon=tf.cast(self.epsilon, dtype),
            grad=tf.cast(gradient, dtype),
            use_locking=False,
        )


@keras.saving.register_keras_serializable(package="fashionsearchnet_v2")
class FusedSGD(keras.optimizers.SGD):
    """keras.optimizers.SGD whose per-variable update is one kernel (module docstring)."""

    def update_step(self, gradient, variable, learning_rate):
        if self.nesterov or isinstance(gradient, tf.IndexedSlices) or not _plain(variable):
            return super().update_step(gradient, variable, learning_rate)
        dtype = variable.dtype
        lr = tf.cast(learning_rate, dtype)
        gradient = tf.cast(gradient, dtype)
        if self.momentum == 0:
            tf.raw_ops.ResourceApplyGradientDescent(var=variable.handle, alpha=lr, delta=gradient)
            return
        m = _tf_variable(self.momentums[self._get_variable_index(variable)])
        if not _plain(m):
            return super().update_step(gradient, variable, learning_rate)
        # Keras: m = m·momentum - lr·g; var += m (the kernel's formula with use_nesterov=False).
        tf.raw_ops.ResourceApplyKerasMomentum(
            var=variable.handle,
            accum=m.handle,
            lr=lr,
            grad=gradient,
            momentum=tf.cast(self.momentum, dtype),
            use_locking=False,
            use_nesterov=False,
        )
