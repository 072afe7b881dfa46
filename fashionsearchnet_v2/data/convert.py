"""The conversion engine every `data_prep` converter ends in: split protocol, validation, atomic write.

A converter only parses its label files into `Example`s (metadata, no pixels) and calls
`write_dataset`. That function
- draws the paper's split (§4.2: 2,000 query, 18,000 gallery, the rest training) from a seeded
  permutation, filling query, then gallery, then train with images that decode, so the asked sizes
  are met exactly even when some images are missing or corrupt;
- streams: one image is in memory at a time, records go straight to shards;
- skips missing, empty, undecodable and truncated images, counting them by reason and listing them in
  `conversion_report.txt`, never stopping halfway;
- writes into a temporary sibling directory renamed at the end, so an interrupted conversion never
  leaves something that looks complete, and refuses an existing output without `overwrite=True`;
  temporaries of killed conversions (`<out>.tmp-<pid>`, owner dead) are removed by the next one;
- records the content fingerprint (`schema.content_fingerprint`) in dataset.json.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import os
import shutil
import sys
from collections.abc import Callable, Sequence

import cv2
import numpy as np

from fashionsearchnet_v2 import locks
from fashionsearchnet_v2.data import images, records, schema
from fashionsearchnet_v2.data.schema import DatasetError
from fashionsearchnet_v2.progress import Progress


@dataclasses.dataclass
class Example:
    """One row of a source dataset: where its image is and its labels (one int per attribute, -1 =
    unlabelled). `where` is `file:line` for error messages; `load` replaces `path` for generated images;
    `boxes` is the optional [A, 4] true region per attribute (synthetic data)."""

    image_id: str
    labels: Sequence[int]
    path: str | None = None
    load: Callable[[], bytes] | None = None
    boxes: Sequence[Sequence[float]] | None = None
    where: str = ""


def check_image(data: bytes) -> tuple[bytes | None, str]:
    """Returns (bytes to store, "") or (None, reason). Keeps the bytes as found when TensorFlow can
    decode their format; re-encodes other formats OpenCV reads (TIFF, WebP, ...) as PNG."""
    if not data:
        return None, "empty"
    decoded = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if decoded is None or decoded.size == 0:
        return None, "undecodable"
    if images.truncated_jpeg(data):
        return None, "truncated"
    if images.image_format(data) is None:  # not a format TensorFlow decodes: stored as PNG
        ok, png = cv2.imencode(".png", decoded)
        return (png.tobytes(), "") if ok else (None, "undecodable")
    return data, ""


def prepare_output_dir(output_dir: str, overwrite: bool) -> str:
    """Refuses an existing non-empty output without `overwrite`; returns a fresh temporary sibling,
    marked with its owner, after removing the temporaries of conversions that were killed."""
    output_dir = os.path.abspath(output_dir)
    if os.path.exists(output_dir) and os.listdir(output_dir) and not overwrite:
        raise DatasetError(f"{output_dir} already exists and is not empty; pass --overwrite to replace it.")
    base = os.path.basename(output_dir)
    for path in locks.remove_orphans(os.path.dirname(output_dir), [f"{base}.tmp-*", f"{base}.old-*"]):
        print(f"removed {path}, left behind by a conversion that was killed", file=sys.stderr)
    tmp = f"{output_dir}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    locks.mark_owner(tmp)
    return tmp


def commit_output_dir(tmp: str, output_dir: str) -> None:
    """Moves a finished temporary directory into place; the old output is removed only afterwards."""
    output_dir = os.path.abspath(output_dir)
    owner = os.path.join(tmp, locks.OWNER_FILE)
    if os.path.exists(owner):
        os.remove(owner)
    old = None
    if os.path.exists(output_dir):
        old = f"{output_dir}.old-{os.getpid()}"
        os.replace(output_dir, old)
    os.replace(tmp, output_dir)
    if old:
        shutil.rmtree(old, ignore_errors=True)


def check_split_sizes(available: int, num_query: int, num_gallery: int, what: str, skips=()) -> None:
    """Refuses a split that asks for more images than are usable. `skips`, (reason, image_id, detail) of
    the rows dropped: when they are as many as the usable ones, the images were likely looked for in the
    wrong place, and the message leads with why they were dropped and one path looked for."""
    need = num_query + num_gallery + 1
    if available >= need:
        return
    sizes = (
        f"the split asks for {num_query} query + {num_gallery} gallery + at least 1 training image = {need}"
    )
    skips = list(skips)
    if skips and len(skips) >= available:
        reasons = collections.Counter(r for r, _, _ in skips)
        first = {}
        for reason, image_id, detail in skips:
            first.setdefault(reason, detail or image_id)
        why = ", ".join(f"{n} {r} (e.g. {first[r]})" for r, n in reasons.most_common())
        hint = (
            " Check where the images are (--input_dir's layout, or --image_root for a catalogue)."
            if {"missing", "empty"} & set(reasons)
            else ""
        )
        raise DatasetError(
            f"{what}: {available} usable images of {available + len(skips)} listed; skipped: {why}.{hint} "
            f"{sizes[0].upper()}{sizes[1:]}."
        )
    raise DatasetError(
        f"{what}: {available} usable images, but {sizes}. Set smaller "
        f"--num_query and --num_gallery (the paper's protocol is 2000 and 18000)."
    )


def write_dataset(
    examples: Sequence[Example],
    attributes: Sequence[schema.Attribute],
    *,
    output_dir: str,
    name: str,
    source: str,
    num_query: int = 2000,
    num_gallery: int = 18000,
    seed: int = 0,
    overwrite: bool = False,
    rows_read: int | None = None,
    skipped: Sequence[tuple[str, str, str]] = (),
    localized: dict[str, str] | None = None,
    extra: dict | None = None,
    per_shard: int = 2048,
    progress: bool = True,
    quick: bool = False,
) -> schema.DatasetInfo:
    """Validates, splits and writes `examples` as a dataset directory; returns its description.

    `skipped` lists rows the converter already dropped as (reason, image_id, detail); they are counted
    and reported with the ones skipped here. `quick` marks a smoke-check dataset, which real runs refuse.
    """
    attributes = list(attributes)
    if num_query < 0 or num_gallery < 0:
        raise DatasetError("--num_query and --num_gallery must be >= 0")
    tmp = prepare_output_dir(output_dir, overwrite)
    try:
        skips = list(skipped)
        candidates = []
        # Labels and files are checked before anything is written: a stat per image, minutes for a
        # million images on network storage, so it reports as the conversion does.
        meter = Progress(len(examples), "checking labels and files", "rows", enabled=progress)
        for done, ex in enumerate(examples, 1):
            meter.update(done)
            ex.labels = schema.validate_labels(ex.labels, attributes, ex.where or ex.image_id)
            if ex.load is None:
                if ex.path is None or not os.path.isfile(ex.path):
                    skips.append(("missing", ex.image_id, ex.path or ""))
                    continue
                if os.path.getsize(ex.path) == 0:
                    skips.append(("empty", ex.image_id, ex.path))
                    continue
            candidates.append(ex)
        meter.finish(len(examples))
        check_split_sizes(len(candidates), num_query, num_gallery, f"{name} ({source})", skips)

        order = np.random.default_rng(seed).permutation(len(candidates))
        quota = {"query": num_query, "gallery": num_gallery}
        writers = {s: records.ShardWriter(tmp, s, per_shard) for s in schema.SPLITS}
        meter = Progress(len(candidates), f"converting {name}", enabled=progress)
        has_boxes = any(ex.boxes is not None for ex in candidates[:1])
        for done, idx in enumerate(order, 1):
            ex = candidates[int(idx)]
            if ex.load is not None:
                data = ex.load()
            else:
                with open(ex.path, "rb") as f:
                    data = f.read()
            data, reason = check_image(data)
            if data is None:
                skips.append((reason, ex.image_id, ex.path or ""))
                continue
            split = next((s for s in ("query", "gallery") if writers[s].count < quota[s]), "train")
            writers[split].write(records.serialize_example(data, ex.image_id, ex.labels, ex.boxes))
            meter.update(done, f"skipped {len(skips)}")
        meter.update(len(candidates), f"skipped {len(skips)}", force=True)

        counts = {s: w.count for s, w in writers.items()}
        if counts["query"] < num_query or counts["gallery"] < num_gallery or counts["train"] < 1:
            check_split_sizes(sum(counts.values()), num_query, num_gallery, f"{name} after skipping", skips)
        shards = {s: w.finish() for s, w in writers.items()}

        reasons = collections.Counter(r for r, _, _ in skips)
        with open(os.path.join(tmp, schema.REPORT_TXT), "w", encoding="utf-8") as f:
            f.write("reason\timage_id\tdetail\n")
            for reason, image_id, detail in skips:
                f.write(f"{reason}\t{image_id}\t{detail}\n")
        report = {
            "rows_read": rows_read if rows_read is not None else len(examples) + len(skipped),
            "images_written": sum(counts.values()),
            "images_skipped": len(skips),
            "skipped_by_reason": dict(sorted(reasons.items())),
            "report_file": schema.REPORT_TXT,
        }
        info = schema.DatasetInfo(
            name=name,
            attributes=attributes,
            splits=counts,
            seed=seed,
            source=source,
            shards=shards,
            report=report,
            has_boxes=has_boxes,
            localized=dict(localized or {}),
            extra=dict(extra or {}),
            fingerprint=schema.content_fingerprint(tmp, attributes, shards, progress),
            quick=quick,
        )
        with open(os.path.join(tmp, schema.DATASET_JSON), "w", encoding="utf-8") as f:
            json.dump(info.to_json(), f, indent=2)
        commit_output_dir(tmp, output_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    info.data_dir = os.path.abspath(output_dir)
    return info
