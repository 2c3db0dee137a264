"""Fixtures for the method tests: the demo model and its data, opened once per test module."""

from __future__ import annotations

import pytest

from studio.core.data.task import TaskData, demo_task
from studio.core.workspace import Workspace, open_workspace


@pytest.fixture(scope="module")
def demo() -> Workspace:
    """The demo workspace; tests deep-copy its module before changing it."""
    return open_workspace("demo")


@pytest.fixture(scope="module")
def task() -> TaskData:
    return demo_task()
