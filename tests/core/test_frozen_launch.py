"""Jobs start the same way from a frozen bundle as from a checkout: the console executable's
``--job SPEC`` switch runs the job child (packaging/launch_cli.py)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from studio.core.jobs import child
from studio.core.jobs.kinds import JobSpec
from studio.core.plan.recipe import Recipe

ROOT = Path(__file__).resolve().parents[2]


def test_a_frozen_app_starts_jobs_in_its_console_executable(monkeypatch, tmp_path: Path) -> None:
    app = tmp_path / "bundle" / "compression-studio"
    monkeypatch.setattr(sys, "frozen", True, raising=False)
    monkeypatch.setattr(sys, "executable", str(app))
    program, args = child.child_command("spec.json")
    assert Path(program).parent == app.parent
    assert Path(program).stem == child.FROZEN_CLI
    assert args == [child.JOB_SWITCH, "spec.json"]


def test_not_frozen_runs_the_child_module() -> None:
    program, args = child.child_command("spec.json")
    assert program == sys.executable
    assert args == ["-m", "studio.core.jobs.child", "spec.json"]


def test_the_console_entry_runs_a_job_given_the_switch(tmp_path: Path) -> None:
    recipe = Recipe.model_validate({"schema_version": 1, "model": {"path": "demo"},
                                    "data": {"source": "demo"}})
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps(JobSpec("check_data", recipe, tmp_path, tmp_path / "out").to_json()))
    done = subprocess.run([sys.executable, str(ROOT / "packaging" / "launch_cli.py"),
                           child.JOB_SWITCH, str(spec)], capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr
    events = [json.loads(line) for line in done.stdout.splitlines()]
    assert events[-1]["event"] == "result", events[-1]


def test_the_console_entry_is_the_cli_without_the_switch() -> None:
    done = subprocess.run([sys.executable, str(ROOT / "packaging" / "launch_cli.py"), "run",
                           str(ROOT / "no-such-recipe.yaml"), "--out", "unused"],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 2
    assert done.stderr.startswith("compression-studio: error:"), done.stderr
