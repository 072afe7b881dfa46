"""tests/commands.py: a command line forked from the preloaded server behaves as in a fresh interpreter
(arguments, sys.path, cwd, environment down to C's getenv and the temporary directory, `__main__`, output streams, exit status,
uncaught exceptions, atexit handlers, non-daemon threads, a timeout), for `-m`, `-c` and a script, and
it really was forked (TensorFlow already imported, another parent) unless a fresh interpreter is asked
for."""

import gc
import json
import os
import subprocess
import sys
import time

import commands
import pytest

PROBE = r"""
import atexit, ctypes, json, os, sys, tempfile, threading, time
import probe_value
libc = ctypes.CDLL(None)
libc.getenv.restype = ctypes.c_char_p
print(json.dumps({
    "argv": sys.argv, "path0": sys.path[0], "cwd": os.getcwd(), "name": __name__,
    "file": globals().get("__file__"), "main": sys.modules["__main__"].__dict__ is globals(),
    "env": os.environ.get("PROBE_VALUE"), "getenv": (libc.getenv(b"PROBE_VALUE") or b"").decode(),
    "value": probe_value.VALUE, "stdin": sys.stdin.read(), "tempdir": tempfile.gettempdir(),
    "tensorflow_loaded": "tensorflow" in sys.modules, "parent": os.getppid(),
}), flush=True)
sys.stderr.write("to stderr\n")
threading.Thread(target=lambda: (time.sleep(0.3), print("thread done", flush=True))).start()
atexit.register(lambda: print("atexit ran", flush=True))
how = os.environ["PROBE_EXIT"]
if how == "raise":
    raise ValueError("probe failed")
if how == "message":
    sys.exit("probe message")
sys.exit(int(how))
"""


@pytest.fixture(autouse=True)
def forking(monkeypatch):
    """These tests are about the forked path, so they take it even where the session asked for fresh
    interpreters everywhere (FSN_TESTS_FRESH_PYTHON=1)."""
    monkeypatch.delenv(commands.FRESH_VARIABLE, raising=False)


@pytest.fixture
def probe(tmp_path):
    """The probe as a module, a script and `-c` code, and two directories each holding `probe_value`."""
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "probe_value.py").write_text(f"VALUE = {name!r}\n")
    (tmp_path / "a" / "probe_main.py").write_text(PROBE)
    (tmp_path / "work").mkdir()
    (tmp_path / "tmp").mkdir()
    return tmp_path


def _both(argv, probe, how, pythonpath="a"):
    env = dict(os.environ, PROBE_VALUE="seen", PROBE_EXIT=how, PYTHONPATH=str(probe / pythonpath),
               TMPDIR=str(probe / "tmp"))  # fmt: skip
    env.pop("PYTHONHASHSEED", None)
    fresh = commands.run(argv, cwd=probe / "work", env=env, timeout=120, fresh=True)
    forked = commands.run(argv, cwd=probe / "work", env=env, timeout=120)
    return fresh, forked


def _facts(done):
    lines = done.stdout.splitlines()
    facts = json.loads(lines[0])
    return facts, lines[1:]


@pytest.mark.parametrize("form", ["-m", "-c", "script"])
def test_a_forked_command_sees_what_a_fresh_interpreter_sees(probe, form):
    argv = {
        "-m": [sys.executable, "-m", "probe_main", "x", "--flag=1"],
        "-c": [sys.executable, "-c", PROBE, "x", "--flag=1"],
        "script": [sys.executable, str(probe / "a" / "probe_main.py"), "x", "--flag=1"],
    }[form]
    fresh, forked = _both(argv, probe, "3")
    assert fresh.returncode == forked.returncode == 3, (fresh.stderr, forked.stderr)
    (a, a_rest), (b, b_rest) = _facts(fresh), _facts(forked)
    assert a_rest == b_rest == ["thread done", "atexit ran"]  # threads joined, then atexit, as at exit
    assert fresh.stderr.splitlines()[-1] == forked.stderr.splitlines()[-1] == "to stderr"
    assert a["parent"] == os.getpid() and not a["tensorflow_loaded"]  # a real fresh interpreter
    assert b["parent"] != os.getpid() and b["tensorflow_loaded"]  # really forked from the preloaded server
    for key in ("argv", "path0", "cwd", "name", "file", "main", "env", "getenv", "value", "stdin", "tempdir"):
        assert a[key] == b[key], key
    assert b["argv"][1:] == ["x", "--flag=1"] and b["env"] == b["getenv"] == "seen" and b["stdin"] == ""
    assert b["tempdir"] == str(probe / "tmp")  # TMPDIR, not the server's cached choice
    assert b["value"] == "a" and b["name"] == "__main__" and b["main"]


def test_exit_statuses_exceptions_and_a_changed_search_path(probe):
    argv = [sys.executable, "-m", "probe_main"]
    fresh, forked = _both(argv, probe, "raise")
    assert fresh.returncode == forked.returncode == 1
    assert fresh.stderr.splitlines()[-1] == forked.stderr.splitlines()[-1] == "ValueError: probe failed"
    assert "Traceback (most recent call last)" in forked.stderr
    fresh, forked = _both(argv, probe, "message")
    assert fresh.returncode == forked.returncode == 1
    assert fresh.stderr.splitlines()[-1] == forked.stderr.splitlines()[-1] == "probe message"
    (probe / "b" / "probe_main.py").write_text(PROBE)  # the same server, another PYTHONPATH: b's modules
    fresh, forked = _both(argv, probe, "0", pythonpath="b")
    assert fresh.returncode == forked.returncode == 0
    assert _facts(fresh)[0]["value"] == _facts(forked)[0]["value"] == "b"


def test_timeout_started_processes_and_the_fresh_switch(probe, monkeypatch):
    start = time.monotonic()
    with pytest.raises(subprocess.TimeoutExpired):
        commands.run([sys.executable, "-c", "import time; time.sleep(60)"], cwd=probe, timeout=1)
    assert time.monotonic() - start < 30
    with open(probe / "log.txt", "w") as log:
        proc = commands.start([sys.executable, "-c", "import time; print('up', flush=True); time.sleep(60)"],
                              cwd=probe, stdout=log, stderr=subprocess.STDOUT)  # fmt: skip
    assert isinstance(proc, commands.Forked)
    deadline = time.monotonic() + 60
    while "up" not in (probe / "log.txt").read_text():
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    proc.terminate()
    assert proc.wait(timeout=30) == -15  # SIGTERM, as subprocess reports it
    piped = commands.start([sys.executable, "-c", "print('piped')"], cwd=probe, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT)  # fmt: skip
    assert piped.communicate(timeout=60)[0] == "piped\n" and piped.returncode == 0
    # A piped child killed and dropped without communicate() leaves no output file behind.
    dropped = commands.start([sys.executable, "-c", "import time; time.sleep(60)"], cwd=probe,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT)  # fmt: skip
    output = dropped._output
    assert os.path.exists(output)
    dropped.kill()
    assert dropped.wait(timeout=30) == -9
    del dropped
    gc.collect()
    assert not os.path.exists(output)
    monkeypatch.setenv(commands.FRESH_VARIABLE, "1")
    code = "import os, sys; print(os.getppid(), 'tensorflow' in sys.modules)"
    done = commands.run([sys.executable, "-c", code], cwd=probe, timeout=60)
    assert done.stdout.split() == [str(os.getpid()), "False"]
