"""Loaded by pytest before any test, in tests/ and plugins/*/tests: the example plugins join the test run only.

`make test` installs the example plugins (plugins/*) into `<the venv>/test-plugins`, a plain directory, never into
the venv's site-packages, which `make run` serves (with them there, `token_auth` would answer 401 to tokens it
does not know). Here that directory goes first on `sys.path`, where `importlib.metadata` finds their entry points
(the `*.dist-info` there), and on PYTHONPATH, which every process a test starts inherits (`tests/processes.py`
copies the environment). Without the directory the run stops with the command that makes it: a missing piece
fails, never skips.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

TEST_PLUGINS = Path(sys.prefix) / "test-plugins"
"""Where `make .venv/.installed-test` installs the example plugins (Makefile, TEST_PLUGINS)."""

if not (TEST_PLUGINS / ".installed").is_file():
    raise pytest.UsageError(
        f"the example plugins are not installed in {TEST_PLUGINS}: run `make .venv/.installed-test` "
        "(or `make test`, which does)"
    )
if str(TEST_PLUGINS) not in sys.path:
    sys.path.insert(0, str(TEST_PLUGINS))
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(TEST_PLUGINS), os.environ.get("PYTHONPATH")]))
