"""ROI pooling of conv5 features with `tf.image.crop_and_resize` (paper §3.2 "Ranking with Triplets of
Regions" and §4.1).

Each attribute's box (from its AAM, `model/aam.py`) crops the conv5 map of its own image, giving one
region feature per attribute for the fc layers f_{c10,a}. The paper uses "a structure similar to ROI
pooling [Fast R-CNN]" built on crop_and_resize. Fast R-CNN max-pools every cell of the region into a
fixed grid of bins; crop_and_resize alone samples only crop_size points. So the box is first sampled
bilinearly at `crop_size * samples` points per axis, at least one per conv5 cell for any box on the map
(`samples = ceil(grid / crop_size)`), and then max-pooled `samples x samples` into the `crop_size` bins:
every cell of a box can reach the fc layers (tested through the gradient). `samples = 1` is plain
crop_and_resize to `crop_size` (bilinear sampling only, the earlier behaviour).
Boxes use crop_and_resize's normalised coordinates (y1, x1, y2, x2): normalised y reads feature row
y · (H - 1), so (0, 0, 1, 1) is the whole map with corners aligned (the resize of the whole map with
align_corners=True), and (r0/(H-1), c0/(W-1), r1/(H-1), c1/(W-1)) covers cells r0..r1, c0..c1.
"""

from __future__ import annotations

import math

import keras
import tensorflow as tf

__all__ = ["RoiPooling", "samples_per_bin"]


_EDGE = [[0, 0], [1, 1], [1, 1], [0, 0]]


@tf.custom_gradient
def _replicate_border(features):
    """`tf.pad(features, _EDGE, mode="SYMMETRIC")`, computed by two concats (border rows, then columns).

    The same values bit for bit, and the same gradient: MirrorPad's own gradient kernel, so training
    sums a border cell's copies in the same order as before. MirrorPad's CPU forward kernel took
    1.7-2.0x as long as the concats on a batch of conv5 maps (decision P6).
    """
    padded = tf.concat([features[:, :1], features, features[:, -1:]], axis=1)
    padded = tf.concat([padded[:, :, :1], padded, padded[:, :, -1:]], axis=2)

    def grad(upstream):
        return tf.raw_ops.MirrorPadGrad(input=upstream, paddings=_EDGE, mode="SYMMETRIC")

    return padded, grad


def _pad_edges(features, boxes):
    """Replicates the border cells once and maps the boxes onto the padded map.

    crop_and_resize returns `extrapolation_value` (0) for a sample at y·(H-1) > H-1, and float rounding
    puts the last sample of a box that ends on the bottom/right edge a few ulps past it for some box and
    crop sizes — e.g. cells 5..12 of a 13-row map cropped to 8 rows: y1 = float32(5/12) rounds down,
    the step (y2-y1)·12/7 comes out 1.0000001 and the last row reads 12.0000007, i.e. all zeros. With
    one replicated cell on every side such a sample interpolates between two copies of the edge and
    gets the edge value. In-range samples read the same cells as without padding, up to float rounding
    of the remapped coordinates: y' = (y·(H-1) + 1) / (H+1).

    Args:
      features: `[batch, H, W, C]`.
      boxes: float32 `[batch, A, 4]` (y1, x1, y2, x2) normalised to the unpadded map.

    Returns:
      `[batch, H+2, W+2, C]` features and float32 `[batch, A, 4]` boxes normalised to them.
    """
    size = tf.cast(tf.shape(features)[1:3], tf.float32) - 1.0  # (H-1, W-1)
    size = tf.tile(size, [2])  # for (y1, x1, y2, x2)
    features = _replicate_border(features)  # each border row and column once more
    return features, (boxes * size + 1.0) / (size + 2.0)


@keras.saving.register_keras_serializable(package="fashionsearchnet_v2")
class RoiPooling(keras.layers.Layer):
    """Crops A boxes per image from a feature map into `crop_size` bins: bilinear samples, `samples` x
    `samples` per bin, max-pooled (Fast R-CNN style; `samples=1`: one bilinear sample per bin).

    Inputs: `[features [batch, H, W, C], boxes [batch, A, 4]]`, boxes as (y1, x1, y2, x2) normalised.
    Output: `[batch, A, crop_h, crop_w, C]` in the layer's compute dtype (sampled and pooled in float32).

    Boxes are meant to lie in [0, 1] (AAM boxes do); the border is replicated once before cropping so
    that float rounding at the bottom/right edge cannot drop samples to zero (see `_pad_edges`).

    Boxes are not differentiated (crop_and_resize has a box gradient, but the AAM boxes come from a
    non-differentiable threshold/argmax, so the layer stops it); features are.
    """

    def __init__(self, crop_size=(7, 7), samples=1, **kwargs):
        # Keras would cast every floating input to the compute dtype; under mixed precision that would
        # round box coordinates to float16 (7/12 -> 0.5835) and shift the sampled cells. Boxes are cast
        # to float32 in `call` instead, and features are cast explicitly.
        kwargs.setdefault("autocast", False)
        super().__init__(**kwargs)
        crop_size = tuple(int(s) for s in crop_size)
        if len(crop_size) != 2 or min(crop_size) < 1:
            raise ValueError(f"crop_size must be two positive ints, got {crop_size}")
        self.crop_size = crop_size
        self.samples = int(samples)
        if self.samples < 1:
            raise ValueError(f"samples must be >= 1, got {samples}")

    def call(self, inputs):
        features, boxes = inputs
        # Cropped in float32: crop_and_resize has no bfloat16 kernel, and samples between cells are
        # interpolated at float32 precision whatever the layer's compute dtype.
        features = tf.cast(features, tf.float32)
        boxes = tf.stop_gradient(tf.cast(boxes, tf.float32))
        # Static sizes where known keep the output shape static for the fc layers that follow.
        attributes = boxes.shape[1] if boxes.shape[1] is not None else tf.shape(boxes)[1]
        channels = features.shape[-1] if features.shape[-1] is not None else tf.shape(features)[-1]
        features, boxes = _pad_edges(features, boxes)
        # Box k*A + a belongs to image k: box_indices = repeat(range(batch), A).
        box_indices = tf.repeat(tf.range(tf.shape(boxes)[0], dtype=tf.int32), attributes)
        m = self.samples
        sampled = (self.crop_size[0] * m, self.crop_size[1] * m)
        crops = tf.image.crop_and_resize(
            features, tf.reshape(boxes, [-1, 4]), box_indices, sampled, method="bilinear"
        )  # [batch * A, crop_h * m, crop_w * m, C], float32
        if m > 1:  # each bin keeps the largest of its m x m samples
            crops = tf.nn.max_pool2d(crops, ksize=m, strides=m, padding="VALID")
        crops = tf.reshape(crops, [-1, attributes, *self.crop_size, channels])
        return tf.cast(crops, self.compute_dtype)

    def compute_output_shape(self, input_shape):
        features_shape, boxes_shape = input_shape
        return (boxes_shape[0], boxes_shape[1], *self.crop_size, features_shape[-1])

    def get_config(self):
        config = super().get_config()
        config["crop_size"] = list(self.crop_size)
        config["samples"] = self.samples
        return config


def samples_per_bin(grid: int, crop: int) -> int:
    """Samples per bin and axis so that `crop` bins sample a `grid`-cell map at least once per cell."""
    return max(1, math.ceil(grid / crop))
