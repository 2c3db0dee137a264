"""Second-order structured pruning of attention heads and FFN units: the mask search and mask
rearrangement of Kwon et al. 2022 ("A Fast Post-Training Pruning Framework for Transformers");
their third step, the least-squares re-fit, is :mod:`.reconstruct`.

A mask variable m (all ones) scales each head's slice, or each FFN unit, at the input of the
block's output projection. Setting some to zero raises the output distortion by about
``½ zᵀ F z`` (z: 1 where a unit goes), where F is the Fisher information of the masks. F is taken
for the model's outputs under a Gaussian likelihood (the Gauss-Newton matrix JᵀJ, so no labels
are needed) and estimated with random output directions: for v ~ N(0, I) the mask gradient
g = ∂(v·f)/∂m has E[g gᵀ] = JᵀJ. ``∂/∂m`` at m = 1 is the sum over tokens of input × gradient of
the projection's input, so one backward pass per batch gives every layer's per-sample g.

- search: in each layer, the units with the smallest diagonal F_ii go first;
- rearrangement: within each layer, the set is re-chosen with the layer's whole Fisher block
  (Kwon's block-diagonal approximation), greedily then by swaps, which sees that two units
  doing the same work should not both go.

Hand-written: no library computes mask Fisher for hooked sub-layers of arbitrary models.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from studio.core.util import first_tensor

FISHER_SAMPLES = 1024
"""Calibration samples the Fisher is estimated on (enough for a stable ranking; more costs
time linearly)."""
FFN_OUTPUTS = {".intermediate.dense": ".output.dense", ".linear1": ".linear2",
               ".up_proj": ".down_proj", ".fc1": ".fc2"}
"""An FFN's first Linear (how the plan names an FFN) -> the Linear its hidden units feed."""


@dataclass(frozen=True)
class MaskSite:
    """Where one layer's masks sit: the input of ``projection``, ``unit`` features per mask."""

    projection: str
    unit: int
    count: int


def ffn_site(model: nn.Module, first: str) -> MaskSite | None:
    """The masks of the FFN whose first Linear is ``first``; None for an unknown layout."""
    modules = dict(model.named_modules())
    for suffix, output in FFN_OUTPUTS.items():
        if first.endswith(suffix):
            name = first[: -len(suffix)] + output
            layer = modules.get(name)
            if isinstance(layer, nn.Linear):
                return MaskSite(name, 1, layer.in_features)
    return None


