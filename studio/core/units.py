"""Human-readable counts and sizes, shared by the CLI and the GUI."""

from __future__ import annotations


def format_count(value: float) -> str:
    """12345678 -> '12.3M'; small counts stay exact."""
    for limit, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= limit:
            return f"{value / limit:.3g}{suffix}"
    return f"{value:.0f}"


def format_bytes(value: float) -> str:
    """413392 -> '404 KiB'."""
    for limit, suffix in ((1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")):
        if abs(value) >= limit:
            return f"{value / limit:.3g} {suffix}"
    return f"{value:.0f} B"


def format_shape(shape: tuple | None) -> str:
    return "" if shape is None else "×".join(str(d) for d in shape)


def format_percent(fraction: float) -> str:
    return f"{fraction * 100:.0f}%" if fraction >= 0.005 or fraction == 0 else "<1%"
