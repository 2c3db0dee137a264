"""Hugging Face model folders (``config.json`` + ``*.safetensors``) and sentence-transformer ones.

``transformers`` is an optional extra, imported only here. Loading runs no code from the folder:
the architecture must be one of transformers' own classes (``trust_remote_code`` is never
passed, and a config asking for its own code is refused), and weights are read from safetensors
only, never from pickled ``pytorch_model.bin`` files.

The model is wrapped in :class:`TokenModel`, whose forward takes one int64 tensor of token ids
(batch × sequence) and derives the attention mask from the padding token inside, so the studio
keeps its one example input, padded batches still work, and the exported ONNX file has one
input. A causal language model (``*ForCausalLM``, GPT-2's ``*LMHeadModel``) gives its next-token
logits and attends to every token: its text comes in full fixed-length blocks, never padded.
A sentence-transformers folder gives the sentence embedding its ``modules.json`` describes
(pooling, then normalization when listed); this is hand-written (a few lines) rather than
importing ``sentence-transformers``, which would add its own dependencies for three tensor ops.
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
import torch.nn.functional as F
from safetensors import SafetensorError, safe_open
from torch import Tensor, nn

from studio.core.errors import ModelLoadError, TooLargeError
from studio.core.limits import check_declared_bytes
from studio.core.models.inputs import InputSpec
from studio.core.models.loaded import LoadedModel

FORMAT = "huggingface"
INSTALL_HINT = "install compression-studio[transformers]"
EXAMPLE_LENGTH = 128
"""Tokens in the example input (capped by the model's maximum length)."""
POOLING_MODES = ("mean", "cls", "max")
CONFIG_SLACK = 2
"""How many times more weights config.json may describe than the files hold (weights the files
leave out, such as a pooler, are initialised by transformers)."""
CAUSAL_OUTPUT = "next-token logits"
CAUSAL_SUFFIXES = ("ForCausalLM", "LMHeadModel")
"""How transformers names its causal language models (LLaMA, Qwen2, Mistral; GPT-2)."""
_POOLING_KEYS = {"pooling_mode_mean_tokens": "mean", "pooling_mode_cls_token": "cls",
                 "pooling_mode_max_tokens": "max"}


def is_hf_folder(path: Path) -> bool:
    """A folder holding a ``config.json``: what a Hugging Face model is saved as."""
    return path.is_dir() and (path / "config.json").is_file()


def transformers_module(folder: Path) -> ModuleType:
    try:
        import transformers
    except ImportError as error:
        raise ModelLoadError(f"{folder}: a Hugging Face model folder needs the transformers "
                             f"package; {INSTALL_HINT}") from error
    return transformers


@contextlib.contextmanager
def quiet(transformers: ModuleType) -> Iterator[None]:
    """No progress bars or weight-loading chatter on the console while loading."""
    logging = transformers.utils.logging
    verbosity, bars = logging.get_verbosity(), logging.is_progress_bar_enabled()
    logging.set_verbosity_error()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        logging.set_verbosity(verbosity)
        if bars:
            logging.enable_progress_bar()


class TokenModel(nn.Module):
    """A Hugging Face model behind a one-tensor forward: ``input_ids`` in, one tensor out.

    ``output``: ``last_hidden_state`` (batch × sequence × hidden, zero at padding positions, so
    that cosine agreement and output matching weigh real tokens only), ``logits`` (a classifier's),
    or ``embedding`` (pooled over the non-padding tokens with ``pooling``, then L2-normalized
    when ``normalize``), as a sentence-transformers folder describes it.
    """

    def __init__(self, model: nn.Module, pad_token_id: int | None, output: str,
                 pooling: str | None = None, normalize: bool = False) -> None:
        super().__init__()
        self.onnx_exporter = "dynamo" if output == CAUSAL_OUTPUT else "torchscript"
        """Causal LMs need the dynamo exporter: TorchScript fails on their mask code
        (``aten::diff`` at opset 17 on SmolLM2)."""
        self.model = model
        self.pad_token_id = pad_token_id
        self.output = output
        self.pooling = pooling
        self.normalize = normalize

    def forward(self, input_ids: Tensor) -> Tensor:
        if self.output == CAUSAL_OUTPUT:
            return self.model(input_ids=input_ids, use_cache=False).logits
        if self.pad_token_id is None:
            mask = torch.ones_like(input_ids, dtype=torch.bool)
        else:
            mask = input_ids != self.pad_token_id
        result = self.model(input_ids=input_ids, attention_mask=mask.long())
        if self.output == "logits":
            return result.logits
        hidden = result.last_hidden_state
        if self.output != "embedding":  # what padding positions carry is never used
            return hidden * mask.unsqueeze(-1).to(hidden.dtype)
        if self.pooling == "cls":
            pooled = hidden[:, 0]
        elif self.pooling == "max":
            pooled = hidden.masked_fill(~mask.unsqueeze(-1), -1e9).max(dim=1).values
        else:  # mean over the real tokens, as sentence-transformers computes it
            weights = mask.unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9)
        return F.normalize(pooled, dim=-1) if self.normalize else pooled


