"""Random augmentations of patch batches, in torch, on the batch's device.

Every function takes a batch ``(N, 1, D, H, W)`` of normalised patches (see
:func:`skfmcib.patches.normalize_hu`) and a :class:`torch.Generator` on the CPU,
draws one set of random parameters per patch from that generator, and applies
them to the whole batch at once on whatever device the batch lives on. The
same generator state therefore gives the same augmentations on CPU and GPU,
and saving the generator's state (``generator.get_state()``) is enough to
resume a training run exactly.

Two recipes combine them:

- :func:`finetune_augment`: the paper's fine-tuning augmentations (axis flips,
  intensity shift, histogram shift, Gaussian smoothing); the lesion stays at
  the centre of the patch.
- :func:`contrastive_view`: one view for self-supervised pretraining (random
  resized 3D crop back to 50, flips, histogram shift, Gaussian smoothing, then
  clamping below -1024 HU).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = [
    "contrastive_view",
    "finetune_augment",
    "random_flip",
    "random_gaussian_smooth",
    "random_histogram_shift",
    "random_intensity_shift",
    "random_resized_crop",
]


def _check_batch(x: torch.Tensor) -> None:
    if x.ndim != 5 or x.shape[1] != 1:
        raise ValueError(f"expected a batch of shape (N, 1, D, H, W), got {tuple(x.shape)}")


def _uniform(
    generator: torch.Generator | None, shape: tuple[int, ...], lo: float, hi: float, like
) -> torch.Tensor:
    """Uniform numbers drawn on the CPU (reproducible everywhere), moved to ``like``'s device."""
    u = torch.rand(shape, generator=generator, dtype=torch.float64)
    return (lo + (hi - lo) * u).to(device=like.device, dtype=like.dtype)


def _chosen(
    generator: torch.Generator | None, n: int, p: float, like: torch.Tensor
) -> torch.Tensor:
    """A boolean mask ``(n, 1, 1, 1, 1)``: which patches get a transform of probability p."""
    mask = torch.rand(n, generator=generator, dtype=torch.float64) < p
    return mask.to(like.device).view(n, 1, 1, 1, 1)


def random_flip(
    x: torch.Tensor, generator: torch.Generator | None = None, p: float = 0.5
) -> torch.Tensor:
    """Flip each patch along each spatial axis independently with probability ``p``.

    Parameters
    ----------
    x : Tensor of shape (N, 1, D, H, W)
    generator : torch.Generator, optional
        CPU generator of the random choices (the global one when omitted).
    p : float, default=0.5
        Probability of a flip, per patch and axis.

    Returns
    -------
    Tensor of the same shape

    Examples
    --------
    >>> import torch
    >>> from skfmcib.augment import random_flip
    >>> x = torch.arange(8.0).view(1, 1, 2, 2, 2)
    >>> torch.equal(random_flip(x, p=1.0), x.flip(2, 3, 4))
    True
    """
    _check_batch(x)
    n = x.shape[0]
    x = x.clone()
    for axis in (2, 3, 4):
        chosen = (torch.rand(n, generator=generator, dtype=torch.float64) < p).nonzero()[:, 0]
        if len(chosen):
            chosen = chosen.to(x.device)
            x[chosen] = x[chosen].flip(axis)
    return x


def random_intensity_shift(
    x: torch.Tensor,
    generator: torch.Generator | None = None,
    offset: float = 0.05,
    p: float = 0.5,
) -> torch.Tensor:
    """Add one random offset in ``[-offset, offset]`` to every voxel of a patch.

    Parameters
    ----------
    x : Tensor of shape (N, 1, D, H, W)
    generator : torch.Generator, optional
    offset : float, default=0.05
        Largest shift in normalised units (0.05 is about 150 HU).
    p : float, default=0.5
        Probability that a patch is shifted.

    Returns
    -------
    Tensor of the same shape

    Examples
    --------
    >>> import torch
    >>> from skfmcib.augment import random_intensity_shift
    >>> g = torch.Generator().manual_seed(0)
    >>> y = random_intensity_shift(torch.zeros(2, 1, 4, 4, 4), g, offset=0.1, p=1.0)
    >>> bool(y.abs().max() < 0.1001), float(y[0].std())
    (True, 0.0)
    """
    _check_batch(x)
    n = x.shape[0]
    shift = _uniform(generator, (n, 1, 1, 1, 1), -offset, offset, x)
    return torch.where(_chosen(generator, n, p, x), x + shift, x)


