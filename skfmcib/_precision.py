"""The encoder's arithmetic precisions, by name; importing this does not import torch."""

from __future__ import annotations

PRECISIONS = ("fp32", "bf16", "fp16")


def check_precision_name(precision: str) -> str:
    """Return ``precision`` if it names a precision; raise ValueError otherwise."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, got {precision!r}")
    return precision
