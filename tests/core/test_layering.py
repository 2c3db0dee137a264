"""The core (and the CLI's inspect path) must run where Qt is not even installed."""

from __future__ import annotations

import importlib.util
import pkgutil
import subprocess
import sys

import pytest

import studio.core

QT_MODULES = ("PySide6", "pyqtgraph", "superqt", "shiboken6", "studio.qt")


def _core_modules() -> list[str]:
    return sorted(info.name for info in pkgutil.walk_packages(studio.core.__path__,
                                                              prefix="studio.core."))


def test_walk_finds_the_core_modules():
    modules = _core_modules()
    for expected in ("studio.core.graph.torch_tree", "studio.core.plan.recipe",
                     "studio.core.project.project", "studio.core.models.loader"):
        assert expected in modules


def test_core_and_cli_inspect_never_import_qt():
    imports = "\n".join(f"import {name}" for name in [*_core_modules(), "studio.cli.main"])
    script = f"""
import sys
{imports}
from studio.cli.main import main
from studio.cli.inspect import inspect_json
from studio.core.workspace import open_workspace

report = inspect_json(open_workspace("demo"))
assert report["totals"]["macs"] > 0
assert main(["inspect", "demo", "--json"]) == 0
loaded = sorted(m for m in sys.modules if m.startswith({QT_MODULES!r}))
assert not loaded, loaded
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=120, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    assert '"model": "demo-cnn"' in result.stdout


@pytest.mark.skipif(importlib.util.find_spec("PySide6") is None, reason="Qt is not installed")
def test_the_check_would_see_qt():
    # The same check, with Qt imported on purpose, must fail: the test above can catch a leak.
    script = f"""
import sys
import studio.core.workspace
import PySide6.QtCore
assert not any(m.startswith({QT_MODULES!r}) for m in sys.modules)
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=120, check=False)
    assert result.returncode != 0
    assert "AssertionError" in result.stderr
