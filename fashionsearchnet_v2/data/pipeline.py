"""tf.data input: parse, then small dict-to-dict preprocessing, then one batching tail.

Records are shuffled while still encoded (a few KB each), decoded in parallel, and prefetched so
the input stays ahead of the training step on 2 cores.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import tensorflow as tf

from fashionsearchnet_v2.data import records, schema


def make_dataset(
    info: schema.DatasetInfo,
    split: str,
    image_size: int,
    batch_size: int,
    *,
    training: bool = False,
    seed: int = 0,
    shuffle_buffer: int = 4096,
    take: int | None = None,
    with_boxes: bool = False,
    drop_remainder: bool | None = None,
    mean_bgr=records.IMAGENET_MEAN_BGR,
    skip: int = 0,
) -> tf.data.Dataset:
    """Batches of {"image": float32 [B, S, S, 3], "labels": int32 [B, A], "id": string [B]
    (, "boxes": [B, A, 4])}. Training data is shuffled and repeated forever; evaluation data is read
    once in a fixed order: up to 4 shards interleaved record by record (deterministic, but not the files'
    concatenation: a consumer that needs a row's record looks it up by "id").

    `skip` (training): leave out the stream's first `skip` examples, still encoded (read and shuffled,
    never decoded): a run resumed at step s with skip = s x batch size sees the batches an uninterrupted
    run would have seen from step s on."""
    files = info.shard_paths(split)
    num_attributes = info.num_attributes
    with_boxes = with_boxes and info.has_boxes
    ds = tf.data.Dataset.from_tensor_slices(files)
    if training:
        ds = ds.shuffle(len(files), seed=seed)
    ds = ds.interleave(
        tf.data.TFRecordDataset,
        cycle_length=min(4, len(files)),
        num_parallel_calls=tf.data.AUTOTUNE if training else None,
    )
    if take is not None:
        ds = ds.take(take)
    if training:
        ds = ds.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True).repeat()
        if skip:
            ds = ds.skip(skip)
    ds = ds.map(
        lambda s: records.decode_and_preprocess(
            records.parse_example(s, num_attributes, with_boxes), image_size, mean_bgr
        ),
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True,
    )
    ds = ds.batch(batch_size, drop_remainder=training if drop_remainder is None else drop_remainder)
    return ds.prefetch(tf.data.AUTOTUNE)


def steps_per_epoch(info: schema.DatasetInfo, batch_size: int, split: str = "train") -> int:
    return max(1, info.splits[split] // batch_size)


def read_split_images(info: schema.DatasetInfo, split: str, ids: Sequence[str]) -> dict[str, np.ndarray]:
    """{id: uint8 RGB [H, W, 3]} of the records of `split` whose id is in `ids` (one pass over the split,
    stopping when all are found): how a row of `make_dataset`'s evaluation order is found in the files."""
    wanted = set(ids)
    out: dict[str, np.ndarray] = {}
    for serialized in tf.data.TFRecordDataset(info.shard_paths(split)):
        ex = records.parse_example(serialized, info.num_attributes)
        image_id = ex["id"].numpy().decode("utf-8")
        if image_id in wanted:
            out[image_id] = records.decode_image(ex["encoded"]).numpy()
            if len(out) == len(wanted):
                break
    return out
