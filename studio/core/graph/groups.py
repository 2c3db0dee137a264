"""Groups of layers whose output channels structured pruning must cut together.

Pure data, so the layer tree can carry them and the plan's estimate can use the very groups the
engine cuts (traced by Torch-Pruning in ``studio.core.methods.pruning.structured``).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ChannelGroup:
    """Layers that must lose the same output channels, and the modules the cut follows into."""

    layers: list[str]
    """Conv/Linear layers whose output channels are coupled (cut together)."""
    followers: list[str]
    """Other named modules the cut changes: batch norms, and layers consuming the channels."""
    channels: int
    feeds_output: bool
    through_attention: bool
