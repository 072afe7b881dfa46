"""A command's start-up: what Keras probes for at import and this project never uses is not imported, and
TensorFlow's start-up lines that its log level no longer hides are not printed.

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

`quiet_tensorflow_start()` installs a second hook, for the first `import tensorflow`: TensorFlow 2.21
writes seven lines to stderr as it loads and first lists its devices ("All log messages before
absl::InitializeLog() ...", "oneDNN custom operations are on", "Could not find cuda drivers" twice each,
and "failed call to cuInit: ... UNKNOWN ERROR (303)" on a machine without a GPU) whatever
TF_CPP_MIN_LOG_LEVEL says: absl's logging ignores its threshold before it is initialised
(abseil/abseil-cpp#1718). The hook runs that import (and the first device listing) with stderr's file
descriptor in a temporary file, then writes back every line but those (`START_NOISE`), the lines of a
failed import included. `TF_CPP_MIN_LOG_LEVEL=0` shows them all; the cuInit line is kept on a machine
with an NVIDIA device (`/dev/nvidiactl`), where it means a driver problem. The import stays where it was
(the commands import TensorFlow after their flags are checked, so a bad flag is answered at once).

This module imports nothing heavy: it must run before TensorFlow.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import os
import re
import sys
import tempfile

#: TensorFlow's start-up lines that TF_CPP_MIN_LOG_LEVEL no longer hides (TensorFlow 2.21), one pattern a
#: line; the cuInit one only where the machine has no NVIDIA device.
START_NOISE = (
    re.compile(r"WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR$"),
    re.compile(r"I\d{4} [\d:.]+ +\d+ port\.cc:\d+\] oneDNN custom operations are on\."),
    re.compile(r"I\d{4} [\d:.]+ +\d+ cudart_stub\.cc:\d+\] Could not find cuda drivers on your machine"),
)
NO_GPU_NOISE = re.compile(r"E\d{4} [\d:.]+ +\d+ cuda_platform\.cc:\d+\] failed call to cuInit: ")

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


def is_start_noise(line: str, has_nvidia_device: bool = False) -> bool:
    """Whether `line` (without its newline) is one of TensorFlow's start-up lines filtered out."""
    if any(p.match(line) for p in START_NOISE):
        return True
    return not has_nvidia_device and NO_GPU_NOISE.match(line) is not None


def run_with_start_noise_filtered(fn, has_nvidia_device: bool | None = None):
    """Calls `fn()` with file descriptor 2 in a temporary file, then writes what it wrote back to stderr,
    less `is_start_noise`'s lines, also when `fn` raises (a failed import keeps its messages)."""
    if has_nvidia_device is None:
        has_nvidia_device = os.path.exists("/dev/nvidiactl")
    if sys.stderr is None:  # no stderr at all (pythonw): nothing to keep clean
        return fn()
    try:
        _flush_stderr()
        saved = os.dup(2)
    except OSError:  # no file descriptor 2 to redirect: run as it is
        return fn()
    with tempfile.TemporaryFile() as captured:
        os.dup2(captured.fileno(), 2)
        try:
            return fn()
        finally:
            _flush_stderr()
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            text = captured.read().decode("utf-8", errors="replace")
            kept = [line for line in text.splitlines(keepends=True)
                    if not is_start_noise(line.rstrip("\r\n"), has_nvidia_device)]  # fmt: skip
            if kept:
                sys.stderr.write("".join(kept))
                _flush_stderr()


def _flush_stderr() -> None:
    try:
        sys.stderr.flush()
    except (AttributeError, OSError, ValueError):  # replaced by an object without flush, or closed
        pass


class _QuietLoader(importlib.abc.Loader):
    """Runs the real loader of `tensorflow` and the first device listing inside
    `run_with_start_noise_filtered`; the module's `__loader__` is the real one."""

    def __init__(self, inner):
        self.inner = inner

    def create_module(self, spec):
        return self.inner.create_module(spec)

    def exec_module(self, module):
        module.__loader__ = self.inner
        if module.__spec__ is not None:
            module.__spec__.loader = self.inner

        def load():
            self.inner.exec_module(module)
            try:
                module.config.list_physical_devices()  # where the cuInit line is written
            except Exception:  # noqa: BLE001  (cosmetic: never the reason an import fails)
                pass

        run_with_start_noise_filtered(load)


class _QuietTensorFlowStart(importlib.abc.MetaPathFinder):
    """Hands the first import of `tensorflow` to `_QuietLoader`; every other import, and any later one,
    is left to the other finders."""

    def __init__(self):
        self.done = False

    def find_spec(self, fullname, path=None, target=None):
        if fullname != "tensorflow" or self.done:
            return None
        self.done = True
        spec = importlib.util.find_spec(fullname)
        if spec is not None and spec.loader is not None and hasattr(spec.loader, "exec_module"):
            spec.loader = _QuietLoader(spec.loader)
        return spec


def quiet_tensorflow_start() -> None:
    """Installs the hook once per process (idempotent), unless TensorFlow is already imported or
    TF_CPP_MIN_LOG_LEVEL asks for its informational lines (unset or 0)."""
    if "tensorflow" in sys.modules or os.environ.get("TF_CPP_MIN_LOG_LEVEL", "0").strip() in ("", "0"):
        return
    if not any(isinstance(finder, _QuietTensorFlowStart) for finder in sys.meta_path):
        sys.meta_path.insert(0, _QuietTensorFlowStart())
