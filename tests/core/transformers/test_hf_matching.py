"""Output matching on a transformer also matches every encoder block's hidden states, on real
tokens only: a real tiny BERT, real training steps."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from studio.core.methods.distill import OutputMatchingLoss
from studio.core.models.hf import load_hf_folder

pytest.importorskip("transformers")

BLOCKS = ("model.encoder.layer.0", "model.encoder.layer.1")


def _ids() -> torch.Tensor:
    generator = torch.Generator().manual_seed(3)
    ids = torch.randint(4, 100, (8, 10), generator=generator)
    ids[:, 6:] = 0  # padding
    return ids


def _teacher(folder: Path) -> torch.nn.Module:
    return load_hf_folder(folder).module.eval()


def test_a_copy_of_the_original_matches_it_exactly(tiny_bert: Path) -> None:
    teacher = _teacher(tiny_bert)
    loss = OutputMatchingLoss(teacher, "embedding", blocks=BLOCKS, pad_token_id=0)
    assert loss(copy.deepcopy(teacher), _ids()).item() == pytest.approx(0.0, abs=1e-6)


def test_padding_tokens_are_left_out_of_the_hidden_states(tiny_bert: Path) -> None:
    teacher = _teacher(tiny_bert)
    student = copy.deepcopy(teacher)
    torch.manual_seed(0)
    with torch.no_grad():  # changes only what padding positions carry
        student.model.embeddings.word_embeddings.weight[0] += torch.randn(32)
    ids = _ids()
    assert torch.allclose(student(ids), teacher(ids), atol=1e-5)
    masked = OutputMatchingLoss(teacher, "embedding", blocks=BLOCKS, pad_token_id=0)
    unmasked = OutputMatchingLoss(teacher, "embedding", blocks=BLOCKS)
    assert masked(student, ids).item() == pytest.approx(0.0, abs=1e-5)
    assert unmasked(student, ids).item() > 0.01


def test_training_on_it_brings_a_damaged_block_back(tiny_bert: Path) -> None:
    teacher = _teacher(tiny_bert)
    student = copy.deepcopy(teacher)
    torch.manual_seed(0)
    damaged = student.model.encoder.layer[0].output.dense.weight
    with torch.no_grad():
        damaged.add_(0.2 * torch.randn_like(damaged))
    matching = OutputMatchingLoss(teacher, "embedding", blocks=BLOCKS, pad_token_id=0)
    output_only = OutputMatchingLoss(teacher, "embedding")
    ids = _ids()
    before, before_output = matching(student, ids).item(), output_only(student, ids).item()
    assert before > before_output  # the hidden states add their own distance
    optimizer = torch.optim.AdamW(student.parameters(), lr=1e-3)
    for _ in range(30):
        optimizer.zero_grad()
        matching(student, ids).backward()
        optimizer.step()
    assert matching(student, ids).item() < 0.1 * before
    assert output_only(student, ids).item() < 0.1 * before_output
    matching.close()
    output_only.close()
    assert not any(m._forward_hooks for m in [*student.modules(), *teacher.modules()])
