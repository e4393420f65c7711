"""``skfmcib pretrain``: self-supervised pretraining of an encoder on seed points.

Writes a checkpoint after every epoch; running the same command again resumes
it. Under ``torchrun --nproc-per-node N`` the processes train data-parallel.
Exit status: 0 when the run finished (or this call's ``--epochs-this-run`` did),
2 for usage or data errors.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path

import pandas as pd

from .._precision import PRECISIONS
from ..extract import ExtractError
from ..io import ImageReadError
from ..table import RowError
from ..weights import CheckpointError, WeightsDownloadError
from . import FLAGS, as_flags

# The library's spellings of options, as the flags of ``skfmcib pretrain``.
PRETRAIN_FLAGS = {
    **FLAGS,
    "resume=False": "--restart",
    "weights=<path to the file>": "--init-weights <path to the file>",
    # Parameter checks, by the flags that set the parameters.
    "epochs_this_run must": "--epochs-this-run must",
    "warmup_epochs must": "--warmup-epochs must",
    "epochs must": "--epochs must",
    "volume_cache must": "--volume-cache must",
    "random_state must": "--seed must",
    "batch_size must": "--batch-size must",
    "num_workers must": "--num-workers must",
    "lr must": "--lr must",
    "temperature must": "--temperature must",
    "loss must": "--loss must",
    "precision must": "--precision must",
    # The hint of a diverged loss.
    "precision='bf16'": "--precision bf16",
    "precision='fp16'": "--precision fp16",
    "try 'fp32'": "try --precision fp32",
    "lower lr": "lower --lr",
}
# Settings a refused resumption lists ("batch_size: 4 -> 2"), as flags.
SETTING_FLAGS = {
    "arch": "--arch/--widen-factor",
    "init_weights": "--init-weights",
    "warmup_epochs": "--warmup-epochs",
    "epochs": "--epochs",
    "batch_size": "--batch-size",
    "lr": "--lr",
    "temperature": "--temperature",
    "loss": "--loss",
    "precision": "--precision",
    "random_state": "--seed",
    "table (its seeds)": "SEEDS (its rows)",
}
_SETTING = re.compile(
    r"(?<![\w-])(" + "|".join(re.escape(k) for k in sorted(SETTING_FLAGS, key=len)[::-1]) + "): "
)


def message(text: str) -> str:
    """A library message as ``skfmcib pretrain`` prints it: options named by their flags.

    >>> message("o.pt holds a run with other settings (batch_size: 4 -> 2); "
    ...         "start another one (resume=False)")
    'o.pt holds a run with other settings (--batch-size: 4 -> 2); start another one (--restart)'
    """
    text = as_flags(text, PRETRAIN_FLAGS)
    return _SETTING.sub(lambda m: SETTING_FLAGS[m.group(1)] + ": ", text)


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add ``pretrain`` to the command line."""
    p = subparsers.add_parser(
        "pretrain",
        help="self-supervised pretraining on seed points (resumable, multi-GPU)",
        description=(
            "Pretrain an encoder with the FMCIB contrastive recipe on the seed points of "
            "SEEDS (CSV or Parquet: image_path, coordX/coordY/coordZ in LPS mm; relative "
            "paths are read from the folder of SEEDS). A checkpoint is written to OUT after "
            "every epoch; the same command resumes it. Multi-GPU: torchrun "
            "--nproc-per-node=N -m skfmcib.cli pretrain ..."
        ),
    )
    p.add_argument("seeds", metavar="SEEDS", help="seed table (.csv or .parquet)")
    p.add_argument("-o", "--out", required=True, metavar="CKPT", help="checkpoint (.pt)")
    g = p.add_argument_group("model")
    g.add_argument("--arch", default="resnet50", help="resnet10 ... resnet200 (resnet50)")
    g.add_argument("--widen-factor", type=float, default=None, help="width multiplier (FMCIB: 2)")
    g.add_argument(
        "--init-weights",
        default=None,
        help="start from 'fmcib' or a checkpoint instead of a random initialisation",
    )
    g = p.add_argument_group("training")
    g.add_argument("--epochs", type=int, default=100, help="schedule length (100)")
    g.add_argument("--batch-size", type=int, default=32, help="seeds per step and process (32)")
    g.add_argument("--lr", type=float, default=None, help="peak lr (0.3 * global batch / 256)")
    g.add_argument("--warmup-epochs", type=float, default=None, help="(a tenth of --epochs)")
    g.add_argument("--temperature", type=float, default=0.1, help="InfoNCE temperature (0.1)")
    g.add_argument(
        "--loss",
        choices=("ntxent", "mined"),
        default="ntxent",
        help="ntxent: all other views are negatives; mined: the authors' variant (ntxent)",
    )
    g.add_argument("--seed", type=int, default=None, help="random seed (drawn when omitted)")
    g.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ... (auto)")
    g.add_argument("--precision", choices=PRECISIONS, default="fp32")
    g.add_argument("--num-workers", type=int, default=0, help="data-loading processes (0)")
    g.add_argument(
        "--volume-cache",
        type=int,
        default=1,
        help="scans kept in memory per data-loading process (1)",
    )
    g.add_argument("--coordinate-system", choices=("LPS", "RAS"), default="LPS")
    g = p.add_argument_group("run")
    g.add_argument(
        "--epochs-this-run",
        type=int,
        default=None,
        help="stop after this many epochs (rerun to continue; for time-limited jobs)",
    )
    g.add_argument("--restart", action="store_true", help="ignore and overwrite an existing CKPT")
    g.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    p.set_defaults(func=run)
    return p


