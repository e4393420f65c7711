"""Training machinery shared by the fine-tuning estimators and pretraining (private).

- heads on top of the encoder and freezing of its first stages;
- parameter groups without weight decay for biases and normalisation layers;
- the learning-rate schedule (linear warmup, then cosine or constant);
- :func:`train_network`, the epoch loop: shuffled mini-batches, augmentation,
  autocast, validation loss, early stopping that restores the best epoch, and a
  resumable training state written atomically after every epoch.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from . import runtime
from ._files import atomic_write
from .augment import finetune_augment
from .encoder import EncoderConfig, ResNet3D
from .weights import _first_line

STATE_FORMAT = "skfmcib-training-state"
STATE_VERSION = 1


# --------------------------------------------------------------------------- models


def arch_config(arch) -> EncoderConfig | None:
    """Turn an estimator's ``arch`` parameter into an :class:`EncoderConfig` (or None)."""
    if arch is None or isinstance(arch, EncoderConfig):
        return arch
    if isinstance(arch, str):
        return EncoderConfig(arch=arch)
    if isinstance(arch, Mapping):
        return EncoderConfig.from_dict(dict(arch))
    raise ValueError(f"arch must be None, an architecture name or a dict, got {arch!r}")


def head_spec(kind: str, in_features: int, out_features: int) -> dict[str, Any]:
    """Describe a head: ``"mlp"`` (in -> in/2 -> out, ReLU) or ``"linear"`` (in -> out)."""
    if kind not in ("mlp", "linear"):
        raise ValueError(f"head must be 'mlp' or 'linear', got {kind!r}")
    hidden = max(1, in_features // 2) if kind == "mlp" else 0
    return {"kind": kind, "in_features": in_features, "hidden": hidden, "out": out_features}


def build_head(spec: Mapping[str, Any], seed: int | None = None) -> nn.Module:
    """Build a head from :func:`head_spec`; ``seed`` fixes its initialisation."""
    with torch.random.fork_rng(devices=[]):
        if seed is not None:
            torch.manual_seed(int(seed))
        if spec["kind"] == "mlp":
            return nn.Sequential(
                nn.Linear(spec["in_features"], spec["hidden"]),
                nn.ReLU(inplace=True),
                nn.Linear(spec["hidden"], spec["out"]),
            )
        return nn.Linear(spec["in_features"], spec["out"])


class EncoderWithHead(nn.Module):
    """The encoder followed by a head; state-dict keys ``encoder.*`` and ``head.*``."""

    def __init__(self, encoder: ResNet3D, head: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x))


STAGES = ("layer1", "layer2", "layer3", "layer4")


def check_freeze(freeze) -> int:
    """Number of encoder stages that ``freeze`` keeps fixed (0 to 4; 4 = the whole encoder)."""
    if isinstance(freeze, str):
        if freeze == "none":
            return 0
        if freeze == "encoder":
            return len(STAGES)
    elif isinstance(freeze, (int, np.integer)) and not isinstance(freeze, bool):
        if 0 <= freeze <= len(STAGES):
            return int(freeze)
    raise ValueError(f"freeze must be 'none', 'encoder' or an integer from 0 to 4, got {freeze!r}")


def freeze_stages(encoder: ResNet3D, n_stages: int) -> list[nn.Module]:
    """Fix the stem and the first ``n_stages`` stages; return the frozen modules.

    Their parameters stop requiring gradients; the caller keeps them in eval mode
    during training so that batch-norm statistics stay fixed too.
    """
    if n_stages == 0:
        return []
    modules = [encoder.conv1, encoder.bn1] + [getattr(encoder, s) for s in STAGES[:n_stages]]
    for module in modules:
        for p in module.parameters():
            p.requires_grad_(False)
    return modules


# ----------------------------------------------------------------------- optimisers


