"""The per-layer latency table times each layer configuration once in onnxruntime, reuses it
from its file, and ranks a narrow model below a wide one."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from studio.core.export.layer_latency import LayerLatencyTable, layer_config


def _cnn(width: int) -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, width, 3, padding=1), nn.ReLU(),
                         nn.Conv2d(width, width, 3, padding=1), nn.ReLU(),
                         nn.Conv2d(width, width, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, 4))


def test_each_layer_configuration_is_timed_once_and_kept_in_its_file(tmp_path: Path) -> None:
    example = torch.zeros(1, 3, 24, 24)
    path = tmp_path / "table.json"
    table = LayerLatencyTable(batch=4, threads=1, repeats=3, path=path)
    wide = table.model_ms(_cnn(48), example)
    assert table.measured == 3  # the two inner convs share one configuration
    assert table.model_ms(_cnn(48), example) == wide and table.measured == 3
    narrow = table.model_ms(_cnn(4), example)
    assert 0 < narrow < wide

    again = LayerLatencyTable(batch=4, threads=1, repeats=3, path=path)
    assert again.model_ms(_cnn(48), example) == wide and again.measured == 0
    other_batch = LayerLatencyTable(batch=8, threads=1, repeats=3, path=path)
    other_batch.model_ms(_cnn(4), example)
    assert other_batch.measured == 3  # timings at another batch are not reused


def test_a_configuration_names_what_decides_its_time() -> None:
    config = layer_config(nn.Conv2d(8, 16, 3, stride=2, groups=2, bias=False), (5, 8, 10, 12))
    assert config == {"op": "Conv2d", "bias": False, "in_channels": 8, "out_channels": 16,
                      "kernel_size": (3, 3), "stride": (2, 2), "padding": (0, 0),
                      "dilation": (1, 1), "groups": 2, "input": [8, 10, 12]}
