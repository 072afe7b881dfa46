"""Checks that a dataset's records are what its dataset.json says, and names the damaged shard and record
when they are not.

- `check_records`: the first record of every split is parsed against the attribute list (label count,
  boxes), so a dataset.json that does not describe its records stops before training with the shard's
  name, instead of a parse error from inside tf.data later.
- `corrupt_shard_error`: tf.data's DataLossError ("corrupted record at 12345") names neither the file nor
  the record; this finds the first damaged shard (by walking the TFRecord framing, then reading it with
  TensorFlow for checksum errors) and returns a DatasetError with the file, record number and byte offset.
"""

from __future__ import annotations

import bisect
import os
import re
import struct

import tensorflow as tf

from fashionsearchnet_v2.data import records, schema

# TFRecord framing: uint64 length, uint32 masked CRC of the length, data, uint32 masked CRC of the data.
HEADER_BYTES, FOOTER_BYTES = 12, 4


def record_spans(path: str):
    """Yields (record number, byte offset, data length) of each record of a TFRecord file, reading only
    the headers. Raises DatasetError at the first record that the file ends inside of."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        offset, index = 0, 0
        while offset < size:
            f.seek(offset)
            header = f.read(HEADER_BYTES)
            if len(header) < HEADER_BYTES:
                raise _truncated(path, index, offset, f"{size - offset} bytes left, a record header needs 12")
            (length,) = struct.unpack("<Q", header[:8])
            end = offset + HEADER_BYTES + length + FOOTER_BYTES
            if end > size:
                raise _truncated(
                    path, index, offset, f"it needs {end - offset} bytes, the file has {size - offset}"
                )
            yield index, offset, length
            offset, index = end, index + 1


def _truncated(path, index, offset, detail) -> schema.DatasetError:
    return schema.DatasetError(
        f"{path}: truncated at record {index} (byte offset {offset}): {detail}. The shard is damaged "
        "(an interrupted copy?): copy or convert the dataset again."
    )


def first_record(path: str) -> bytes | None:
    """The serialized first record of a TFRecord file (None if it is empty)."""
    for _, offset, length in record_spans(path):
        with open(path, "rb") as f:
            f.seek(offset + HEADER_BYTES)
            return f.read(length)
    return None


def check_records(info: schema.DatasetInfo) -> None:
    """Parses the first record of each split against dataset.json: as many labels as attributes, each in
    range, and boxes where `has_boxes` says so. Raises DatasetError naming the shard otherwise."""
    names = ", ".join(info.attribute_names)
    for split in schema.SPLITS:
        if split not in info.shards or not info.shards[split]:
            continue
        path = info.shard_paths(split)[0]
        if not os.path.isfile(path):
            raise schema.DatasetError(
                f"{path} is listed in dataset.json but missing: convert the dataset again"
            )
        data = first_record(path)
        if data is None:
            continue
        try:
            feature = tf.train.Example.FromString(data).features.feature
        except Exception as e:  # protobuf's DecodeError
            raise schema.DatasetError(f"{path}: record 0 is not a tf.train.Example ({e})") from e
        labels = list(feature[records.FEATURE_LABELS].int64_list.value)
        where = f"{path}: record 0"
        if len(labels) != info.num_attributes:
            raise schema.DatasetError(
                f"{where} has {len(labels)} labels, but dataset.json lists {info.num_attributes} attributes "
                f"({names}): dataset.json does not describe these records. Convert the dataset again."
            )
        schema.validate_labels(labels, info.attributes, where)
        if info.has_boxes:
            boxes = feature[records.FEATURE_BOXES].float_list.value
            if len(boxes) != 4 * info.num_attributes:
                raise schema.DatasetError(
                    f"{where} has {len(boxes)} box values, dataset.json's {info.num_attributes} attributes "
                    f"need {4 * info.num_attributes}: convert the dataset again."
                )


def locate_corruption(path: str) -> schema.DatasetError | None:
    """The error describing the first damaged record of one shard, or None when it reads cleanly."""
    try:
        offsets = [offset for _, offset, _ in record_spans(path)]
    except schema.DatasetError as e:
        return e
    try:
        for _ in tf.data.TFRecordDataset(path).batch(1024):
            pass
    except tf.errors.DataLossError as e:
        message = _plain(e.message)
        m = re.search(r"record at (\d+)", message)
        if m and offsets:
            # TensorFlow gives the offset of the record's header or of its data: the record starting last
            # at or before it is the damaged one.
            index = bisect.bisect_right(offsets, int(m.group(1))) - 1
            where = f"record {index} (byte offset {offsets[index]})"
        else:
            where = "a record"
        return schema.DatasetError(
            f"{path}: {where} is corrupt ({message}). The shard is damaged: copy or convert the dataset again."
        )
    return None


def _plain(message: str) -> str:
    """TensorFlow's message without its graph-function prefix and op suffix."""
    message = re.sub(r"\{\{function_node [^}]*\}\}\s*", "", message or "")
    message = re.sub(r"\s*\[Op:[^\]]*\].*$", "", message.splitlines()[0] if message else "")
    return message.strip() or "unreadable"


def corrupt_shard_error(info: schema.DatasetInfo, error: tf.errors.DataLossError) -> schema.DatasetError:
    """A DatasetError naming the damaged shard and record behind `error` (searching every split's shards;
    only called after a read failed). Falls back to TensorFlow's message with the data directory."""
    for split in schema.SPLITS:
        for path in info.shard_paths(split) if split in info.shards else []:
            found = locate_corruption(path)
            if found is not None:
                return found
    return schema.DatasetError(f"{info.data_dir}: a record could not be read: {_plain(error.message)}")


def reading(dataset, info: schema.DatasetInfo):
    """Iterates `dataset` (records of `info`), turning a DataLossError into `corrupt_shard_error`'s."""
    iterator = iter(dataset)
    while True:
        try:
            item = next(iterator)
        except StopIteration:
            return
        except tf.errors.DataLossError as e:
            raise corrupt_shard_error(info, e) from e
        yield item
