"""Python command lines for the tests, started without paying Python's and TensorFlow's start-up each time.

About 65 command lines run in the suite (conversions, stages, exports, indexes, services), and a fresh
interpreter spends seconds importing TensorFlow, Keras, OpenCV and scikit-image before it does anything:
`python -m experiments.stage1 --quick` took 16.8 s fresh and 8.5-8.9 s forked on the 2-core EPYC without
AVX-512 (docs/performance.md, "The test suite"). `run` and `start` instead ask a server process
(tests/command_server.py) that has imported those packages once to fork a child for the command line;
the child is set up as the fresh interpreter would be (see there) and imports the project itself afresh.

A fresh interpreter is still used where a fork could not stand for one:
- `fresh=True` (a test about the start of a process itself);
- PYTHONHASHSEED in the environment (forked children share the server's string hashing, so two of them
  could agree where two fresh processes would not);
- anything but `sys.executable` with `-m`, `-c` or a `.py` script, and for `start` anything but stdout
  to a file or a pipe with stderr merged into it;
- FSN_TESTS_FRESH_PYTHON=1 in the test session's environment: every command line in a fresh interpreter
  (but tests/test_commands.py's, which are about the forked path), to check that the suite does not
  depend on the servers (`FSN_TESTS_FRESH_PYTHON=1 python -m pytest -q tests`).

One server per pytest process and per value of the variables read when TensorFlow and Python start
(`IMPORT_TIME`), started on first use and stopped when its pytest process ends.
"""

from __future__ import annotations

import atexit
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import weakref

SERVER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "command_server.py")
FRESH_VARIABLE = "FSN_TESTS_FRESH_PYTHON"
# Environment variables read once when Python, TensorFlow or its math libraries start: a server answers
# only for the values it started with. TF_CONFIG (read when a strategy is built) and PYTHONPATH (sys.path
# is set per child) are read later.
IMPORT_TIME = ("TF_", "CUDA", "KERAS", "PYTHON", "OMP_", "OPENBLAS", "MKL", "XLA", "LD_", "MALLOC")
RUN_TIME = ("TF_CONFIG", "PYTHONPATH")


def _key(env: dict) -> tuple:
    return tuple(
        sorted(
            (name, value)
            for name, value in env.items()
            if name.startswith(IMPORT_TIME) and name not in RUN_TIME
        )
    )


class _Server:
    def __init__(self, env: dict):
        self.log = tempfile.TemporaryFile("w+")  # the server's stderr, read if it fails; gone when closed
        self.proc = subprocess.Popen([sys.executable, SERVER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=self.log, env=env, text=True, bufsize=1)  # fmt: skip
        self.lock = threading.Lock()
        ready = self.proc.stdout.readline()
        if not ready:
            self.log.seek(0)
            raise RuntimeError(f"{SERVER} did not start:\n{self.log.read()[-3000:]}")

    def call(self, **request) -> dict:
        with self.lock:
            self.proc.stdin.write(json.dumps(request) + "\n")
            reply = self.proc.stdout.readline()
        if not reply:
            self.log.seek(0)
            raise RuntimeError(f"{SERVER} stopped:\n{self.log.read()[-3000:]}")
        return json.loads(reply)

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=30)
        self.log.close()


_servers: dict[tuple, _Server] = {}


@atexit.register
def _close_servers() -> None:
    for server in _servers.values():
        try:
            server.close()
        except Exception:  # noqa: BLE001 - the session is ending either way
            server.proc.kill()


def _server(env: dict) -> _Server:
    key = _key(env)
    if key not in _servers:
        _servers[key] = _Server(env)
    return _servers[key]


