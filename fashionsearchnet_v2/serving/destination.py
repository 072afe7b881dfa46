"""What an export command checks before it loads anything: its error type and its destination; and
whether TensorFlow's file systems here reach a URI (exports and embeddings are read and written through
`tf.io.gfile`).

Kept apart from `serving.export` (which imports TensorFlow, seconds of start-up) so that
`python -m experiments.export` refuses an existing destination, a missing dataset or a bad flag at once.
"""

from __future__ import annotations

import os


class ExportError(RuntimeError):
    """An export cannot be written or read; the message says where and what to do."""


def check_destination(export_dir: str, overwrite: bool) -> str:
    """Absolute `export_dir`; raises ExportError if it exists and `overwrite` is false."""
    export_dir = os.path.abspath(export_dir)
    if os.path.lexists(export_dir) and not overwrite:
        raise ExportError(f"{export_dir} already exists; pass --overwrite to replace it")
    return export_dir


def file_system_problem(path: str) -> str | None:
    """Why `tf.io.gfile` cannot read or write `path` here, or None: a URI whose scheme TensorFlow has no
    file system for. TensorFlow 2.21 has local paths, file://, ram:// and gs://; s3:// and hdfs:// came with
    tensorflow-io, without it `tf.io.gfile` raises UnimplementedError deep inside a write (or a read says
    the file is missing)."""
    if "://" not in path:
        return None
    scheme = path.split("://", 1)[0]
    import tensorflow as tf

    schemes = [s for s in tf.io.gfile.get_registered_schemes() if s]
    if scheme in schemes:
        return None
    known = ", ".join(f"{s}://" for s in sorted(schemes))
    return (f"{path}: TensorFlow here has no file system for {scheme}:// (it reads and writes local paths, "
            f"{known}): put exports and embeddings on gs:// or on a file system mounted at the same path "
            "on every machine")  # fmt: skip
