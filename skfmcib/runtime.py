"""Where and how the encoder runs: device choice, precision and batched inference.

- fp32 is exact float32 arithmetic: on the CPU in the checkpoint's (contiguous) layout,
  on CUDA channels-last 3D with TF32 switched off.
- bf16/fp16 run under autocast, channels-last 3D, with the convolution weights stored
  in that type once (the same numbers as casting them at every batch): on CPUs with
  bfloat16 units (AMX, AVX512-BF16) bf16 is faster than fp32 with cosine similarity
  above 0.999; on CUDA the tensor cores run them.
- On CUDA, batches go through pinned memory and cuDNN picks its fastest algorithms;
  :func:`auto_batch_size` sizes batches to the free device memory.
"""

from __future__ import annotations

import contextlib
import ctypes
import mmap
import sys

import numpy as np
import torch
from torch import nn

from ._precision import PRECISIONS as _NAMES
from ._precision import check_precision_name
from ._process import freed_memory_kept
from .encoder import Conv3d, ResNet3D

__all__ = [
    "PRECISIONS",
    "auto_batch_size",
    "autocast",
    "check_precision",
    "encode",
    "prepare_encoder",
    "resolve_device",
]

_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
PRECISIONS = {name: _DTYPES.get(name) for name in _NAMES}  # name -> autocast dtype


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
        For an unknown device string or a device that is not available (CUDA, MPS,
        XPU; device types torch cannot tell the availability of are refused too).

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
    elif dev.type != "cpu":
        # mps, xpu, ...: asked for where torch has no such device, fail here, not in fit
        backend = getattr(torch.backends, dev.type, None) or getattr(torch, dev.type, None)
        available = getattr(backend, "is_available", None)
        if available is None or not available():
            raise ValueError(f"device {device!r} asked for, but it is not available here")
    return dev


def check_precision(precision: str) -> torch.dtype | None:
    """Return the autocast dtype of a precision name (None for fp32)."""
    return PRECISIONS[check_precision_name(precision)]


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """Autocast context for ``precision`` on ``device`` (a no-op for fp32)."""
    dtype = check_precision(precision)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def _memory_format(device: torch.device, precision: str) -> torch.memory_format:
    # Reduced precision runs channels-last (oneDNN's bf16 kernels, tensor cores), as
    # does CUDA. fp32 on the CPU keeps the checkpoint's layout: closer to the
    # reference's features (channels-last: 1.3e-6 relative instead of 5.5e-7), no
    # weight conversion at load, ~50 MB less at the peak, and with the encoder's
    # channels-last max pooling no slower (benchmarks/encoder.py, docs/performance.md).
    if precision != "fp32" or device.type == "cuda":
        return torch.channels_last_3d
    return torch.contiguous_format


