"""Consent to a data function covers one file's content, not a name: two projects each holding
their own ``loader.py`` get their own code, and allowing one does not allow the other."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from studio.core.data.consent import (
    FunctionTrustRequired,
    check_consent,
    data_functions,
    locate_function,
)
from studio.core.data.sources import load_task
from studio.core.errors import StudioError
from studio.core.plan.stages import DataSection

LOADER = '''
import pathlib
import numpy as np
pathlib.Path(__file__).with_name("imported-{name}").touch()

def batches():
    yield np.full((6, 2), {value}, dtype=np.float32)
'''

SECTION = DataSection(source="function", path="loader:batches", test_fraction=0.5,
                      calibration_samples=2)


def _project(folder: Path, name: str, value: float) -> Path:
    folder.mkdir()
    (folder / "loader.py").write_text(LOADER.format(name=name, value=value), encoding="utf-8")
    return folder


def test_consent_is_for_one_file_and_each_project_reads_its_own_module(tmp_path: Path) -> None:
    a = _project(tmp_path / "a", "a", 1.0)
    b = _project(tmp_path / "b", "b", 2.0)
    code_a = locate_function("loader:batches", a)
    code_b = locate_function("loader:batches", b)
    assert code_a.module_file == str((a / "loader.py").resolve())
    assert code_a != code_b and code_a.target == code_b.target
    assert not (a / "imported-a").exists()  # locating runs nothing

    check_consent(SECTION, a, [code_a])  # allowed
    with pytest.raises(FunctionTrustRequired, match="not the code you allowed"):
        check_consent(SECTION, b, [code_a])  # A's consent does not cover B
    assert not (b / "imported-b").exists()

    task_a = load_task(SECTION, a, trust=True)
    assert "loader" not in sys.modules  # not cached for the next project
    task_b = load_task(SECTION, b, trust=True)
    assert (a / "imported-a").exists() and (b / "imported-b").exists()
    assert set(task_a.test.tensors[0].flatten().tolist()) == {1.0}
    assert set(task_b.test.tensors[0].flatten().tolist()) == {2.0}  # B's data, not A's


def test_a_changed_file_needs_consent_again(tmp_path: Path) -> None:
    a = _project(tmp_path / "a", "a", 1.0)
    allowed = data_functions(SECTION, a)
    (a / "loader.py").write_text(LOADER.format(name="a", value=3.0), encoding="utf-8")
    with pytest.raises(FunctionTrustRequired, match="its file changed"):
        check_consent(SECTION, a, allowed)
    check_consent(SECTION, a, data_functions(SECTION, a))


def test_a_package_is_located_without_running_its_init(tmp_path: Path) -> None:
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text(
        f"import pathlib\npathlib.Path({str(tmp_path / 'init-ran')!r}).touch()\n")
    (package / "data.py").write_text("def batches():\n    yield [[1.0, 2.0]]\n")
    code = locate_function("pkg.data:batches", tmp_path)
    assert [Path(path).name for path, _ in code.files] == ["__init__.py", "data.py"]
    assert not (tmp_path / "init-ran").exists() and "pkg" not in sys.modules
    with pytest.raises(StudioError, match=r"no module named 'pkg\.missing'"):
        locate_function("pkg.missing:batches", tmp_path)
    with pytest.raises(StudioError, match=r"pkg\.data is a module, not a package"):
        locate_function("pkg.data.deeper:batches", tmp_path)


def test_a_module_of_the_same_name_imported_elsewhere_is_not_used(tmp_path: Path,
                                                                   monkeypatch) -> None:
    a = _project(tmp_path / "a", "a", 1.0)
    b = _project(tmp_path / "b", "b", 2.0)
    monkeypatch.syspath_prepend(str(a))
    import loader  # A's module, imported by someone else and still cached

    monkeypatch.delitem(sys.modules, "loader")
    monkeypatch.setitem(sys.modules, "loader", loader)
    task_b = load_task(SECTION, b, trust=True)
    assert set(task_b.test.tensors[0].flatten().tolist()) == {2.0}
    assert sys.modules["loader"] is loader  # the other one is put back as it was


def test_bytecode_beside_the_allowed_source_never_runs(tmp_path: Path) -> None:
    """A folder sent as an archive keeps file times, so it can carry a harmless loader.py
    with harmful bytecode in __pycache__ whose header matches it; the allowed source runs."""
    import importlib.util
    import os
    import py_compile

    folder = tmp_path / "sent"
    harmless = LOADER.format(name="harmless", value=1.0)
    harmful = LOADER.format(name="harmful", value=9.0)[:len(harmless)].ljust(len(harmless))
    assert len(harmful) == len(harmless)
    _project(folder, "harmful", 9.0)
    source = folder / "loader.py"
    source.write_text(harmful, encoding="utf-8")
    os.utime(source, (1_000_000_000, 1_000_000_000))
    py_compile.compile(str(source), cfile=importlib.util.cache_from_source(str(source)),
                       doraise=True)
    source.write_text(harmless, encoding="utf-8")  # same size, same time: the .pyc matches
    os.utime(source, (1_000_000_000, 1_000_000_000))

    task = load_task(SECTION, folder, trust=True)
    assert set(task.test.tensors[0].flatten().tolist()) == {1.0}
    assert (folder / "imported-harmless").exists() and not (folder / "imported-harmful").exists()


def test_consent_covers_the_project_modules_the_function_imports(tmp_path: Path) -> None:
    """Allowing loader.py allows the helpers beside it that it imports, as they are now: an
    edited helper asks again; installed packages (numpy) are not part of the consent."""
    project = tmp_path / "p"
    (project / "tools").mkdir(parents=True)
    (project / "tools" / "__init__.py").write_text("", encoding="utf-8")
    (project / "tools" / "scale.py").write_text("from . import offset\nFACTOR = 2.0\n",
                                                encoding="utf-8")
    (project / "tools" / "offset.py").write_text("SHIFT = 1.0\n", encoding="utf-8")
    (project / "unused.py").write_text("", encoding="utf-8")
    (project / "loader.py").write_text(
        "import numpy as np\nfrom tools import scale\n\n"
        "def batches():\n    yield np.full((6, 2), scale.FACTOR + scale.offset.SHIFT,"
        " dtype=np.float32)\n", encoding="utf-8")
    code = locate_function("loader:batches", project)
    files = [Path(path).relative_to(project.resolve()).as_posix() for path, _ in code.files]
    assert files == ["tools/__init__.py", "tools/scale.py", "tools/offset.py", "loader.py"]
    check_consent(SECTION, project, [code])

    (project / "tools" / "offset.py").write_text("SHIFT = 100.0\n", encoding="utf-8")
    with pytest.raises(FunctionTrustRequired, match="not the code you allowed"):
        check_consent(SECTION, project, [code])
    again = locate_function("loader:batches", project)
    task = load_task(SECTION, project, trust=True)
    assert set(task.test.tensors[0].flatten().tolist()) == {102.0}
    check_consent(SECTION, project, [again])
