"""The steps of a run, in the order they run. A new method is one step module plus one line
here; each backend runs the steps whose needs it provides."""

from __future__ import annotations

from studio.core.pipeline.step import Need, Step
from studio.core.pipeline.steps.adapters import AttachAdapters, MergeAdapters
from studio.core.pipeline.steps.bn_recalibration import BnRecalibration
from studio.core.pipeline.steps.drop_blocks import DropBlocks
from studio.core.pipeline.steps.embedding_quantize import EmbeddingQuantize
from studio.core.pipeline.steps.kv_cache import CacheExport
from studio.core.pipeline.steps.layerwise_prune import LayerwisePrune
from studio.core.pipeline.steps.layerwise_quantize import LayerwiseQuantize
from studio.core.pipeline.steps.onnx_prune import OnnxPrune
from studio.core.pipeline.steps.onnx_quantize import OnnxQuantize
from studio.core.pipeline.steps.prune import Prune
from studio.core.pipeline.steps.qat import PrepareQat
from studio.core.pipeline.steps.recover import Recover
from studio.core.pipeline.steps.repair import Repair
from studio.core.pipeline.steps.torch_quantize import TorchQuantize

STEPS: tuple[Step, ...] = (
    Repair(),
    DropBlocks(),
    Prune(),
    LayerwisePrune(),
    OnnxPrune(),
    BnRecalibration(),
    PrepareQat(),
    AttachAdapters(),
    Recover(),
    MergeAdapters(),
    EmbeddingQuantize(),
    LayerwiseQuantize(),
    TorchQuantize(),
    OnnxQuantize(),
    CacheExport(),
)


def steps_for(provides: frozenset[Need]) -> list[Step]:
    """The registered steps a backend providing ``provides`` can run, in order."""
    return [step for step in STEPS if step.needs <= provides]


def unmet(provides: frozenset[Need]) -> list[Step]:
    """The registered steps such a backend cannot run."""
    return [step for step in STEPS if not step.needs <= provides]
