"""A converted dataset with fewer training images: the same query and gallery records, byte for byte.

    python -m data_prep.subset --input_dir=data/celeba --output_dir=data/celeba-train6679 --train_images=6679

For curves against training-set size (how much of a distance to the paper is data): the training images
kept are the first `--train_images` by a hash of their ids, so a smaller subset is inside every larger one
and the choice is the same on every run and machine. Records are copied unchanged; dataset.json says what
the subset was taken from (`extra.subset_of`).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil

from absl import app, flags

from data_prep import common
from fashionsearchnet_v2.data import convert, records, schema
from fashionsearchnet_v2.progress import Progress

# --input_dir (here a converted dataset), --output_dir and --overwrite are the converters' flags.
TRAIN_IMAGES = flags.DEFINE_integer("train_images", None, "Training images to keep.")

_SALT = b"fsnv2-subset:"


def _id(record: bytes) -> bytes:
    from tensorflow.core.example import example_pb2

    return example_pb2.Example.FromString(record).features.feature[records.FEATURE_ID].bytes_list.value[0]


def _rank(image_id: bytes) -> bytes:
    return hashlib.blake2b(_SALT + image_id, digest_size=8).digest()


def subset(
    input_dir: str, output_dir: str, train_images: int, *, overwrite: bool = False, progress: bool = False
) -> schema.DatasetInfo:
    """Writes `input_dir` with only `train_images` of its training images into `output_dir` (`progress`:
    a meter per pass on stderr)."""
    import tensorflow as tf

    info = schema.load_dataset_info(input_dir)
    have = info.splits.get("train", 0)
    if not 0 < train_images <= have:
        raise schema.DatasetError(f"--train_images must be in 1..{have} (the training images of {input_dir}), got {train_images}")  # fmt: skip
    tmp = convert.prepare_output_dir(output_dir, overwrite)
    try:
        shards = {}
        for split in schema.SPLITS:
            paths = info.shard_paths(split) if info.shards.get(split) else []
            keep = None
            total = info.splits.get(split, 0)
            if split == "train":  # two passes: ids first, so that only the kept records are held
                meter = Progress(total, "reading the training ids", "records", enabled=progress)
                ids = []
                for r in tf.data.TFRecordDataset(paths):
                    ids.append(_id(r.numpy()))
                    meter.update(len(ids))
                meter.finish(len(ids))
                keep = set(sorted(range(len(ids)), key=lambda i: _rank(ids[i]))[:train_images])
            writer = records.ShardWriter(tmp, split)
            meter = Progress(total, f"copying {split}", "records", enabled=progress)
            for i, row in enumerate(tf.data.TFRecordDataset(paths) if paths else []):
                if keep is None or i in keep:  # the source's order among those kept
                    writer.write(row.numpy())
                meter.update(i + 1)
            meter.finish(total)
            shards[split] = writer.finish()
        splits = {s: info.splits.get(s, 0) for s in schema.SPLITS}
        splits["train"] = train_images
        out = schema.DatasetInfo(
            name=info.name,
            attributes=info.attributes,
            splits=splits,
            seed=info.seed,
            source=f"{train_images} of the {have} training images of {os.path.abspath(input_dir)}",
            shards=shards,
            report={"images_written": sum(splits.values())},
            has_boxes=info.has_boxes,
            localized=dict(info.localized),
            extra={**info.extra, "subset_of": info.fingerprint, "train_images_of": have},
            fingerprint=schema.content_fingerprint(tmp, info.attributes, shards, progress),
            quick=info.quick,
        )
        with open(os.path.join(tmp, schema.DATASET_JSON), "w", encoding="utf-8") as f:
            json.dump(out.to_json(), f, indent=2)
        convert.commit_output_dir(tmp, output_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    out.data_dir = os.path.abspath(output_dir)
    return out


def main(argv):
    common.refuse_stray_arguments(argv)
    for flag in (common.INPUT_DIR, common.OUTPUT_DIR, TRAIN_IMAGES):
        if flag.value is None:
            raise app.UsageError(f"--{flag.name} is required")
    info = common.one_error_line(
        subset,
        common.INPUT_DIR.value,
        common.OUTPUT_DIR.value,
        TRAIN_IMAGES.value,
        overwrite=common.OVERWRITE.value,
        progress=True,
    )
    print(f"wrote {info.data_dir}: splits {info.splits}")


if __name__ == "__main__":
    app.run(main)