def read_seeds(path: str | os.PathLike) -> pd.DataFrame:
    """Read a seed table, resolving relative image paths against its folder."""
    path = Path(path)
    if path.suffix.lower() == ".parquet":
        from ..extract import _require_pyarrow

        _require_pyarrow("reading a .parquet table")
        table = pd.read_parquet(path)
        root = path.resolve().parent
        table["image_path"] = [
            str(p) if Path(p).expanduser().is_absolute() else str(root / p)
            for p in table["image_path"]
        ]
        return table
    from ..datasets import read_reference_csv

    return read_reference_csv(path)


def _kept(out: str, restart: bool = False) -> str:
    """What an interrupted run leaves in ``out``, and how to go on."""
    from ..weights import read_checkpoint

    try:
        state = read_checkpoint(out).extra["pretraining"]
        done, total = int(state["epoch"]), int(state["run"]["epochs"])
    except Exception:  # noqa: BLE001 - no file, or not a finished epoch's
        return f"no finished epoch saved in {out}"
    again = "the command again without --restart" if restart else "the same command again"
    return f"{out} holds epoch {done} of {total}; run {again} to continue"


def run(args: argparse.Namespace) -> int:
    """Run ``skfmcib pretrain``; returns the exit status."""
    from ..pretrain import pretrain

    arch: str | dict = args.arch
    if args.widen_factor is not None:
        arch = {"arch": args.arch, "widen_factor": args.widen_factor}
    try:
        table = read_seeds(args.seeds)
        out = pretrain(
            table,
            args.out,
            arch=arch,
            init_weights=args.init_weights,
            epochs=args.epochs,
            batch_size=args.batch_size,
            lr=args.lr,
            warmup_epochs=args.warmup_epochs,
            temperature=args.temperature,
            loss=args.loss,
            device=args.device,
            precision=args.precision,
            num_workers=args.num_workers,
            volume_cache=args.volume_cache,
            coordinate_system=args.coordinate_system,
            random_state=args.seed,
            resume=not args.restart,
            epochs_this_run=args.epochs_this_run,
            progress=not args.quiet,
        )
    except (
        ValueError,
        RowError,
        ImageReadError,
        CheckpointError,
        FileNotFoundError,
        ExtractError,
    ) as exc:
        print(f"skfmcib pretrain: {message(str(exc))}", file=sys.stderr)
        return 2
    except WeightsDownloadError as exc:  # --init-weights fmcib, not cached, offline
        print(f"skfmcib pretrain: error: {message(str(exc))}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"skfmcib pretrain: interrupted; {_kept(args.out, args.restart)}", file=sys.stderr)
        return 130
    if int(os.environ.get("RANK", "0")) == 0:
        print(out)
    return 0
