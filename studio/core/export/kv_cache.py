"""A causal LM exported with its key/value cache, for generating text in onnxruntime.

The run's ``model.onnx`` takes token ids and gives logits at every position: what perplexity
needs. Generating with it reruns the whole sequence for each new token. The file written here
also takes the keys and values of the tokens already seen (``past.{i}.key``/``past.{i}.value``,
batch × key/value heads × past length × head size) and returns the logits of the new tokens and
the grown cache (``present.{i}.*``), so a step costs one position. One file serves the prompt
(a past of length 0) and every later step. ``i`` is the layer's index in the model: each layer
keeps its own head count (heads pruned unevenly) and a dropped block has no cache at all.

Hand-written around ``transformers``' ``DynamicCache`` (the cache of the torch model is built
from the flat inputs on every call): optimum writes such files, but it is not a dependency and
knows nothing of the studio's pruned and fake-quantized modules.
"""

from __future__ import annotations

import inspect
import logging
import statistics
import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch
from torch import Tensor, nn

from studio.core.errors import StudioError
from studio.core.export.onnx_export import DYNAMO_OPSET, save_program, writing_onnx

IDS = "input_ids"
LOGITS = "logits"


@dataclass(frozen=True)
class CacheLayer:
    """One layer that keeps keys and values: its index in the model, heads and head size."""

    index: int
    heads: int
    head_size: int


def _run_cached(model: nn.Module, cache: object = None, **inputs: object) -> tuple[Tensor, Any]:
    """Logits and the cache after one call; the keyword is ``cache`` from transformers 5.20
    on and ``past_key_values`` before (the old name still works there, with a warning)."""
    name = "cache" if "cache" in inspect.signature(model.forward).parameters \
        else "past_key_values"
    out = model(**inputs, **{name: cache}, use_cache=True)
    return out["logits"], out.get(name)


@torch.no_grad()
def cache_layout(model: nn.Module) -> list[CacheLayer]:
    """The layers that fill the cache, read from one real forward pass: pruning may leave
    layers with different head counts, and a dropped block (a pass-through) caches nothing."""
    _, cache = _run_cached(model, input_ids=torch.zeros(1, 1, dtype=torch.int64))
    layers = getattr(cache, "layers", None) or []
    layout = [CacheLayer(index, int(layer.keys.shape[1]), int(layer.keys.shape[3]))
              for index, layer in enumerate(layers) if getattr(layer, "keys", None) is not None]
    if not layout:
        raise StudioError("the model returned no key/value cache; it cannot be exported for "
                          "cached generation")
    return layout


def empty_past(layout: Sequence[CacheLayer], batch: int = 1, length: int = 0
               ) -> tuple[Tensor, ...]:
    """Zero keys and values of ``length`` positions for each layer of ``layout``, flat."""
    return tuple(torch.zeros(batch, layer.heads, length, layer.head_size)
                 for layer in layout for _ in range(2))


class CachedDecoder(nn.Module):
    """``(ids, past)`` → ``(logits, *present)`` over a Hugging Face causal LM; ``past`` holds
    the keys then values of each layer of ``layout``, flat."""

    def __init__(self, model: nn.Module, layout: Sequence[CacheLayer]) -> None:
        super().__init__()
        self.model = model
        self.indices = [layer.index for layer in layout]

    def forward(self, input_ids: Tensor, past: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
        from transformers import DynamicCache

        cache = DynamicCache(config=self.model.config)
        for slot, index in enumerate(self.indices):
            cache.update(past[2 * slot], past[2 * slot + 1], index)
        # A dropped block never fills its layer, but the causal mask reads the past length
        # from layer 0: such layers hold one zero channel of the past's length.
        placeholder = torch.zeros_like(past[0][:, :1, :, :1])
        for index in set(range(len(cache.layers))) - set(self.indices):
            cache.update(placeholder, placeholder, index)
        start = past[0].shape[2]
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)[None] + start
        logits, cache = _run_cached(self.model, cache, input_ids=input_ids,
                                    position_ids=positions)
        layers = cache.layers
        return (logits, *(t for index in self.indices
                              for t in (layers[index].keys, layers[index].values)))


def past_names(layout: Sequence[CacheLayer], prefix: str = "past") -> list[str]:
    return [f"{prefix}.{layer.index}.{part}" for layer in layout for part in ("key", "value")]


