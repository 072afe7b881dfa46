"""The other half of tests/commands.py: a Python interpreter that has imported the third-party packages the
project's commands use (TensorFlow, Keras, OpenCV, scikit-image, ...), and forks one child per command
line a test runs. Each child is set up as `python -m MODULE ARGS`, `python -c CODE ARGS` or
`python SCRIPT ARGS` would be (cwd, environment, sys.argv, sys.path, a fresh `__main__`, stdin from
/dev/null, stdout and stderr to the files asked for, atexit handlers and non-daemon threads at exit), and
imports the project itself afresh from its sys.path: the project's modules imported here to learn what
they need are forgotten before the first fork.

Protocol, one JSON object per line: requests on stdin, replies on stdout (the fds are moved away at
start, so nothing a child writes can reach them). Requests: {"op": "spawn", ...} -> {"pid"} and
{"op": "wait", "pid", "timeout"} -> {"returncode"} (null while it runs; a signal's death is negative,
as subprocess reports it). The server exits when its stdin closes.

It must never run a TensorFlow op: a forked child cannot use a runtime whose threads were started before
the fork. It checks that TensorFlow's eager context is still uninitialised before it says it is ready.
"""

from __future__ import annotations

import atexit
import builtins
import importlib
import json
import os
import runpy
import sys
import tempfile
import threading
import time
import traceback
import types

PROJECT = ("fashionsearchnet_v2", "experiments", "data_prep", "benchmarks")
# The library modules the commands import; importing them here pulls in what they need from outside.
PRELOAD = (
    "fashionsearchnet_v2.data.convert",
    "fashionsearchnet_v2.data.synthetic",
    "fashionsearchnet_v2.retrieval.figures",
    "fashionsearchnet_v2.retrieval.evaluation",
    "fashionsearchnet_v2.training.run",
    "fashionsearchnet_v2.training.ablation",
    "fashionsearchnet_v2.serving.export",
    "fashionsearchnet_v2.serving.indexing",
    "fashionsearchnet_v2.serving.service",
)


def preload() -> None:
    from fashionsearchnet_v2 import startup

    startup.skip_keras_optional_imports()  # as experiments/__init__.py does, before TensorFlow loads
    startup.quiet_tensorflow_start()
    for name in PRELOAD:
        try:
            importlib.import_module(name)
        except ImportError:  # an optional extra not installed: the command will say so itself
            pass
    for name in [n for n in sys.modules if n.partition(".")[0] in PROJECT]:
        del sys.modules[name]
    from keras.src.saving import object_registration

    for key, value in list(object_registration.GLOBAL_CUSTOM_OBJECTS.items()):
        if (getattr(value, "__module__", "") or "").partition(".")[0] in PROJECT:
            del object_registration.GLOBAL_CUSTOM_OBJECTS[key]
            object_registration.GLOBAL_CUSTOM_NAMES.pop(value, None)
    from tensorflow.python.eager import context

    if context.context()._context_handle is not None:  # noqa: SLF001
        raise RuntimeError("TensorFlow's runtime started while preloading: children could not use it")


def _exit_code(exc: SystemExit) -> int:
    """What CPython exits with for an uncaught SystemExit (printing a non-integer code, as it does)."""
    if exc.code is None:
        return 0
    if isinstance(exc.code, int):
        return exc.code & 0xFF
    print(exc.code, file=sys.stderr)
    return 1


def child(request: dict, base_path: list[str], keep_closed: tuple[int, ...]) -> None:
    """Becomes the command line in `request`; never returns."""
    code = 1
    try:
        for fd in keep_closed:
            os.close(fd)
        fd = os.open(os.devnull, os.O_RDONLY)
        os.dup2(fd, 0)
        os.close(fd)
        mode = os.O_WRONLY | os.O_CREAT | (os.O_APPEND if request["append"] else os.O_TRUNC)
        fd = os.open(request["stdout"], mode, 0o644)
        os.dup2(fd, 1)
        os.close(fd)
        if request["stderr"] is None:
            os.dup2(1, 2)
        else:
            fd = os.open(request["stderr"], mode, 0o644)
            os.dup2(fd, 2)
            os.close(fd)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        tempfile.tempdir = None  # chosen afresh from TMPDIR, as a fresh interpreter does (preloading set it)
        kind, target, args = request["kind"], request["target"], request["args"]
        if kind == "-m":
            path0 = os.getcwd()
        elif kind == "-c":
            path0 = ""
        else:
            path0 = os.path.dirname(os.path.realpath(target))
        pythonpath = [p for p in request["env"].get("PYTHONPATH", "").split(os.pathsep) if p]
        sys.path[:] = [path0, *pythonpath, *base_path]
        importlib.invalidate_caches()
        main = types.ModuleType("__main__")
        main.__builtins__ = builtins
        sys.modules["__main__"] = main
        try:
            if kind == "-m":
                sys.argv = ["-m", *args]
                runpy._run_module_as_main(target)  # what `python -m` calls  # noqa: SLF001
            elif kind == "-c":
                sys.argv = ["-c", *args]
                exec(compile(target, "<string>", "exec"), main.__dict__)
            else:
                sys.argv = [target, *args]
                main.__file__ = target
                with open(target, "rb") as f:
                    source = f.read()
                exec(compile(source, target, "exec"), main.__dict__)
            code = 0
        except SystemExit as exc:
            code = _exit_code(exc)
        except BaseException:
            sys.excepthook(*sys.exc_info())
            code = 1
        threading._shutdown()  # noqa: SLF001 - waits for non-daemon threads, as interpreter exit does
        atexit._run_exitfuncs()  # noqa: SLF001
    except BaseException:  # setting the child up failed (a missing cwd, a bad file): say why, exit 1
        traceback.print_exc()
        code = 1
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:  # noqa: BLE001 - a closed stream; the exit code stands
                pass
        os._exit(code)


def serve() -> None:
    requests = os.fdopen(os.dup(0), "r", encoding="utf-8")
    replies = os.fdopen(os.dup(1), "w", encoding="utf-8", buffering=1)
    fd = os.open(os.devnull, os.O_RDONLY)
    os.dup2(fd, 0)
    os.dup2(2, 1)  # anything printed here goes to the server's log, never into the protocol
    os.close(fd)
    base_path = [p for p in sys.path[1:] if p not in os.environ.get("PYTHONPATH", "").split(os.pathsep)]
    started = time.perf_counter()
    preload()
    replies.write(json.dumps({"ready": True, "seconds": round(time.perf_counter() - started, 2)}) + "\n")
    for line in requests:
        request = json.loads(line)
        if request["op"] == "spawn":
            sys.stdout.flush()
            sys.stderr.flush()
            pid = os.fork()
            if pid == 0:
                child(request, base_path, (requests.fileno(), replies.fileno()))
            replies.write(json.dumps({"pid": pid}) + "\n")
        elif request["op"] == "wait":
            deadline = time.monotonic() + request["timeout"]
            while True:
                done, status = os.waitpid(request["pid"], os.WNOHANG)
                if done or time.monotonic() >= deadline:
                    break
                time.sleep(0.005)
            returncode = os.waitstatus_to_exitcode(status) if done else None
            replies.write(json.dumps({"returncode": returncode}) + "\n")
        else:
            replies.write(json.dumps({"error": f"unknown op {request['op']!r}"}) + "\n")


if __name__ == "__main__":
    serve()
