"""A short greedy continuation of a prompt by a causal LM, so a user sees what a perplexity
figure means for the text the model writes.

Hand-written (a few lines) rather than ``transformers``' ``generate``: the studio holds the model
behind :class:`~studio.core.models.hf.TokenModel` (ids in, logits out), which pruned and
fake-quantized copies keep, and a greedy loop needs nothing else. Without a key/value cache each
step reruns the whole sequence; for a few dozen tokens that costs well under a second.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


@torch.no_grad()
def greedy_ids(model: nn.Module, prompt: torch.Tensor, new_tokens: int,
               stop: int | None = None) -> torch.Tensor:
    """``prompt`` (1-D token ids) followed by up to ``new_tokens`` arg-max tokens; ends early
    at ``stop`` (the end-of-text token)."""
    ids = prompt.to(torch.int64)[None]
    device = next(model.parameters(), torch.empty(0)).device
    was_training = model.training
    model.eval()
    try:
        for _ in range(new_tokens):
            logits = model(ids.to(device))
            following = int(logits[0, -1].argmax())
            ids = torch.cat([ids, torch.tensor([[following]])], dim=1)
            if following == stop:
                break
    finally:
        model.train(was_training)
    return ids[0]


def greedy_text(model: nn.Module, tokenizer: Any, prompt: str, new_tokens: int) -> str:
    """The text ``model`` writes after ``prompt`` (without the prompt), greedily."""
    prompt_ids = torch.tensor(tokenizer(prompt, add_special_tokens=False)["input_ids"])
    if len(prompt_ids) == 0:
        return ""
    ids = greedy_ids(model, prompt_ids, new_tokens, tokenizer.eos_token_id)
    return str(tokenizer.decode(ids[len(prompt_ids):], skip_special_tokens=True))
