"""Tests that need something outside the plain install (the `beam` extra, Chromium, FAISS).

Where it is missing a developer's `pytest` skips them and says how to install it; under CI (`.ci/run`
sets CI=true and installs both) a missing dependency fails, so CI never skips them.
"""

import importlib.util
import os

import pytest

BEAM_MISSING = importlib.util.find_spec("apache_beam") is None
BEAM_INSTALL = 'pip install -e ".[beam]" (as .ci/run does)'
# faiss-cpu is in the test extra; a developer who installed only the plain package gets the command.
FAISS_AVAILABLE = importlib.util.find_spec("faiss") is not None
FAISS_INSTALL = 'pip install -e ".[test]" (or ".[faiss]")'


def require(available: bool, message: str, module_level: bool = False) -> None:
    """Skips (fails under CI) with `message` unless `available`."""
    if available:
        return
    if os.environ.get("CI"):
        pytest.fail(message, pytrace=False)
    pytest.skip(message, allow_module_level=module_level)
