"""A run's output folder, written as one unit and never over a file the studio did not write.

A run writes everything into a fresh staging folder beside the output folder (so on the same
file system) and, once all is written, moves it in with renames: a new folder is the staging
folder renamed; into an existing one the files are moved one by one, the earlier run's report
removed first and the new report moved in last. So a cancelled, failed or killed run leaves the
output folder as it was, and a report never stands beside another run's files.

A marker file (``.compression-studio.json``) in the output folder lists the files the studio
wrote there. Only those are replaced or removed by a later run (an earlier run's outputs are
replaced as a unit); every other file is left alone, and a run that would write over one (the
input model above all) is refused before any work. The marker is updated before files move, so
even a run killed mid-move leaves no file of its own that the next run would take for the
user's.

Staging folders left by killed runs are removed by the next run into the same parent folder. A
live run holds an ``flock`` on its staging folder, so it is never taken for a dead one (where
``fcntl`` is missing, on Windows, nothing is removed).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType
from typing import Any

from studio.core.atomic import write_text_atomic
from studio.core.errors import StudioError

try:
    import fcntl
except ImportError:  # Windows: no flock, so no stale-folder cleanup
    fcntl = None  # type: ignore[assignment]

MARKER = ".compression-studio.json"
STAGING_PREFIX = ".compression-studio-staging-"


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _owned(folder: Path, report: str) -> set[str]:
    """The names the studio wrote into ``folder``: those its marker lists or, in a folder an
    earlier version wrote (no marker), ``report`` and the files that report's ``paths`` name
    in the folder. None if neither can be read."""
    marker = _read_json(folder / MARKER)
    if marker is not None:
        files = marker.get("files")
    else:
        paths = (_read_json(folder / report) or {}).get("paths")
        files = [] if not isinstance(paths, dict) else [
            Path(p).name for p in paths.values()
            if isinstance(p, str) and Path(p).parent.absolute() == folder.absolute()]
        files += [report] if files else []
    if not isinstance(files, list):
        return set()
    return {name for name in files
            if isinstance(name, str) and name and Path(name).name == name and name != ".."}


def _write_marker(folder: Path, files: Iterable[str], target: str) -> None:
    write_text_atomic(folder / MARKER,
                      json.dumps({"target": target, "files": sorted(files)}, indent=1) + "\n")


def _lock(folder: Path) -> int | None:
    """An open descriptor of ``folder`` holding its flock, or None if another process holds it
    (or locks are not available)."""
    if fcntl is None:
        return None
    try:
        handle = os.open(folder, os.O_RDONLY)
    except OSError:  # unreadable: not ours to judge
        return None
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(handle)
        return None
    return handle


def _exists(path: Path) -> bool:
    return path.exists() or path.is_symlink()


class RunOutputs:
    """The output folder of one run. Write into :attr:`staging`; :meth:`commit` moves the files
    into the output folder; leaving the ``with`` block without committing discards them.

    ``names`` are the files the run may write (checked against the folder before any work);
    ``inputs`` are files the run reads, which it must never replace; ``report`` is the file
    moved in last (and removed first from an earlier run).
    """

    def __init__(self, out_dir: str | Path, names: Iterable[str],
                 inputs: Iterable[str | Path] = (), report: str = "report.json") -> None:
        self.out_dir = Path(out_dir)
        self.report = report
        self._where = self.out_dir.absolute()  # "." has a parent and a name too
        self._check(set(names), [Path(p) for p in inputs])
        self._remove_stale()
        self.staging, self._lock = self._make_staging()
        self._done = False

    def __enter__(self) -> RunOutputs:
        return self

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None,
                 trace: TracebackType | None) -> None:
        if not self._done:
            self.discard()
        if isinstance(error, StudioError) and error.args and isinstance(error.args[0], str):
            # Name the folder the user knows, not the staging folder that is gone now.
            error.args = (error.args[0].replace(str(self.staging), str(self.out_dir)),
                          *error.args[1:])

    def final(self, path: str | Path) -> Path:
        """Where a file written into the staging folder will be once committed."""
        return self.out_dir / Path(path).relative_to(self.staging)

    def _refuse_clash(self, name: str, owned: set[str], inputs: list[Path]) -> None:
        target = self.out_dir / name
        if not _exists(target):
            return
        if any(_exists(p) and target.resolve() == p.resolve() for p in inputs):
            raise StudioError(f"{self.out_dir}: this output folder holds the input model "
                              f"{name}, which the run would replace; write the outputs to "
                              "another folder")
        if name not in owned:
            raise StudioError(f"{self.out_dir}: this output folder holds {name}, which the "
                              "studio did not write; move it away or write the outputs to "
                              "another folder")

    def _check(self, names: set[str], inputs: list[Path]) -> None:
        out = self.out_dir
        if _exists(out) and not out.is_dir():
            raise StudioError(f"{out}: the output folder is a file; give a folder (a new one, "
                              "or an earlier run's)")
        if out.is_dir():
            owned = _owned(out, self.report)
            for name in sorted(names):
                self._refuse_clash(name, owned, inputs)
        self._inputs = inputs

    def _remove_stale(self) -> None:
        """Remove staging folders of dead runs beside the output folder; refuse to run while a
        live run is writing into the same folder."""
        try:
            entries = list(self._where.parent.iterdir())
        except OSError:
            return  # the parent does not exist yet: nothing stale
        for entry in entries:
            if not entry.name.startswith(STAGING_PREFIX) or entry.is_symlink() \
                    or not entry.is_dir():
                continue
            handle = _lock(entry)
            if handle is None:
                target = _marker_target(entry)
                if fcntl is not None and target == self._where.name:
                    raise StudioError(f"{self.out_dir}: another run is writing into this "
                                      "folder now; wait for it to end or choose another folder")
                continue
            try:
                shutil.rmtree(entry, ignore_errors=True)
            finally:
                os.close(handle)

    def _make_staging(self) -> tuple[Path, int | None]:
        parent = self._where.parent
        staging = parent / f"{STAGING_PREFIX}{secrets.token_hex(6)}"
        try:
            parent.mkdir(parents=True, exist_ok=True)
            staging.mkdir(0o777)  # the umask applies, as to any folder a program makes
        except OSError as error:
            raise StudioError(f"cannot create the output folder {self.out_dir}: "
                              f"{error.strerror or error}") from error
        handle = _lock(staging)
        try:
            _write_marker(staging, (), self._where.name)
        except StudioError:
            shutil.rmtree(staging, ignore_errors=True)
            if handle is not None:
                os.close(handle)
            raise
        return staging, handle

    def commit(self) -> None:
        """Move the staged files into the output folder, the report last."""
        names = {p.name for p in self.staging.iterdir() if p.name != MARKER}
        try:
            if not _exists(self.out_dir):
                _write_marker(self.staging, names, self._where.name)
                try:
                    os.rename(self.staging, self.out_dir)  # one step: the whole unit appears
                except OSError:
                    if not _exists(self.out_dir):
                        raise
                    self._merge(names)  # the folder appeared meanwhile
            else:
                self._merge(names)
        except OSError as error:
            raise StudioError(f"cannot write into {self.out_dir}: "
                              f"{error.strerror or error}") from error
        self._done = True
        self.discard()

    def _merge(self, names: set[str]) -> None:
        last = self.report
        out = self.out_dir
        owned = _owned(out, self.report)
        for name in sorted(names):
            self._refuse_clash(name, owned, self._inputs)
        _write_marker(out, owned | names, self._where.name)  # a kill below leaves none unowned
        if last in owned:
            (out / last).unlink(missing_ok=True)  # no report beside a mix of two runs
        for name in sorted(owned - names):
            path = out / name
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)
        for name in sorted(names, key=lambda n: n == last):
            os.replace(self.staging / name, out / name)
        _write_marker(out, names, self._where.name)

    def discard(self) -> None:
        """Remove the staging folder (and what is left in it) and release its lock."""
        if self.staging.is_dir() and self.staging != self.out_dir:
            shutil.rmtree(self.staging, ignore_errors=True)
        if self._lock is not None:
            os.close(self._lock)
            self._lock = None


def _marker_target(folder: Path) -> str | None:
    try:
        target = json.loads((folder / MARKER).read_text(encoding="utf-8")).get("target")
    except (OSError, ValueError, AttributeError):
        return None
    return target if isinstance(target, str) else None