class Forked:
    """The parts of `subprocess.Popen` the tests use, for a command line forked by a server."""

    def __init__(self, server: _Server, args: list[str], pid: int, output: str | None):
        self.server, self.args, self.pid, self.returncode = server, args, pid, None
        self._output = output  # the file standing for stdout=PIPE, read by communicate()
        if output is not None:  # removed with this object or at exit if communicate() never reads it
            self._remove_output = weakref.finalize(self, _remove, output)

    def poll(self) -> int | None:
        if self.returncode is None:
            self.returncode = self.server.call(op="wait", pid=self.pid, timeout=0)["returncode"]
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.returncode is None:
            left = 0.5 if deadline is None else min(0.5, deadline - time.monotonic())
            if left <= 0:
                raise subprocess.TimeoutExpired(self.args, timeout)
            self.returncode = self.server.call(op="wait", pid=self.pid, timeout=left)["returncode"]
        return self.returncode

    def communicate(self, timeout: float | None = None) -> tuple[str | None, None]:
        self.wait(timeout)
        if self._output is None:
            return None, None
        with open(self._output, encoding="utf-8", errors="replace") as f:
            text = f.read()
        self._remove_output()
        self._output = None
        return text, None

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:
            os.kill(self.pid, sig)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _forkable(argv: list[str], env: dict, fresh: bool) -> tuple[str, str, list[str]] | None:
    """(kind, target, args) when `argv` may run in a forked child, else None."""
    if fresh or os.environ.get(FRESH_VARIABLE) == "1" or "PYTHONHASHSEED" in env:
        return None
    if len(argv) < 2 or argv[0] != sys.executable:
        return None
    if argv[1] in ("-m", "-c") and len(argv) >= 3:
        return argv[1], argv[2], list(argv[3:])
    if argv[1].endswith(".py") and not argv[1].startswith("-"):
        return "script", argv[1], list(argv[2:])
    return None


def _prepare(argv, cwd, env, fresh: bool):
    """argv and cwd as strings, the environment as a dict (the session's by default), and `_forkable`'s
    answer."""
    argv = [os.fspath(a) for a in argv]
    cwd = os.fspath(cwd) if cwd is not None else os.getcwd()
    env = dict(os.environ if env is None else env)
    return argv, cwd, env, _forkable(argv, env, fresh)


def _spawn(parsed, argv, cwd, env, stdout: str, stderr: str | None, append: bool, output=None) -> Forked:
    server = _server(env)
    kind, target, args = parsed
    if kind == "script":
        target = os.path.join(cwd, target)
    reply = server.call(op="spawn", kind=kind, target=target, args=args, cwd=cwd, env=env,
                        stdout=stdout, stderr=stderr, append=append)  # fmt: skip
    return Forked(server, argv, reply["pid"], output)


def run(argv, *, cwd=None, env=None, timeout: float, fresh: bool = False) -> subprocess.CompletedProcess:
    """`subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)`."""
    argv, cwd, env, parsed = _prepare(argv, cwd, env, fresh)
    if parsed is None:
        return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    with tempfile.TemporaryDirectory(prefix="command-") as tmp:
        out, err = os.path.join(tmp, "stdout"), os.path.join(tmp, "stderr")
        proc = _spawn(parsed, argv, cwd, env, out, err, append=False)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise
        texts = []
        for path in (out, err):
            with open(path, encoding="utf-8", errors="replace") as f:
                texts.append(f.read())
    return subprocess.CompletedProcess(argv, proc.returncode, texts[0], texts[1])


def start(argv, *, cwd=None, env=None, stdout, stderr, fresh: bool = False):
    """`subprocess.Popen(argv, cwd=cwd, env=env, stdout=stdout, stderr=stderr, text=True)`: a `Forked` for
    stdout to a file opened for writing or `subprocess.PIPE` and stderr to `subprocess.STDOUT` (as the
    tests start their services and workers), else a `subprocess.Popen`."""
    argv, cwd, env, parsed = _prepare(argv, cwd, env, fresh)
    if stderr != subprocess.STDOUT or not (stdout == subprocess.PIPE or hasattr(stdout, "name")):
        parsed = None
    if parsed is None:
        return subprocess.Popen(argv, cwd=cwd, env=env, stdout=stdout, stderr=stderr, text=True)
    if stdout == subprocess.PIPE:
        fd, path = tempfile.mkstemp(prefix="command-", suffix=".out")
        os.close(fd)
        return _spawn(parsed, argv, cwd, env, path, None, append=False, output=path)
    stdout.flush()
    return _spawn(parsed, argv, cwd, env, stdout.name, None, append=True)