def export_with_cache(model: nn.Module, path: str | Path, opset: int = DYNAMO_OPSET) -> Path:
    """Write ``model`` (a Hugging Face causal LM) to ``path`` with key/value cache inputs and
    outputs; batch, new-token and past lengths are free axes."""
    from torch.export import Dim

    path = Path(path)
    was_training = model.training
    model.eval()
    layout = cache_layout(model)
    past = empty_past(layout, batch=2, length=3)
    ids = torch.zeros(2, 2, dtype=torch.int64)  # torch.export fixes a dimension it sees at 1
    batch, tokens, length = Dim("batch"), Dim("tokens"), Dim("past")
    shapes = ({0: batch, 1: tokens}, tuple({0: batch, 2: length} for _ in past))
    chatter = logging.getLogger("torch.onnx")
    level = chatter.level
    chatter.setLevel(logging.ERROR)
    try:
        with writing_onnx(path) as target, warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the exporter's notes on axis names and pytrees
            try:
                program = torch.onnx.export(
                    CachedDecoder(model, layout).eval(), (ids, past), dynamo=True,
                    opset_version=max(opset, DYNAMO_OPSET),
                    input_names=[IDS, *past_names(layout)],
                    output_names=[LOGITS, *past_names(layout, "present")], dynamic_shapes=shapes,
                    external_data=False, optimize=True, verbose=False)
            except Exception as error:  # torch.export fails in many ways on user models
                cause = error.__cause__ or error
                message = str(cause).strip().splitlines()[0] if str(cause).strip() else ""
                raise StudioError(f"cannot export the model with a key/value cache "
                                  f"({type(cause).__name__}: {message})") from None
            save_program(program, model, target)
    finally:
        chatter.setLevel(level)
        model.train(was_training)
    return path


def greedy_onnx(session: ort.InferenceSession, prompt: Sequence[int], new_tokens: int,
                cached: bool = True, stop: int | None = None) -> tuple[list[int], list[float]]:
    """``prompt`` and up to ``new_tokens`` arg-max tokens from a file written by
    :func:`export_with_cache`, and the milliseconds each new token took. ``cached=False``
    feeds the whole sequence with an empty past at every step, as a file without a cache must."""
    names = [i.name for i in session.get_inputs()][1:]
    empty = {i.name: np.zeros([1, i.shape[1], 0, i.shape[3]], np.float32)
             for i in session.get_inputs()[1:]}
    ids, past, times = list(prompt), dict(empty), []
    for _ in range(new_tokens):
        start = time.perf_counter()
        fresh = ids[-1:] if cached and ids != list(prompt) else ids
        outputs = session.run(None, {IDS: np.array([fresh], np.int64),
                                     **(past if cached else empty)})
        following = int(outputs[0][0, -1].argmax())
        if cached:
            past = dict(zip(names, outputs[1:], strict=True))
        times.append((time.perf_counter() - start) * 1e3)
        ids.append(following)
        if following == stop:
            break
    return ids, times


@dataclass
class CachedGeneration:
    """What the cached file did beside the uncached one on the same prompt."""

    prompt_tokens: int
    new_tokens: int
    same_tokens_as_torch: bool
    ms_per_token_cached: float
    ms_per_token_uncached: float

    def to_json(self) -> dict[str, object]:
        return {**asdict(self), "speedup": round(self.ms_per_token_uncached
                                                 / max(self.ms_per_token_cached, 1e-9), 2)}


def compare_generation(path: str | Path, expected: Sequence[int], prompt_tokens: int,
                       threads: int = 1) -> CachedGeneration:
    """Generate ``expected``'s continuation (torch's greedy tokens) from the file with and
    without its cache; per-token times are medians over the steps after the first (the first
    step reads the whole prompt either way)."""
    from studio.core.export.measure import ort_session

    session = ort_session(path, threads)
    prompt, wanted = list(expected[:prompt_tokens]), len(expected) - prompt_tokens
    cached, cached_ms = greedy_onnx(session, prompt, wanted, cached=True)
    uncached, uncached_ms = greedy_onnx(session, prompt, wanted, cached=False)
    steps = slice(1, None) if wanted > 1 else slice(None)
    return CachedGeneration(
        prompt_tokens=prompt_tokens, new_tokens=wanted,
        same_tokens_as_torch=cached == list(expected) and uncached == list(expected),
        ms_per_token_cached=round(statistics.median(cached_ms[steps]), 3),
        ms_per_token_uncached=round(statistics.median(uncached_ms[steps]), 3))
