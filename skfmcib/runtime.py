"""Where and how the encoder runs: device choice, precision and batched inference."""

from __future__ import annotations

import contextlib

import numpy as np
import torch
from torch import nn

__all__ = ["PRECISIONS", "autocast", "encode", "prepare_encoder", "resolve_device"]

PRECISIONS = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """Turn a device specification into a :class:`torch.device`.

    Parameters
    ----------
    device : str or torch.device, default="auto"
        ``"auto"`` (the first CUDA device when there is one, else the CPU), ``"cpu"``,
        ``"cuda"``, ``"cuda:1"``, ``"mps"``, ...

    Returns
    -------
    torch.device

    Raises
    ------
    ValueError
        For an unknown device string or a CUDA device that is not available.

    Examples
    --------
    >>> from skfmcib.runtime import resolve_device
    >>> resolve_device("cpu")
    device(type='cpu')
    """
    if isinstance(device, str) and device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"unknown device {device!r}: {exc}") from exc
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device {device!r} asked for, but CUDA is not available")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(
                f"device {device!r} asked for, but only {torch.cuda.device_count()} "
                "CUDA device(s) exist"
            )
    return dev


def check_precision(precision: str) -> torch.dtype | None:
    """Return the autocast dtype of a precision name (None for fp32)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, got {precision!r}")
    return PRECISIONS[precision]


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """Autocast context for ``precision`` on ``device`` (a no-op for fp32)."""
    dtype = check_precision(precision)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def _memory_format(device: torch.device, precision: str) -> torch.memory_format:
    # Reduced precision runs fastest channels-last (oneDNN/AMX on CPU, tensor cores on
    # GPU); fp32 on the CPU is fastest in the default layout.
    if precision != "fp32" or device.type == "cuda":
        return torch.channels_last_3d
    return torch.contiguous_format


def prepare_encoder(encoder: nn.Module, device: torch.device, precision: str) -> nn.Module:
    """Move an encoder to ``device`` in eval mode, in the fastest layout for ``precision``."""
    check_precision(precision)
    encoder = encoder.to(device).eval()
    return encoder.to(memory_format=_memory_format(device, precision))


@torch.inference_mode()
def encode(
    encoder: nn.Module, patches: np.ndarray, device: torch.device, precision: str = "fp32"
) -> np.ndarray:
    """Encode one batch of patches ``(n, 1, 50, 50, 50)`` into float32 features.

    The encoder must already be on ``device`` (see :func:`prepare_encoder`).

    Examples
    --------
    >>> import numpy as np, torch
    >>> from skfmcib.encoder import EncoderConfig, build_encoder
    >>> from skfmcib.runtime import encode, prepare_encoder
    >>> dev = torch.device("cpu")
    >>> net = prepare_encoder(build_encoder(EncoderConfig("resnet10", 0.25)), dev, "fp32")
    >>> encode(net, np.zeros((2, 1, 50, 50, 50), np.float32), dev).shape
    (2, 128)
    """
    x = torch.from_numpy(np.ascontiguousarray(patches, dtype=np.float32))
    if device.type == "cuda":
        x = x.pin_memory().to(device, non_blocking=True)
    x = x.to(device=device, memory_format=_memory_format(device, precision))
    with autocast(device, precision):
        out = encoder(x)
    return out.float().cpu().numpy()
