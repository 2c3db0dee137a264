"""The report's plain-word notes name the task's metric and read its direction right."""

from __future__ import annotations

from studio.core.engine.notes import drop_advice, honesty_notes


def _figures(metric: str, value: float) -> dict:
    return {"metric": {"name": metric, "value": value}, "onnx_bytes": 100, "zip_bytes": 90,
            "latency_ms": {"batch_1": 1.0}}


def test_a_drop_is_named_by_the_metric() -> None:
    notes = honesty_notes(_figures("cosine", 1.0), _figures("cosine", 0.95), 0, False)
    assert any(n.startswith("Cosine agreement with the original dropped 5.0 points")
               for n in notes)
    accuracy = honesty_notes(_figures("accuracy", 0.98), _figures("accuracy", 0.90), 0, False)
    assert any(n.startswith("Accuracy dropped 8.0 points") for n in accuracy)


def _dropped(notes: list[str]) -> list[str]:
    return [note for note in notes if "dropped" in note]


def test_no_drop_note_for_a_gain_or_for_mse() -> None:
    gain = honesty_notes(_figures("accuracy", 0.90), _figures("accuracy", 0.95), 0, False)
    assert not _dropped(gain)
    assert not _dropped(honesty_notes(_figures("mse", 0.0), _figures("mse", 0.5), 0, False))


def test_advice_fits_what_the_model_allows() -> None:
    trainable = _dropped(honesty_notes(_figures("accuracy", 0.98), _figures("accuracy", 0.60),
                                       0, True))
    assert "fine-tuning" in trainable[0]
    onnx_only = drop_advice(can_train=False, dynamic_convs=True,
                            quantized_layers=["/a/Conv", "/b/Conv", "/c/Gemm"])
    notes = _dropped(honesty_notes(_figures("cosine", 1.0), _figures("cosine", 0.58), 0, True,
                                   onnx_only))
    assert "fine-tun" not in notes[0] and "distill" not in notes[0]
    assert "static int8" in notes[0] and "'/a/Conv', '/c/Gemm'" in notes[0]
