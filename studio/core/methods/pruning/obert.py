"""Unstructured pruning with second-order scores and updates: the Optimal BERT Surgeon (oBERT,
Kurtic et al. 2022), block-wise.

The loss change of zeroing weight ``q`` and letting the others compensate is, to second order,
``w_q² / (2 [F⁻¹]_qq)``, where ``F`` is the Hessian, approximated by the empirical Fisher
``λI + (1/m) Σ g gᵀ`` over ``m`` loss gradients. A full ``F`` has ``numel²`` entries, so, as in
oBERT, it is kept block-diagonal: blocks of ``block`` consecutive weights of a row, each a small
dense matrix whose inverse is built gradient by gradient with the Woodbury identity (nothing but
``block × numel`` numbers, never the gradients themselves). The weights with the smallest
scores go; the others in their block then take the optimal-brain-surgeon update
``δw = -F⁻¹[:, Q] (F⁻¹[Q, Q])⁻¹ w_Q`` for the set ``Q`` removed there, all blocks solved at once.

Written by hand: the reference implementation lives inside Neural Magic's SparseML training
recipes (with its own trainer and distillation); the studio needs only the scores and the
update on its own models and data.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.utils.data import TensorDataset

from studio.core.data.task import batches
from studio.core.errors import StudioError
from studio.core.methods.pruning.masks import MaskSet, layer_weight
from studio.core.train.loop import LossFn, cross_entropy
from studio.core.util import first_tensor

BLOCK = 32
"""Weights per Fisher block (oBERT uses 50; a power of two keeps rows of common widths whole)."""
GRADIENTS = 256
"""Loss gradients the Fisher is built from, one per sample as oBERT's empirical Fisher."""
GRADIENT_BATCH = 1
SCALE_GRADIENTS = 16
"""Gradients taken into the inverse together; the first ones also set the damping's scale."""
DAMP = 1.0
"""λ relative to the Fisher's mean diagonal entry, so the damping follows the loss's scale.
On the demo, one-shot at 50% of every conv and linear (magnitude: 73.2%), λ 0.01/0.1/1/10 gave
94.2/88.4/96.9/97.8%; at 70% (magnitude: 22.7%) 22.0/60.0/47.9/33.8%."""
MEMORY_LIMIT_BYTES = 4 * 2**30
"""Inverse-Fisher blocks beyond this are refused with a way out (a smaller block)."""


def _padded(weight: Tensor, block: int) -> Tensor:
    """``weight`` flattened row by row and cut into blocks (zero-padded at the end)."""
    flat = weight.detach().reshape(-1).float()
    pad = (-len(flat)) % block
    return torch.cat([flat, flat.new_zeros(pad)]).view(-1, block)


class BlockFisherInverse:
    """The inverse of one layer's block-diagonal empirical Fisher, ``[blocks, B, B]``."""

    def __init__(self, weight: Tensor, block: int, damp: float) -> None:
        blocks = _padded(weight, block).shape[0]
        self.block = block
        self.inverse = torch.eye(block).repeat(blocks, 1, 1) / damp
        self.count = 0

    def add(self, gradients: Sequence[Tensor], total: int) -> None:
        """``k`` gradients into ``(λI + (1/total) Σ g gᵀ)⁻¹`` at once, per block (Woodbury:
        ``F⁻¹ - F⁻¹G (total·I + Gᵀ F⁻¹ G)⁻¹ Gᵀ F⁻¹``): a k×k solve per block and one pass over
        the inverse, instead of k passes of rank-one updates."""
        g = torch.stack([_padded(gradient, self.block) for gradient in gradients], dim=-1)
        fg = torch.bmm(self.inverse, g)
        small = torch.bmm(g.transpose(1, 2), fg)
        small.diagonal(dim1=1, dim2=2).add_(total)
        self.inverse.baddbmm_(fg, torch.linalg.solve(small, fg.transpose(1, 2)), alpha=-1.0)
        self.count += len(gradients)

    def diagonal(self, shape: torch.Size) -> Tensor:
        flat = torch.diagonal(self.inverse, dim1=1, dim2=2).reshape(-1)
        return flat[:shape.numel()].view(shape)

    def update(self, weight: Tensor, keep: Tensor) -> Tensor:
        """``weight`` with the removed entries zero and the kept ones in their block moved by
        the optimal-brain-surgeon update for the whole removed set of that block."""
        w = _padded(weight, self.block).double()
        removed = ~_padded(keep.to(torch.float32), self.block).bool()
        removed.view(-1)[weight.numel():] = False  # the padding is not a weight
        r = removed.double()
        inverse = self.inverse.double()
        # F⁻¹ on the removed set, identity elsewhere: one batched solve for every block
        restricted = inverse * r[:, :, None] * r[:, None, :] + torch.diag_embed(1 - r)
        solved = torch.linalg.solve(restricted, (w * r).unsqueeze(-1))
        moved = w - torch.bmm(inverse, solved).squeeze(-1)
        moved[removed] = 0.0
        return moved.reshape(-1)[:weight.numel()].view(weight.shape).to(weight.dtype)


