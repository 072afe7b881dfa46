"""Which failures are the user's to fix, and their one-line message.

Entry points (`experiments/`, `data_prep/`) print a failure the user can meet (bad or damaged data, wrong
stage order, a diverged run, a directory in use, a full disk, a request a serving signature refuses) as
one `error: ...` line with exit status 2; anything else is a bug and keeps its traceback. This module
decides which is which; it imports the library's error classes only when asked.
"""

from __future__ import annotations

import re
import sys

# TensorFlow errors that are about the machine or the files, not a bug, and the serving signatures'
# refusals (a malformed image, a non-finite output): reported in one line.
_IO_MESSAGE = re.compile(
    r"No space left|Disk quota|Read-only file system|Permission denied|Too many open files"
)
_SIGNATURE_MESSAGE = re.compile(r"is not finite|holds NaN or inf|not compatible with expected shape")


def _plain_tf_message(message: str) -> str:
    """A TensorFlow error message without graph-execution boilerplate, stack and node names, one line."""
    lines = [ln.strip() for ln in (message or "").splitlines()]
    skip = ("Graph execution error", "Detected at", "<stack", "[[")
    text = " ".join(ln for ln in lines if ln and not ln.startswith(skip))
    text = re.sub(r"\{\{function_node [^}]*\}\}\s*|\s*\[Op:[^\]]*\]", "", text)
    return text.strip()[:500]


def user_message(e: BaseException) -> str | None:
    """The one-line message for a failure the user can meet, or None for a bug (keeps its traceback)."""
    from fashionsearchnet_v2.configs import ConfigError
    from fashionsearchnet_v2.data.schema import DatasetError
    from fashionsearchnet_v2.locks import LockError
    from fashionsearchnet_v2.trained.checkpoints import RestoreError
    from fashionsearchnet_v2.training.guard import DivergenceError

    known = (ConfigError, DatasetError, RestoreError, DivergenceError, LockError)
    if "fashionsearchnet_v2.model.backbone" in sys.modules:  # --alexnet_weights refused (missing, malformed)
        from fashionsearchnet_v2.model import backbone

        known += (backbone.WeightsError,)
    if "fashionsearchnet_v2.serving.export" in sys.modules:
        from fashionsearchnet_v2.serving import export

        known += (export.ExportError, export.VocabularyError)
    if "fashionsearchnet_v2.serving.index" in sys.modules:
        from fashionsearchnet_v2.serving import index

        known += (index.IndexFileError, index.ImageReadError, index.FaissUnavailable)
    if "fashionsearchnet_v2.serving.embeddings" in sys.modules:
        from fashionsearchnet_v2.serving import embeddings

        known += (embeddings.EmbeddingsError,)
    if "fashionsearchnet_v2.serving.beam_embed" in sys.modules:  # only there when Beam is installed
        from fashionsearchnet_v2.serving import beam_embed

        known += (beam_embed.PipelineError,)
    if isinstance(e, known):
        return str(e)
    if isinstance(e, OSError):
        path = e.filename if e.filename is not None else ""
        what = e.strerror or str(e)
        return f"{path}: {what}" if path else what
    import tensorflow as tf

    if isinstance(e, tf.errors.OpError):
        io = (tf.errors.ResourceExhaustedError, tf.errors.PermissionDeniedError, tf.errors.DataLossError)
        message = _plain_tf_message(e.message)
        if isinstance(e, io) or _IO_MESSAGE.search(message):
            return message
        if isinstance(e, tf.errors.InvalidArgumentError) and _SIGNATURE_MESSAGE.search(message):
            return message
    return None


_BOOL_WORDS = ("true", "false", "yes", "no", "on", "off", "1", "0", "t", "f")


def stray_arguments(stray, command_line) -> str:
    """The message for words an entry point got beside its flags (`stray`: what absl left after parsing
    `command_line`, sys.argv). A value after a bool flag (`--update_memory false`) is the likely slip: absl
    reads the flag as given, true, and leaves the value over, so that case names the flag to write."""
    words = " ".join(repr(w) for w in stray)
    line = list(command_line)
    for word in stray:
        at = line.index(word) if word in line else -1
        before = line[at - 1] if at > 0 else ""
        if word.lower() in _BOOL_WORDS and re.fullmatch(r"--\w+", before):
            name = before[2:]
            return (f"unexpected argument {word!r} after {before}: a bool flag takes no separate value; "
                    f"write {before}={word} (or --{name} / --no{name})")  # fmt: skip
    return (f"unexpected argument(s) {words}: every option is a flag, --name=value "
            f"(a bool flag: --name or --noname); --helpfull lists them")  # fmt: skip