def _read_json(path: Path, folder: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ModelLoadError(f"{folder}: {path.name} is not readable JSON ({error})") from error


def _sentence_head(folder: Path) -> tuple[str, bool] | None:
    """(pooling mode, normalize) of a sentence-transformers folder; None for a plain one."""
    modules_path = folder / "modules.json"
    if not modules_path.is_file():
        return None
    modules = _read_json(modules_path, folder)
    if not isinstance(modules, list):
        raise ModelLoadError(f"{folder}: modules.json should list the model's modules")
    pooling, normalize = None, False
    for entry in modules:
        kind = str(entry.get("type", "")).rsplit(".", 1)[-1] if isinstance(entry, dict) else ""
        if kind == "Transformer" and entry.get("path", "") in ("", "."):
            continue
        if kind == "Pooling":
            config = _read_json(folder / str(entry.get("path", "")) / "config.json", folder)
            modes = [mode for key, mode in _POOLING_KEYS.items() if config.get(key)]
            others = [key for key, value in config.items()
                      if key.startswith("pooling_mode") and value and key not in _POOLING_KEYS]
            if len(modes) != 1 or others:
                raise ModelLoadError(f"{folder}: pooling {', '.join(modes + others) or 'none'}: "
                                     f"the studio pools with one of {', '.join(POOLING_MODES)}")
            pooling = modes[0]
        elif kind == "Normalize":
            normalize = True
        else:
            raise ModelLoadError(f"{folder}: sentence-transformers module {kind or entry!r} "
                                 "is not supported (Transformer, Pooling and Normalize are)")
    if pooling is None:
        raise ModelLoadError(f"{folder}: modules.json lists no Pooling module")
    return pooling, normalize


def _check_config(folder: Path) -> dict[str, Any]:
    raw = _read_json(folder / "config.json", folder)
    if not isinstance(raw, dict) or "model_type" not in raw:
        raise ModelLoadError(f"{folder}: config.json names no model_type; not a Hugging Face "
                             "model folder")
    if raw.get("auto_map"):
        raise ModelLoadError(f"{folder}: the model needs code stored with it (auto_map in "
                             "config.json); the studio never runs such code. Export it to ONNX "
                             "and open that file instead")
    if not any(folder.glob("*.safetensors")):
        raise ModelLoadError(f"{folder}: no .safetensors weights; the studio reads only "
                             "safetensors (pytorch_model.bin files are pickles). Save the model "
                             "with save_pretrained(..., safe_serialization=True)")
    return raw


def _weights_in_files(folder: Path) -> tuple[int, int]:
    """(elements, tensors) the folder's safetensors files hold, from their headers alone."""
    elements = tensors = 0
    for path in sorted(folder.glob("*.safetensors")):
        try:
            with safe_open(str(path), framework="pt") as handle:
                for key in handle.keys():  # noqa: SIM118 - a safe_open handle is not a dict
                    elements += math.prod(handle.get_slice(key).get_shape())
                    tensors += 1
        except (SafetensorError, OSError, ValueError) as error:
            raise ModelLoadError(f"{path}: not a readable safetensors file ({error})") from error
    return elements, tensors


def _check_config_fits_weights(folder: Path, config: Any, auto: Any) -> None:
    """Refuse a config.json describing a far bigger model than the weight files hold, before
    transformers allocates it: huge dimensions would otherwise take the machine's memory for
    weights that do not exist. The model is built on the meta device (no memory) to count what
    the config describes; the layer count is checked first, since building a skeleton of
    millions of layers would itself take long."""
    elements, tensors = _weights_in_files(folder)
    layers = getattr(config, "num_hidden_layers", None)
    if isinstance(layers, int) and layers > tensors:
        raise TooLargeError(f"{folder}: config.json describes {layers:,} layers but the weight "
                            f"files hold {tensors:,} tensors; the config does not fit the "
                            "weights")
    with torch.device("meta"):
        skeleton = auto.from_config(config, trust_remote_code=False)
    described = sum(t.numel() for t in (*skeleton.parameters(), *skeleton.buffers()))
    if described > CONFIG_SLACK * elements + (1 << 20):
        raise TooLargeError(f"{folder}: config.json describes {described:,} weights but the "
                            f"weight files hold {elements:,}; the config does not fit the "
                            "weights (refused before allocating them)")
    check_declared_bytes(folder, described * 4, "the model config.json describes")


def load_hf_folder(folder: Path) -> LoadedModel:
    """Open a Hugging Face (or sentence-transformers) folder as a :class:`TokenModel`."""
    folder = Path(folder)
    raw = _check_config(folder)
    head = _sentence_head(folder)
    transformers = transformers_module(folder)
    architectures = [str(a) for a in raw.get("architectures") or []]
    classifier = head is None and any(a.endswith("ForSequenceClassification")
                                      for a in architectures)
    causal = head is None and not classifier and is_causal_lm(architectures)
    auto = (transformers.AutoModelForSequenceClassification if classifier
            else transformers.AutoModelForCausalLM if causal else transformers.AutoModel)
    try:
        with quiet(transformers):
            config = transformers.AutoConfig.from_pretrained(
                str(folder), local_files_only=True, trust_remote_code=False)
            _check_config_fits_weights(folder, config, auto)
            model, info = auto.from_pretrained(
                str(folder), config=config, local_files_only=True, trust_remote_code=False,
                use_safetensors=True, attn_implementation="eager", output_loading_info=True)
    except ModelLoadError:
        raise
    except Exception as error:  # transformers raises many types for unknown or bad folders
        first = first_line(error)
        if "ignore_mismatched_sizes" in first:
            raise ModelLoadError(f"{folder}: the weights do not fit config.json: tensor shapes "
                                 "differ from the ones it describes") from error
        raise ModelLoadError(f"{folder}: transformers {transformers.__version__} cannot load "
                             f"model type {raw['model_type']!r}: {first}") from error
    if not classifier and getattr(model, "pooler", None) is not None:
        model.pooler = None  # BERT's pooler feeds only outputs the studio does not return
    missing = [k for k in info.get("missing_keys", []) if not k.startswith("pooler.")]
    broken = missing + [str(k) for k in info.get("mismatched_keys", [])]
    if broken:
        more = f" and {len(broken) - 3} more" if len(broken) > 3 else ""
        raise ModelLoadError(f"{folder}: the weights do not fit config.json: missing or "
                             f"mismatched {', '.join(map(str, broken[:3]))}{more}")
    if causal:
        return causal_lm(model, folder, FORMAT, str(raw["model_type"]))
    pad = getattr(config, "pad_token_id", None)
    if head is not None:
        wrapper = TokenModel(model, pad, "embedding", *head)
        output = f"sentence embedding ({head[0]} pooling{', normalized' if head[1] else ''})"
    else:
        output = "logits" if classifier else "last_hidden_state"
        wrapper = TokenModel(model, pad, output)
    longest = getattr(config, "max_position_embeddings", None) or EXAMPLE_LENGTH
    name = architectures[0] if architectures else type(model).__name__
    return LoadedModel(
        name=folder.name, path=folder, format=FORMAT, module=wrapper.eval(),
        architecture=None, example=InputSpec((1, min(EXAMPLE_LENGTH, int(longest))), "int64"),
        metadata={"model_type": str(raw["model_type"]), "architecture": name, "output": output,
                  "pad_token_id": str(pad)})


def is_causal_lm(architectures: Sequence[str]) -> bool:
    """Whether config.json's ``architectures`` name a causal language model."""
    return any(a.endswith(CAUSAL_SUFFIXES) for a in architectures)


def first_line(error: BaseException) -> str:
    """The first line of an exception's message (transformers' run to many lines)."""
    text = str(error).strip()
    return text.splitlines()[0] if text else repr(error)


def causal_lm(model: nn.Module, path: Path, file_format: str, model_type: str,
              metadata: dict[str, str] | None = None) -> LoadedModel:
    """A loaded causal LM as the studio holds it: next-token logits for every position, no
    key/value cache (the exported file recomputes the whole block), ties left as they were."""
    model.config.use_cache = False
    config = model.config
    longest = getattr(config, "max_position_embeddings", None) or EXAMPLE_LENGTH
    architectures = getattr(config, "architectures", None) or [type(model).__name__]
    head = model.get_output_embeddings()
    tied = head is not None and head.weight is model.get_input_embeddings().weight
    return LoadedModel(
        name=path.name, path=path, format=file_format,
        module=TokenModel(model, None, CAUSAL_OUTPUT).eval(), architecture=None,
        example=InputSpec((1, min(EXAMPLE_LENGTH, int(longest))), "int64"),
        metadata={"model_type": model_type, "architecture": str(architectures[0]),
                  "output": CAUSAL_OUTPUT, "lm_head": "tied to the token embeddings" if tied
                  else "its own weights", **(metadata or {})})


def load_tokenizer(path: str | Path) -> Any:
    """The tokenizer stored with a model: a folder's tokenizer files, or the vocabulary inside
    a ``.gguf`` file. Runs no code from either (``trust_remote_code`` is never passed)."""
    path = Path(path)
    transformers = transformers_module(path)
    gguf = {"gguf_file": path.name} if path.is_file() else {}
    try:
        with quiet(transformers):
            return transformers.AutoTokenizer.from_pretrained(
                str(path.parent if gguf else path), local_files_only=True,
                trust_remote_code=False, **gguf)
    except Exception as error:  # missing or unreadable tokenizer files
        raise ModelLoadError(f"{path}: no usable tokenizer ({first_line(error)})") from error


def tokenize(folder: str | Path, texts: Sequence[str], max_length: int = EXAMPLE_LENGTH
             ) -> Tensor:
    """Token ids (int64, batch × ``max_length``, padded and truncated) of ``texts``, with the
    folder's own tokenizer: how text becomes the inputs the opened model takes."""
    tokenizer = load_tokenizer(folder)
    encoded = tokenizer(list(texts), padding="max_length", truncation=True,
                        max_length=max_length, return_tensors="pt")
    return encoded["input_ids"].to(torch.int64)
