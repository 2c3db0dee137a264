"""Errors a user can act on.

Every failure that bad input can cause is raised as a :class:`StudioError` whose message names the
file or field and says what to do; the GUI shows it as a notice and the CLI as one line on stderr.
Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


class StudioError(Exception):
    """A problem with the user's input or environment, explained in the message."""


class ModelLoadError(StudioError):
    """A model file could not be read or turned into a model."""


class TrustRequired(ModelLoadError):
    """Loading the file would run code from it; the user must say they trust it."""

    def __init__(self, path: Path, what: str) -> None:
        self.path = Path(path)
        super().__init__(
            f"{path}: {what}. Loading it runs code stored in the file; open it only if you trust "
            "its source (CLI: --trust; GUI: confirm the prompt)."
        )


class ArchitectureRequired(ModelLoadError):
    """A state dict holds weights only; the module that receives them must be named."""

    def __init__(self, path: Path, suggestion: str | None = None) -> None:
        self.path = Path(path)
        self.suggestion = suggestion
        hint = f" The file suggests {suggestion!r}; confirm it to use it." if suggestion else ""
        super().__init__(
            f"{path}: holds weights only; name the architecture that receives them as "
            f"package.module:factory (CLI: --arch).{hint}"
        )


class ArchitectureConsentRequired(TrustRequired):
    """A recipe or project names a model factory outside the studio's registry: building the
    model imports that module and calls the function, code chosen by whoever wrote the file."""

    def __init__(self, path: Path, architecture: str) -> None:
        self.path = Path(path)
        self.architecture = architecture
        StudioError.__init__(
            self, f"{path}: names the architecture {architecture!r}, which is not one of the "
            "studio's own models; building it imports that module and runs the function. Allow "
            "it only if you trust the file (CLI: --trust; GUI: confirm the prompt).")


class TooLargeError(ModelLoadError):
    """A file declares more data than memory holds, or far more than its size explains."""


class InputError(StudioError):
    """The example input does not fit the model."""


@dataclass(frozen=True)
class Problem:
    """One thing wrong in a recipe or project file."""

    where: str
    message: str
    line: int | None = None

    def __str__(self) -> str:
        at = f"line {self.line}: " if self.line is not None else ""
        return f"{at}{self.where}: {self.message}" if self.where else f"{at}{self.message}"


class RecipeError(StudioError):
    """A recipe or project file is malformed; ``problems`` lists each fault with its line."""

    def __init__(self, source: str, problems: list[Problem]) -> None:
        self.source = source
        self.problems = problems
        listed = "; ".join(str(p) for p in problems)
        super().__init__(f"{source}: {listed}")


class ReplaceRequired(StudioError):
    """Writing would replace files the user has; they must say so first."""

    def __init__(self, paths: list[Path]) -> None:
        self.paths = list(paths)
        names = ", ".join(str(p) for p in self.paths)
        super().__init__(f"{names} already exist(s); the studio replaces a file only when you "
                         "confirm it")
