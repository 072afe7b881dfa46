"""Flags and the entry-point wrapper shared by every converter (`python -m data_prep.<name>`).

Each converter module defines `convert(input_dir, output_dir, **protocol) -> DatasetInfo`, which tests call
directly, and ends with `common.run(convert)`; `protocol` is the split's (num_query, num_gallery, seed,
overwrite, progress), passed to `fashionsearchnet_v2.data.convert.write_dataset` through
`_parsing.write_labelled`, whose defaults are the paper's (2,000 query, 18,000 gallery, seed 0).
"""

from __future__ import annotations

import sys

from absl import app, flags

from fashionsearchnet_v2 import errors

INPUT_DIR = flags.DEFINE_string("input_dir", None, "Directory holding the dataset as distributed.")
OUTPUT_DIR = flags.DEFINE_string("output_dir", None, "Directory to write dataset.json and shards to.")
NUM_QUERY = flags.DEFINE_integer("num_query", 2000, "Query images (paper §4.2: 2,000).")
NUM_GALLERY = flags.DEFINE_integer("num_gallery", 18000, "Gallery images (paper §4.2: 18,000).")
SEED = flags.DEFINE_integer("seed", 0, "Seed of the split permutation.")
OVERWRITE = flags.DEFINE_bool("overwrite", False, "Replace an existing output directory.")


def run(convert, needs_input: bool = True) -> None:
    """Parses flags, calls `convert` and prints the report; a DatasetError or a full disk exits 2 with one
    `error:` line."""

    def main(argv):
        refuse_stray_arguments(argv)
        if needs_input and not INPUT_DIR.value:
            raise app.UsageError("--input_dir is required")
        if not OUTPUT_DIR.value:
            raise app.UsageError("--output_dir is required")
        kwargs = dict(
            num_query=NUM_QUERY.value,
            num_gallery=NUM_GALLERY.value,
            seed=SEED.value,
            overwrite=OVERWRITE.value,
        )
        if needs_input:
            info = one_error_line(convert, INPUT_DIR.value, OUTPUT_DIR.value, **kwargs)
        else:
            info = one_error_line(convert, OUTPUT_DIR.value, **kwargs)
        print(f"wrote {info.data_dir}: splits {info.splits}")
        print(f"report: {info.report}")

    app.run(main)


def refuse_stray_arguments(argv) -> None:
    """Words beside the flags (absl's `argv[1:]`) end the process with one `error:` line naming them."""
    if len(argv) > 1:
        print(f"error: {errors.stray_arguments(argv[1:], sys.argv)}", file=sys.stderr)
        sys.exit(2)


def one_error_line(fn, *args, **kwargs):
    """`fn(*args, **kwargs)`; bad data or a full disk ends the process with one `error:` line and exit
    status 2 (`errors.user_message`), a bug keeps its traceback."""
    try:
        return fn(*args, **kwargs)
    except Exception as e:
        message = errors.user_message(e)
        if message is None:
            raise
        print(f"error: {message}", file=sys.stderr)
        sys.exit(2)
