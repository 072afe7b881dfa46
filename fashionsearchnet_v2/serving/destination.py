"""What an export command checks before it loads anything: its error type and its destination.

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