def param_groups(module: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Trainable parameters, biases and normalisation weights (1-d) without decay."""
    decay, plain = [], []
    for p in module.parameters():
        if p.requires_grad:
            (plain if p.ndim <= 1 else decay).append(p)
    groups = [
        {"params": decay, "weight_decay": weight_decay, "exclude": False},
        {"params": plain, "weight_decay": 0.0, "exclude": True},
    ]
    return [g for g in groups if g["params"]]


def make_optimizer(
    module: nn.Module, name: str, lr: float, weight_decay: float
) -> torch.optim.Optimizer:
    """AdamW or SGD (momentum 0.9, Nesterov) over :func:`param_groups`."""
    groups = param_groups(module, weight_decay)
    if not groups:
        raise ValueError("nothing to train: every parameter is frozen")
    for g in groups:
        g.pop("exclude")
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr)
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=0.9, nesterov=True)
    raise ValueError(f"optimizer must be 'adamw' or 'sgd', got {name!r}")


def lr_factor(step: int, total_steps: int, warmup_steps: int, schedule: str) -> float:
    """Multiplier of the base learning rate at optimisation step ``step`` (0-based).

    Linear warmup over ``warmup_steps`` (from ``1/warmup_steps`` to 1), then
    ``"cosine"`` decay towards 0 (reached at ``total_steps``, after the last step) or
    ``"constant"``.
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    if schedule != "cosine":
        raise ValueError(f"lr_schedule must be 'cosine' or 'constant', got {schedule!r}")
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


# -------------------------------------------------------------------------- states


def atomic_save(obj: Any, path: Path) -> None:
    """``torch.save`` to a temporary file beside ``path``, then rename it into place."""
    atomic_write(path, lambda tmp: torch.save(obj, tmp))


def load_state(path: Path) -> dict[str, Any]:
    """Read a training state written by :func:`atomic_save` (weights-only unpickling)."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (OSError, MemoryError):
        raise
    except Exception as exc:  # noqa: BLE001 - torch raises RuntimeError, UnpicklingError, ...
        raise ValueError(
            f"{path}: cannot read this training state ({_first_line(exc)}); delete the file, or "
            "pass resume=False to train from the start"
        ) from None
    if not isinstance(state, dict) or state.get("format") != STATE_FORMAT:
        raise ValueError(f"{path} is not a skfmcib training state")
    if state.get("version") != STATE_VERSION:
        raise ValueError(f"{path}: unsupported training-state version {state.get('version')}")
    return state


def own_copy(module: nn.Module) -> nn.Module:
    """Give ``module`` tensors of its own in memory: a loaded file's are memory-mapped,
    so rewriting the file in place would change them (and cutting it short would end
    the process at the next read)."""
    module.load_state_dict({k: v.clone() for k, v in module.state_dict().items()}, assign=True)
    return module


def cpu_state_dict(module: nn.Module) -> dict[str, torch.Tensor]:
    """A detached CPU copy of a module's state dict."""
    return {k: v.detach().to("cpu", copy=True) for k, v in module.state_dict().items()}


def digest(*parts: Any) -> str:
    """SHA-256 over arrays (their bytes, dtype and shape) and JSON-able values."""
    h = hashlib.sha256()
    for part in parts:
        if isinstance(part, np.ndarray):
            arr = np.ascontiguousarray(part)
            h.update(f"{arr.dtype.str}{arr.shape}".encode())
            h.update(arr.data)
        else:
            h.update(json.dumps(part, sort_keys=True, default=str).encode())
    return h.hexdigest()


# ------------------------------------------------------------------------ the loop


@dataclass(frozen=True)
class TrainConfig:
    """Settings of :func:`train_network` (validated by the estimators)."""

    max_epochs: int
    batch_size: int
    lr: float
    weight_decay: float
    optimizer: str = "adamw"
    lr_schedule: str = "cosine"
    warmup_epochs: float = 0.0
    augment: bool = True
    n_iter_no_change: int | None = None
    precision: str = "fp32"
    verbose: int = 0


@dataclass
class TrainResult:
    """What :func:`train_network` leaves behind besides the trained network."""

    history: list[dict[str, Any]] = field(default_factory=list)
    best_epoch: int | None = None
    resumed_from: int = 0
    train_index: np.ndarray | None = None
    valid_index: np.ndarray | None = None


LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def to_device(x: np.ndarray, device: torch.device) -> torch.Tensor:
    """A float32 batch on ``device`` (pinned and asynchronous for CUDA)."""
    t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    if device.type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t


@torch.inference_mode()
def predict_outputs(
    network: nn.Module,
    X: np.ndarray,
    batch_size: int,
    device: torch.device,
    precision: str = "fp32",
) -> torch.Tensor:
    """Outputs of ``network`` (eval mode) for patches ``X``, as float32 on the CPU."""
    was_training = network.training
    network.eval()
    outs = []
    try:
        for start in range(0, len(X), batch_size):
            xb = to_device(X[start : start + batch_size], device)
            with runtime.autocast(device, precision):
                outs.append(network(xb).float().cpu())
    finally:
        network.train(was_training)
    return torch.cat(outs)


def _set_train_mode(network: nn.Module, frozen: list[nn.Module]) -> None:
    network.train()
    for module in frozen:
        module.eval()


def check_finite_loss(
    value: float, epoch: int, batch: int, lr: float, precision: str = "fp32"
) -> None:
    """Raise when a batch's loss is NaN or infinite: the weights would be ruined.

    Raised before the step, so the network, and the state saved after the last
    complete epoch, keep finite weights.
    """
    if not math.isfinite(value):
        hint = "lower lr, or check the input for extreme values"
        if precision != "fp32":
            hint = f"precision={precision!r} may be the cause: try 'fp32'; else {hint}"
        raise ValueError(
            f"training diverged: the loss is {value} at epoch {epoch}, batch {batch} "
            f"(learning rate {lr:.3g}); {hint}"
        )


def train_network(
    network: nn.Module,
    frozen: list[nn.Module],
    X: np.ndarray,
    target: torch.Tensor,
    loss_fn: LossFn,
    config: TrainConfig,
    *,
    device: torch.device,
    seed: int,
    train_index: np.ndarray,
    valid_index: np.ndarray,
    state_path: Path | None = None,
    resume: bool = True,
    fingerprint: str = "",
    augment_fn: Callable[[torch.Tensor, torch.Generator], torch.Tensor] = finetune_augment,
    log=None,
) -> TrainResult:
    """Train ``network`` in place; return the per-epoch history.

    Parameters
    ----------
    network : nn.Module
        Encoder plus head, on any device (moved to ``device``).
    frozen : list of nn.Module
        Sub-modules kept in eval mode (their parameters do not require grad).
    X : ndarray of shape (n, 1, 50, 50, 50)
        All patches; ``train_index`` and ``valid_index`` pick the two parts.
    target : Tensor of shape (n, ...)
        Targets; ``loss_fn(outputs[batch], target[batch])`` gives the loss.
    loss_fn : callable
        Mean loss of a batch (or of the whole validation set).
    config : TrainConfig
    device : torch.device
    seed : int
        Seed of the generator behind shuffling and augmentation.
    train_index, valid_index : ndarray of int
        Positions of the training and validation patches (``valid_index`` may be empty).
    state_path : Path, optional
        Where the training state is written after every epoch; when it exists and
        ``resume`` is true, training continues from it (its split replaces the given one).
    fingerprint : str
        Identifies the run; a state with another fingerprint is refused.
    augment_fn : callable
        ``augment_fn(batch, generator)`` when ``config.augment``.
    log : file-like, optional
        Where ``verbose`` lines go (stdout by default).
    """
    log = sys.stdout if log is None else log
    network.to(device)
    optimizer = make_optimizer(network, config.optimizer, config.lr, config.weight_decay)
    scaler = torch.amp.GradScaler(device.type, enabled=config.precision == "fp16")
    generator = torch.Generator().manual_seed(int(seed))
    result = TrainResult(train_index=np.asarray(train_index), valid_index=np.asarray(valid_index))
    best_loss, best_state, bad_epochs, stopped, epoch = math.inf, None, 0, False, 0

    if state_path is not None and resume and state_path.exists():
        state = load_state(state_path)
        if state["fingerprint"] != fingerprint:
            raise ValueError(
                f"{state_path} holds the state of another training run (different data or "
                "parameters); remove it or use another checkpoint_dir"
            )
        network.load_state_dict(state["network"])
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        generator.set_state(state["generator"])
        result.history = list(state["history"])
        result.train_index = state["train_index"].numpy()
        result.valid_index = state["valid_index"].numpy()
        result.best_epoch = state["best_epoch"]
        best_loss, best_state = state["best_loss"], state["best_state"]
        bad_epochs, stopped, epoch = state["bad_epochs"], state["stopped"], state["epoch"]
        result.resumed_from = epoch
        if config.verbose:
            print(f"resuming from {state_path} after epoch {epoch}", file=log, flush=True)

    train_idx, valid_idx = result.train_index, result.valid_index
    n_train = len(train_idx)
    steps_per_epoch = math.ceil(n_train / config.batch_size)
    total_steps = steps_per_epoch * config.max_epochs
    warmup_steps = round(config.warmup_epochs * steps_per_epoch)
    base_lrs = [config.lr for _ in optimizer.param_groups]
    target_device = target.to(device)

    while epoch < config.max_epochs and not stopped:
        tic = time.perf_counter()
        _set_train_mode(network, frozen)
        order = train_idx[torch.randperm(n_train, generator=generator).numpy()]
        running = 0.0
        for b in range(steps_per_epoch):
            step = epoch * steps_per_epoch + b
            factor = lr_factor(step, total_steps, warmup_steps, config.lr_schedule)
            for group, base in zip(optimizer.param_groups, base_lrs, strict=True):
                group["lr"] = base * factor
            idx = order[b * config.batch_size : (b + 1) * config.batch_size]
            xb = to_device(X[idx], device)
            if config.augment:
                xb = augment_fn(xb, generator)
            with runtime.autocast(device, config.precision):
                out = network(xb)
            loss = loss_fn(out.float(), target_device[torch.as_tensor(idx, device=device)])
            value = float(loss.detach())
            check_finite_loss(value, epoch + 1, b + 1, group["lr"], config.precision)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            running += value * len(idx)
        epoch += 1
        record: dict[str, Any] = {
            "epoch": epoch,
            "train_loss": running / n_train,
            "lr": optimizer.param_groups[0]["lr"],
        }
        monitored = record["train_loss"]
        if len(valid_idx):
            outputs = predict_outputs(
                network, X[valid_idx], config.batch_size, device, config.precision
            )
            with torch.no_grad():
                valid_loss = float(loss_fn(outputs.to(device), target_device[valid_idx]))
            record["valid_loss"] = monitored = valid_loss
        improved = monitored < best_loss
        if improved:
            best_loss, bad_epochs, result.best_epoch = monitored, 0, epoch
            if len(valid_idx):
                best_state = cpu_state_dict(network)
        else:
            bad_epochs += 1
        if config.n_iter_no_change is not None and bad_epochs >= config.n_iter_no_change:
            stopped = True
        record["time"] = time.perf_counter() - tic
        result.history.append(record)
        if config.verbose:
            print(_epoch_line(record, config.max_epochs, improved), file=log, flush=True)
        if state_path is not None:
            atomic_save(
                {
                    "format": STATE_FORMAT,
                    "version": STATE_VERSION,
                    "fingerprint": fingerprint,
                    "epoch": epoch,
                    "stopped": stopped,
                    "network": cpu_state_dict(network),
                    "optimizer": optimizer.state_dict(),
                    "scaler": scaler.state_dict(),
                    "generator": generator.get_state(),
                    "history": result.history,
                    "train_index": torch.as_tensor(train_idx),
                    "valid_index": torch.as_tensor(valid_idx),
                    "best_epoch": result.best_epoch,
                    "best_loss": best_loss,
                    "best_state": best_state,
                    "bad_epochs": bad_epochs,
                },
                state_path,
            )
    if best_state is not None:
        network.load_state_dict(best_state)
    network.eval()
    return result


def _epoch_line(record: Mapping[str, Any], max_epochs: int, improved: bool) -> str:
    width = len(str(max_epochs))
    parts = [f"epoch {record['epoch']:>{width}}/{max_epochs}"]
    parts.append(f"train_loss {record['train_loss']:.4f}")
    if "valid_loss" in record:
        parts.append(f"valid_loss {record['valid_loss']:.4f}" + (" *" if improved else "  "))
    parts.append(f"lr {record['lr']:.2e}")
    parts.append(f"{record['time']:.1f}s")
    return "  ".join(parts)


def clone_to_cpu(module: nn.Module) -> nn.Module:
    """A deep copy of ``module`` on the CPU (the module itself when already there)."""
    if all(t.device.type == "cpu" for t in (*module.parameters(), *module.buffers())):
        return module
    return copy.deepcopy(module).to("cpu")
