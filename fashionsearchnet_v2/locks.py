"""One process per directory: lock files that name their holder, and removal of temporaries left behind by
killed processes.

A stage directory is locked while a run trains in it (`DirectoryLock`): a second run on the same
directory stops with a message that names the holder (PID, host, command, start time) instead of
interleaving its checkpoints with the first one's. A lock whose holder is gone (same host, PID no longer
running) is taken over; a lock held from another host is never taken over, since its PID cannot be checked
from here.

Conversion and export write into temporary siblings of their target and rename at the end; a `kill -9`
leaves the temporary behind. `mark_owner` writes the same holder record into such a directory and
`remove_orphans` deletes the ones whose owner is dead, the next time something is written beside them.

This module sits below `data/`, `trained/` and `serving/` (all three use it), so it imports none of them.
"""

from __future__ import annotations

import contextlib
import datetime
import glob
import json
import os
import re
import shutil
import socket
import sys
import time
import uuid

LOCK_FILE = ".lock"
OWNER_FILE = ".owner.json"


class LockError(RuntimeError):
    """A directory is in use by another run; the message names the holder and what to do."""


def _host() -> str:
    return socket.gethostname()


def holder_record() -> dict:
    """Who this process is: PID, host, command line and start time (what a lock or owner file holds)."""
    return {
        "pid": os.getpid(),
        "host": _host(),
        "command": " ".join(sys.argv)[:500],
        "started": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
    }


def pid_alive(pid: int) -> bool:
    """Whether a process with this PID runs on this host (a zombie counts as gone)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    try:  # a killed child not yet reaped by its parent is a zombie: it holds nothing any more
        with open(f"/proc/{pid}/stat", encoding="utf-8") as f:
            return f.read().rsplit(")", 1)[-1].split()[0] != "Z"
    except OSError:
        return True


def holder_alive(record: dict) -> bool | None:
    """True/False for a holder on this host; None when it is on another host (cannot be checked)."""
    if record.get("host") != _host():
        return None
    try:
        return pid_alive(int(record.get("pid", -1)))
    except (TypeError, ValueError):
        return False


def _read_record(path: str) -> dict | None:
    try:
        with open(path, encoding="utf-8") as f:
            obj = json.load(f)
        return obj if isinstance(obj, dict) else {}
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}  # unreadable or half-written: treated as a holder we know nothing about


def describe(record: dict) -> str:
    return (
        f"PID {record.get('pid', '?')} on host {record.get('host', '?')} since {record.get('started', '?')} "
        f"({record.get('command', '?')})"
    )


class DirectoryLock:
    """`<directory>/.lock` held for the lifetime of the context; raises LockError if another live process
    holds it. Usage: `with DirectoryLock(stage_dir, "stage 1"): ...`."""

    def __init__(self, directory: str, what: str = "a run"):
        self.directory, self.what = directory, what
        self.path = os.path.join(directory, LOCK_FILE)
        self.record: dict | None = None
        self.took_over: dict | None = None  # the stale holder replaced, if any

    def acquire(self) -> DirectoryLock:
        os.makedirs(self.directory, exist_ok=True)
        record = holder_record()
        for _ in range(10):
            try:
                self._create(record)
            except FileExistsError:
                holder = _read_record(self.path)
                if holder is None:  # released meanwhile
                    continue
                if not holder:  # being written right now (or garbage): give the writer a moment
                    time.sleep(0.2)
                    holder = _read_record(self.path)
                    if holder is None:
                        continue
                alive = holder_alive(holder) if holder else None
                if holder.get("pid") == os.getpid() and holder.get("host") == _host():
                    alive = False  # this process's own leftover (an earlier run here that raised)
                if alive is False or (holder == {} and self._old(3600)):
                    self._take_over(holder)
                    continue
                where = "" if alive else " (on another host: cannot check whether it still runs)"
                raise LockError(
                    f"{self.directory} is in use by {self.what}: {describe(holder)}{where}. Wait for it to "
                    f"finish or stop it; if that process is gone, delete {self.path}."
                ) from None
            self.record = record
            return self
        raise LockError(f"could not take {self.path}: other processes keep taking it")

    def _create(self, record: dict) -> None:
        """Creates the lock file with its content in one step (a reader never sees it empty): the record
        is written to a private file, then hard-linked to the lock's name, which fails if it exists."""
        tmp = f"{self.path}.{uuid.uuid4().hex[:8]}.tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(record, f)
        try:
            os.link(tmp, self.path)
        except FileExistsError:
            raise
        except OSError:  # a filesystem without hard links: exclusive create, then write
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(record, f)
        finally:
            os.remove(tmp)

    def _old(self, seconds: float) -> bool:
        try:
            return time.time() - os.path.getmtime(self.path) > seconds
        except OSError:
            return False

    def _take_over(self, holder: dict) -> None:
        # Rename first: of several processes taking over the same stale lock, only one rename succeeds.
        aside = f"{self.path}.stale-{uuid.uuid4().hex[:8]}"
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return
        os.remove(aside)
        self.took_over = holder

    def release(self) -> None:
        if self.record is None:
            return
        holder = _read_record(self.path)
        if holder and holder.get("pid") == self.record["pid"] and holder.get("host") == self.record["host"]:
            try:
                os.remove(self.path)
            except FileNotFoundError:
                pass
        self.record = None

    def __enter__(self) -> DirectoryLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def mark_owner(directory: str) -> None:
    """Records this process as the owner of a temporary directory (see `remove_orphans`)."""
    with open(os.path.join(directory, OWNER_FILE), "w", encoding="utf-8") as f:
        json.dump(holder_record(), f)