class _FilePages:
    """Drops the memory-mapped checkpoint pages of tensors that were just copied.

    Weights read with ``torch.load(mmap=True)`` are pages of the checkpoint file; a
    converted copy (another layout or type) would otherwise keep both in memory until
    every tensor of the file is gone. Only whole pages inside a tensor that lie in a
    private mapping of a file are dropped (``madvise(MADV_DONTNEED)``): they are clean
    copies of the file, so anything still reading them gets the file's bytes again.
    Does nothing off Linux.
    """

    def __init__(self) -> None:
        self._maps: list[tuple[int, int]] = []
        self._madvise = None
        if not sys.platform.startswith("linux"):
            return
        try:
            with open("/proc/self/maps") as f:
                for line in f:
                    fields = line.split()
                    if len(fields) >= 6 and fields[4] != "0" and fields[1][3] == "p":
                        lo, hi = (int(v, 16) for v in fields[0].split("-"))
                        self._maps.append((lo, hi))
            self._madvise = ctypes.CDLL(None, use_errno=True).madvise
        except (OSError, AttributeError):
            self._maps = []

    def release(self, tensor: torch.Tensor) -> None:
        if self._madvise is None or tensor.device.type != "cpu":
            return
        start = tensor.data_ptr()
        end = start + tensor.numel() * tensor.element_size()
        if not any(lo <= start and end <= hi for lo, hi in self._maps):
            return
        page = mmap.PAGESIZE
        first, last = -(-start // page) * page, end // page * page
        if last > first:
            self._madvise(ctypes.c_void_p(first), ctypes.c_size_t(last - first), _MADV_DONTNEED)


_MADV_DONTNEED = 4

# fp32 on the CPU: the most weight bytes oneDNN copies into its layout at a time, and
# the patches the stem and first stage take at a time (see _limit_forward_memory).
_WEIGHT_SLICE_BYTES = 32 * 2**20
_EARLY_BATCH = 2


def _limit_forward_memory(encoder: nn.Module) -> None:
    """Smaller peaks in a forward pass on the CPU, each patch computed as before.

    The memory a batch takes above the weights is set by two things: the activations
    of the stem and first stage (64 MB a tensor for 8 FMCIB patches), and oneDNN's
    copy of each convolution's weight in its blocked layout (113 MB for each of the
    3x3x3 convolutions of the last stage). The stem and first stage take
    ``_EARLY_BATCH`` patches at a time, and convolutions with more than
    ``_WEIGHT_SLICE_BYTES`` of weight compute their output channels in slices (see
    :class:`skfmcib.encoder.Conv3d`).
    """
    if isinstance(encoder, ResNet3D):
        encoder.early_batch = _EARLY_BATCH
    for module in encoder.modules():
        if isinstance(module, Conv3d):
            size = module.weight.numel() * module.weight.element_size()
            module.out_groups = max(1, -(-size // _WEIGHT_SLICE_BYTES))


def prepare_encoder(encoder: nn.Module, device: torch.device, precision: str) -> nn.Module:
    """Move an encoder to ``device`` in eval mode, in the fastest layout for ``precision``.

    Convolution weights are stored channels-last 3D, except for fp32 on the CPU. For
    bf16/fp16 they are also stored in that type once: autocast would cast them to it
    at every batch, so the features are bit for bit those of plain autocast, with half
    the weight memory and no per-batch cast; normalisation layers stay float32, as
    autocast keeps them.
    Weights memory-mapped from a checkpoint are not kept twice (see
    :func:`skfmcib.weights.load_encoder`). For fp32 on the CPU, the stem and first
    stage take two patches at a time and the convolutions with more than 32 MiB of
    weight compute their output channels in slices, which lowers the memory a batch
    of 8 takes above the weights from 200-290 MiB to about 150 MiB at no measurable
    cost in time (see ``docs/performance.md``).

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
    encoder = encoder.eval()
    pages = _FilePages()
    with torch.no_grad():
        for module in encoder.modules():
            if isinstance(module, nn.modules.conv._ConvNd):
                old = module.weight
                new = old.to(device=device, dtype=dtype or old.dtype, memory_format=fmt)
                module.weight = nn.Parameter(new, requires_grad=old.requires_grad)
                if new.data_ptr() != old.data_ptr():
                    pages.release(old)
                del old, new
                if module.bias is not None:
                    bias = module.bias.to(device=device, dtype=dtype or module.bias.dtype)
                    module.bias = nn.Parameter(bias, requires_grad=module.bias.requires_grad)
            else:
                # Copies (or moves), so that no small tensor keeps the mapping of a
                # memory-mapped checkpoint alive.
                for name, param in list(module.named_parameters(recurse=False)):
                    moved = param.to(device=device, copy=True)
                    setattr(module, name, nn.Parameter(moved, param.requires_grad))
                for name, buffer in list(module.named_buffers(recurse=False)):
                    module.register_buffer(name, buffer.to(device=device, copy=True))
    if device.type == "cpu" and precision == "fp32":
        _limit_forward_memory(encoder)
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
    # On the CPU, malloc reuses the memory the forward pass frees as it goes.
    kept = freed_memory_kept() if device.type == "cpu" else contextlib.nullcontext()
    with kept, flags, autocast(device, precision):
        out = encoder(x)
    return out.float().cpu().numpy()


def auto_batch_size(
    encoder: nn.Module, device: torch.device, precision: str = "fp32", cap: int = 256
) -> int:
    """A batch size for ``encoder`` on ``device``: sized to free memory on CUDA.

    On CUDA one probe batch of 2 patches measures the memory a patch takes, and the
    batch is what half the free memory holds (a multiple of 8, at most ``cap``). The
    probe resets the device's peak-memory statistics
    (``torch.cuda.reset_peak_memory_stats``): read ``torch.cuda.max_memory_allocated``
    before, if you track it. On other devices larger batches do not run faster: 8.

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
