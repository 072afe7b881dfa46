"""One progress meter for long loops: done/total, rate and ETA on stderr, at most every few seconds.

On a terminal the meter rewrites its one line (`\\r`); into a file or pipe (`> run.log 2>&1`, CI, nohup) each
report is a line of its own, so a log reads line by line instead of as one long run of overwritten reports.

Used by the converters, the feature extraction, indexing (and the folder walk before it), fingerprinting and the evaluation's rankings,
so every long phase a user waits through reports the same way.
"""

from __future__ import annotations

import contextlib
import sys
import time


class Progress:
    """Prints `done/total`, rate and ETA to stderr at most every `every` seconds; with `total=None` (a
    walk whose size is not known until it ends, such as listing a folder) `done` and the rate alone."""

    def __init__(self, total: int | None, what: str, unit: str = "images", every: float = 2.0, enabled=True):
        self.total, self.what, self.unit, self.every, self.enabled = total, what, unit, every, enabled
        self.start = self.last = time.time()
        self.printed = False

    def update(self, done: int, extra: str = "", force: bool = False) -> None:
        now = time.time()
        if not self.enabled or (now - self.last < self.every and not force):
            return
        self.last, self.printed = now, True
        rate = done / max(now - self.start, 1e-9)
        if self.total is None:
            count = f"{done} {self.unit} ({rate:.0f}/s)"
        else:
            eta = (self.total - done) / rate if rate > 0 else float("inf")
            count = f"{done}/{self.total} {self.unit} ({rate:.0f}/s, ETA {eta:.0f}s)"
        line = f"{self.what}: {count} {extra}"
        if _is_terminal(sys.stderr):
            print(f"\r{line}", end="" if not force else "\n", file=sys.stderr, flush=True)
        else:
            print(line, file=sys.stderr, flush=True)

    def finish(self, done: int, extra: str = "") -> None:
        """The closing line, only where a periodic line was printed (a phase that took seconds): a
        quick phase stays silent instead of adding a line to every small run."""
        if self.printed:
            self.update(done, extra, force=True)


def _is_terminal(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


@contextlib.contextmanager
def phase(what: str, enabled: bool = True):
    """`what ...` on stderr as a phase without a count begins (loading a large index, training FAISS),
    and its seconds when it ends, or `failed`: no silent minutes between the lines a command prints."""
    if enabled:
        print(f"{what} ...", end="", file=sys.stderr, flush=True)
    start = time.time()
    try:
        yield
    except BaseException:
        if enabled:
            print(" failed", file=sys.stderr, flush=True)
        raise
    if enabled:
        print(f" {time.time() - start:.1f} s", file=sys.stderr, flush=True)
