"""Embeds a catalogue on Apache Beam: a folder of images or a converted dataset split through an export's
`embed`, spread over the runner's workers, into embedding shards that `experiments.index` indexes.

    pip install -e ".[beam]"
    python -m experiments.embed_beam --export_dir=exports/synthetic/1 --images=FOLDER --output=embeddings/shop \\
        [--direct_num_workers=2] [--embed_batch=32] [--num_shards=0] [--overwrite] [-- BEAM PIPELINE OPTIONS]
    python -m experiments.embed_beam --export_dir=exports/synthetic/1 --split=gallery [--data_dir=DIR] \\
        --output=embeddings/gallery
    python -m experiments.index --export_dir=exports/synthetic/1 --embeddings=embeddings/shop --index=indexes/shop.npz

Without pipeline options it runs on Beam's DirectRunner on this machine, in --direct_num_workers worker
processes. Everything after `--` is handed to Beam as pipeline options: the same pipeline runs on
Dataflow, Flink or Spark (`-- --runner=DataflowRunner --project=... --temp_location=gs://...`; README,
"Catalogues of millions"; docs/serving.md); the export, the images and --output must then be where every
worker reads them: the export and --output on gs:// or a shared file system (TensorFlow reads and writes
them; it has no s3:// or hdfs:// here), the images anywhere Beam reads. An image that cannot be read or
decoded is listed with its reason in <output>/skipped.jsonl and counted; the pipeline goes on. --split
takes several splits (query,gallery) or all, as experiments.index does. A split's dataset is --data_dir
(or --dataset) when given, else the one the export was made from.
"""

import atexit
import logging as pylogging
import os
import shutil
import sys
import tempfile
import time

from absl import flags, logging

from experiments import common
from fashionsearchnet_v2.data import integrity, schema
from fashionsearchnet_v2.serving import destination, embeddings, export
from fashionsearchnet_v2.serving import index as index_lib

EXPORT_DIR = flags.DEFINE_string("export_dir", None, "SavedModel written by experiments.export.")
IMAGES = flags.DEFINE_string("images", None, "Folder of images to embed (recursive; local or gs://, ...).")
SPLIT = flags.DEFINE_string(
    "split", None, "Dataset split(s) to embed instead of a folder: gallery, several (query,gallery) or all."
)
OUTPUT = flags.DEFINE_string("output", None, "Directory to write the embedding shards into.")
BATCH = flags.DEFINE_integer("embed_batch", 32, "Images per `embed` call (RunInference's batch).")
NUM_SHARDS = flags.DEFINE_integer("num_shards", 0, "Vectors shards to write (0: the runner decides).")
WORKERS = flags.DEFINE_integer("direct_num_workers", 1, "DirectRunner: worker processes on this machine.")
MODE = flags.DEFINE_enum(
    "direct_running_mode",
    "multi_processing",
    ["in_memory", "multi_threading", "multi_processing"],
    "DirectRunner: workers as processes (each loads the model once), threads, or in this process.",
)
OVERWRITE = flags.DEFINE_bool("overwrite", False, "Replace embeddings already in --output.")
flags.mark_flags_as_required(["export_dir", "output"])


def _private_temp_dir() -> str:
    """Points this process's temporary files, and its worker processes', at a directory of this run's own,
    removed when the process exits. Beam 2.77 leaves three directories in the temporary directory on every
    run (its job server's root and two of dependency staging, never removed; docs/serving.md). Registered
    before the pipeline starts, so it runs after Beam's own exit handlers."""
    own = tempfile.mkdtemp(prefix="embed_beam-")
    atexit.register(shutil.rmtree, own, ignore_errors=True)
    tempfile.tempdir = own
    os.environ["TMPDIR"] = own
    return own


def main(argv):
    beam_args = argv[1:]  # what followed `--`: Beam's pipeline options
    logging.set_verbosity(logging.WARNING)  # Beam's INFO lines (bundles, renames) drown the progress
    # The DirectRunner's worker processes print their log lines here themselves; the runner's copy of
    # each ("Worker: severity: WARN ...") only repeats them.
    pylogging.getLogger("apache_beam.runners.portability.local_job_service").setLevel(pylogging.ERROR)
    if (SPLIT.value is None) == (IMAGES.value is None):
        common.fail("give exactly one of --images (a folder) or --split (a dataset split)")
    if SPLIT.value is not None:
        try:
            schema.split_list(SPLIT.value)
        except schema.DatasetError as e:
            common.fail(f"--split: {e}")
    if WORKERS.value < 1 or BATCH.value < 1 or NUM_SHARDS.value < 0:
        common.fail("--direct_num_workers and --embed_batch must be at least 1, --num_shards at least 0")
    try:
        from fashionsearchnet_v2.serving import beam_embed
    except ImportError as e:
        common.fail(f'embedding on Apache Beam needs the beam extra: pip install -e ".[beam]" ({e})')
    options = beam_embed.pipeline_options(beam_args, WORKERS.value, MODE.value)
    unknown = beam_embed.unknown_options(options)
    if unknown:
        common.fail(f"unknown Beam pipeline options after --: {' '.join(unknown)}")
    if IMAGES.value is not None and "://" not in IMAGES.value and not os.path.isdir(IMAGES.value):
        common.fail(f"--images={IMAGES.value} is not a directory")
    for flag in (EXPORT_DIR, OUTPUT):  # read and written through tf.io.gfile (s3:// needs tensorflow-io)
        problem = destination.file_system_problem(flag.value)
        if problem:
            common.fail(f"--{flag.name}={problem}")
    _private_temp_dir()
    start = time.time()
    try:
        info = None
        if SPLIT.value is not None:
            export_info = export.ExportInfo(EXPORT_DIR.value)
            info = schema.load_dataset_info(common.export_data_dir(export_info.metadata))
            integrity.check_records(info)  # the first record of each split, against dataset.json
        contents = beam_embed.run(
            EXPORT_DIR.value, OUTPUT.value, folder=IMAGES.value, info=info, split=SPLIT.value,
            batch_size=BATCH.value, num_shards=NUM_SHARDS.value, options=options, overwrite=OVERWRITE.value,
        )  # fmt: skip
    except (export.ExportError, embeddings.EmbeddingsError, index_lib.IndexFileError, schema.DatasetError,
            beam_embed.PipelineError) as e:  # fmt: skip
        common.fail(str(e))
    seconds = time.time() - start
    done, ran = contents["count"] + contents["skipped"], contents["pipeline"]
    workers = f", {ran['workers']} workers" if ran.get("workers") else ""
    print(f"wrote {len(contents['shards'])} shards of {contents['count']} vectors into {OUTPUT.value} in "
          f"{seconds:.1f} s ({done / max(seconds, 1e-9):.1f} images/s, start-up included; "
          f"{ran['runner']}{workers})")  # fmt: skip
    if contents["measured"].get("images_per_second"):
        print(f"  from the first image embedded to the last: {contents['measured']['seconds']:.1f} s, "
              f"{contents['measured']['images_per_second']:.1f} images/s")  # fmt: skip
    if contents["skipped"]:
        print(f"skipped {contents['skipped']} images that could not be read or decoded: "
              f"{os.path.join(OUTPUT.value, embeddings.SKIPPED)}", file=sys.stderr)  # fmt: skip
    print(f"  index them: python -m experiments.index --export_dir={EXPORT_DIR.value} "
          f"--embeddings={OUTPUT.value} --index=INDEX.npz")  # fmt: skip


if __name__ == "__main__":
    common.run(main, extra_args=True)
