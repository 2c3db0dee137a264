"""Recipe sections that say how a plan is carried out: data, recovery training, pruning schedule,
distillation, quantization and export. Each is optional; a missing one means its defaults."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator


class _Section(BaseModel):
    # Attribute docstrings become field descriptions: the one help text that the CLI's
    # errors, the recipe docs and the GUI's generated forms (tooltips) all read.
    model_config = ConfigDict(extra="forbid", use_attribute_docstrings=True)

    opt_in: ClassVar[bool] = False
    """True when the section's presence switches its step on (distillation): the GUI offers
    it as a checkable group instead of treating an absent section as its defaults."""


class ImageOptions(_Section):
    """How an image folder becomes tensors: resize, colour mode, then (x - mean) / std."""

    size: tuple[int, int] | None = Field(
        default=None, description="(height, width) every image is resized to; None keeps the "
        "size, which must then be the same for every image")
    channels: Literal[1, 3] = 3
    """1: greyscale, 3: RGB."""
    mean: list[float] = Field(default_factory=lambda: [0.0])
    """Per channel (or one value for all), applied to pixels scaled to 0..1."""
    std: list[float] = Field(default_factory=lambda: [1.0])
    """Per channel (or one value for all): pixels are divided by it after the mean."""


class DataSection(_Section):
    """Where the task's data comes from and how it is split.

    Sources: ``demo`` (built-in digits); ``images`` (a folder with one sub-folder per class, or
    a flat folder of unlabelled images); ``arrays`` (.npz with inputs and optional labels, or a
    .npy of inputs); ``csv`` (numeric feature columns, an optional label column); ``function``
    (``package.module:function`` returning an iterable of batches; runs code, so only with the
    user's consent); ``text`` (.txt/.jsonl files or a folder of them, tokenized with the opened
    causal LM's tokenizer into blocks of ``block_length`` tokens; measured by perplexity).
    Paths are relative to the recipe's or project's folder.

    Without labels the metric is agreement with the uncompressed model (cosine similarity of
    outputs, top-1 agreement, MSE) instead of accuracy.
    """

    source: Literal["demo", "images", "arrays", "csv", "function", "text"] = "demo"
    """demo, images, arrays, csv, function or text (see the section's help)."""
    path: str | None = None
    """Folder (images, text), .npz/.npy (arrays), .csv, .txt or .jsonl file; for
    ``function``: ``pkg.mod:fn``."""
    test_path: str | None = None
    """A separate evaluation set of the same kind; without it ``test_fraction`` is held out."""
    inputs_key: str | list[str] | None = None
    """.npz array holding the inputs; default: the first of x, inputs, images, input_ids, data.
    A list names several arrays, each fed to the ONNX file's input of the same name (a model
    taking ``input`` and ``state``, say); every array holds one row per sample."""
    constants: dict[str, Any] = Field(default_factory=dict)
    """ONNX inputs fed the same value with every batch, by input name: a number or a nested
    list of numbers (``sr: 16000``), cast to the type the file declares."""
    labels_key: str | None = None
    """.npz array holding the labels; default: the first of y, labels, targets if present."""
    label_column: str | None = None
    """CSV column holding integer class labels; without it a CSV is unlabelled."""
    labelled: bool | None = None
    """False ignores labels even when the data has them; None: use labels when present."""
    metric: Literal["auto", "accuracy", "cosine", "top1_agreement", "mse", "perplexity"] = "auto"
    """auto: accuracy with labels, perplexity for text, cosine agreement with the uncompressed
    model otherwise."""
    image: ImageOptions = Field(default_factory=ImageOptions)
    """How image files become tensors (``images`` sources)."""
    test_fraction: float = Field(default=0.2, gt=0, lt=1)
    """Share of the data held out for evaluation when there is no ``test_path``."""
    split_seed: int = 0
    """Seed of the shuffle that draws the test and calibration splits."""
    calibration_samples: int = Field(default=256, ge=1, le=100_000)
    """Drawn from the training split, never from the test split."""
    train_samples: int | None = Field(default=None, ge=1,
                                      description="fine-tune on the first N training samples")
    validation_samples: int | None = Field(default=None, ge=1)
    """Score on the last N training samples (a validation split, kept out of fine-tuning and
    calibration) instead of the test split: what a search selects on."""
    max_samples: int = Field(default=50_000, ge=1, le=10_000_000)
    """``function`` sources: stop reading after this many samples (an endless generator
    cannot hang the job); ``text``: keep at most this many blocks."""
    block_length: int = Field(default=128, ge=2, le=32_768)
    """``text``: tokens per block (one sample); the text is cut into blocks of this length."""
    prompt: str = "The meaning of compression is"
    """``text``: the prompt both models continue greedily in the report, beside the figures."""
    generate_tokens: int = Field(default=20, ge=0, le=512)
    """``text``: tokens of that greedy continuation; 0 skips it."""

    @field_validator("inputs_key")
    @classmethod
    def _distinct_keys(cls, keys: str | list[str] | None) -> str | list[str] | None:
        if isinstance(keys, list):
            if not keys:
                raise ValueError("name at least one array")
            repeated = sorted({key for key in keys if keys.count(key) > 1})
            if repeated:
                raise ValueError(f"{', '.join(repeated)} named more than once")
        return keys

    @field_validator("constants")
    @classmethod
    def _numeric_constants(cls, constants: dict[str, Any]) -> dict[str, Any]:
        for name, value in constants.items():
            try:
                kind = np.asarray(value).dtype.kind
            except ValueError:  # ragged nested lists
                kind = "O"
            if kind not in "biuf" or isinstance(value, str):
                raise ValueError(f"{name}: give a number or a nested list of numbers (a "
                                 f"rectangular array), not {value!r}")
        return constants

    @model_validator(mode="after")
    def _needs_path(self) -> DataSection:
        if self.source != "demo" and not self.path:
            hint = "package.module:function" if self.source == "function" else "a file or folder"
            raise ValueError(f"source {self.source!r} needs path: {hint}")
        if self.source == "function" and ":" not in (self.path or ""):
            raise ValueError("source 'function' needs path: package.module:function")
        if isinstance(self.inputs_key, list):
            if self.source != "arrays":
                raise ValueError("inputs_key as a list names .npz arrays: only for source "
                                 "'arrays'")
            both = sorted(set(self.inputs_key) & set(self.constants))
            if both:
                raise ValueError(f"{', '.join(both)}: given both as an array (inputs_key) "
                                 "and in constants; keep one")
        return self


class TrainSection(_Section):
    """Recovery fine-tuning after pruning (and QAT); ``epochs: 0`` skips it."""

    epochs: int = Field(default=1, ge=0, le=1000)
    """Passes over the training split; 0 skips recovery (and QAT's fine-tuning)."""
    lr: float = Field(default=1e-3, gt=0, le=1.0)
    """Learning rate of the AdamW optimiser."""
    batch_size: int = Field(default=64, ge=1, le=65536)
    """Samples per training step."""
    weight_decay: float = Field(default=0.0, ge=0)
    """AdamW's decoupled weight decay; 0 is off."""
    seed: int = 0
    """Seed of the shuffling and of any random initialisation, so runs repeat."""
    device: str = Field(default="cpu", pattern=r"^(cpu|auto|cuda(:\d+)?)$")
    """cpu, auto (a GPU when there is one) or cuda / cuda:N."""
    precision: Literal["auto", "fp32", "bf16"] = "auto"
    """Training arithmetic: auto times a few steps in bf16 autocast and in fp32 and keeps the
    faster (models under 1M parameters stay fp32); the report says which ran and why."""
    accumulation_steps: int = Field(default=1, ge=1, le=4096)
    """Batches whose gradients add up before each optimiser step: the effective batch is
    batch_size x accumulation_steps at the memory of one batch."""
    gradient_checkpointing: bool = False
    """Recompute each block's activations in the backward pass instead of keeping them: less
    memory for about a third more time (transformer blocks; modules with batch norms are
    left as they are)."""
    memory_limit_gb: float | None = Field(default=None, gt=0, title="Memory limit (GB)")
    """Refuse a run whose memory estimate (made on a real batch before training) is over this;
    None: the machine's memory (the GPU's on CUDA)."""


class PruneSection(_Section):
    """How the plan's sparsity is reached."""

    importance: Literal["magnitude", "taylor", "fisher", "obert", "wanda",
                        "sparsegpt"] = "magnitude"
    """Which weights go first: smallest magnitude, or smallest Taylor score (|weight x
    gradient| on the calibration split; needs labels); fisher: for heads and FFN units, a
    second-order search (Kwon et al. 2022: the Fisher of the outputs on the calibration split,
    no labels, then mask rearrangement), other layers by magnitude; obert: for unstructured and
    N:M weights, the Optimal BERT Surgeon (second order: a block-diagonal empirical Fisher from
    per-sample gradients on the calibration split: of the task loss with labels, of the
    outputs in random directions without; the kept weights of each block are updated to make
    up for the removed ones), channels by magnitude. For the Linear layers of a
    transformer's blocks, unstructured or N:M: wanda (|weight| x input norm on the calibration
    split, per output) or sparsegpt (also updates the kept weights to make up for the removed
    ones; the most accurate one-shot choice for language models). Both run block by block,
    need no labels, and leave channel pruning to magnitude."""
    schedule: Literal["oneshot", "agp", "rigl"] = "oneshot"
    """oneshot: cut everything before recovery; agp: raise unstructured sparsity gradually
    during recovery (Zhu & Gupta's cubic schedule; needs train epochs > 0); rigl: AGP over the
    first half, then sparse training that keeps the sparsity while the mask evolves (drop the
    smallest weights, regrow where gradients are largest; RigL) until three quarters. Accuracy
    at a sparsity: zeros stored densely run no faster."""
    drop_blocks: int = Field(default=0, ge=0, le=1000)
    """Drop this many whole transformer blocks first: those that change their input least on
    the calibration split (block influence). 0 keeps every block."""
    agp_steps: int = Field(default=4, ge=1, le=100, title="AGP steps")
    """AGP: mask updates per quarter of the training run (more: a smoother ramp)."""
    global_unstructured: bool = False
    """Rank unstructured weights across all layers together instead of layer by layer."""
    reconstruct: bool = True
    """After a structured cut, re-fit by least squares against the uncompressed model's
    outputs on the calibration split, no labels needed: a transformer's cut blocks' output
    projections; after cut channels, every later Conv2d and Linear at the channels it kept
    (few-sample knowledge distillation; grouped, tied, masked, shared and very wide layers are
    left as they are, with the reason in the report)."""
    bn_recalibration: bool = Field(
        default=False, title="BN recalibration",
        description="after pruning, re-estimate every BatchNorm's running mean and variance "
        "on the calibration split (no labels, no training): recovers much of what pruning lost "
        "when there is no fine-tuning")


class FeaturePair(_Section):
    """Match one intermediate layer of the student to one of the teacher."""

    student: str = Field(min_length=1)
    """Layer name in the compressed model."""
    teacher: str = Field(min_length=1)
    """Layer name in the uncompressed model."""
    weight: float = Field(default=1.0, ge=0)
    """Weight of this pair's MSE in the loss."""


class TeacherSource(_Section):
    """One teacher: the uncompressed model, or another model file (torch or ONNX)."""

    path: str = Field(default="original", min_length=1)
    """``original`` (the uncompressed model), a model file (.pt/.pth/.pt2/.safetensors,
    opened as the studio opens models, with the job's trust), a Hugging Face folder, or an
    .onnx file run in onnxruntime. Relative to the recipe's folder. An earlier run's
    ``model.onnx`` makes the model learn from its own previous generation (born-again)."""
    architecture: str | None = None
    """For a .safetensors or state-dict file: the factory that builds its module."""
    weight: float = Field(default=1.0, ge=0)
    """This teacher's share of the softened targets (normalised over all teachers)."""


class DistillSection(_Section):
    """Knowledge distillation during recovery; by default the uncompressed model is the
    teacher. ``mode`` picks the family: teachers (one or several, torch or ONNX), self
    (the model's deeper layers teach auxiliary heads on shallower ones, no teacher), or
    mutual (two copies of the compressed model learn from each other; the better is kept).
    """

    opt_in: ClassVar[bool] = True

    temperature: float = Field(default=4.0, gt=0, le=100)
    """Softens both models' scores before the KL term; higher shares more of the teacher's
    ranking of the wrong classes."""
    alpha: float = Field(default=0.7, ge=0, le=1)
    """Weight of the distillation term; 1 - alpha weighs the cross-entropy on labels."""
    features: list[FeaturePair] = Field(default_factory=list, title="Feature pairs")
    """Intermediate layers to match (student layer, teacher layer, weight)."""
    relation_weight: float = Field(default=0.0, ge=0)
    """Weight of matching the batch's pairwise similarities (relational KD); 0 is off."""
    mode: Literal["teacher", "self", "mutual"] = "teacher"
    """teacher: learn from the teachers; self: self-distillation through auxiliary heads
    (dropped at export); mutual: deep mutual learning between the model and a peer."""
    teachers: list[TeacherSource] = Field(default_factory=list)
    """The teachers (mode teacher); empty: the uncompressed model alone. Feature pairs and
    relation terms use the first; ONNX tensor names serve as its layer names."""
    teacher_weighting: Literal["fixed", "confidence"] = "fixed"
    """fixed: each teacher's weight; confidence: per sample, weight times the teacher's
    top-1 probability, so unsure teachers give way to sure ones."""
    cache: Literal["auto", "memory", "disk", "off"] = "auto"
    """Keep the frozen teachers' outputs per sample so later epochs skip the teacher: in
    memory, on disk in the run's folder, auto (disk beyond 512 MB), or off."""
    self_layers: list[str] | None = None
    """Self-distillation: layers that get an auxiliary head taught by the model's own output;
    none: the model's top-level blocks that hold weights, except its last."""
    aux_weight: float = Field(default=0.3, ge=0, le=10)
    """Self-distillation: weight of each auxiliary head's loss."""
    alpha_warmup: float = Field(default=0.0, ge=0, le=1)
    """Share of the training steps over which the KD weight rises linearly from 0 to alpha
    (pure cross entropy first, as DKD's warm-up): a student far from its teacher learns the
    labels before it matches softened scores. 0: alpha from the first step."""
    projection_init: Literal["least_squares", "random"] = "least_squares"
    """Feature pairs of different widths: start each learned projection at the least-squares
    map from the student's feature to the teacher's on calibration samples, or random."""
    logit_loss: Literal["kl", "dkd"] = "kl"
    """kl: the KL between softened scores (Hinton et al.); dkd: decoupled KD (Zhao et al.
    2022), the target-class and non-target-class parts weighed apart, so a teacher nearly sure
    of the label still passes on its ranking of the wrong classes (mode teacher)."""
    dkd_target_weight: float = Field(default=1.0, ge=0, le=100, title="DKD target weight")
    """dkd: weight of the target-class part (TCKD; DKD's alpha)."""
    dkd_nontarget_weight: float = Field(default=8.0, ge=0, le=100,
                                        title="DKD non-target weight")
    """dkd: weight of the non-target part (NCKD; DKD's beta, 8 in the paper's CIFAR runs)."""
    augment: Literal["none", "shift", "mixup"] = "none"
    """Consistent augmentation ("function matching", mode teacher): teacher and student see
    the same augmented batch, so the teacher's scores are soft where on its own training
    samples they are near one-hot. shift: images moved by up to 2 pixels; mixup: pairs of
    samples blended (labels mixed in the cross entropy). The teacher cache cannot serve new
    inputs every step, so it is off (auto) and refused when set to memory or disk."""

    @model_validator(mode="after")
    def _teacher_mode_settings(self) -> DistillSection:
        if self.mode != "teacher":
            used = [name for name, on in (("augment", self.augment != "none"),
                                          ("logit_loss dkd", self.logit_loss == "dkd")) if on]
            if used:
                raise ValueError(f"{' and '.join(used)} apply to mode teacher, not "
                                 f"{self.mode}")
        if self.augment != "none" and self.cache in ("memory", "disk"):
            raise ValueError(f"augment {self.augment} shows the teacher new inputs every step, "
                             f"so the teacher cache ({self.cache}) cannot serve them; set cache "
                             "off or auto")
        return self


class AdapterSection(_Section):
    """Recover with adapters (LoRA or DoRA through peft) instead of training every weight.

    Only the adapters train; the compressed base stays frozen (low memory: the way to recover
    large models). Rank, alpha, dropout and which layers get one are plan settings (``adapter``,
    ``adapter_rank``, ...; by default LoRA r=8 on every Linear/Conv layer). After training the
    adapters are merged into the weights, so the ONNX file has the base model's size and ops.
    """

    opt_in: ClassVar[bool] = True

    quantized_base: bool = True
    """Train over the plan's int weight bits already rounded into the frozen base weights
    (QLoRA-style, on the studio's own fake-quantized weights), so the adapter learns to
    compensate the rounding."""
    merge: bool = True
    """Fold the trained adapters into the weights before export. False keeps them beside the
    base in the file (two small float matmuls next to each adapted layer): the base's int4/int2
    MatMul weights are then rounded before training on the grid the file stores (by
    quantize.weight_method: gptq, else to nearest) and stored as they trained, so nothing is
    rounded after the adapter learned to make up for it. SmolLM2-135M, SparseGPT 2:4 + int4:
    see the README's LLM benchmark."""
    save_adapter: bool = True
    """Also write the trained adapter alone in PEFT format (adapter_config.json and
    adapter_model.safetensors in the output folder) for peft's PeftModel.from_pretrained."""


class QuantizeSection(_Section):
    """How the plan's int bits are carried out in onnxruntime."""

    calibration: Literal["minmax", "entropy", "percentile", "auto"] = "minmax"
    """How static int8 picks activation ranges on the calibration split; auto: per tensor,
    the range (min-max, percentile, entropy or MSE-optimal clip) that quantizes its values
    on the calibration split with the least error."""
    per_channel: bool = True
    """One weight scale per output channel instead of one per tensor (more accurate); QAT
    exports always use one per channel."""
    qat: bool = False
    """Fine-tune with fake quantization at the plan's bits before exporting."""
    weight_method: Literal["rtn", "gptq", "hqq"] = "rtn"
    """How int4/int2 (and weight-only int8) MatMul weights are rounded: rtn (to nearest, in
    onnxruntime), gptq (column by column, moving each rounding error onto the columns still to
    come, from the calibration split; the transformer's block Linear layers, in torch) or hqq
    (onnxruntime's half-quadratic fit of each group's scale and zero point; no data)."""
    act_order: bool = True
    """GPTQ takes the inputs with the largest calibration activations first (``desc_act``),
    every group's scale fitted beforehand on the original weights (static groups), so the
    file's groups stay runs of consecutive inputs. SmolLM2-135M int4 g128: perplexity 1.13x
    dense with it, 1.24x without (round to nearest 1.23x)."""
    symmetric: bool = False
    """Block-wise integer weights without a zero point (symmetric grid): a little smaller,
    usually a little less accurate. HQQ always fits a zero point."""
    weight_only: bool = False
    """int8 weights with float activations on MatMul/Gemm: 8-bit weight-only MatMulNBits
    (float compute) instead of dynamic int8, and int8 token embeddings 8-bit
    GatherBlockQuantized lookups (a tied LM head sharing them). Keeps accuracy closest to fp32,
    but on CPU it runs no faster than fp32; dynamic int8 is smaller and faster."""
    int8_path: Literal["auto", "static", "dynamic"] = "auto"
    """Where int8 layers leave act_bits unset: auto quantizes convolutions static (dynamic
    int8 convolutions run several times slower than fp32 on CPU) and a model without them
    dynamic (MatMul-only transformers keep more accuracy so); static or dynamic force one.
    act_bits int8 always means static, act_bits fp32 dynamic."""
    equalize: bool = False
    """Cross-layer equalization before static int8: rescale the output channels of each
    Conv/Gemm -> (ReLU) -> Conv/Gemm pair so both weights share one range per channel (helps
    depthwise convolutions, whose channel ranges differ by orders of magnitude)."""
    bias_correction: bool = False
    """After int8 quantization, fold each Conv/Gemm's expected output shift from weight
    rounding (measured on the calibration split) back into its bias."""
    max_drop: float | None = Field(default=None, ge=0)
    """Accuracy-aware: the largest drop in the task's metric quantization may cause, in the
    metric's units (accuracy 0.001 = 0.1 point; a fraction of the float score when
    max_drop_relative). Layers whose float copy helps most are kept float, fewest first,
    until it is met; the best file found is kept when it cannot be. None: off."""
    max_drop_relative: bool = False
    """max_drop is a fraction of the float model's score instead of metric units."""
    max_float_layers: int = Field(default=8, ge=1, le=1000)
    """Accuracy-aware: keep at most this many layers float before giving up."""
    smooth_alpha: float | None = Field(default=None, ge=0, le=1)
    """SmoothQuant: before static int8, move activation outliers into the weights of each
    MatMul/Gemm fed by a LayerNorm (scale s = max|x|^a / max|w|^(1-a)); 0.5 is the usual
    choice for transformers. None: off."""


class ExportSection(_Section):
    """The ONNX file and how its speed is measured."""

    opset: int = Field(default=17, ge=13, le=23)
    """ONNX opset of the exported files (per-channel int8 needs 13 or more)."""
    latency_batch: int = Field(default=64, ge=1, le=4096)
    """Batch size timed beside batch 1."""
    latency_repeats: int = Field(default=20, ge=1, le=10_000)
    """Timed runs per batch size (the median is reported)."""
    kv_cache: bool = Field(default=False, title="KV cache")
    """Causal LMs: also write ``model-kv.onnx``, the compressed model with its key/value cache
    for generating text (float weights), checked against torch's greedy tokens and timed per
    new token with and without the cache."""
