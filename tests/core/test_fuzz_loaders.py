"""Bounded mutation fuzzing of the model loaders: mutated bytes of a valid file in every format
give a loaded (and inspectable) model or a StudioError naming the file, never another exception.

Every run is seeded, so a failure reproduces; ``pytest -s`` prints how many inputs were tried.
"""

from __future__ import annotations

import contextlib
import random
import time
from collections import Counter

import pytest

from studio.core.demo.model import DEMO_ARCHITECTURE, DEMO_INPUT_SHAPE
from studio.core.errors import StudioError, TrustRequired
from studio.core.models.inputs import InputSpec
from studio.core.models.loader import open_model
from studio.core.workspace import build_tree

MUTATIONS_PER_FORMAT = {".pt": 400, ".pt2": 200, ".safetensors": 600, ".onnx": 1500}
"""Chosen to keep this file under ~30 s on 2 cores (.pt2 archives are the slowest to read)."""
TRIED: Counter[str] = Counter()
OUTCOMES: Counter[str] = Counter()
SECONDS: Counter[str] = Counter()


def mutate(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    """One random damage: flipped bits, a cut, inserted junk, or a duplicated chunk."""
    out = bytearray(data)
    kind = rng.choice(("flip", "truncate", "insert", "duplicate"))
    if kind == "flip":
        for _ in range(rng.randint(1, 8)):
            out[rng.randrange(len(out))] ^= 1 << rng.randrange(8)
    elif kind == "truncate":
        out = out[:rng.randrange(1, len(out))]
    elif kind == "insert":
        at = rng.randrange(len(out))
        out[at:at] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 16)))
    else:
        at = rng.randrange(len(out))
        out[at:at] = out[at:at + rng.randint(1, 512)]
    return bytes(out), kind


@pytest.mark.parametrize("suffix", list(MUTATIONS_PER_FORMAT))
def test_mutated_files_load_or_give_a_studio_error(tmp_path, valid_model_files, suffix):
    data = valid_model_files[suffix].read_bytes()
    rng = random.Random(f"fuzz{suffix}")
    path = tmp_path / f"mutant{suffix}"
    started = time.perf_counter()
    for index in range(MUTATIONS_PER_FORMAT[suffix]):
        mutant, kind = mutate(data, rng)
        path.write_bytes(mutant)
        TRIED[suffix] += 1
        context = f"{suffix} mutation #{index} ({kind})"
        try:
            loaded = open_model(path, architecture=DEMO_ARCHITECTURE)
        except StudioError as error:
            assert str(path) in str(error), context
            assert not isinstance(error, TrustRequired), context
            OUTCOMES[f"{suffix} refused"] += 1
            continue
        except Exception as error:  # pragma: no cover - the failure this test looks for
            raise AssertionError(f"{context}: {type(error).__name__}: {error}") from error
        OUTCOMES[f"{suffix} loaded"] += 1
        example = None if loaded.onnx_model is not None else InputSpec(DEMO_INPUT_SHAPE)
        with contextlib.suppress(StudioError):  # loaded: its tree builds, or a clear error
            build_tree(loaded, example)
    SECONDS[suffix] += time.perf_counter() - started


def test_report_how_many_inputs_were_tried(capsys: pytest.CaptureFixture[str]) -> None:
    """Runs last in this file; with ``-s`` it prints the count."""
    total = sum(TRIED.values())
    with capsys.disabled():
        print(f"\nloader fuzzing: {total} mutated files tried "
              f"in {sum(SECONDS.values()):.1f} s "
              f"({', '.join(f'{k}: {v} in {SECONDS[k]:.1f} s' for k, v in TRIED.items())}); "
              f"outcomes: {dict(sorted(OUTCOMES.items()))}")
    if TRIED:  # empty when only this test was selected
        assert total == sum(MUTATIONS_PER_FORMAT[s] for s in TRIED)
