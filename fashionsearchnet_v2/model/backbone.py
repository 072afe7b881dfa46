"""The backbone of §3.1: AlexNet conv1–conv5 (conv5 with 384 maps), no fully connected layers, then
the added conv6 and conv7 (512 maps each), and the loader of ImageNet weights up to conv4 (§4.1).

AlexNet's grouped convolutions (conv2, conv4, conv5) are written as split, two convolutions,
concatenate: Keras' `groups=2` is about 2x slower on CPU and its gradient runs through XLA. Each half
is its own layer (`conv2_g0`, `conv2_g1`), which is also how the Caffe weights are laid out.
pool5 is not used: conv6/conv7 keep conv5's grid (13x13 at 227 px) so the AAMs keep its resolution.
"""

from __future__ import annotations

import pickle

import keras
import numpy as np
import tensorflow as tf

# name, kernel, filters, stride, groups, padding; conv5/6/7 filters come from the config.
_ALEXNET = (
    ("conv1", 11, 96, 4, 1, "valid"),
    ("conv2", 5, 256, 1, 2, "same"),
    ("conv3", 3, 384, 1, 1, "same"),
    ("conv4", 3, 384, 1, 2, "same"),
)
# Layers whose ImageNet weights are loaded (§4.1: "pre-trained ImageNet weights up until conv4").
PRETRAINED_LAYERS = ("conv1", "conv2", "conv3", "conv4")


@keras.saving.register_keras_serializable(package="fashionsearchnet_v2")
class LocalResponseNorm(keras.layers.Layer):
    """AlexNet's LRN (Caffe: size 5, alpha 1e-4, beta 0.75; TF divides alpha by the size)."""

    def __init__(self, depth_radius=2, bias=1.0, alpha=2e-5, beta=0.75, **kwargs):
        super().__init__(**kwargs)
        self.depth_radius, self.bias, self.alpha, self.beta = depth_radius, bias, alpha, beta

    def call(self, x):
        # TensorFlow's CPU LRN kernel is float32 only: under a bfloat16 policy it runs in float32.
        y = tf.nn.local_response_normalization(
            tf.cast(x, tf.float32), self.depth_radius, self.bias, self.alpha, self.beta
        )
        return tf.cast(y, self.compute_dtype)

    def get_config(self):
        return {
            **super().get_config(),
            "depth_radius": self.depth_radius,
            "bias": self.bias,
            "alpha": self.alpha,
            "beta": self.beta,
        }


# Mean-subtracted pixels have a standard deviation of about 60, not 1. The network multiplies its input
# by `ModelConfig.input_scale` (layer `input_scale`, default 1 / PIXEL_STD) and the loader scales conv1's
# ImageNet kernel by its inverse, so a pretrained network computes the ImageNet function at any scale.
# From scratch the scale gives unit-scale activations and gradients instead of diverging at lr 0.01. From
# ImageNet weights it divides conv1's effective learning rate by PIXEL_STD² (3600): measured with the
# lossy ImageNet weights, plain SGD at lr 0.01 diverges in its first steps at conv1 multipliers of 1, 0.1
# and 0.01 (conv1's gradient is ~4000x its weights' norm: pixel-unit inputs, small weights) and trains
# at 0.001 or below, so the default scale is also what the paper's schedule needs (WORKSPACE.md, 29).
PIXEL_STD = 60.0


