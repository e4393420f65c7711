"""Self-supervised pretraining of the encoder: the FMCIB recipe (modified SimCLR).

For every seed point of a lesion table, the 50^3 patch around the seed is the
*positive* and a 50^3 patch around a random point of the same scan, in the
body and at least 50 mm away, is the *mined negative*. Each patch gets two
random views (:func:`skfmcib.augment.contrastive_view`); the encoder and a
projection head (features -> features/2 -> 128, no batch norm) map every view
to an embedding, and the InfoNCE loss (:func:`info_nce_loss`, temperature 0.1)
pulls the two views of each patch together and pushes all other views apart,
the mined negatives' included. The optimiser is LARS (:class:`LARS`, learning
rate 0.3 x batch / 256, weight decay 1e-6, momentum 0.9; biases and batch-norm
parameters excluded) with a linear warmup and a cosine schedule.

:func:`pretrain` writes a checkpoint after every epoch (atomically): the
encoder's ``trunk_state_dict`` and ``encoder_config`` (so
``FMCIBTransformer(weights=path)`` and :func:`skfmcib.weights.load_encoder`
read it with no further arguments) plus, under ``pretraining``, everything
needed to resume exactly: projection head, optimiser, run settings, epoch and
history (no generator state is needed: each epoch's shuffling, negatives and
augmentations are drawn from generators seeded by seed, process rank and epoch).
Launched with ``torchrun``, it trains data-parallel (DDP,
synchronised batch norm on GPUs, a distributed sampler, embeddings gathered
from all processes for the loss).
"""

from __future__ import annotations

import math
import os
import sys
import time
from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import pandas as pd
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler, default_collate

from . import _training, runtime
from .augment import contrastive_view
from .encoder import EncoderConfig, ResNet3D
from .io import ImageReadError, Volume, open_image, read_image
from .patches import _patch_at, _seed_problem
from .table import RowError, row_problem, validate_table
from .weights import load_encoder, read_checkpoint, save_checkpoint

__all__ = [
    "LARS",
    "SeedPairDataset",
    "gather_with_grad",
    "info_nce_loss",
    "mined_negative_loss",
    "pretrain",
    "projection_head",
]

PROJECTION_DIM = 128


# ---------------------------------------------------------------------- losses


