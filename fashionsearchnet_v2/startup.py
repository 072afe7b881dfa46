"""A command's start-up: what Keras probes for at import and this project never uses is not imported.

TensorFlow imports Keras, and Keras tries two optional packages at import: IPython (to tell whether it
runs in a notebook, for `keras.saving.KerasFileEditor`'s display) and matplotlib (`pyplot` and `patches`,
for `keras.visualization`'s galleries). Where both are installed (matplotlib is this project's
dependency; many machines carry IPython) they cost about 1.4 s of every process's start on a 2-core EPYC,
about a quarter of `import tensorflow` (decision P11, docs/decisions.md#p11). Nothing here uses either
Keras feature; the project draws its figures with matplotlib's object API (`retrieval/figures.py`),
which stays importable.

`skip_keras_optional_imports()` installs an import hook that answers ImportError to exactly those
imports made by exactly those Keras modules, which Keras handles as "not installed". Any other import
of IPython or matplotlib, before or after, is untouched, and in a notebook, where IPython is already
imported, the hook is never asked. The commands (`experiments/__init__.py`, `data_prep/__init__.py`),
the test session and the benchmarks that import either (or call it themselves) install it before
TensorFlow loads; the library itself never does, so importing `fashionsearchnet_v2` changes no other
program's imports.

This module imports nothing heavy: it must run before TensorFlow.
"""

from __future__ import annotations

import importlib.abc
import sys

#: Top-level package probed -> the Keras modules whose probes at import are answered "not installed".
SKIPPED = {
    "IPython": ("keras.src.saving.file_editor",),
    "matplotlib": (
        "keras.src.visualization.plot_image_gallery",
        "keras.src.visualization.plot_bounding_box_gallery",
    ),
}


def _importer() -> str:
    """`__name__` of the module whose code runs the import being resolved (import machinery skipped)."""
    frame = sys._getframe(2)
    while frame is not None and frame.f_globals.get("__name__", "").startswith(
        ("importlib", "_frozen_importlib")
    ):
        frame = frame.f_back
    return "" if frame is None else frame.f_globals.get("__name__", "")


class _SkipKerasOptionalImports(importlib.abc.MetaPathFinder):
    """Answers ImportError to the imports of `SKIPPED`, and only when Keras's probing module makes them."""

    def find_spec(self, fullname, path=None, target=None):
        probing = SKIPPED.get(fullname.partition(".")[0], ())
        importer = _importer() if probing else ""
        if importer in probing:
            raise ImportError(
                f"{fullname} is not imported for {importer} (fashionsearchnet_v2.startup: unused optional "
                "Keras feature, skipped to start faster)",
                name=fullname,
            )
        return None


def skip_keras_optional_imports() -> None:
    """Installs the hook once per process (idempotent). Call it before TensorFlow is imported; once Keras
    has loaded, the hook is never consulted for these names again."""
    if not any(isinstance(finder, _SkipKerasOptionalImports) for finder in sys.meta_path):
        sys.meta_path.insert(0, _SkipKerasOptionalImports())