def _conv(
    x, name, kernel, filters, stride, groups, padding, batch_norm=False, dtype=None, synchronized=False
):
    """Conv + ReLU, or Conv + BatchNorm + ReLU; grouped convs as split, two convs, concatenate.
    `dtype`: the layers' Keras dtype policy (None: the global one); `synchronized`: BatchNorm's batch
    statistics over every replica's part of the batch."""

    def layer(n, f):
        return keras.layers.Conv2D(
            f,
            kernel,
            strides=stride,
            padding=padding,
            activation=None if batch_norm else "relu",
            kernel_initializer="he_normal",
            name=n,
            dtype=dtype,
        )

    if groups == 1:
        x = layer(name, filters)(x)
    else:
        halves = keras.ops.split(x, groups, axis=-1)
        outs = [layer(f"{name}_g{g}", filters // groups)(h) for g, h in enumerate(halves)]
        x = keras.layers.Concatenate(axis=-1, name=f"{name}_concat", dtype=dtype)(outs)
    if batch_norm:  # (Keras' BatchNormalization normalises in float32 under a bfloat16 policy)
        x = keras.layers.BatchNormalization(name=f"{name}_bn", dtype=dtype, synchronized=synchronized)(x)
        x = keras.layers.ReLU(name=f"{name}_relu", dtype=dtype)(x)
    return x


def _scaled(filters: int, width: float) -> int:
    return max(2, int(round(filters * width / 2)) * 2)  # even, so groups of 2 split evenly


def build_backbone(
    x,
    width=1.0,
    conv5_filters=384,
    conv67_filters=512,
    lrn=True,
    batch_norm=False,
    input_scale=1 / PIXEL_STD,
    dtype=None,
    synchronized_batch_norm=False,
):
    """Image tensor [B, S, S, 3] (BGR, mean-subtracted) -> dict of conv5 and conv7 [B, h, w, C].

    `width` multiplies the filters of conv1-conv4 (AlexNet's part); conv5-conv7 take their counts as
    given. `batch_norm` (not in the paper) puts BatchNormalization before every ReLU: training from
    scratch then converges in the minutes the embedded default has; the paper's network is the default.
    `dtype` is every layer's Keras dtype policy (`precision.layer_policy`; None: the global one); with
    "mixed_bfloat16" conv5 and conv7 come out in bfloat16, the weights stay float32.
    `synchronized_batch_norm`: BatchNorm normalises with the statistics of the whole global batch,
    all-reduced over the replicas (a multi-worker step is then the one-process step); the same weights.
    """
    bn = batch_norm
    sync = synchronized_batch_norm
    x = keras.layers.Rescaling(input_scale, name="input_scale", dtype=dtype)(x)
    for name, kernel, filters, stride, groups, padding in _ALEXNET:
        x = _conv(x, name, kernel, _scaled(filters, width), stride, groups, padding, bn, dtype, sync)
        if name in ("conv1", "conv2"):
            if lrn:
                x = LocalResponseNorm(name=f"norm{name[-1]}", dtype=dtype)(x)
            x = keras.layers.MaxPooling2D(3, 2, name=f"pool{name[-1]}", dtype=dtype)(x)
    # conv5-7 widths come from the config as given (the paper's 384/512), `width` scales AlexNet's part.
    conv5 = _conv(x, "conv5", 3, _scaled(conv5_filters, 1.0), 1, 2, "same", bn, dtype, sync)
    x = _conv(conv5, "conv6", 3, _scaled(conv67_filters, 1.0), 1, 1, "same", bn, dtype, sync)
    conv7 = _conv(x, "conv7", 3, _scaled(conv67_filters, 1.0), 1, 1, "same", bn, dtype, sync)
    return {"conv5": conv5, "conv7": conv7}


def feature_grid_size(image_size: int) -> int:
    """Side of the conv5/conv7 grid for a square input (13 at 227 px, 6 at 128 px)."""
    s = (image_size - 11) // 4 + 1  # conv1, valid, stride 4
    s = (s - 3) // 2 + 1  # pool1
    return (s - 3) // 2 + 1  # pool2; conv2-7 keep the size


class WeightsError(ValueError):
    """The AlexNet weights file is missing or does not fit the network; the message says which layer."""


# The only globals a pickled dict of arrays needs (np.save of a dict; Python 2's bvlc_alexnet.npy too):
# numpy's array and dtype rebuilders, and _codecs.encode for bytes pickled by Python 2 with protocol 2.
# `numpy.core` is numpy 1's name for `numpy._core`.
_SAFE_GLOBALS = {
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),
}


class _ArraysUnpickler(pickle.Unpickler):
    """Unpickles dicts, lists, tuples, numbers, strings, numpy arrays and dtypes; refuses any other class
    or function, so a crafted file cannot run code (np.load with allow_pickle=True would)."""

    def find_class(self, module, name):
        module = (
            module.replace("numpy.core.", "numpy._core.", 1) if module.startswith("numpy.core.") else module
        )
        if (module, name) not in _SAFE_GLOBALS:
            raise pickle.UnpicklingError(f"it asks for {module}.{name}, which a dict of arrays never needs")
        return super().find_class(module, name)


def read_weights_dict(path: str) -> dict:
    """The dict that `path` (an .npy of a pickled dict of arrays, bvlc_alexnet.npy's format) holds, read
    without running code: the pickle goes through `_ArraysUnpickler`. Raises WeightsError naming the file."""
    try:
        with open(path, "rb") as f:
            version = np.lib.format.read_magic(f)
            read_header = {
                (1, 0): np.lib.format.read_array_header_1_0,
                (2, 0): np.lib.format.read_array_header_2_0,
            }
            if version not in read_header:
                raise ValueError(f"unsupported .npy format version {version}")
            shape, _, dtype = read_header[version](f, max_header_size=1 << 20)
            if dtype != np.dtype(object) or shape != ():
                raise ValueError(f"it holds an array of {dtype} {shape}, not a pickled dict")
            array = _ArraysUnpickler(f, encoding="latin1").load()
    except FileNotFoundError as e:
        raise WeightsError(f"--alexnet_weights: {path} does not exist") from e
    except pickle.UnpicklingError as e:
        raise WeightsError(f"--alexnet_weights: {path} was refused, nothing in it was run: {e}") from e
    except (OSError, ValueError, EOFError) as e:
        raise WeightsError(f"--alexnet_weights: {path} is not a bvlc_alexnet.npy dict ({e})") from e
    data = array.item() if isinstance(array, np.ndarray) and array.shape == () else array
    if not isinstance(data, dict):
        raise WeightsError(f"--alexnet_weights: {path} holds {type(data).__name__}, expected a dict")
    return data


def load_alexnet_weights(model: keras.Model, path: str, layers=PRETRAINED_LAYERS) -> list[str]:
    """Loads conv1–conv4 of `bvlc_alexnet.npy` into `model`; returns the names of the layers set.

    The file (Caffe AlexNet converted to numpy) holds a dict {"conv1": [W, b], ...} with W in
    [kh, kw, in/groups, out] layout, e.g. conv2 W [5, 5, 48, 256] for 2 groups of 128 outputs.
    """
    data = read_weights_dict(path)
    names = {layer.name for layer in model.layers}
    loaded = []
    for name in layers:
        if name not in data:
            raise WeightsError(f"{path}: no entry {name!r}; found {sorted(data)}")
        w, b = (np.asarray(v, np.float32) for v in data[name])
        if name == "conv1":  # conv1 sees input * input_scale: the same function of the pixels
            w = w / float(model.get_layer("input_scale").scale)
        targets = [name] if name in names else [f"{name}_g0", f"{name}_g1"]
        missing = [t for t in targets if t not in names]
        if missing:
            raise WeightsError(f"model has no layer {missing} to load {name!r} into")
        w_parts = np.split(w, len(targets), axis=-1)
        b_parts = np.split(b, len(targets), axis=-1)
        for target, wp, bp in zip(targets, w_parts, b_parts):
            layer = model.get_layer(target)
            want = [tuple(v.shape) for v in layer.weights]
            got = [wp.shape, bp.shape]
            if want != got:
                raise WeightsError(
                    f"{path}: {name} gives {target} shapes {got}, the layer has {want} "
                    "(weights need the full-width model at any input size)"
                )
            layer.set_weights([wp, bp])
        loaded.append(name)
    return loaded