def output_fisher_loss(seed: int = 0) -> LossFn:
    """For data without labels: ``v · f(x)`` with a fresh Gaussian ``v`` per call, whose
    gradient ``Jᵀv`` has ``E[g gᵀ] = JᵀJ``, the Fisher of the outputs under a Gaussian
    likelihood (as the heads' mask search takes it)."""
    generator = torch.Generator().manual_seed(seed)

    def loss(model: nn.Module, inputs: Tensor, _labels: Tensor | None) -> Tensor:
        output = first_tensor(model(inputs))
        if output is None:
            raise StudioError("prune.importance: obert needs the model to return a tensor")
        return (output * torch.randn(output.shape, generator=generator).to(output)).sum()
    return loss


def _gradient_steps(model: nn.Module, data: TensorDataset, loss_fn: LossFn, count: int,
                    batch_size: int) -> Iterator[int]:
    """``count`` mini-batch backward passes, each leaving its loss gradient in ``param.grad``
    (the caller keeps the model in eval mode: no dropout, no batch-norm updates)."""
    device = next(model.parameters()).device
    for index, batch in enumerate(batches(data, batch_size)):
        if index >= count:
            return
        inputs, labels = batch[0].to(device), batch[1].to(device) if len(batch) > 1 else None
        model.zero_grad(set_to_none=True)
        loss_fn(model, inputs, labels).backward()
        yield index


@dataclass
class BlockFisher:
    """Per layer, the inverse block Fisher and the oBERT score of every weight."""

    inverses: dict[str, BlockFisherInverse]
    scores: dict[str, Tensor]
    report: dict[str, object]

    def update(self, model: nn.Module, masks: MaskSet) -> None:
        """Zero what ``masks`` removes and move the kept weights of each block to make up
        for it (layers without a mask here are left alone)."""
        with torch.no_grad():
            for name, inverse in self.inverses.items():
                if name in masks:
                    weight = layer_weight(model, name)
                    weight.copy_(inverse.update(weight, masks[name]))


def block_fisher(model: nn.Module, names: Sequence[str], data: TensorDataset,
                 loss_fn: LossFn = cross_entropy, block: int = BLOCK,
                 gradients: int = GRADIENTS, damp: float = DAMP,
                 check: Callable[[], None] | None = None) -> BlockFisher:
    """Scores ``w² / (2 [F⁻¹]_qq)`` of each named layer's weights, from ``gradients``
    per-sample gradients of ``loss_fn`` on ``data`` (the task loss on labelled data,
    :func:`output_fisher_loss` without labels)."""
    weights = {name: layer_weight(model, name) for name in names}
    needed = sum(-(-w.numel() // block) * block * block * 4 for w in weights.values())
    if needed > MEMORY_LIMIT_BYTES:
        raise StudioError(f"prune.importance: obert needs {needed / 2**30:.1f} GB for its "
                          f"inverse-Fisher blocks of {block}; prune fewer layers with it or "
                          "use sparsegpt (layer by layer, far less memory)")
    usable = min(gradients, len(data) // GRADIENT_BATCH)
    if usable < 1:
        raise StudioError(f"prune.importance: obert builds its Fisher from loss gradients on "
                          f"the calibration split; {len(data)} samples is too few")
    training = model.training
    model.eval()
    inverses: dict[str, BlockFisherInverse] = {}
    held: list[dict[str, Tensor]] = []
    try:
        for step in _gradient_steps(model, data, loss_fn, usable, GRADIENT_BATCH):
            if check is not None:
                check()
            held.append({name: w.grad.detach().float() if w.grad is not None
                         else torch.zeros_like(w, dtype=torch.float32)
                         for name, w in weights.items()})
            if len(held) < SCALE_GRADIENTS and step + 1 < usable:
                continue
            if not inverses:  # λ on the scale of the Fisher's mean diagonal entry
                scale = torch.stack([torch.cat([g.reshape(-1) for g in grads.values()])
                                     .pow(2).mean() for grads in held]).mean()
                lam = float(damp * max(float(scale), 1e-12))
                inverses = {name: BlockFisherInverse(w, block, lam)
                            for name, w in weights.items()}
            for name, inverse in inverses.items():
                inverse.add([grads[name] for grads in held], usable)
            held.clear()
    finally:
        model.zero_grad(set_to_none=True)
        model.train(training)
    scores = {name: weights[name].detach().float().pow(2)
              / (2 * inverses[name].diagonal(weights[name].shape)) for name in weights}
    return BlockFisher(inverses, scores, {"gradients": usable, "block": block, "damp": damp})
