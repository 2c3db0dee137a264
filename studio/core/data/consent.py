"""Consent to run a data function is consent to one piece of code, not to a name.

``loader:batches`` in one project and ``loader:batches`` in another are different programs, so
what the user allows is a :class:`FunctionCode`: the files importing the function runs (its
packages' ``__init__.py``, the project's own modules it imports, then its module), each with the
sha256 of its content. They are found
the way ``import`` would find them, project folder first, but without importing anything: each
dotted part is looked up through the import system's finders, so not even a package's
``__init__.py`` runs before the user has said yes.
"""

from __future__ import annotations

import ast
import contextlib
import hashlib
import importlib
import importlib.machinery
import sys
from collections.abc import Collection, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from studio.core.errors import StudioError, TrustRequired
from studio.core.plan.stages import DataSection

MAX_HELPERS = 200
"""Project modules followed from one data function at most (a guard against odd folders)."""


class FunctionTrustRequired(TrustRequired):
    """Reading this data source would run the named Python function (``changed``: the user
    allowed other code under that name: another project's module, or an older content)."""

    def __init__(self, target: str, changed: bool = False) -> None:
        self.path = Path(target)
        self.target = target
        why = ("its code is not the code you allowed (another project's module of that name, "
               "or its file changed since)" if changed else
               "reading it imports and runs that Python function")
        StudioError.__init__(
            self, f"data source {target}: {why}; run it only if you trust its code "
            "(CLI: --trust; GUI: confirm the prompt).")


@dataclass(frozen=True)
class FunctionCode:
    """A data function and the code its consent covers."""

    target: str
    files: tuple[tuple[str, str], ...]
    """(resolved path, sha256) of each file importing ``target`` runs, its module last."""

    @property
    def module_file(self) -> str | None:
        return self.files[-1][0] if self.files else None

    def to_json(self) -> dict[str, Any]:
        return {"target": self.target, "files": [list(entry) for entry in self.files]}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> FunctionCode:
        return cls(str(data["target"]), tuple((str(p), str(h)) for p, h in data["files"]))


@contextlib.contextmanager
def importable_from(folder: Path | None) -> Iterator[str | None]:
    """``folder`` first on ``sys.path`` for the duration (users keep loaders beside a project);
    gives its resolved path."""
    path = str(folder.resolve()) if folder is not None else None
    added = path is not None and path not in sys.path
    if added:
        sys.path.insert(0, path)
    try:
        yield path
    finally:
        if added:
            sys.path.remove(path)


def _find_spec(name: str, search: list[str] | None) -> importlib.machinery.ModuleSpec | None:
    """What ``import name`` would load, asked of the finders directly: no parent package is
    imported and ``sys.modules`` (another project's module of that name) is not consulted."""
    for finder in sys.meta_path:
        find = getattr(finder, "find_spec", None)
        spec = find(name, search) if callable(find) else None
        if spec is not None:
            return spec
    return None


def module_specs(target: str) -> list[importlib.machinery.ModuleSpec]:
    """The specs of ``target``'s module and of each package above it, outermost first (call it
    with the project folder on the path, see :func:`importable_from`)."""
    importlib.invalidate_caches()  # a loader.py written a moment ago must be seen
    module = target.partition(":")[0]
    parts = module.split(".")
    specs: list[importlib.machinery.ModuleSpec] = []
    search: list[str] | None = None
    for depth in range(1, len(parts) + 1):
        name = ".".join(parts[:depth])
        spec = _find_spec(name, search)
        if spec is None:
            raise StudioError(f"data source {target}: cannot import it (no module named "
                              f"{name!r}); install the package that defines it, put its "
                              "module beside the recipe, or fix the name")
        specs.append(spec)
        locations = spec.submodule_search_locations
        search = list(locations) if locations is not None else None
        if search is None and depth < len(parts):
            raise StudioError(f"data source {target}: {name} is a module, not a package")
    return specs


def _sha256(path: Path, target: str) -> str:
    digest = hashlib.sha256()
    try:
        with path.open("rb") as stream:
            for chunk in iter(lambda: stream.read(1 << 20), b""):
                digest.update(chunk)
    except OSError as error:
        raise StudioError(f"data source {target}: cannot read {path} ({error})") from None
    return digest.hexdigest()


def _imported_names(source: Path, package: str) -> list[str]:
    """Modules ``source`` names in its import statements (relative ones resolved against
    ``package``), read from its syntax tree: nothing runs. ``from a import b`` yields ``a``
    and ``a.b``, since ``b`` may be a submodule."""
    try:
        tree = ast.parse(source.read_bytes(), filename=str(source))
    except (OSError, SyntaxError, ValueError):
        return []  # importing it fails the same way, after consent, with its own message
    names: list[str] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                if not parent:
                    continue
                base = f"{parent}.{base}" if base else parent
            names.append(base)
            names.extend(f"{base}.{alias.name}" for alias in node.names if alias.name != "*")
    return names


def _project_helpers(specs: list[importlib.machinery.ModuleSpec], folder: str | None
                     ) -> list[importlib.machinery.ModuleSpec]:
    """Modules inside the project ``folder`` that the function's module imports, directly or
    through one another. Loading the function drops them from ``sys.modules`` with it (see
    ``data/function.py``), so they are part of the code the user allows: changing a helper
    beside ``loader.py`` must ask again. Installed packages are the user's environment and are
    not hashed; imports built from strings at run time cannot be seen."""
    if folder is None:
        return []
    seen = {spec.name for spec in specs}
    queue, found = [specs[-1]], []
    while queue and len(found) < MAX_HELPERS:
        spec = queue.pop(0)
        if not (spec.has_location and spec.origin):
            continue
        package = spec.name if spec.submodule_search_locations is not None else spec.parent
        for name in _imported_names(Path(spec.origin), package or ""):
            if name in seen:
                continue
            seen.add(name)
            try:
                helper = module_specs(name)[-1]
            except StudioError:
                continue  # not a module (an attribute of ``from a import b``) or not installed
            if helper.has_location and helper.origin and \
                    Path(helper.origin).resolve().is_relative_to(folder):
                found.append(helper)
                queue.append(helper)
    return found


def locate_function(target: str, base_dir: Path | None) -> FunctionCode:
    """The code ``target`` names, looked up in ``base_dir`` first, without running any of it:
    its packages, the project's modules it imports, and its module, last."""
    with importable_from(base_dir) as folder:
        specs = module_specs(target)
        helpers = _project_helpers(specs, folder)
    files = []
    for spec in [*specs[:-1], *helpers, specs[-1]]:
        if spec.has_location and spec.origin:  # built-in and namespace packages hold no file
            path = Path(spec.origin).resolve()
            files.append((str(path), _sha256(path, target)))
    return FunctionCode(target, tuple(dict.fromkeys(files)))


def data_functions(section: DataSection | None, base_dir: Path | None
                   ) -> tuple[FunctionCode, ...]:
    """The code a ``function`` section would run (its data and test functions); none for a
    section that reads files."""
    if section is None or section.source != "function":
        return ()
    targets = dict.fromkeys(t for t in (section.path, section.test_path) if t is not None)
    return tuple(locate_function(target, base_dir) for target in targets)


def check_consent(section: DataSection | None, base_dir: Path | None,
                  allowed: Collection[FunctionCode]) -> None:
    """:class:`FunctionTrustRequired` unless every function ``section`` runs is, file for file
    and byte for byte, code the user allowed."""
    allowed_targets = {code.target for code in allowed}
    for code in data_functions(section, base_dir):
        if code not in allowed:
            raise FunctionTrustRequired(code.target, changed=code.target in allowed_targets)
