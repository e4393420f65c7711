"""Where and how the encoder runs: device choice, precision and batched inference.

- fp32 is exact arithmetic: on the CPU the default (contiguous) layout, which oneDNN
  runs fastest in float32; on CUDA channels-last with TF32 switched off.
- bf16/fp16 run under autocast, channels-last 3D, with the convolution weights stored
  in that type once (the same numbers as casting them at every batch): on CPUs with
  bfloat16 units (AMX, AVX512-BF16) bf16 is faster than fp32 with cosine similarity
  above 0.999; on CUDA the tensor cores run them.
- On CUDA, batches go through pinned memory and cuDNN picks its fastest algorithms;
  :func:`auto_batch_size` sizes batches to the free device memory.
"""

from __future__ import annotations

import contextlib

import numpy as np
import torch
from torch import nn

__all__ = [
    "PRECISIONS",
    "auto_batch_size",
    "autocast",
    "check_precision",
    "encode",
    "prepare_encoder",
    "resolve_device",
]

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
    # GPU); fp32 on the CPU is fastest in the default layout (benchmarks/encoder.py).
    if precision != "fp32" or device.type == "cuda":
        return torch.channels_last_3d
    return torch.contiguous_format


def prepare_encoder(encoder: nn.Module, device: torch.device, precision: str) -> nn.Module:
    """Move an encoder to ``device`` in eval mode, in the fastest layout for ``precision``.

    For bf16/fp16 the convolution weights are stored in that type once, in the
    channels-last layout: autocast would cast them to it at every batch, so the
    features are bit for bit those of plain autocast, with half the weight memory
    and no per-batch cast. Normalisation layers stay float32, as autocast keeps them.

    Parameters
    ----------
    encoder : torch.nn.Module
        A 3D ResNet (see :mod:`skfmcib.encoder`).
    device : torch.device
        Where it will run.
    precision : {"fp32", "bf16", "fp16"}
        The arithmetic :func:`encode` will use with it.

    Returns
    -------
    torch.nn.Module
        The same module, moved and converted.
    """
    dtype = check_precision(precision)
    fmt = _memory_format(device, precision)
    encoder = encoder.to(device).eval()
    if dtype is None:
        return encoder.to(memory_format=fmt)
    with torch.no_grad():
        for module in encoder.modules():
            if isinstance(module, nn.modules.conv._ConvNd):
                module.weight = nn.Parameter(
                    module.weight.to(dtype=dtype, memory_format=fmt), requires_grad=False
                )
                if module.bias is not None:
                    module.bias = nn.Parameter(module.bias.to(dtype), requires_grad=False)
            else:
                # Copies, so that the weights of a memory-mapped checkpoint, now converted,
                # are no longer kept mapped by a few small tensors that still point into it.
                for name, param in list(module.named_parameters(recurse=False)):
                    setattr(module, name, nn.Parameter(param.clone(), param.requires_grad))
                for name, buffer in list(module.named_buffers(recurse=False)):
                    module.register_buffer(name, buffer.clone())
    return encoder


def _cuda_flags(precision: str) -> contextlib.AbstractContextManager:
    # cuDNN autotuning pays off for a fixed input size; TF32 would make fp32 inexact.
    return torch.backends.cudnn.flags(
        enabled=True, benchmark=True, deterministic=False, allow_tf32=precision != "fp32"
    )


@torch.inference_mode()
def encode(
    encoder: nn.Module, patches: np.ndarray, device: torch.device, precision: str = "fp32"
) -> np.ndarray:
    """Encode one batch of patches ``(n, 1, 50, 50, 50)`` into float32 features.

    The encoder must already be on ``device`` (see :func:`prepare_encoder`).

    Parameters
    ----------
    encoder : torch.nn.Module
        Prepared with :func:`prepare_encoder` for the same device and precision.
    patches : ndarray of shape (n, 1, 50, 50, 50)
        Normalised patches.
    device : torch.device
        Where the encoder is.
    precision : {"fp32", "bf16", "fp16"}, default="fp32"
        Arithmetic (autocast for bf16/fp16).

    Returns
    -------
    ndarray of shape (n, n_features), float32

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
    flags: contextlib.AbstractContextManager = contextlib.nullcontext()
    if device.type == "cuda":
        x = x.pin_memory().to(device, non_blocking=True)
        flags = _cuda_flags(precision)
    x = x.to(device=device, memory_format=_memory_format(device, precision))
    with flags, autocast(device, precision):
        out = encoder(x)
    return out.float().cpu().numpy()


def auto_batch_size(
    encoder: nn.Module, device: torch.device, precision: str = "fp32", cap: int = 256
) -> int:
    """A batch size for ``encoder`` on ``device``: sized to free memory on CUDA.

    On CUDA one probe batch of 2 patches measures the memory a patch takes, and the
    batch is what half the free memory holds (a multiple of 8, at most ``cap``). On
    other devices larger batches do not run faster: 8.

    Parameters
    ----------
    encoder : torch.nn.Module
        Prepared with :func:`prepare_encoder`.
    device : torch.device
        Where the encoder is.
    precision : {"fp32", "bf16", "fp16"}, default="fp32"
        Arithmetic; halves the memory per patch for bf16/fp16.
    cap : int, default=256
        Largest batch returned.

    Returns
    -------
    int

    Examples
    --------
    >>> import torch
    >>> from skfmcib.encoder import build_encoder
    >>> from skfmcib.runtime import auto_batch_size
    >>> auto_batch_size(build_encoder({"arch": "resnet10"}), torch.device("cpu"))
    8
    """
    if device.type != "cuda":
        return 8
    probe = np.zeros((2, 1, 50, 50, 50), dtype=np.float32)
    torch.cuda.synchronize(device)
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    encode(encoder, probe, device, precision)
    per_patch = max(1, (torch.cuda.max_memory_allocated(device) - base) // 2)
    free, _ = torch.cuda.mem_get_info(device)
    size = int(0.5 * free // per_patch)
    return int(max(1, min(cap, size // 8 * 8 if size >= 8 else size)))
