"""tf.data input: parse, then small dict-to-dict preprocessing, then one batching tail.

Records are shuffled while still encoded (a few KB each), decoded in parallel, and prefetched so
the input stays ahead of the training step on 2 cores.

Training can instead read a split decoded once (`DecodedSplit`, issue 26): every record's pixels held in
memory as uint8, and a stream of record indices built exactly like the stream of records (the same
file shuffle, interleave, shuffle buffer, repeat and skip, whose randomness depends only on the seeds and
the counts), so each step gets the same images in the same order as from the files, preprocessed by the
same function; the decoding the training would repeat every epoch is done once.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import tensorflow as tf

from fashionsearchnet_v2.data import records, schema
from fashionsearchnet_v2.progress import Progress


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
    decoded: DecodedSplit | None = None,
    autotune: bool = False,
    leave_out: Sequence[str] = (),
) -> tf.data.Dataset:
    """Batches of {"image": float32 [B, S, S, 3], "labels": int32 [B, A], "id": string [B]
    (, "boxes": [B, A, 4])}. Training data is shuffled and repeated forever; evaluation data is read
    once in a fixed order: up to 4 shards interleaved record by record (deterministic, but not the files'
    concatenation: a consumer that needs a row's record looks it up by "id").

    `skip` (training): leave out the stream's first `skip` examples, still encoded (read and shuffled,
    never decoded): a run resumed at step s with skip = s x batch size sees the batches an uninterrupted
    run would have seen from step s on.

    `decoded` (training only): `split` decoded once (`decode_split`); the batches are the same, element
    for element, as without it.

    `leave_out` (training only): ids whose records the stream never yields, dropped before the shuffle
    (so `skip` counts what is yielded and a resume still lines up; decoded or not, the same elements).

    `autotune` (decision P7: off): tf.data's autotuner, which on 2 cores left a model fed by the
    stream at half its speed on about half of the iterators (the model's and the tuner's threads on the
    same cores); off, `AUTOTUNE` parallelism is the number of cores and the prefetch buffer fixed. The
    batches are the same either way."""
    if decoded is not None and (not training or take is not None or with_boxes):
        raise ValueError("a DecodedSplit feeds training streams only (no take, no boxes)")
    if len(leave_out) and not training:
        raise ValueError("leave_out applies to training streams only")
    left_out = _id_set(leave_out) if len(leave_out) else None
    if decoded is not None:
        # The same order over record indices, then the held pixels through the same preprocessing.
        sources = tf.data.Dataset.from_tensor_slices((decoded.starts, decoded.ends))
        open_range = tf.data.Dataset.range
        if left_out is not None:
            kept = tf.logical_not(left_out.lookup(decoded.ids) > 0)  # [N] bool, by record index

            def open_range(start, end):
                return tf.data.Dataset.range(start, end).filter(lambda i: tf.gather(kept, i))

        ds = _record_order(sources, len(decoded.starts), open_range, training, seed, shuffle_buffer, take,
                           skip)  # fmt: skip
        images, labels, ids = decoded.images, decoded.labels, decoded.ids

        def element(i):
            image = records.preprocess_image(tf.gather(images, i), image_size, mean_bgr)
            return {"id": tf.gather(ids, i), "labels": tf.gather(labels, i), "image": image}
    else:
        files = info.shard_paths(split)
        num_attributes = info.num_attributes
        with_boxes = with_boxes and info.has_boxes
        sources = tf.data.Dataset.from_tensor_slices(files)
        open_file = tf.data.TFRecordDataset
        if left_out is not None:
            id_spec = {records.FEATURE_ID: tf.io.FixedLenFeature([], tf.string)}

            def kept_record(serialized):
                image_id = tf.io.parse_single_example(serialized, id_spec)[records.FEATURE_ID]
                return tf.logical_not(left_out.lookup(image_id) > 0)

            def open_file(path):
                return tf.data.TFRecordDataset(path).filter(kept_record)

        ds = _record_order(sources, len(files), open_file, training, seed, shuffle_buffer, take,
                           skip)  # fmt: skip

        def element(serialized):
            example = records.parse_example(serialized, num_attributes, with_boxes)
            return records.decode_and_preprocess(example, image_size, mean_bgr)

    # do_not_convert: tf.data converts a map function with autograph unless told not to; these have no
    # Python control flow on tensors, and converting them cost tracing time in every process (P9).
    ds = ds.map(tf.autograph.experimental.do_not_convert(element), num_parallel_calls=tf.data.AUTOTUNE,
                deterministic=True)  # fmt: skip
    ds = ds.batch(batch_size, drop_remainder=training if drop_remainder is None else drop_remainder)
    ds = ds.prefetch(tf.data.AUTOTUNE)
    if not autotune:
        options = tf.data.Options()
        options.autotune.enabled = False
        ds = ds.with_options(options)
    return ds


def _record_order(sources, num_sources, open_source, training, seed, shuffle_buffer, take, skip):
    """The order records are read in, whatever stands for a record (its bytes, or its index in a
    DecodedSplit): the sources (one per file) shuffled for training, up to 4 interleaved record by
    record, then for training a shuffle buffer, repeated, `skip` left out. Its randomness depends on the
    seeds and the counts only, so files and indices give the same order."""
    if training:
        sources = sources.shuffle(num_sources, seed=seed)
    ds = sources.interleave(
        open_source,
        cycle_length=min(4, num_sources),
        num_parallel_calls=tf.data.AUTOTUNE if training else None,
    )
    if take is not None:
        ds = ds.take(take)
    if training:
        ds = ds.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True).repeat()
        if skip:
            ds = ds.skip(skip)
    return ds


class DecodedSplit:
    """A split's records decoded once: uint8 pixels [N, H, W, 3] in a (non-trainable, CPU) variable that
    the input stream gathers from, labels [N, A], ids [N], and each file's range of record indices."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, ids: np.ndarray, counts: Sequence[int]):
        with tf.device("/CPU:0"):
            self.images = tf.Variable(images, trainable=False, name="decoded_images")
        self.labels = tf.constant(labels, tf.int32)
        self.ids = tf.constant(ids)
        ends = np.cumsum(np.asarray(counts, np.int64))
        self.starts, self.ends = ends - np.asarray(counts, np.int64), ends
        self.nbytes = int(images.nbytes)

    def __len__(self) -> int:
        return int(self.ends[-1]) if len(self.ends) else 0