def head_site(model: nn.Module, attention: str, output: str, num_heads: int) -> MaskSite:
    """The masks of an attention's heads: slices of its output projection's input."""
    projection = model.get_submodule(f"{attention}.{output}")
    return MaskSite(f"{attention}.{output}", projection.in_features // num_heads, num_heads)


def mask_fisher(model: nn.Module, sites: Mapping[str, MaskSite], inputs: Tensor,
                batch_size: int = 32, seed: int = 0,
                check: Callable[[], None] | None = None) -> dict[str, Tensor]:
    """The Fisher block (count x count, float64) of each site's masks, averaged over
    ``inputs`` (at most :data:`FISHER_SAMPLES`). The model is left unchanged."""
    inputs = inputs[:FISHER_SAMPLES]
    captured: dict[str, Tensor] = {}
    handles = []
    for name, site in sites.items():
        def keep(_module: nn.Module, args: tuple, name: str = name) -> None:
            captured[name] = args[0]
        handles.append(model.get_submodule(site.projection).register_forward_pre_hook(keep))
    fisher = {name: torch.zeros(site.count, site.count, dtype=torch.float64)
              for name, site in sites.items()}
    generator = torch.Generator().manual_seed(seed)
    device = next(model.parameters()).device
    training = model.training
    model.eval()
    try:
        for start in range(0, len(inputs), batch_size):
            if check is not None:
                check()
            batch = inputs[start:start + batch_size].to(device)
            with torch.enable_grad():
                output = first_tensor(model(batch))
                assert output is not None, "the model returned no tensor"
                direction = torch.randn(output.shape, generator=generator).to(output)
                names = [name for name in sites if captured.get(name) is not None
                         and captured[name].requires_grad]
                grads = torch.autograd.grad((output * direction).sum(),
                                            [captured[name] for name in names],
                                            allow_unused=True)
            for name, grad in zip(names, grads, strict=True):
                if grad is None:
                    continue
                site = sites[name]
                per_sample = (captured[name].detach() * grad).reshape(
                    len(batch), -1, site.count, site.unit).sum(dim=(1, 3)).double().cpu()
                fisher[name] += per_sample.T @ per_sample
            captured.clear()
    finally:
        for handle in handles:
            handle.remove()
        model.train(training)
    return {name: block / max(1, len(inputs)) for name, block in fisher.items()}


def removal_cost(fisher: Tensor, removed: list[int]) -> float:
    """½ zᵀ F z: the estimated rise in output distortion when ``removed`` go."""
    z = torch.zeros(len(fisher), dtype=fisher.dtype)
    z[removed] = 1.0
    return float(0.5 * z @ fisher @ z)


def _greedy(fisher: Tensor, remove: int) -> list[int]:
    """Add one unit at a time: the one whose removal, given those already chosen, costs least."""
    diagonal = fisher.diagonal()
    cross = torch.zeros_like(diagonal)
    chosen: list[int] = []
    free = torch.ones(len(fisher), dtype=torch.bool)
    for _ in range(remove):
        cost = torch.where(free, diagonal + 2 * cross, torch.inf)
        pick = int(torch.argmin(cost))
        chosen.append(pick)
        free[pick] = False
        cross += fisher[:, pick]
    return chosen


def _swap(fisher: Tensor, removed: list[int], passes: int = 200) -> list[int]:
    """Exchange a removed and a kept unit while that lowers zᵀ F z."""
    z = torch.zeros(len(fisher), dtype=torch.bool)
    z[removed] = True
    diagonal = fisher.diagonal()
    for _ in range(passes):
        s = fisher @ z.to(fisher.dtype)
        out_idx, in_idx = torch.nonzero(z).flatten(), torch.nonzero(~z).flatten()
        if not len(out_idx) or not len(in_idx):
            break
        gain = -(2 * s[out_idx] - diagonal[out_idx])[:, None]
        add = diagonal[in_idx][None, :] + 2 * (s[in_idx][None, :] - fisher[out_idx][:, in_idx])
        delta = gain + add
        best = int(torch.argmin(delta))
        if float(delta.flatten()[best]) >= -1e-12 * float(diagonal.abs().max()):
            break
        i, j = divmod(best, len(in_idx))
        z[out_idx[i]], z[in_idx[j]] = False, True
    return sorted(torch.nonzero(z).flatten().tolist())


@dataclass(frozen=True)
class MaskChoice:
    removed: list[int]
    search_cost: float
    """Estimated distortion of the diagonal (mask search) choice."""
    rearranged_cost: float

    def to_dict(self) -> dict[str, object]:
        return {"removed": len(self.removed), "search_cost": self.search_cost,
                "rearranged_cost": self.rearranged_cost}


def choose_removed(fisher: Tensor, remove: int) -> MaskChoice:
    """Mask search on the diagonal, then rearrangement with the whole block (never worse)."""
    searched = sorted(torch.argsort(fisher.diagonal(), stable=True)[:remove].tolist())
    candidates = [searched, _swap(fisher, searched), _swap(fisher, _greedy(fisher, remove))]
    best = min(candidates, key=lambda removed: removal_cost(fisher, removed))
    return MaskChoice(best, removal_cost(fisher, searched), removal_cost(fisher, best))


def keep_scores(count: int, removed: list[int]) -> Tensor:
    """Scores that make a ranking pruner drop exactly ``removed`` (0) and keep the rest (1)."""
    scores = torch.ones(count)
    scores[removed] = 0.0
    return scores