_PID_IN_NAME = re.compile(r"-(\d+)(?:-[^/]*)?$")


def remove_orphans(parent: str, patterns, legacy_age_s: float = 24 * 3600) -> list[str]:
    """Deletes temporary directories in `parent` matching the glob `patterns` whose owner is dead.

    The owner is read from the directory's owner file (`mark_owner`); a directory without one (written
    before owner files existed) is judged by the PID in its name (`<name>.tmp-<pid>`), assumed to be of
    this host, and if its name holds no PID it is removed only when untouched for `legacy_age_s`.
    Directories of live owners and of other hosts are kept. Returns the removed paths.
    """
    removed = []
    if not os.path.isdir(parent):
        return removed
    for pattern in patterns:
        for path in sorted(glob.glob(os.path.join(glob.escape(parent), pattern))):
            if not os.path.isdir(path) or os.path.islink(path):
                continue
            owner = _read_record(os.path.join(path, OWNER_FILE))
            if owner:
                dead = holder_alive(owner) is False
            else:
                m = _PID_IN_NAME.search(os.path.basename(path))
                if m:
                    dead = int(m.group(1)) != os.getpid() and not pid_alive(int(m.group(1)))
                else:
                    try:
                        dead = time.time() - os.path.getmtime(path) > legacy_age_s
                    except OSError:
                        dead = False
            if dead:
                shutil.rmtree(path, ignore_errors=True)
                removed.append(path)
    return removed


def remove_orphan_files(directory: str, suffix: str) -> list[str]:
    """Deletes the files `<name>.tmp-<pid><suffix>` in `directory` whose writer (a process of this host)
    is dead: what a kill during an atomic write leaves (a features cache can be hundreds of MB). Returns
    the removed paths."""
    pattern = re.compile(r"\.tmp-(\d+)" + re.escape(suffix) + "$")
    removed = []
    for path in sorted(glob.glob(os.path.join(glob.escape(directory), f"*.tmp-*{suffix}"))):
        m = pattern.search(os.path.basename(path))
        if m and os.path.isfile(path) and int(m.group(1)) != os.getpid() and not pid_alive(int(m.group(1))):
            with contextlib.suppress(OSError):
                os.remove(path)
                removed.append(path)
    return removed
