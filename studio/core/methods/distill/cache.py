"""Teacher outputs computed once per sample: a frozen teacher gives the same outputs for the
same input, so every epoch after the first reads them back instead of running the teacher.

Samples are keyed by a hash of their bytes rather than by their index, so the training loop
needs no change (it hands the loss shuffled batches, not indices) and a repeated sample is one
entry. Outputs are stored exactly as the teacher gave them, in memory or, for large data, in
files in the run's output staging folder (numpy memory maps, removed with it).
"""

from __future__ import annotations

import hashlib
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from studio.core.errors import StudioError
from studio.core.methods.distill.teachers import Teacher, TeacherOutput

MEMORY_LIMIT_BYTES = 512 * 2**20
"""``auto`` keeps the cache in memory up to this size, on disk beyond it."""


@dataclass(frozen=True)
class CacheStats:
    hits: int
    misses: int
    bytes: int
    on_disk: bool

    @property
    def hit_rate(self) -> float:
        seen = self.hits + self.misses
        return self.hits / seen if seen else 0.0

    def to_json(self) -> dict[str, object]:
        return {"hits": self.hits, "misses": self.misses, "hit_rate": round(self.hit_rate, 4),
                "bytes": self.bytes, "on_disk": self.on_disk}


def sample_keys(inputs: Tensor) -> list[bytes]:
    """One digest per row of ``inputs`` (its dtype, shape and bytes)."""
    rows = inputs.detach().cpu().contiguous()
    head = f"{rows.dtype}{tuple(rows.shape[1:])}".encode()
    flat = rows.reshape(len(rows), -1).view(torch.uint8).numpy()
    return [hashlib.blake2b(head + row.tobytes(), digest_size=16).digest() for row in flat]


class _Store:
    """Rows of one output (the scores, or one feature) for up to ``capacity`` samples."""

    def __init__(self, example: Tensor, capacity: int, folder: Path | None, name: str) -> None:
        shape = (capacity, *example.shape[1:])
        dtype = example.detach().cpu().numpy().dtype
        if folder is None:
            self.rows = np.empty(shape, dtype)
        else:
            folder.mkdir(parents=True, exist_ok=True)
            self.rows = np.lib.format.open_memmap(folder / f"{name}.npy", "w+", dtype, shape)
        self.nbytes = int(self.rows.nbytes)


class TeacherCache:
    """Outputs by sample key for up to ``capacity`` distinct samples.

    ``mode``: ``memory``, ``disk`` (memory maps in ``folder``, which the cache creates and
    removes on :meth:`close`) or ``auto`` (disk when the whole cache would pass
    :data:`MEMORY_LIMIT_BYTES`)."""

    def __init__(self, capacity: int, mode: str = "auto", folder: Path | None = None) -> None:
        if mode not in ("auto", "memory", "disk"):
            raise StudioError(f"teacher cache: unknown mode {mode!r}")
        if mode == "disk" and folder is None:
            raise StudioError("teacher cache: 'disk' needs a folder (the run's staging folder)")
        self.capacity = capacity
        self.mode = mode
        self.folder = folder
        self.slots: dict[bytes, int] = {}
        self._stores: dict[str, _Store] = {}
        self.hits = 0
        self.misses = 0
        self._disk_folder: Path | None = None

    def _on_disk(self, output: TeacherOutput) -> bool:
        if self.mode != "auto":
            return self.mode == "disk"
        per_row = sum(t[0].numel() * t.element_size()
                      for t in (output.logits, *output.features.values()))
        return self.folder is not None and per_row * self.capacity > MEMORY_LIMIT_BYTES

    def _allocate(self, output: TeacherOutput) -> None:
        folder = self.folder if self._on_disk(output) else None
        if folder is not None and folder.exists():
            raise StudioError(f"teacher cache: {folder} exists already; it is not this run's")
        self._disk_folder = folder
        self._stores["logits"] = _Store(output.logits, self.capacity, folder, "logits")
        for index, (name, value) in enumerate(output.features.items()):
            self._stores[name] = _Store(value, self.capacity, folder, f"feature{index}")

    def lookup(self, keys: list[bytes]) -> list[int | None]:
        return [self.slots.get(key) for key in keys]

    def put(self, keys: list[bytes], output: TeacherOutput) -> None:
        """Store the rows of ``output`` under ``keys`` (rows beyond the capacity are dropped)."""
        if not self._stores:
            self._allocate(output)
        values = {"logits": output.logits, **output.features}
        for row, key in enumerate(keys):
            if key in self.slots or len(self.slots) >= self.capacity:
                continue
            slot = len(self.slots)
            self.slots[key] = slot
            for name, store in self._stores.items():
                store.rows[slot] = values[name][row].detach().cpu().numpy()

    def get(self, slots: list[int], names: list[str], device: torch.device
            ) -> dict[str, Tensor]:
        index = np.asarray(slots)
        return {name: torch.from_numpy(np.array(self._stores[name].rows[index])).to(device)
                for name in names}

    def close(self) -> None:
        """Forget every entry and remove the files this cache wrote (the staging folder is
        moved into the output folder at the end of a run, and the cache is no output)."""
        self._stores.clear()
        self.slots.clear()
        if self._disk_folder is not None:
            shutil.rmtree(self._disk_folder, ignore_errors=True)
            self._disk_folder = None

    def stats(self) -> CacheStats:
        return CacheStats(self.hits, self.misses,
                          sum(store.nbytes for store in self._stores.values()),
                          any(isinstance(s.rows, np.memmap) for s in self._stores.values()))


class CachedTeacher:
    """A frozen teacher whose outputs come from ``cache`` for samples it has seen: only the
    rows of a batch that miss are run through the teacher."""

    def __init__(self, teacher: Teacher, cache: TeacherCache) -> None:
        self.teacher = teacher
        self.cache = cache
        self.name = teacher.name
        self.feature_names = teacher.feature_names

    def __call__(self, inputs: Tensor) -> TeacherOutput:
        keys = sample_keys(inputs)
        slots = self.cache.lookup(keys)
        missing = [row for row, slot in enumerate(slots) if slot is None]
        self.cache.hits += len(keys) - len(missing)
        self.cache.misses += len(missing)
        if len(missing) == len(keys):
            output = self.teacher(inputs)
            self.cache.put(keys, output)
            return output
        if missing:
            fresh = self.teacher(inputs[missing])
            self.cache.put([keys[row] for row in missing], fresh)
            slots = self.cache.lookup(keys)
        if any(slot is None for slot in slots):  # over capacity: run the whole batch
            return self.teacher(inputs)
        names = ["logits", *self.feature_names]
        values = self.cache.get([slot for slot in slots if slot is not None], names,
                                inputs.device)
        return TeacherOutput(values["logits"], {n: values[n] for n in self.feature_names})

    def close(self) -> None:
        self.teacher.close()
        self.cache.close()