def info_nce_loss(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
    """InfoNCE (NT-Xent) loss of paired views.

    ``z1[i]`` and ``z2[i]`` are embeddings of two views of patch ``i``. Every one
    of the ``2 n`` embeddings is an anchor: its positive is the other view of
    the same patch, and all ``2 n - 2`` other embeddings are its negatives.
    Embeddings are L2-normalised; similarities are divided by ``temperature``.

    .. math::

        L = -\\frac{1}{2n} \\sum_a \\log \\frac{\\exp(s_{a,p(a)} / \\tau)}
            {\\sum_{b \\ne a} \\exp(s_{a,b} / \\tau)}

    Parameters
    ----------
    z1, z2 : Tensor of shape (n, d)
        Embeddings of the first and second views (in pretraining: positives
        and mined negatives alike).
    temperature : float, default=0.1

    Returns
    -------
    Tensor
        The mean loss over the ``2 n`` anchors, a scalar.

    Examples
    --------
    >>> import torch
    >>> from skfmcib.pretrain import info_nce_loss
    >>> z = torch.eye(4)
    >>> round(float(info_nce_loss(z[:2], z[:2])), 4)  # perfect pairs, orthogonal others
    0.0001
    """
    if z1.shape != z2.shape or z1.ndim != 2:
        raise ValueError(f"z1 and z2 must have the same shape (n, d), got {z1.shape}, {z2.shape}")
    n = z1.shape[0]
    z = F.normalize(torch.cat([z1, z2]).float(), dim=1)
    sim = z @ z.T / temperature
    sim = sim.masked_fill(torch.eye(2 * n, dtype=torch.bool, device=z.device), -math.inf)
    partner = torch.cat([torch.arange(n, 2 * n), torch.arange(n)]).to(z.device)
    return F.cross_entropy(sim, partner)


def mined_negative_loss(
    pos1: torch.Tensor,
    pos2: torch.Tensor,
    neg1: torch.Tensor,
    neg2: torch.Tensor,
    temperature: float = 0.1,
) -> torch.Tensor:
    """The contrastive loss of the FMCIB authors' code: only mined negatives contrast.

    Anchors are the views of the positives. For ``pos1[i]`` the positive is
    ``pos2[i]`` and the negatives are the first views of all mined negatives
    ``neg1``; for ``pos2[i]``, ``pos1[i]`` against ``neg2``. Other positives are
    not used as negatives.

    Parameters
    ----------
    pos1, pos2 : Tensor of shape (n, d)
        Two views of the positives.
    neg1, neg2 : Tensor of shape (m, d)
        Two views of the mined negatives.
    temperature : float, default=0.1

    Returns
    -------
    Tensor
        The mean loss over the ``2 n`` anchors.

    Examples
    --------
    >>> import torch
    >>> from skfmcib.pretrain import mined_negative_loss
    >>> e = torch.eye(3)
    >>> round(float(mined_negative_loss(e[:1], e[:1], e[1:], e[1:])), 4)
    0.0001
    """
    p1, p2, n1, n2 = (F.normalize(t.float(), dim=1) for t in (pos1, pos2, neg1, neg2))
    positive = (p1 * p2).sum(dim=1, keepdim=True) / temperature
    logits = torch.cat(
        [
            torch.cat([positive, p1 @ n1.T / temperature], 1),
            torch.cat([positive, p2 @ n2.T / temperature], 1),
        ]
    )
    return F.cross_entropy(
        logits, torch.zeros(len(logits), dtype=torch.long, device=logits.device)
    )


# ------------------------------------------------------------------- optimiser


class LARS(torch.optim.Optimizer):
    """Layer-wise adaptive rate scaling (You et al. 2017), as used by SimCLR.

    For every parameter tensor ``w`` with gradient ``g``, in groups not marked
    ``exclude``: ``g <- g + weight_decay * w``, then
    ``g <- g * trust_coefficient * ||w|| / ||g||`` (when both norms are
    positive). Then, for all groups: ``v <- momentum * v + g`` and
    ``w <- w - lr * v``. Groups marked ``exclude=True`` (biases and batch-norm
    parameters, see :func:`lars_param_groups`) get neither weight decay nor the
    adaptation, as in SimCLR.

    Parameters
    ----------
    params : iterable
        Parameters or parameter groups (dicts, optionally with ``exclude``).
    lr : float
        Learning rate.
    momentum : float, default=0.9
    weight_decay : float, default=1e-6
    trust_coefficient : float, default=0.001
        The LARS ``eta``.

    Examples
    --------
    >>> import torch
    >>> from skfmcib.pretrain import LARS
    >>> w = torch.nn.Parameter(torch.tensor([3.0, 4.0]))
    >>> w.grad = torch.tensor([0.6, 0.8])
    >>> opt = LARS([w], lr=1.0, weight_decay=0.0, trust_coefficient=0.1)
    >>> opt.step()
    >>> w.data  # step 0.1 * 5 / 1 along the gradient
    tensor([2.7000, 3.6000])
    """

    def __init__(
        self,
        params,
        lr: float,
        momentum: float = 0.9,
        weight_decay: float = 1e-6,
        trust_coefficient: float = 0.001,
    ) -> None:
        if lr < 0 or momentum < 0 or weight_decay < 0 or trust_coefficient <= 0:
            raise ValueError("lr, momentum and weight_decay must be >= 0, trust_coefficient > 0")
        defaults = dict(
            lr=lr,
            momentum=momentum,
            weight_decay=weight_decay,
            trust_coefficient=trust_coefficient,
            exclude=False,
        )
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        """Take one optimisation step; ``closure`` re-evaluates the loss if given.

        Parameters
        ----------
        closure : callable, optional
            Recomputes the loss (clearing and recomputing the gradients), as for any
            :class:`torch.optim.Optimizer`; called with gradients enabled before the
            step.

        Returns
        -------
        Tensor or None
            What ``closure`` returned (the loss), or None without ``closure``.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad
                if not group["exclude"]:
                    if group["weight_decay"]:
                        grad = grad.add(p, alpha=group["weight_decay"])
                    w_norm, g_norm = torch.linalg.vector_norm(p), torch.linalg.vector_norm(grad)
                    trust = torch.where(
                        (w_norm > 0) & (g_norm > 0),
                        group["trust_coefficient"] * w_norm / g_norm,
                        torch.ones_like(w_norm),
                    )
                    grad = grad * trust
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = grad.detach().clone()
                else:
                    state["momentum_buffer"].mul_(group["momentum"]).add_(grad)
                p.add_(state["momentum_buffer"], alpha=-group["lr"])
        return loss


def lars_param_groups(module: nn.Module, weight_decay: float = 1e-6) -> list[dict[str, Any]]:
    """Parameter groups for :class:`LARS`: weights adapted and decayed; biases, BN not.

    Parameters
    ----------
    module : nn.Module
    weight_decay : float, default=1e-6

    Returns
    -------
    list of dict
    """
    return _training.param_groups(module, weight_decay)


# ------------------------------------------------------------------ the model


def projection_head(in_features: int, out_features: int = PROJECTION_DIM) -> nn.Sequential:
    """The SimCLR projection head: ``in -> in/2 -> out`` with ReLU, no batch norm.

    4096 -> 2048 -> 128 for the FMCIB encoder.

    Parameters
    ----------
    in_features : int
        Length of the encoder's feature vector (``encoder.out_features``).
    out_features : int, default=128
        Length of the projection the contrastive loss compares
        (:data:`PROJECTION_DIM`).

    Returns
    -------
    torch.nn.Sequential
        Linear, ReLU, Linear, freshly initialised; the hidden layer has
        ``in_features // 2`` units (at least one).

    Examples
    --------
    >>> from skfmcib.pretrain import projection_head
    >>> projection_head(4096)
    Sequential(
      (0): Linear(in_features=4096, out_features=2048, bias=True)
      (1): ReLU(inplace=True)
      (2): Linear(in_features=2048, out_features=128, bias=True)
    )
    """
    hidden = max(1, in_features // 2)
    return nn.Sequential(
        nn.Linear(in_features, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, out_features)
    )


class _ContrastiveNet(nn.Module):
    def __init__(self, encoder: ResNet3D, projector: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder
        self.projector = projector

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.projector(self.encoder(x))


# ----------------------------------------------------------------- distributed


class _GatherWithGrad(torch.autograd.Function):
    """All-gather along dim 0 whose backward returns each process its own gradient.

    Every process computes the same loss on the gathered embeddings, so the
    gradient of an embedding is the sum of that loss's gradients over the
    processes: the backward pass all-reduces the incoming gradient and keeps
    this process's slice (all-reduce works on every backend, gloo included).
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.rank, ctx.n = dist.get_rank(), x.shape[0]
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        grad = grad.contiguous()
        dist.all_reduce(grad)
        return grad[ctx.rank * ctx.n : (ctx.rank + 1) * ctx.n]


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` from all processes (rank order), keeping gradients.

    Without an initialised process group (or with one process) ``x`` is returned
    unchanged. All processes must pass tensors of the same shape. The backward
    pass gives each process the gradient of the sum, over processes, of the
    losses computed from the gathered tensor; with every process computing the
    same loss and DDP averaging parameter gradients, the parameters receive the
    gradient of that loss, as if one process had seen the whole batch.

    Parameters
    ----------
    x : Tensor of shape (n, ...)

    Returns
    -------
    Tensor of shape (world_size * n, ...)

    Examples
    --------
    >>> import torch
    >>> from skfmcib.pretrain import gather_with_grad
    >>> gather_with_grad(torch.ones(2, 3)).shape  # a single process
    torch.Size([2, 3])
    """
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    return _GatherWithGrad.apply(x)


@dataclass(frozen=True)
class _Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = False

    @property
    def main(self) -> bool:
        return self.rank == 0


def _setup_distributed(device_spec: str) -> tuple[_Dist, torch.device]:
    """Initialise torch.distributed when launched by torchrun (RANK/WORLD_SIZE set)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1 or "RANK" not in os.environ:
        return _Dist(), runtime.resolve_device(device_spec)
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    wants_cuda = device_spec in ("auto", "cuda") and torch.cuda.is_available()
    if device_spec.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device {device_spec!r} asked for, but CUDA is not available")
    device = (
        torch.device("cuda", local_rank) if wants_cuda else runtime.resolve_device(device_spec)
    )
    if device.type == "cuda":
        torch.cuda.set_device(device)
    owns = False
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
        owns = True
    return _Dist(rank, dist.get_world_size(), local_rank, owns), device


# ---------------------------------------------------------------------- data


class SeedPairDataset(Dataset):
    """Positive and mined-negative patches for every seed of a lesion table.

    Item ``i`` is a float32 tensor ``(2, 1, 50, 50, 50)``: the patch around seed
    ``i`` (exactly :func:`skfmcib.patches.extract_patch`) and the patch around a
    random point of the same scan that lies in the body (at least ``body_hu``)
    and at least ``min_distance`` mm from the seed. The random point depends
    only on ``(seed, epoch, i)``, so any worker, process or resumed run draws the
    same negatives. Of 256 random voxels, the first that meets both rules is taken;
    when none does (a scan little larger than the patch, or with little body), the
    body voxel farthest from the seed, else the farthest voxel: such a negative may
    then be closer than ``min_distance`` and overlap the positive.

    Parameters
    ----------
    table : DataFrame
        Lesion table (``image_path``, ``coordX``, ``coordY``, ``coordZ``).
    seed : int, default=0
        Seed of the negatives.
    min_distance : float, default=50.0
        Smallest distance in mm between seed and negative (a patch side).
    body_hu : float, default=-500.0
        Voxels at or above this value count as body.
    coordinate_system : {"LPS", "RAS"}, default="LPS"
    volume_cache : int, default=1
        Scans kept in memory (per data-loading process), least recently used
        first out. Raise it when the scans fit in memory: shuffled batches
        otherwise read a scan for almost every item.

    Examples
    --------
    >>> import numpy as np, pandas as pd, SimpleITK as sitk, tempfile, os
    >>> from skfmcib.pretrain import SeedPairDataset
    >>> path = os.path.join(tempfile.mkdtemp(), "ct.nii.gz")
    >>> sitk.WriteImage(sitk.GetImageFromArray(np.full((40, 60, 140), 40, np.int16)), path)
    >>> table = pd.DataFrame({"image_path": [path], "coordX": [30.0], "coordY": [30.0],
    ...                       "coordZ": [20.0]})
    >>> pairs = SeedPairDataset(table, seed=0)
    >>> pairs[0].shape
    torch.Size([2, 1, 50, 50, 50])
    """

    def __init__(
        self,
        table: pd.DataFrame,
        seed: int = 0,
        min_distance: float = 50.0,
        body_hu: float = -500.0,
        coordinate_system: str = "LPS",
        volume_cache: int = 1,
    ) -> None:
        seeds = validate_table(table, coordinate_system)
        for pos in range(len(seeds)):
            problem = row_problem(seeds.iloc[pos])
            if problem:
                raise RowError(seeds.index[pos], seeds["image_path"].iloc[pos], problem)
        self.labels = list(seeds.index)
        self.paths = list(seeds["image_path"])
        self.series = list(seeds["series_uid"])
        self.points = seeds[["x", "y", "z"]].to_numpy(dtype=np.float64)
        self._check_images()
        self.seed = int(seed)
        self.min_distance = float(min_distance)
        self.body_hu = float(body_hu)
        self.epoch = 0
        self.volume_cache = max(1, int(volume_cache))
        self._cache: OrderedDict[tuple[str, str | None], Volume] = OrderedDict()

    def __len__(self) -> int:
        return len(self.paths)

    def _check_images(self) -> None:
        """Open every image's header once and check its seeds: errors now, not mid-epoch."""
        rows: dict[tuple[str, str | None], list[int]] = {}
        for i, key in enumerate(zip(self.paths, self.series, strict=True)):
            rows.setdefault(key, []).append(i)
        for (path, uid), members in rows.items():
            try:
                with open_image(path, uid) as source:
                    geometry = source.geometry
            except ImageReadError as exc:
                raise RowError.from_image_error(self.labels[members[0]], path, exc) from None
            for i in members:
                problem = _seed_problem(geometry, self.points[i])
                if problem:
                    raise RowError(self.labels[i], path, problem)

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch, which (with the seed) fixes the negatives.

        Parameters
        ----------
        epoch : int
            The epoch about to start (0, 1, ...). Set it before a data loader's worker
            processes start: they work on copies of the dataset.
        """
        self.epoch = int(epoch)

    def _volume(self, i: int) -> Volume:
        key = (self.paths[i], self.series[i])
        if key in self._cache:
            self._cache.move_to_end(key)
        else:
            self._cache[key] = read_image(*key)
            while len(self._cache) > self.volume_cache:
                self._cache.popitem(last=False)
        return self._cache[key]

    def negative_point(self, volume: Volume, i: int) -> np.ndarray:
        """The LPS point around which item ``i``'s negative is cut in this epoch.

        Parameters
        ----------
        volume : Volume
            The scan of item ``i`` (read whole).
        i : int
            The item (row position in the table).

        Returns
        -------
        ndarray of shape (3,)
            The centre of a voxel of ``volume``, in LPS millimetres; the same for the
            same ``(seed, epoch, i)``.
        """
        rng = np.random.default_rng([self.seed, self.epoch, i])
        geom = volume.geometry
        size = np.asarray(geom.size)
        idx = rng.integers(0, size, size=(256, 3))  # (x, y, z) voxel indices
        points = geom.origin + idx @ geom.index_to_physical.T
        values = volume.array[idx[:, 2], idx[:, 1], idx[:, 0]]
        far = np.linalg.norm(points - self.points[i], axis=1)
        body = values >= self.body_hu
        good = np.flatnonzero(body & (far >= self.min_distance))
        if len(good):
            return points[good[0]]
        # A small scan or little body: the farthest body point, else the farthest point.
        pool = np.flatnonzero(body) if body.any() else np.arange(len(points))
        return points[pool[np.argmax(far[pool])]]

    def __getitem__(self, i: int) -> torch.Tensor:
        try:
            volume = self._volume(i)
        except ImageReadError as exc:  # changed since the dataset was made
            raise RowError.from_image_error(self.labels[i], self.paths[i], exc) from None
        problem = _seed_problem(volume.geometry, self.points[i])
        if problem:
            raise RowError(self.labels[i], self.paths[i], problem)
        positive = _patch_at(volume, self.points[i])
        negative = _patch_at(volume, self.negative_point(volume, i))
        return torch.from_numpy(np.stack([positive, negative])[:, None])


# ---------------------------------------------------------------- the training


def _config_of(arch) -> EncoderConfig:
    config = _training.arch_config(arch)
    return EncoderConfig() if config is None else config


class _Log:
    def __init__(self, enabled: bool, stream: TextIO | None) -> None:
        self.enabled = enabled
        self.stream = sys.stderr if stream is None else stream
        self.tty = bool(getattr(self.stream, "isatty", lambda: False)())

    def step(self, text: str, step: int, steps: int) -> None:
        if not self.enabled:
            return
        if self.tty:
            self.stream.write("\r" + text)
            self.stream.flush()
        elif step == steps or step % max(1, steps // 10) == 0:
            print(text, file=self.stream, flush=True)

    def line(self, text: str) -> None:
        if self.enabled:
            if self.tty:
                self.stream.write("\r")
            print(text, file=self.stream, flush=True)


@dataclass(frozen=True)
class _Failed:
    """A row that could not be read, sent from a data-loading process as data.

    Raised there, a :class:`RowError` would reach this process as the worker's whole
    traceback (torch rebuilds exceptions from their message).
    """

    row: Any
    path: str
    reason: str


class _Caught(Dataset):
    """``dataset``'s items, with a failed row as a :class:`_Failed` instead of an error."""

    def __init__(self, dataset: SeedPairDataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> torch.Tensor | _Failed:
        try:
            return self.dataset[i]
        except RowError as exc:
            return _Failed(exc.row, exc.path, exc.reason)


def _collate(items: list) -> torch.Tensor | _Failed:
    """Stack a batch's pairs, or pass on its first failed row."""
    for item in items:
        if isinstance(item, _Failed):
            return item
    return default_collate(items)


_RUN_KEYS = (
    "encoder_config",
    "epochs",
    "batch_size",
    "world_size",
    "lr",
    "weight_decay",
    "momentum",
    "temperature",
    "warmup_epochs",
    "loss",
    "precision",
    "seed",
    "table_digest",
    "init_digest",
)
# How a refused resumption names the settings: as pretrain's parameters.
_RUN_NAMES = {
    "encoder_config": "arch",
    "world_size": "number of processes",
    "seed": "random_state",
    "table_digest": "table (its seeds)",
    "init_digest": "init_weights",
}


def _run_value(key: str, value: Any) -> str:
    if key.endswith("_digest") and isinstance(value, str) and len(value) == 64:
        return f"sha256 {value[:12]}..."
    return repr(value)


def pretrain(
    table: pd.DataFrame,
    out: str | os.PathLike,
    *,
    arch: str | Mapping[str, Any] | EncoderConfig = "resnet50",
    init_weights: str | os.PathLike | None = None,
    epochs: int = 100,
    batch_size: int = 32,
    lr: float | None = None,
    weight_decay: float = 1e-6,
    momentum: float = 0.9,
    temperature: float = 0.1,
    warmup_epochs: float | None = None,
    loss: str = "ntxent",
    device: str = "auto",
    precision: str = "fp32",
    num_workers: int = 0,
    volume_cache: int = 1,
    coordinate_system: str = "LPS",
    random_state: int | None = None,
    resume: bool = True,
    epochs_this_run: int | None = None,
    progress: bool = True,
    log: TextIO | None = None,
) -> Path:
    """Pretrain an encoder with the FMCIB contrastive recipe; write a resumable checkpoint.

    Parameters
    ----------
    table : DataFrame
        Seed points (``image_path``, ``coordX``, ``coordY``, ``coordZ``), one per
        lesion; several may share a scan.
    out : str or path-like
        Checkpoint path (not ``.safetensors``: the training state needs torch's
        format). Written after every epoch, atomically.
    arch : str, dict or EncoderConfig, default="resnet50"
        Architecture: a name (with the FMCIB widen factor 2, stem stride 2 and
        biased shortcuts) or :class:`~skfmcib.encoder.EncoderConfig` fields.
    init_weights : "fmcib", str, path-like or None, default=None
        Start from these weights (``"fmcib"``, a checkpoint) instead of a random
        initialisation; the checkpoint's architecture then overrides ``arch``.
    epochs : int, default=100
        Length of the schedule.
    batch_size : int, default=32
        Seeds per step and process (each gives a positive and a negative, two
        views each: ``4 * batch_size`` patches go through the encoder). Every
        step has a full batch: the seeds left over after the last one are left
        out of that epoch, and each epoch shuffles anew, so they take part in
        others.
    lr : float, optional
        Peak learning rate; ``0.3 * batch_size * world_size / 256`` when omitted.
    weight_decay : float, default=1e-6
    momentum : float, default=0.9
    temperature : float, default=0.1
    warmup_epochs : float, optional
        Linear warmup length; a tenth of ``epochs`` when omitted.
    loss : {"ntxent", "mined"}, default="ntxent"
        ``"ntxent"``: :func:`info_nce_loss` over the views of positives and mined
        negatives. ``"mined"``: :func:`mined_negative_loss`, the authors' variant.
    device : str, default="auto"
        ``"auto"``, ``"cpu"``, ``"cuda"``, ...; under ``torchrun`` each process
        takes ``cuda:LOCAL_RANK``.
    precision : {"fp32", "bf16", "fp16"}, default="fp32"
        Autocast precision of the forward pass.
    num_workers : int, default=0
        Data-loading processes (reading scans and cutting patches).
    volume_cache : int, default=1
        Scans each data-loading process keeps in memory (see
        :class:`SeedPairDataset`); raise it when the scans fit in memory.
    coordinate_system : {"LPS", "RAS"}, default="LPS"
    random_state : int or None, default=None
        Seed of initialisation, shuffling, negatives and augmentations (drawn
        at random when None; a resumed run keeps its own).
    resume : bool, default=True
        Continue from ``out`` when it holds an unfinished run with the same
        settings; False starts over and overwrites it.
    epochs_this_run : int, optional
        Stop after this many epochs in this call (the schedule still spans
        ``epochs``); call again to continue, e.g. in time-limited batch jobs.
    progress : bool, default=True
        Report the loss per step and per epoch (on ``log``, process 0 only).
    log : file-like, optional
        Where progress goes (stderr by default).

    Returns
    -------
    pathlib.Path
        ``out``; load it with :func:`skfmcib.weights.load_encoder` or
        ``FMCIBTransformer(weights=out)``.

    Raises
    ------
    ValueError
        Invalid settings, or ``out`` holds another run (different settings).

    Examples
    --------
    >>> import numpy as np, pandas as pd, SimpleITK as sitk, tempfile, os
    >>> from skfmcib.pretrain import pretrain
    >>> from skfmcib.weights import load_encoder
    >>> d = tempfile.mkdtemp()
    >>> ct = np.full((40, 60, 140), 40, np.int16)
    >>> ct[10:30, 20:40, 20:40] = 300
    >>> sitk.WriteImage(sitk.GetImageFromArray(ct), os.path.join(d, "ct.nii.gz"))
    >>> table = pd.DataFrame({"image_path": [os.path.join(d, "ct.nii.gz")] * 2,
    ...                       "coordX": [30.0, 100.0], "coordY": [30.0, 30.0],
    ...                       "coordZ": [20.0, 20.0]})
    >>> ckpt = pretrain(table, os.path.join(d, "ssl.pt"), epochs=1, batch_size=2,
    ...                 arch={"arch": "resnet10", "widen_factor": 0.125},
    ...                 device="cpu", random_state=0, progress=False)
    >>> encoder, info = load_encoder(ckpt)
    >>> info.config.arch, encoder.out_features
    ('resnet10', 64)
    """
    out = Path(out).expanduser()
    if out.suffix == ".safetensors":
        raise ValueError("pretraining checkpoints hold the optimiser state: use a .pt path")
    if out.is_dir():
        raise ValueError(f"{out} is a folder; name the checkpoint file (.pt)")
    # Checked now rather than when the first epoch is written, hours later.
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ValueError(f"{out}: cannot create the folder {out.parent} ({exc})") from exc
    if not os.access(out.parent, os.W_OK | os.X_OK):
        raise ValueError(f"{out}: cannot write in the folder {out.parent}")
    _check_settings(
        epochs=epochs,
        batch_size=batch_size,
        epochs_this_run=epochs_this_run,
        num_workers=num_workers,
        volume_cache=volume_cache,
        random_state=random_state,
        lr=lr,
        warmup_epochs=warmup_epochs,
        temperature=temperature,
        weight_decay=weight_decay,
        momentum=momentum,
    )
    if loss not in ("ntxent", "mined"):
        raise ValueError(f"loss must be 'ntxent' or 'mined', got {loss!r}")
    runtime.check_precision(precision)

    ddp, device = _setup_distributed(device)
    say = _Log(progress and ddp.main, log)
    try:
        return _pretrain(
            table,
            out,
            ddp,
            device,
            say,
            arch=arch,
            init_weights=init_weights,
            epochs=int(epochs),
            batch_size=int(batch_size),
            lr=lr,
            weight_decay=weight_decay,
            momentum=momentum,
            temperature=temperature,
            warmup_epochs=warmup_epochs,
            loss=loss,
            precision=precision,
            num_workers=num_workers,
            volume_cache=volume_cache,
            coordinate_system=coordinate_system,
            random_state=random_state,
            resume=resume,
            epochs_this_run=epochs_this_run,
        )
    finally:
        if ddp.owns_group:
            dist.destroy_process_group()


def _is_whole(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def _is_real(value: Any) -> bool:
    return _is_whole(value) or (isinstance(value, (float, np.floating)) and math.isfinite(value))


def _check_settings(**values: Any) -> None:
    """Refuse a setting outside its range, naming it (None: the default, where allowed)."""
    whole = {
        "epochs": 1,
        "batch_size": 1,
        "epochs_this_run": 1,
        "num_workers": 0,
        "volume_cache": 1,
        "random_state": 0,
    }
    for name, low in whole.items():
        value = values[name]
        if value is None and name in ("epochs_this_run", "random_state"):
            continue
        if not _is_whole(value) or value < low or (name == "random_state" and value >= 2**63):
            what = "a positive integer" if low == 1 else "0 or a positive integer"
            if name == "random_state":
                what += " below 2**63"
            raise ValueError(f"{name} must be {what}, got {value!r}")
    for name, positive in (("lr", False), ("warmup_epochs", False), ("temperature", True)):
        value = values[name]
        if value is None and name != "temperature":
            continue
        if not _is_real(value) or value < 0 or (positive and value == 0):
            what = "a positive number" if positive else "0 or a positive number"
            raise ValueError(f"{name} must be {what}, got {value!r}")
    if not _is_real(values["weight_decay"]) or values["weight_decay"] < 0:
        raise ValueError(
            f"weight_decay must be 0 or a positive number, got {values['weight_decay']!r}"
        )
    if not _is_real(values["momentum"]) or not 0 <= values["momentum"] < 1:
        raise ValueError(f"momentum must be in [0, 1), got {values['momentum']!r}")


def _pretrain(table, out, ddp, device, say, **kw) -> Path:
    seeds_table = validate_table(table, kw["coordinate_system"])
    table_digest = _training.digest(
        [str(p) for p in seeds_table["image_path"]],
        seeds_table[["x", "y", "z"]].to_numpy(dtype=np.float64),
    )
    previous = None
    if kw["resume"] and out.exists():
        checkpoint = read_checkpoint(out)
        previous = checkpoint.extra.get("pretraining")
        if previous is None:
            raise ValueError(
                f"{out} exists and is not a pretraining checkpoint; choose another path or "
                "pass resume=False to overwrite it"
            )
    seed = kw["random_state"]
    if seed is None:
        seed = (
            previous["run"]["seed"] if previous else int(np.random.SeedSequence().entropy % 2**31)
        )
    seed = int(seed)

    if previous is not None:
        encoder, _ = load_encoder(out)
        # What this call asks to start from, compared below with what the run started from.
        if kw["init_weights"] is not None:
            _, info = load_encoder(kw["init_weights"])
            init_digest, config = info.digest, info.config
        else:
            init_digest, config = f"random:{seed}", _config_of(kw["arch"])
    elif kw["init_weights"] is not None:
        encoder, info = load_encoder(kw["init_weights"])
        init_digest, config = info.digest, info.config
    else:
        encoder, info = load_encoder(None, config=_config_of(kw["arch"]), random_state=seed)
        init_digest, config = info.digest, info.config
    _training.own_copy(encoder)  # a loaded file's tensors are memory-mapped
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        projector = projection_head(encoder.out_features)

    epochs, batch_size = kw["epochs"], kw["batch_size"]
    global_batch = batch_size * ddp.world_size
    lr = kw["lr"] if kw["lr"] is not None else 0.3 * global_batch / 256
    warmup_epochs = kw["warmup_epochs"] if kw["warmup_epochs"] is not None else epochs / 10
    run = {
        "encoder_config": config.to_dict(),
        "epochs": epochs,
        "batch_size": batch_size,
        "world_size": ddp.world_size,
        "lr": float(lr),
        "weight_decay": float(kw["weight_decay"]),
        "momentum": float(kw["momentum"]),
        "temperature": float(kw["temperature"]),
        "warmup_epochs": float(warmup_epochs),
        "loss": kw["loss"],
        "precision": kw["precision"],
        "seed": seed,
        "table_digest": table_digest,
        "init_digest": init_digest,
    }
    if previous is not None:
        changed = [k for k in _RUN_KEYS if previous["run"].get(k) != run[k]]
        if changed:
            detail = ", ".join(
                f"{_RUN_NAMES.get(k, k)}: {_run_value(k, previous['run'].get(k))} -> "
                f"{_run_value(k, run[k])}"
                for k in changed
            )
            raise ValueError(
                f"{out} holds a run with other settings ({detail}); resume it with the same "
                "settings, or start another one (another path, or resume=False)"
            )

    net = _ContrastiveNet(encoder, projector).to(device)
    optimizer = LARS(
        lars_param_groups(net, run["weight_decay"]),
        lr=lr,
        momentum=run["momentum"],
        weight_decay=run["weight_decay"],
    )
    scaler = torch.amp.GradScaler(device.type, enabled=kw["precision"] == "fp16")
    generator = torch.Generator()
    epoch, history = 0, []
    if previous is not None:
        projector.load_state_dict(previous["projector_state_dict"])
        optimizer.load_state_dict(previous["optimizer_state_dict"])
        scaler.load_state_dict(previous["scaler_state_dict"])
        epoch, history = int(previous["epoch"]), list(previous["history"])
        done = " (complete; nothing to do)" if epoch >= epochs else ""
        say.line(f"resuming {out} after epoch {epoch}/{epochs}{done}")
    if ddp.world_size > 1:
        if device.type == "cuda":
            net = nn.SyncBatchNorm.convert_sync_batchnorm(net)
        model: nn.Module = nn.parallel.DistributedDataParallel(
            net, device_ids=[device.index] if device.type == "cuda" else None
        )
    else:
        model = net

    dataset = SeedPairDataset(
        table,
        seed=seed,
        coordinate_system=kw["coordinate_system"],
        volume_cache=kw["volume_cache"],
    )
    sampler = DistributedSampler(
        dataset, num_replicas=ddp.world_size, rank=ddp.rank, shuffle=True, seed=seed
    )
    loader_kw: dict[str, Any] = {"num_workers": kw["num_workers"]}
    if device.type == "cuda":
        loader_kw["pin_memory"] = True
    # Full batches only (as many negatives in every step), unless the data are smaller.
    loader_kw["drop_last"] = len(sampler) >= batch_size
    steps = len(sampler) // batch_size if loader_kw["drop_last"] else 1
    total_steps, warmup_steps = steps * epochs, round(warmup_epochs * steps)
    last = epochs if kw["epochs_this_run"] is None else min(epochs, epoch + kw["epochs_this_run"])

    while epoch < last:
        tic = time.perf_counter()
        sampler.set_epoch(epoch)
        dataset.set_epoch(epoch)
        generator.manual_seed(_augmentation_seed(seed, ddp.rank, epoch))
        loader = DataLoader(
            _Caught(dataset),
            batch_size=batch_size,
            sampler=sampler,
            collate_fn=_collate,
            **loader_kw,
        )
        model.train()
        losses = []
        for b, pairs in enumerate(loader):
            if isinstance(pairs, _Failed):
                raise RowError(pairs.row, pairs.path, pairs.reason)
            step = epoch * steps + b
            factor = _training.lr_factor(step, total_steps, warmup_steps, "cosine")
            for group in optimizer.param_groups:
                group["lr"] = lr * factor
            pairs = pairs.to(device, non_blocking=True)
            n = pairs.shape[0]
            patches = torch.cat([pairs[:, 0], pairs[:, 1]])  # positives, then negatives
            views = torch.cat([contrastive_view(patches, generator) for _ in range(2)])
            with runtime.autocast(device, kw["precision"]):
                z = model(views)
            z1, z2 = gather_with_grad(z[: 2 * n].float()), gather_with_grad(z[2 * n :].float())
            if kw["loss"] == "ntxent":
                value = info_nce_loss(z1, z2, run["temperature"])
            else:
                z1, z2 = z1.view(-1, 2 * n, z1.shape[1]), z2.view(-1, 2 * n, z2.shape[1])
                value = mined_negative_loss(
                    z1[:, :n].flatten(0, 1),
                    z2[:, :n].flatten(0, 1),
                    z1[:, n:].flatten(0, 1),
                    z2[:, n:].flatten(0, 1),
                    run["temperature"],
                )
            losses.append(float(value.detach()))
            _training.check_finite_loss(losses[-1], epoch + 1, b + 1, lr * factor, kw["precision"])
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(value).backward()
            scaler.step(optimizer)
            scaler.update()
            say.step(
                f"epoch {epoch + 1}/{epochs} step {b + 1}/{steps} loss {losses[-1]:.4f} "
                f"lr {lr * factor:.3e}",
                b + 1,
                steps,
            )
        epoch += 1
        record = {
            "epoch": epoch,
            "loss": float(np.mean(losses)),
            "time": time.perf_counter() - tic,
        }
        history.append(record)
        if ddp.main:
            extra = {
                "pretraining": {
                    "run": run,
                    "epoch": epoch,
                    "history": history,
                    "projector_state_dict": _training.cpu_state_dict(projector),
                    "optimizer_state_dict": optimizer.state_dict(),
                    "scaler_state_dict": scaler.state_dict(),
                }
            }
            save_checkpoint(encoder, out, extra=extra)
        say.line(
            f"epoch {epoch}/{epochs} loss {record['loss']:.4f} {record['time']:.1f}s -> {out}"
        )
        if ddp.world_size > 1:
            dist.barrier()
    return out


def _augmentation_seed(seed: int, rank: int, epoch: int) -> int:
    """The seed of one process's augmentation generator for one epoch.

    Each process draws different views, and a resumed run draws the views an
    uninterrupted one would, with no generator state to save or to exchange between
    processes.

    Parameters
    ----------
    seed : int
        The run's seed (non-negative).
    rank : int
        The process's rank.
    epoch : int
        The epoch, from 0.

    Returns
    -------
    int
        A 32-bit seed mixed from the three (``numpy.random.SeedSequence``).

    Examples
    --------
    >>> from skfmcib.pretrain import _augmentation_seed
    >>> _augmentation_seed(0, 0, 0) == _augmentation_seed(0, 0, 0)
    True
    >>> len({_augmentation_seed(0, rank, epoch) for rank in range(2) for epoch in range(3)})
    6
    """
    return int(np.random.SeedSequence([int(seed), int(rank), int(epoch)]).generate_state(1)[0])
