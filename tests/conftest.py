"""Test session setup: oneDNN on, quiet logs, and two logical CPU devices (for the MirroredStrategy
test), which must be configured before TensorFlow initialises its devices."""

import os

os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402

_cpus = tf.config.list_physical_devices("CPU")
try:
    tf.config.set_logical_device_configuration(
        _cpus[0], [tf.config.LogicalDeviceConfiguration(), tf.config.LogicalDeviceConfiguration()]
    )
except RuntimeError:  # already initialised by an earlier import; the mirrored test then fails and says why
    pass

# The service tests' tiny trained model, defined once here so that every module shares one session fixture.
from service_fixture import trained  # noqa: E402, F401
