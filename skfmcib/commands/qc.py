"""``skfmcib qc``: one picture per lesion seed and an index page, to check the seeds.

Exit status: 0 when every lesion was drawn (flagged seeds included), 1 when some
could not be drawn (unreadable image, bad row), 2 for usage or fatal errors.
"""

from __future__ import annotations

import argparse
import sys

from ..extract import ExtractError
from ..io import ImageReadError
from ..qc import WINDOWS, quality_control
from ..table import RowError
from . import as_flags, counted, positive_int


def _window(text: str):
    if text == "auto" or text in WINDOWS:
        return text
    try:
        level, width = (float(x) for x in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"window must be auto, {', '.join(WINDOWS)} or LEVEL/WIDTH (e.g. -600/1500)"
        ) from None
    return (level, width)


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add ``qc`` to the command line."""
    p = subparsers.add_parser(
        "qc",
        help="draw each lesion seed (3 planes, 50 mm box) and an index page",
        description=(
            "For every lesion of SEEDS, write DIR/row-NNNNN.png with the axial, coronal and "
            "sagittal planes through the seed, in CT window, with the 50 mm patch the encoder "
            "sees, and DIR/index.html to scroll through them. Seeds outside the scan or in "
            "air are flagged: the usual sign of RAS coordinates given as LPS."
        ),
    )
    p.add_argument("seeds", metavar="SEEDS", help="lesion table (.csv or .parquet)")
    p.add_argument("-o", "--output", required=True, metavar="DIR", help="output folder")
    p.add_argument(
        "--coordinate-system",
        choices=("LPS", "RAS"),
        default="LPS",
        help="convention of coordX/Y/Z (default LPS)",
    )
    p.add_argument(
        "--window",
        type=_window,
        default="auto",
        help="auto (lung window for aerated surroundings, else soft tissue), lung, soft, "
        "bone, or LEVEL/WIDTH in HU (write --window=-600/1500: the value starts with -)",
    )
    p.add_argument("--image-root", default=None, help="folder of relative image paths")
    p.add_argument("--mask-label", type=positive_int, default=None, help="see skfmcib extract")
    p.add_argument("--dpi", type=positive_int, default=72, help="picture resolution (72)")
    prog = p.add_mutually_exclusive_group()
    prog.add_argument("--progress", dest="progress", action="store_true", default="auto")
    prog.add_argument("--no-progress", dest="progress", action="store_false")
    p.add_argument("-q", "--quiet", action="store_true", help="print errors only")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    """Run ``skfmcib qc``; returns the exit status."""

    def say(message: str) -> None:
        if not args.quiet:
            print(f"skfmcib qc: {message}", file=sys.stderr, flush=True)

    try:
        summary = quality_control(
            args.seeds,
            args.output,
            coordinate_system=args.coordinate_system,
            window=args.window,
            image_root=args.image_root,
            mask_label=args.mask_label,
            progress=False if args.quiet else args.progress,
            dpi=args.dpi,
            log=say,
        )
    except (ExtractError, RowError, ImageReadError, ValueError, ImportError) as exc:
        print(f"skfmcib qc: error: {as_flags(str(exc))}", file=sys.stderr)
        return 2
    say(
        f"wrote {summary.index} ({counted(len(summary.table), 'lesion')}, "
        f"{summary.n_flagged} flagged, "
        f"{summary.n_failed} not drawn) in {summary.seconds:.1f} s"
    )
    for _, entry in summary.table.iterrows():
        if entry["flag"]:
            say(f"row {entry['row']} ({entry['image_path']}): {as_flags(entry['flag'])}")
        if entry["error"]:
            print(
                f"skfmcib qc: row {entry['row']} ({entry['image_path']}): "
                f"{as_flags(entry['error'])}",
                file=sys.stderr,
            )
    return 1 if summary.n_failed else 0
