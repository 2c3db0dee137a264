"""``export.kv_cache``: beside ``model.onnx`` (every position's logits, for perplexity), write the
compressed causal LM with its key/value cache (``model-kv.onnx``), the file a generation loop
wants. It is checked where it matters: greedy tokens from onnxruntime, with and without the
cache, must be torch's; the milliseconds per new token with and without it say whether the
cache pays off at this prompt length."""

from __future__ import annotations

from collections.abc import Generator

from studio.core.export.kv_cache import compare_generation, export_with_cache
from studio.core.jobs import Event, Log
from studio.core.models.generate import greedy_ids
from studio.core.models.hf import CAUSAL_OUTPUT
from studio.core.pipeline.context import RunContext
from studio.core.pipeline.step import Need, StageReport, Step
from studio.core.plan.recipe import Recipe
from studio.core.plan.stages import DataSection, ExportSection
from studio.core.workspace import Workspace

KV_FILE = "model-kv.onnx"
PROMPT_TOKENS = 64
"""Prompt length of the generation check: the first tokens of a held-out block."""


def _is_causal_lm(workspace: Workspace) -> bool:
    return workspace.loaded.metadata.get("output") == CAUSAL_OUTPUT


class CacheExport(Step):
    name = "kv_cache"
    settings = ExportSection
    needs = frozenset({Need.TORCH})

    def asks_for(self, recipe: Recipe) -> list[str]:
        section = recipe.section(ExportSection)
        return ["export.kv_cache: true"] if section.kv_cache else []

    def refuses(self, workspace: Workspace, recipe: Recipe) -> list[str]:
        if not recipe.section(ExportSection).kv_cache or workspace.loaded.module is None:
            return []
        if _is_causal_lm(workspace):
            return []
        return [f"export.kv_cache: {workspace.loaded.path.name} is not a causal language model "
                "(its output is not next-token logits), so it has no key/value cache to export;"
                " remove export.kv_cache"]

    def applies(self, context: RunContext) -> bool:
        return context.settings(ExportSection).kv_cache

    def run(self, context: RunContext) -> Generator[Event, None, StageReport]:
        yield Log("Exporting the compressed model with its key/value cache")
        path = context.out_dir / KV_FILE
        model = context.model
        export_with_cache(model.model, path, context.settings(ExportSection).opset)
        context.token.check()
        block = context.task.test.tensors[0][0]
        prompt = block[:min(PROMPT_TOKENS, len(block) - 1)]
        new_tokens = max(context.settings(DataSection).generate_tokens, 2)
        expected = greedy_ids(model, prompt, new_tokens).tolist()
        generation = compare_generation(path, expected, len(prompt))
        if not generation.same_tokens_as_torch:
            context.note(f"{KV_FILE}: greedy tokens in onnxruntime differ from torch's; "
                         "check the file before using it to generate")
        report = generation.to_json()
        context.note(f"{KV_FILE}: {report['speedup']}x faster per new token than rerunning the "
                     f"sequence ({generation.ms_per_token_cached} ms against "
                     f"{generation.ms_per_token_uncached} ms after a {len(prompt)}-token "
                     "prompt); it holds the model's float weights (the int8/int4 passes apply to "
                     "model.onnx only).")
        return {"file": KV_FILE, **report}
