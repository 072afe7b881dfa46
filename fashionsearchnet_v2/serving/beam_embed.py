"""Batch embedding on Apache Beam: a catalogue of millions of images through the exported `embed`,
spread over as many workers as the runner has, written as embedding shards (`serving.embeddings`) from
which `experiments.index` builds the index the service serves.

    images   a folder: Beam's fileio (MatchFiles + ReadMatches), any file system Beam has (local, gs://,
             s3:// and hdfs:// with Beam's extras); a converted dataset split: its TFRecord shards through
             Beam's TFRecord source. The export and the output are read and written by TensorFlow
             (`tf.io.gfile`: local paths, gs://; no s3:// or hdfs:// without tensorflow-io), so they go
             on gs:// or a shared file system; `run` refuses another scheme before the pipeline starts.
      -> decode     TensorFlow's decoder, as `experiments.index` (same pixels); an image that cannot be read
                    or decoded goes to the side output skipped.jsonl with its reason, and is counted
      -> RunInference(KeyedModelHandler(EmbedHandler))   Beam's inference transform: it batches the
                    images and loads the SavedModel once per worker process; the key carries id, path,
                    order and labels past the model
      -> vectors-SSSSS-of-NNNNN.tfrecord                 (Beam's TFRecord sink)
      -> embeddings.json                                 written once every shard is final

Beam's `TFModelHandlerNumpy` cannot load this export: it loads through `tf.keras.models.load_model`
(Keras 3 loads only .keras/.h5 files; the export is a plain `tf.Module` with named signatures) and imports
tensorflow_hub. Beam's documentation for a model its handlers do not cover is a ModelHandler of one's own
(`load_model`, `run_inference`), which is `EmbedHandler`: it loads the export with `tf.saved_model.load`
(`export.ExportedModel`) and calls its `embed` signature exactly as `experiments.index` does.

This module imports apache_beam (the `beam` extra, `pip install -e .[beam]`); nothing else in the package
imports it, so `import fashionsearchnet_v2` and every other entry point work without Beam.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import time
from collections.abc import Sequence
from typing import NamedTuple

# Two warnings Beam 2.77 logs that are not true here, dropped before apache_beam is imported (this module is
# imported in every worker too, when it unpickles the pipeline's steps): "apitools not found" on import
# (this pipeline uses no BigQuery), and on every model load "Resource module is not available" (Beam
# imports `resource` only together with torch, which this project does not use).
_FALSE_WARNINGS = ("apitools not found, and bigquery", "Resource module is not available")


class _DropFalseWarnings(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(_FALSE_WARNINGS)


if not any(isinstance(f, _DropFalseWarnings) for f in logging.getLogger().filters):
    logging.getLogger().addFilter(_DropFalseWarnings())

import apache_beam as beam  # noqa: E402
import numpy as np  # noqa: E402
from apache_beam.io import filebasedsource, fileio, tfrecordio  # noqa: E402
from apache_beam.io.filesystem import CompressionTypes  # noqa: E402
from apache_beam.metrics.metric import MetricsFilter  # noqa: E402
from apache_beam.ml.inference.base import KeyedModelHandler, ModelHandler, RunInference  # noqa: E402
from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions  # noqa: E402

from fashionsearchnet_v2.data import records, schema  # noqa: E402
from fashionsearchnet_v2.serving import (  # noqa: E402
    embeddings,
    export,
    indexing,  # noqa: E402
)
from fashionsearchnet_v2.serving import index as index_lib  # noqa: E402

NAMESPACE = "fashionsearchnet_v2"
# The `embed` outputs kept in the shards: what an index holds (the attribute representations, boxes and
# maps are recomputed for a query when it is searched).
KEPT = ("global_representation", "predicted_values", "predicted_probabilities")


class Item(NamedTuple):
    """What travels with an image through the pipeline (the key of RunInference's keyed handler)."""

    id: str  # record id, or path relative to the folder
    path: str  # the file's absolute path or URI ("" for a record)
    order: tuple[int, int]  # (shard number, record number) of a record; (0, 0) for a file
    labels: tuple[int, ...]  # -1 where unknown
    content: bytes = b""  # `index.content_digest` of the encoded image, once read (Decode)


# ----------------------------------------------------------------------------------------------------
# Inputs


def relative(path: str, folder: str) -> str:
    """`path` relative to `folder`, '/'-separated (the id `index.list_images` gives the same file)."""
    prefix = folder.rstrip("/") + "/"
    return path[len(prefix) :] if path.startswith(prefix) else os.path.relpath(path, folder)


class _OrderedTFRecordSource(tfrecordio._TFRecordSource):
    """Beam's TFRecord source, each record with its shard and record number.

    Beam reads a TFRecord file from its start to its end in one reader (the source is not splittable),
    so counting records while reading gives each its number; order is kept in the data, not the
    collection (Beam keeps no order)."""

    def __init__(self, file_name: str, shard_numbers: dict[str, int]):
        super().__init__(file_name, beam.coders.BytesCoder(), CompressionTypes.AUTO, validate=False)
        self._shard_numbers = shard_numbers

    def read_records(self, file_name, offset_range_tracker):
        shard, number = self._shard_numbers[os.path.basename(file_name)], 0
        try:
            for record in super().read_records(file_name, offset_range_tracker):
                yield shard, number, file_name, record
                number += 1
        except ValueError as e:  # Beam's "Not a valid TFRecord ...", which names neither file nor record
            raise schema.DatasetError(
                f"{file_name}: record {number} is damaged ({str(e).split(':')[0]}): copy or convert the "
                "dataset again"
            ) from e


class _ParseRecord(beam.DoFn):
    """(shard, record number, file, serialized record) -> (Item, encoded image bytes)."""

    def __init__(self, num_attributes: int):
        self._num_attributes = num_attributes

    def process(self, element):
        import tensorflow as tf

        shard, number, file_name, record = element
        feature = tf.train.Example.FromString(record).features.feature
        labels = tuple(int(v) for v in feature[records.FEATURE_LABELS].int64_list.value)
        if len(labels) != self._num_attributes:
            raise schema.DatasetError(
                f"{file_name}: record {number} has {len(labels)} labels, but dataset.json lists "
                f"{self._num_attributes} attributes"
            )
        image_id = feature[records.FEATURE_ID].bytes_list.value[0].decode("utf-8")
        yield (
            Item(image_id, "", (shard, number), labels),
            feature[records.FEATURE_ENCODED].bytes_list.value[0],
        )


def read_folder(pipeline, folder: str, num_attributes: int):
    """(Item, ReadableFile) of every image file under `folder` (recursively, by extension, as
    `index.list_images` lists them)."""
    unlabelled = (schema.UNLABELLED,) * num_attributes
    folder = folder.rstrip("/")

    def keyed(readable):
        path = readable.metadata.path
        return Item(relative(path, folder), path, (0, 0), unlabelled), readable

    return (
        pipeline
        | "Match files"
        >> fileio.MatchFiles(f"{folder}/**", empty_match_treatment=fileio.EmptyMatchTreatment.ALLOW)
        | "Images only" >> beam.Filter(lambda m: m.path.lower().endswith(index_lib.IMAGE_EXTENSIONS))
        # The listing comes out of one worker; redistributing the file names (not their bytes) lets every
        # worker read, decode and embed its share.
        | "Spread over workers" >> beam.Reshuffle()
        | "Open" >> fileio.ReadMatches()
        | "Key by id" >> beam.Map(keyed)
    )


def read_split(pipeline, info: schema.DatasetInfo, split: str):
    """(Item, encoded bytes) of every record of a dataset split (or of several, `schema.split_list`: their
    shards numbered split after split, as `experiments.index` reads them), through Beam's TFRecord source."""
    shards = info.shards_of(split)
    numbers = {os.path.basename(path): k for k, path in enumerate(shards)}
    source = filebasedsource.ReadAllFiles(
        splittable=False,
        compression_type=CompressionTypes.AUTO,
        desired_bundle_size=0,
        min_bundle_size=0,
        source_from_file=lambda name: _OrderedTFRecordSource(name, numbers),
    )
    return (
        pipeline
        | "Shards" >> beam.Create([export.absolute(p) for p in shards])
        | "Read records" >> source
        | "Parse" >> beam.ParDo(_ParseRecord(info.num_attributes))
    )


# ----------------------------------------------------------------------------------------------------
# Decoding, with bad images to a side output


class Decode(beam.DoFn):
    """(Item, bytes or fileio.ReadableFile) -> (Item, uint8 RGB [H, W, 3]); an image that cannot be read
    or decoded goes to the SKIPPED output as {"id", "path", "reason"} (+ "shard", "record")."""

    SKIPPED = "skipped"

    def __init__(self):
        self._skipped = beam.metrics.Metrics.counter(NAMESPACE, "images_skipped")

    def process(self, element):
        item, data = element
        where = item.path or f"record {item.id!r}"
        try:
            if not isinstance(data, bytes):
                data = data.read()
            image = index_lib.decode_image(data, where)
            item = item._replace(content=index_lib.content_digest(data))
        except (OSError, index_lib.ImageReadError) as e:
            reason = e.reason if isinstance(e, index_lib.ImageReadError) else (e.strerror or str(e))
            self._skipped.inc()
            entry = {"id": item.id, "path": item.path, "reason": reason}
            if not item.path:
                entry["shard"], entry["record"] = item.order
            yield beam.pvalue.TaggedOutput(self.SKIPPED, entry)
            return
        yield item, image


# ----------------------------------------------------------------------------------------------------
# The model


class EmbedHandler(ModelHandler):
    """Beam's RunInference over the export's `embed` signature: loads the SavedModel (once per worker
    process, shared by its threads: RunInference does that) and embeds a batch of images of any sizes.

    Args:
        export_dir: the export, on storage every worker reads (a local path for the DirectRunner; gs://,
            or a shared file system, on other runners).
        batch_size: images per batch (`beam.BatchElements`) and per `embed` call.
    """

    def __init__(self, export_dir: str, batch_size: int = 32):
        super().__init__(min_batch_size=batch_size, max_batch_size=batch_size)
        self._export_dir = export_dir
        self._batch_size = batch_size

    def load_model(self) -> export.ExportedModel:
        return export.ExportedModel(self._export_dir)

    def run_inference(self, batch: Sequence[np.ndarray], model, inference_args=None) -> list[dict]:
        out = model.embed(list(batch), self._batch_size)
        return [{k: out[k][i] for k in KEPT} for i in range(len(batch))]

    def get_num_bytes(self, batch: Sequence[np.ndarray]) -> int:
        return sum(int(np.asarray(image).nbytes) for image in batch)

    def get_metrics_namespace(self) -> str:
        return NAMESPACE


class Serialize(beam.DoFn):
    """(Item, outputs) -> a vectors record. Prints each worker's progress (images/s since its first
    image, ETA) to stderr, and notes when each image was done in a Beam distribution (`embedded_at_ms`:
    milliseconds since `started`, the pipeline's construction, by default), whose minimum and maximum over
    all workers give the pipeline's rate once started (`run`). Offsets, not the time of day: a
    distribution also sums its values in an int64, which absolute milliseconds (1.8e12) overflowed after
    5.1 million images in one bundle."""

    def __init__(self, total: int | None = None, workers: int | None = None, every: float = 10.0,
                 started: float | None = None):  # fmt: skip
        self._total, self._workers, self._every = total, workers, every
        self._started = time.time() if started is None else started  # pickled to the workers
        self._embedded = beam.metrics.Metrics.counter(NAMESPACE, "images_embedded")
        self._clock = beam.metrics.Metrics.distribution(NAMESPACE, "embedded_at_ms")

    def setup(self):
        self._count, self._first, self._last = 0, None, 0.0

    def process(self, element):
        item, outputs = element
        now = time.time()
        self._embedded.inc()
        self._clock.update(round((now - self._started) * 1000))
        self._count += 1
        if self._first is None:
            self._first = self._last = now
        elif now - self._last >= self._every:
            self._last = now
            self._report(now)
        yield embeddings.serialize_row(item.id, item.path, item.order, item.labels, outputs, item.content)

    def teardown(self):
        if getattr(self, "_count", 0):
            self._report(time.time(), final=True)

    def _report(self, now: float, final: bool = False) -> None:
        rate = self._count / max(now - self._first, 1e-9)
        eta = ""
        if final:
            eta = " (its share is done)"
        elif self._total and self._workers:
            left = max(self._total - self._count * self._workers, 0)
            eta = f"; about {left / (rate * self._workers):.0f} s left if all {self._workers} workers keep this pace"
        print(f"embed_beam worker {os.getpid()}: {self._count} images embedded, {rate:.1f} images/s since its "
              f"first{eta}", file=sys.stderr, flush=True)  # fmt: skip


def _write_manifest(_, directory, shards, count, skipped, skipped_file, export_info, source, pipeline_info):
    # `skipped_file` is only waited for: the manifest, written last, says that every output is complete.
    del skipped_file
    contents = embeddings.manifest(count, skipped, shards, export_info, source, pipeline_info)
    embeddings.write_manifest(directory, contents)
    yield contents


# ----------------------------------------------------------------------------------------------------
# The pipeline


def build(
    pipeline,
    export_info: export.ExportInfo,
    output: str,
    *,
    folder: str | None = None,
    info: schema.DatasetInfo | None = None,
    split: str | None = None,
    batch_size: int = 32,
    num_shards: int = 0,
    total: int | None = None,
    workers: int | None = None,
    pipeline_info: dict | None = None,
):
    """Adds the embedding of a folder (`folder`) or a dataset split (`info`, `split`) to `pipeline`,
    writing into `output`. Returns the PCollection of the manifest (one dict, once it is written).
    `num_shards` 0 lets the runner choose; `total` and `workers` only make the progress lines' ETA."""
    num_attributes = len(export_info.vocabulary.names)
    if folder is not None:
        folder = export.absolute(folder).rstrip("/")
        items = read_folder(pipeline, folder, num_attributes)
        source = {"kind": "folder", "folder": folder}
    else:
        split = ",".join(schema.split_list(split))
        indexing.check_dataset_vocabulary(export_info, info)
        items = read_split(pipeline, info, split)
        source = {"kind": "split", "data_dir": export.absolute(info.data_dir), "split": split,
                  "dataset": info.name}  # fmt: skip
    decoded = items | "Decode" >> beam.ParDo(Decode()).with_outputs(Decode.SKIPPED, main="images")
    handler = KeyedModelHandler(EmbedHandler(export_info.export_dir, batch_size))
    rows = (
        decoded.images
        | "Embed" >> RunInference(handler)
        | "Serialize" >> beam.ParDo(Serialize(total, workers))
    )
    shards = rows | "Write vectors" >> beam.io.WriteToTFRecord(
        os.path.join(output, embeddings.VECTORS_PREFIX),
        file_name_suffix=embeddings.VECTORS_SUFFIX,
        num_shards=num_shards,
    )
    skipped = decoded[Decode.SKIPPED]
    skipped_file = (
        skipped
        | "Skipped as JSON" >> beam.Map(json.dumps)
        | "Write skipped"
        >> beam.io.WriteToText(os.path.join(output, embeddings.SKIPPED), num_shards=1, shard_name_template="")
    )
    count = rows | "Count embedded" >> beam.combiners.Count.Globally()
    skipped_count = skipped | "Count skipped" >> beam.combiners.Count.Globally()
    return (
        pipeline
        | "Once" >> beam.Create([None])
        | "Write manifest"
        >> beam.FlatMap(
            _write_manifest,
            output,
            beam.pvalue.AsList(shards),
            beam.pvalue.AsSingleton(count),
            beam.pvalue.AsSingleton(skipped_count),
            beam.pvalue.AsList(skipped_file),
            export_info,
            source,
            pipeline_info or {},
        )
    )


def pipeline_options(args: Sequence[str], direct_num_workers: int = 1,
                     direct_running_mode: str = "multi_processing") -> PipelineOptions:  # fmt: skip
    """Beam's options from `args` (any runner's: `--runner=DataflowRunner --project=...`); without a
    `--runner`, the DirectRunner with `direct_num_workers` workers in `direct_running_mode`."""
    defaults = [f"--direct_num_workers={direct_num_workers}", f"--direct_running_mode={direct_running_mode}",
                "--default_sdk_harness_log_level=WARNING"]  # fmt: skip
    return PipelineOptions([*defaults, *args])


def unknown_options(options: PipelineOptions) -> list[str]:
    """The options no Beam options class knows (Beam itself only warns and drops them)."""
    known = set(options.get_all_options())
    return sorted(f"--{name}" for name in set(options.get_all_options(retain_unknown_options=True)) - known)


def run(export_dir: str, output: str, *, options: PipelineOptions | None = None, overwrite: bool = False,
        **source) -> dict:  # fmt: skip
    """Runs the embedding pipeline to its end. `source`: `build`'s folder= (or info= and split=),
    batch_size=, num_shards=. Returns the manifest it wrote and, under "measured" (not in the file), the
    pipeline's rate from its first image embedded to its last."""
    folder, info, split = source.get("folder"), source.get("info"), source.get("split")
    if (folder is None) == (info is None):
        raise ValueError("give exactly one of a folder or a dataset split")
    batch_size = source.setdefault("batch_size", 32)
    options = options or pipeline_options([])
    export_info = export.ExportInfo(export_dir)
    output = export.absolute(output)
    embeddings.prepare_directory(output, overwrite)
    total = (
        len(index_lib.list_images(folder, progress=True))
        if folder is not None and "://" not in folder
        else None
    )
    if info is not None:
        total = info.size_of(split)
    runner = options.view_as(StandardOptions).runner or "DirectRunner"
    workers = options.get_all_options().get("direct_num_workers") if runner == "DirectRunner" else None
    pipeline_info = {"runner": runner, "workers": workers, "batch_size": batch_size}
    pipeline = beam.Pipeline(options=options)
    build(pipeline, export_info, output, total=total, workers=workers, pipeline_info=pipeline_info, **source)
    try:
        result = pipeline.run()
        result.wait_until_finish()
    except Exception as e:  # a worker's failure comes back as text inside the runner's own error
        found = _OUR_ERROR.findall(str(e))
        if not found:
            raise
        raise PipelineError(found[-1].strip()) from e
    contents = embeddings.load_manifest(output)
    contents["measured"] = _rate_once_started(result, batch_size)
    return contents


def _rate_once_started(result, batch_size: int) -> dict:
    """{"seconds", "images_per_second"} from the first image embedded to the last, over every worker
    (Beam's `embedded_at_ms` distribution: its maximum less its minimum, offsets from one start); the
    images of the first batch, done at its first instant, are not counted. Empty where the runner reports no distribution."""
    query = result.metrics().query(MetricsFilter().with_namespace(NAMESPACE).with_name("embedded_at_ms"))
    for found in query.get("distributions", []):
        clock = found.committed if found.committed is not None else found.attempted
        if clock is None or not clock.count:
            continue
        seconds = (clock.max - clock.min) / 1000
        images = clock.count - min(batch_size, clock.count)
        return {"seconds": seconds, "images_per_second": images / seconds if seconds > 0 else None}
    return {}


# A failure of this project's code in a worker ("fashionsearchnet_v2.data.schema.DatasetError: <message>"),
# as the runner reports it: the message up to Beam's "[while running ...]" or the end of its line.
_OUR_ERROR = re.compile(r"fashionsearchnet_v2\.[\w.]+Error: (.+?)(?: \[while running|\\n|\n|$)")


class PipelineError(RuntimeError):
    """The pipeline stopped on a failure the user can fix (a damaged shard, an unreadable export), met
    in a worker; the message is that failure's."""