def decode_split(
    info: schema.DatasetInfo, split: str, max_bytes: int, progress: bool = False
) -> DecodedSplit | None:
    """`split`'s records decoded in file order, or None when its pixels would take more than `max_bytes`
    or its images differ in size (the stream then decodes as it reads). The first image's size and the
    split's count bound the memory before anything else is decoded."""
    files = info.shard_paths(split)
    count = info.splits.get(split, 0)
    if not files or not count or max_bytes <= 0:
        return None
    first = next(iter(tf.data.TFRecordDataset(files[:1]).take(1)), None)
    if first is None:
        return None
    shape = records.decode_image(records.parse_example(first, info.num_attributes)["encoded"]).shape
    if count * int(np.prod(shape)) > max_bytes:
        return None

    def parse(serialized):
        ex = records.parse_example(serialized, info.num_attributes)
        return records.decode_image(ex["encoded"]), ex["labels"], ex["id"]

    images = np.empty((count, *shape), np.uint8)
    labels = np.empty((count, info.num_attributes), np.int32)
    ids, counts, n = [], [], 0
    meter = Progress(count, f"decoding the {split} split into memory", enabled=progress)
    for path in files:
        start = n
        ds = tf.data.TFRecordDataset(path).map(
            tf.autograph.experimental.do_not_convert(parse),
            num_parallel_calls=tf.data.AUTOTUNE,
            deterministic=True,
        )
        for image, label, image_id in ds.as_numpy_iterator():
            if image.shape != shape or n >= count:
                return None  # another size, or more records than dataset.json says: stream instead
            images[n], labels[n] = image, label
            ids.append(image_id)
            n += 1
            meter.update(n)
        counts.append(n - start)
    meter.finish(n)
    if n != count:
        return None
    return DecodedSplit(images, labels, np.asarray(ids), counts)


_DECODED: dict = {}


def decoded_split_cached(
    info: schema.DatasetInfo, split: str, max_bytes: int, progress: bool = False
) -> DecodedSplit | None:
    """`decode_split`, kept for the process (the main job's stages 1 and 2 decode the split once)."""
    key = (info.data_dir, info.fingerprint, split, max_bytes)
    if key not in _DECODED:
        _DECODED.clear()  # one split held at a time
        _DECODED[key] = decode_split(info, split, max_bytes, progress)
    return _DECODED[key]


def steps_per_epoch(
    info: schema.DatasetInfo, batch_size: int, split: str = "train", left_out: int = 0
) -> int:
    """Full batches in an epoch of `split`, less `left_out` of its images (`make_dataset(leave_out=...)`)."""
    return max(1, (info.splits[split] - left_out) // batch_size)


def _id_set(ids: Sequence[str]) -> tf.lookup.StaticHashTable:
    """A graph-side set of image ids: lookup gives 1 for a member, 0 otherwise."""
    keys = tf.constant([i.decode() if isinstance(i, bytes) else str(i) for i in ids], tf.string)
    return tf.lookup.StaticHashTable(
        tf.lookup.KeyValueTensorInitializer(keys, tf.ones_like(keys, tf.int32)), 0
    )


def split_ids(info: schema.DatasetInfo, split: str) -> list[str]:
    """The ids of `split`'s records in file order (only the id is parsed)."""
    spec = {records.FEATURE_ID: tf.io.FixedLenFeature([], tf.string)}
    ds = tf.data.TFRecordDataset(info.shard_paths(split)).batch(1024)
    ds = ds.map(tf.autograph.experimental.do_not_convert(lambda s: tf.io.parse_example(s, spec)))
    return [x.decode() for batch in ds.as_numpy_iterator() for x in batch[records.FEATURE_ID]]


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