def random_histogram_shift(
    x: torch.Tensor,
    generator: torch.Generator | None = None,
    num_control_points: int = 10,
    p: float = 0.5,
) -> torch.Tensor:
    """Remap intensities through a random monotone piecewise-linear curve.

    As MONAI's ``RandHistogramShift``: ``num_control_points`` evenly spaced points
    between the patch's minimum and maximum are moved, each to a random place
    between its (already moved) left neighbour and its right neighbour; the end
    points stay. Intensities are mapped by linear interpolation between the
    control points, so the range of the patch is kept and the order of
    intensities too.

    Parameters
    ----------
    x : Tensor of shape (N, 1, D, H, W)
    generator : torch.Generator, optional
    num_control_points : int, default=10
        At least 3.
    p : float, default=0.5
        Probability that a patch is remapped.

    Returns
    -------
    Tensor of the same shape

    Examples
    --------
    >>> import torch
    >>> from skfmcib.augment import random_histogram_shift
    >>> x = torch.linspace(0, 1, 64).view(1, 1, 4, 4, 4)
    >>> y = random_histogram_shift(x, torch.Generator().manual_seed(0), p=1.0)
    >>> float(y.min()), float(y.max()), bool((y.flatten().diff() >= 0).all())
    (0.0, 1.0, True)
    """
    _check_batch(x)
    if num_control_points < 3:
        raise ValueError(f"num_control_points must be at least 3, got {num_control_points}")
    n, k = x.shape[0], num_control_points
    floating = torch.linspace(0.0, 1.0, k, dtype=torch.float64).repeat(n, 1)
    for i in range(1, k - 1):
        u = torch.rand(n, generator=generator, dtype=torch.float64)
        floating[:, i] = floating[:, i - 1] + u * (floating[:, i + 1] - floating[:, i - 1])
    floating = floating.to(device=x.device, dtype=x.dtype)
    flat = x.reshape(n, -1)
    lo = flat.amin(dim=1, keepdim=True)
    span = (flat.amax(dim=1, keepdim=True) - lo).clamp_min(torch.finfo(x.dtype).tiny)
    pos = (flat - lo) / span * (k - 1)  # position on the evenly spaced reference points
    # The piecewise-linear map as a sum of ramps, one per segment between control points.
    mapped = floating[:, :1].expand_as(pos).clone()
    for i in range(k - 1):
        mapped += (floating[:, i + 1 : i + 2] - floating[:, i : i + 1]) * (pos - i).clamp(0, 1)
    out = (lo + mapped * span).view_as(x)
    return torch.where(_chosen(generator, n, p, x), out, x)


def random_gaussian_smooth(
    x: torch.Tensor,
    generator: torch.Generator | None = None,
    sigma: tuple[float, float] = (0.25, 1.5),
    p: float = 0.5,
) -> torch.Tensor:
    """Blur each patch with a Gaussian of random width along each axis.

    The widths (in voxels, independently per axis and patch) are drawn from
    ``sigma``; the kernel is truncated at 4 standard deviations of the largest
    width and borders are padded by replication.

    Parameters
    ----------
    x : Tensor of shape (N, 1, D, H, W)
    generator : torch.Generator, optional
    sigma : (float, float), default=(0.25, 1.5)
        Range of the standard deviations (MONAI's ``RandGaussianSmooth`` default).
    p : float, default=0.5
        Probability that a patch is smoothed.

    Returns
    -------
    Tensor of the same shape

    Examples
    --------
    >>> import torch
    >>> from skfmcib.augment import random_gaussian_smooth
    >>> x = torch.zeros(1, 1, 9, 9, 9)
    >>> x[0, 0, 4, 4, 4] = 1.0
    >>> y = random_gaussian_smooth(x, sigma=(1.0, 1.0), p=1.0)
    >>> round(float(y.sum()), 4), bool(y[0, 0, 4, 4, 4] < 1.0)
    (1.0, True)
    """
    _check_batch(x)
    n = x.shape[0]
    chosen = _chosen(generator, n, p, x)
    sigmas = _uniform(generator, (n, 3), sigma[0], sigma[1], x).clamp_min(1e-3)
    radius = max(1, math.ceil(4.0 * sigma[1]))
    offsets = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    out = x
    for axis in range(3):
        kernel = torch.exp(-0.5 * (offsets[None, :] / sigmas[:, axis, None]) ** 2)
        kernel = (kernel / kernel.sum(dim=1, keepdim=True)).view(n, -1, 1, 1, 1)
        dim = 2 + axis
        length = out.shape[dim]
        # Replicate-pad along the axis, then add the shifted, weighted copies.
        first = out.narrow(dim, 0, 1).expand_as(out.narrow(dim, 0, radius))
        last = out.narrow(dim, length - 1, 1).expand_as(out.narrow(dim, 0, radius))
        padded = torch.cat([first, out, last], dim=dim)
        acc = torch.zeros_like(out)
        for j in range(2 * radius + 1):
            acc += kernel[:, j : j + 1] * padded.narrow(dim, j, length)
        out = acc
    return torch.where(chosen, out, x)


