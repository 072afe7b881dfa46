"""A service's index, swapped without a restart when its file is rewritten.

A catalogue changes; `experiments.index ... --reuse=OLD.npz --overwrite` rewrites its index file (atomically:
a complete file is renamed over the old one). `LiveIndex` holds the `Searcher` that requests use and,
when the file's identity changes (inode, size, modification time), loads it and builds a new `Searcher`
with the same model and settings (`rebuild`), then swaps it in: one assignment, so a request uses one
`Searcher` from its start to its answer (it reads `current` once), and requests running during a reload
finish on the old one. A file that does not load or does not fit the model (another export, a broken
copy) is logged and reported by `/healthz`; the service keeps answering from the index it had. The same
file is not retried until it changes again (a copy still being written is picked up once complete).

    live = LiveIndex(searcher, "indexes/shop.npz", rebuild=lambda index: Searcher(model, index, ...))
    live.start(every_s=10)     # a daemon thread polls the file; live.check() polls once
"""

from __future__ import annotations

import datetime
import logging
import os
import threading
from collections.abc import Callable

from fashionsearchnet_v2.serving import index as index_lib

log = logging.getLogger(__name__)


def file_stamp(path: str) -> tuple | None:
    """What tells a rewritten file from the one loaded: (device, inode, size, mtime in ns); None if absent."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


class LiveIndex:
    """The `Searcher` over the newest good copy of the index file at `path`.

    Args:
        searcher: the `Searcher` over the file as it is now (loaded by the caller, who reports its errors).
        path: the index file it was loaded from.
        rebuild: `SearchIndex -> Searcher` with the same model and settings; may raise (the file is then
            refused and the current `Searcher` kept).
    """

    def __init__(self, searcher, path: str, rebuild: Callable):
        self.current = searcher
        self.path = str(path)  # as given, like --export_dir in /healthz
        self._rebuild = rebuild
        self._stamp = file_stamp(self.path)
        self._lock = threading.Lock()  # one reload at a time (the thread and a manual check)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.loaded_at = _now()
        self.reloads = 0
        self.reload_error: str | None = None
        self.every_s: float | None = None

    def check(self) -> bool:
        """Loads the file if it changed since the last look; True when a new `Searcher` was swapped in."""
        with self._lock:
            stamp = file_stamp(self.path)
            if stamp == self._stamp:
                return False
            self._stamp = stamp  # a refused file is not retried until it changes again
            if stamp is None:
                self.reload_error = f"{self.path} is gone; still serving the index loaded at {self.loaded_at}"
                log.error(self.reload_error)
                return False
            try:
                searcher = self._rebuild(index_lib.SearchIndex.load(self.path))
            except Exception as e:  # noqa: BLE001  (any failure keeps the index being served)
                self.reload_error = (
                    f"{self.path} changed but was not loaded ({type(e).__name__}: {e}); still serving the "
                    f"index loaded at {self.loaded_at}"
                )
                log.error(self.reload_error)
                return False
            before = len(self.current.index)
            self.current = searcher
            self.loaded_at, self.reload_error = _now(), None
            self.reloads += 1
            log.warning("reloaded %s: %d items (was %d)", self.path, len(searcher.index), before)
            return True

    def start(self, every_s: float) -> None:
        """Polls the file every `every_s` seconds in a daemon thread until `stop()`."""
        if every_s <= 0:
            raise ValueError(f"every_s must be > 0, got {every_s}")
        self.every_s = float(every_s)
        self._stop.clear()
        self._thread = threading.Thread(target=self._watch, name="index-watch", daemon=True)
        self._thread.start()

    def _watch(self) -> None:
        while not self._stop.wait(self.every_s):
            try:
                self.check()
            except Exception:  # noqa: BLE001  (the watch must outlive any one bad look)
                log.exception("checking %s failed", self.path)

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def health(self) -> dict:
        """The current `Searcher`'s health, with the index file's: path, when loaded, reloads, last refusal."""
        return {
            **self.current.health(),
            "index": {
                "path": self.path,
                "loaded_at": self.loaded_at,
                "reloads": self.reloads,
                "watch_every_s": self.every_s,
                "reload_error": self.reload_error,
            },
        }
