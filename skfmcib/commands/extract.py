"""``skfmcib extract``: features for a lesion table, resumable, into Parquet or CSV.

Exit status: 0 when every row succeeded, 1 when some rows failed (they are listed in
``OUT.errors.csv``), 2 for usage or fatal errors (nothing finished is lost: rerun with
``--resume``).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from .._precision import PRECISIONS
from ..extract import (
    DEFAULT_CHUNK_SIZE,
    ON_ERROR,
    ExtractError,
    ExtractSummary,
    command_line_messages,
    extract,
)
from ..io import ImageReadError
from ..table import RowError
from . import as_flags, counted, positive_int


def add_encoder_arguments(parser: argparse.ArgumentParser) -> None:
    """Options that choose the encoder (shared with other commands)."""
    g = parser.add_argument_group("encoder")
    g.add_argument(
        "--weights",
        default="fmcib",
        help="'fmcib' (official weights, downloaded once), a checkpoint file, or "
        "'random' (random initialisation seeded by --seed; for tests). Default: fmcib",
    )
    g.add_argument(
        "--arch",
        default=None,
        help="architecture (resnet10, 18, 34, 50, 101, 152 or 200); default: the "
        "checkpoint's, else FMCIB's",
    )
    g.add_argument("--widen-factor", type=float, default=None, help="width multiplier")
    g.add_argument("--seed", type=int, default=0, help="seed of --weights random (default 0)")
    g.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ... (auto)")
    g.add_argument(
        "--batch-size",
        type=_batch_size,
        default=8,
        help="patches per batch, or 'auto': sized to the free GPU memory (8 on the CPU)",
    )
    g.add_argument("--precision", choices=PRECISIONS, default="fp32")
    g.add_argument(
        "--coordinate-system",
        choices=("LPS", "RAS"),
        default="LPS",
        help="convention of coordX/Y/Z (LPS: ITK, DICOM; RAS: 3D Slicer, nibabel)",
    )
    g.add_argument("--cache-dir", default=None, help="cache folder of the official weights")


def _batch_size(text: str) -> int | str:
    if text == "auto":
        return text
    try:
        return positive_int(text)
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(
            f"expected a positive integer or 'auto', got {text!r}"
        ) from None


def transformer_from_args(args: argparse.Namespace):
    """The (unfitted) FMCIBTransformer the encoder options describe."""
    from ..transformer import FMCIBTransformer

    arch = args.arch
    if args.widen_factor is not None:
        if arch is None:
            raise ExtractError("--widen-factor needs --arch")
        arch = {"arch": arch, "widen_factor": args.widen_factor}
    weights = None if args.weights == "random" else args.weights
    return FMCIBTransformer(
        weights=weights,
        arch=arch,
        device=args.device,
        batch_size=args.batch_size,
        precision=args.precision,
        coordinate_system=args.coordinate_system,
        cache_dir=args.cache_dir,
        random_state=args.seed if weights is None else None,
    )


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add ``extract`` to the command line."""
    p = subparsers.add_parser(
        "extract",
        help="extract features for a lesion table (resumable)",
        description=(
            "Extract FMCIB features for every lesion of SEEDS (CSV or Parquet: image_path "
            "and coordX/coordY/coordZ in LPS mm, or mask_path) into OUT. Finished chunks are "
            "kept in OUT.parts/ until the end, so a killed run continues with --resume. "
            "Failed rows are listed in OUT.errors.csv. Exit status: 0 all rows done, 1 some "
            "rows failed, 2 usage or fatal error."
        ),
    )
    p.add_argument("seeds", metavar="SEEDS", help="lesion table (.csv or .parquet)")
    p.add_argument(
        "-o", "--output", required=True, metavar="OUT", help="output file (.parquet or .csv)"
    )
    add_encoder_arguments(p)
    g = p.add_argument_group("run")
    g.add_argument(
        "--on-error",
        choices=ON_ERROR,
        default="skip",
        help="a failing row is left out of OUT (skip, default), kept with NaN features "
        "(nan), or stops the run (raise); all are listed in OUT.errors.csv",
    )
    g.add_argument(
        "--chunk-size",
        type=int,
        default=None,
        help=f"rows per part file, whole images kept together ({DEFAULT_CHUNK_SIZE})",
    )
    g.add_argument(
        "--resume",
        action="store_true",
        help="continue an interrupted run (on a finished OUT of the same job: do nothing)",
    )
    g.add_argument(
        "--overwrite", action="store_true", help="replace OUT or an unfinished run's parts"
    )
    g.add_argument(
        "--scheduler",
        default=None,
        metavar="ADDRESS",
        help="run on a Dask cluster: scheduler address (tcp://host:8786) or scheduler file",
    )
    g.add_argument(
        "--image-root",
        default=None,
        help="folder of relative image paths (default: the folder of SEEDS)",
    )
    g.add_argument(
        "--mask-label",
        type=positive_int,
        default=None,
        help="with mask_path tables: seed at the centroid of this label value "
        "(default: one seed per connected lesion of every label)",
    )
    prog = g.add_mutually_exclusive_group()
    prog.add_argument(
        "--progress", dest="progress", action="store_true", default="auto", help="show progress"
    )
    prog.add_argument("--no-progress", dest="progress", action="store_false")
    g.add_argument("-q", "--quiet", action="store_true", help="print errors only")
    p.set_defaults(func=run)
    return p


def _say(quiet: bool):
    def say(message: str) -> None:
        if not quiet:
            print(f"skfmcib extract: {message}", file=sys.stderr, flush=True)

    return say


def run(args: argparse.Namespace) -> int:
    """Run ``skfmcib extract``; returns the exit status."""
    say = _say(args.quiet)
    try:
        with command_line_messages(as_flags):
            summary = extract(
                args.seeds,
                args.output,
                transformer=transformer_from_args(args),
                chunk_size=args.chunk_size,
                resume=args.resume,
                overwrite=args.overwrite,
                on_error=args.on_error,
                scheduler=args.scheduler,
                progress=False if args.quiet else args.progress,
                image_root=args.image_root,
                mask_label=args.mask_label,
                log=say,
            )
    except ExtractError as exc:
        print(f"skfmcib extract: error: {as_flags(str(exc))}", file=sys.stderr)
        return exc.exit_status
    except (RowError, ImageReadError) as exc:
        print(f"skfmcib extract: error: {as_flags(str(exc))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        if args.quiet:  # otherwise the run has said what it kept, and how to continue
            print("skfmcib extract: interrupted; continue with --resume", file=sys.stderr)
        return 2
    _report(summary, say)
    return summary.exit_status


def _report(summary: ExtractSummary, say: Callable[[str], None]) -> None:
    """Print what a run did; a finished output that ``--resume`` left alone is not rewritten,
    so only its failed rows are reported (the library said that it was complete)."""
    if not summary.already_complete:
        extra = ""
        if summary.n_chunks_resumed:
            extra = f", {counted(summary.n_chunks_resumed, 'chunk')} from the earlier run"
        say(
            f"wrote {summary.out}: {summary.n_written} of {counted(summary.n_rows, 'row')} "
            f"in {summary.seconds:.1f} s{extra}"
        )
    if summary.n_duplicates:
        n = summary.n_duplicates
        say(
            f"{counted(n, 'duplicate row')} (same image and seed as an earlier row) "
            f"{'was' if n == 1 else 'were'} computed once"
        )
    if summary.n_failed:
        print(
            f"skfmcib extract: {counted(summary.n_failed, 'row')} failed; reasons in "
            f"{summary.errors_path}",
            file=sys.stderr,
        )
