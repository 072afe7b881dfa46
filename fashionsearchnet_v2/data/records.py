"""TFRecord schema, the one shard writer every converter uses, and the parse/preprocess functions.

Preprocessing is the paper's only one (§4.1): decode, resize to the model's input, subtract the
per-channel mean. Channels are BGR, the order the Caffe AlexNet weights (`bvlc_alexnet.npy`) expect.
"""

from __future__ import annotations

import os

import numpy as np
import tensorflow as tf

# ImageNet per-channel mean in BGR order, as used with bvlc_alexnet (Caffe's ilsvrc_2012_mean averaged).
IMAGENET_MEAN_BGR = (104.0, 117.0, 123.0)

FEATURE_ENCODED = "image/encoded"
FEATURE_ID = "image/id"
FEATURE_LABELS = "image/labels"
FEATURE_BOXES = "image/attribute_boxes"


def _bytes(values):
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=values))


def serialize_example(encoded: bytes, image_id: str, labels, boxes=None) -> bytes:
    """One record. `labels`: [A] ints, -1 = unlabelled; `boxes`: optional [A, 4] (ymin, xmin, ymax, xmax)
    normalised to [0, 1], all -1 for an attribute with no region (global attributes)."""
    feature = {
        FEATURE_ENCODED: _bytes([encoded]),
        FEATURE_ID: _bytes([image_id.encode("utf-8")]),
        FEATURE_LABELS: tf.train.Feature(int64_list=tf.train.Int64List(value=[int(v) for v in labels])),
    }
    if boxes is not None:
        flat = np.asarray(boxes, np.float32).reshape(-1).tolist()
        feature[FEATURE_BOXES] = tf.train.Feature(float_list=tf.train.FloatList(value=flat))
    return serialize(feature)


def serialize(feature: dict) -> bytes:
    """A tf.train.Example of `feature` as bytes, its map serialized in key order: the default order
    depends on the process (string hashing), so the same record would give other bytes, and the same
    dataset another fingerprint, on every conversion."""
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString(deterministic=True)


class ShardWriter:
    """Streams records of one split into numbered shards of at most `per_shard` records.

    Shards are first written as `<split>-NNNNN.tmp`; `finish()` renames them to the final
    `<split>-NNNNN-of-MMMMM.tfrecord` names (the count is only known at the end) and returns them.
    """

    def __init__(self, directory: str, split: str, per_shard: int = 2048):
        self.directory, self.split, self.per_shard = directory, split, per_shard
        self.count = 0
        self._writer = None
        self._paths: list[str] = []

    def write(self, record: bytes) -> None:
        if self._writer is None or self.count % self.per_shard == 0:
            self._close_current()
            path = os.path.join(self.directory, f"{self.split}-{len(self._paths):05d}.tmp")
            self._paths.append(path)
            self._writer = tf.io.TFRecordWriter(path)
        self._writer.write(record)
        self.count += 1

    def _close_current(self):
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def finish(self) -> list[str]:
        self._close_current()
        names = []
        for i, path in enumerate(self._paths):
            name = f"{self.split}-{i:05d}-of-{len(self._paths):05d}.tfrecord"
            os.replace(path, os.path.join(self.directory, name))
            names.append(name)
        return names


def parse_example(serialized, num_attributes: int, with_boxes: bool = False) -> dict:
    """Serialized record -> {"encoded": string, "id": string, "labels": int32 [A], ("boxes": [A, 4])}."""
    spec = {
        FEATURE_ENCODED: tf.io.FixedLenFeature([], tf.string),
        FEATURE_ID: tf.io.FixedLenFeature([], tf.string),
        FEATURE_LABELS: tf.io.FixedLenFeature([num_attributes], tf.int64),
    }
    if with_boxes:
        spec[FEATURE_BOXES] = tf.io.FixedLenFeature([num_attributes * 4], tf.float32)
    parsed = tf.io.parse_single_example(serialized, spec)
    out = {
        "encoded": parsed[FEATURE_ENCODED],
        "id": parsed[FEATURE_ID],
        "labels": tf.cast(parsed[FEATURE_LABELS], tf.int32),
    }
    if with_boxes:
        out["boxes"] = tf.reshape(parsed[FEATURE_BOXES], [num_attributes, 4])
    return out


def decode_image(encoded) -> tf.Tensor:
    """Encoded JPEG/PNG/BMP/GIF bytes -> uint8 [H, W, 3] RGB."""
    image = tf.io.decode_image(encoded, channels=3, expand_animations=False)
    image.set_shape([None, None, 3])
    return image


def preprocess_image(image, image_size: int, mean_bgr=IMAGENET_MEAN_BGR) -> tf.Tensor:
    """uint8 RGB [H, W, 3] of any size -> float32 BGR [S, S, 3], resized (squashed) and mean-subtracted."""
    image = tf.image.resize(tf.cast(image, tf.float32), [image_size, image_size], method="bilinear")
    image = tf.reverse(image, axis=[-1])  # RGB -> BGR
    return image - tf.constant(mean_bgr, tf.float32)


def decode_and_preprocess(example: dict, image_size: int, mean_bgr=IMAGENET_MEAN_BGR) -> dict:
    """Parsed record -> the same dict with `image` float32 [S, S, 3] in place of `encoded`."""
    out = {k: v for k, v in example.items() if k != "encoded"}
    out["image"] = preprocess_image(decode_image(example["encoded"]), image_size, mean_bgr)
    return out


def undo_preprocess(images, mean_bgr=IMAGENET_MEAN_BGR) -> np.ndarray:
    """Model input float32 BGR [..., S, S, 3] -> uint8 RGB, for pictures."""
    images = np.asarray(images, np.float32) + np.asarray(mean_bgr, np.float32)
    return np.clip(images[..., ::-1], 0, 255).astype(np.uint8)