def random_resized_crop(
    x: torch.Tensor,
    generator: torch.Generator | None = None,
    scale: tuple[float, float] = (0.5, 1.0),
) -> torch.Tensor:
    """Crop a random cube of each patch and resize it back to the patch size.

    The cube's side is a random fraction in ``scale`` of the patch's side (the same
    on every axis, as the FMCIB pretraining crop); its position is random within
    the patch. Resizing is trilinear.

    Parameters
    ----------
    x : Tensor of shape (N, 1, D, H, W)
    generator : torch.Generator, optional
    scale : (float, float), default=(0.5, 1.0)
        Range of the cube's side relative to the patch's.

    Returns
    -------
    Tensor of the same shape

    Examples
    --------
    >>> import torch
    >>> from skfmcib.augment import random_resized_crop
    >>> x = torch.rand(2, 1, 10, 10, 10)
    >>> torch.allclose(random_resized_crop(x, scale=(1.0, 1.0)), x, atol=1e-6)
    True
    """
    _check_batch(x)
    if not 0.0 < scale[0] <= scale[1] <= 1.0:
        raise ValueError(f"scale must satisfy 0 < low <= high <= 1, got {scale}")
    n = x.shape[0]
    side = _uniform(generator, (n,), scale[0], scale[1], x)
    start = _uniform(generator, (n, 3), 0.0, 1.0, x) * (1.0 - side[:, None])
    centre = 2.0 * (start + side[:, None] / 2.0) - 1.0  # in grid_sample's [-1, 1] (x, y, z)
    theta = torch.zeros(n, 3, 4, device=x.device, dtype=x.dtype)
    theta[:, 0, 0] = theta[:, 1, 1] = theta[:, 2, 2] = side
    theta[:, :, 3] = centre
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def finetune_augment(x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """The fine-tuning augmentations: flips, intensity and histogram shifts, smoothing.

    Each patch is flipped along each axis with probability 0.5, then shifted in
    intensity (p 0.5, up to about 150 HU), histogram-shifted (p 0.5) and smoothed
    (p 0.5). No spatial crop: the lesion stays at the centre.

    Parameters
    ----------
    x : Tensor of shape (N, 1, D, H, W)
    generator : torch.Generator, optional

    Returns
    -------
    Tensor of the same shape

    Examples
    --------
    >>> import torch
    >>> from skfmcib.augment import finetune_augment
    >>> finetune_augment(torch.rand(3, 1, 50, 50, 50), torch.Generator().manual_seed(0)).shape
    torch.Size([3, 1, 50, 50, 50])
    """
    x = random_flip(x, generator)
    x = random_intensity_shift(x, generator)
    x = random_histogram_shift(x, generator)
    return random_gaussian_smooth(x, generator)


def contrastive_view(
    x: torch.Tensor,
    generator: torch.Generator | None = None,
    crop_scale: tuple[float, float] = (0.5, 1.0),
) -> torch.Tensor:
    """One random view of each patch for contrastive pretraining (the FMCIB recipe).

    Random resized 3D crop back to the patch size, flips (p 0.5 per axis),
    histogram shift (p 0.5), Gaussian smoothing (p 0.5), then everything below
    -1024 HU (0 after normalisation) is set to -1024 HU.

    Parameters
    ----------
    x : Tensor of shape (N, 1, D, H, W)
    generator : torch.Generator, optional
    crop_scale : (float, float), default=(0.5, 1.0)
        Range of the crop's side relative to the patch's.

    Returns
    -------
    Tensor of the same shape, all values >= 0

    Examples
    --------
    >>> import torch
    >>> from skfmcib.augment import contrastive_view
    >>> g = torch.Generator().manual_seed(0)
    >>> v = contrastive_view(torch.rand(2, 1, 50, 50, 50) - 0.1, g)
    >>> v.shape, bool((v >= 0).all())
    (torch.Size([2, 1, 50, 50, 50]), True)
    """
    x = random_resized_crop(x, generator, crop_scale)
    x = random_flip(x, generator)
    x = random_histogram_shift(x, generator)
    x = random_gaussian_smooth(x, generator)
    return x.clamp_min(0.0)
