"""``skfmcib weights``: fetch the official weights, show where they go, inspect a file."""

from __future__ import annotations

import argparse
import sys

from .._text import listing
from ..weights import (
    REGISTRY,
    CheckpointError,
    WeightsDownloadError,
    bad_values,
    cached_weights_path,
    fetch_weights,
    load_encoder,
)
from . import FLAGS, as_flags


def add_parser(subparsers) -> None:
    """Add ``skfmcib weights {fetch,path,info}``."""
    parser = subparsers.add_parser(
        "weights",
        help="download, locate or inspect encoder weights",
        description="Download the official FMCIB weights once (for offline use later), "
        "print where they are cached, or check and describe a checkpoint file.",
    )
    sub = parser.add_subparsers(dest="weights_command", metavar="ACTION", required=True)
    fetch = sub.add_parser("fetch", help="download the official weights into the cache")
    fetch.add_argument("--cache-dir", help="cache folder (default: $SKFMCIB_CACHE_DIR, ...)")
    fetch.set_defaults(func=_fetch)
    path = sub.add_parser("path", help="print where the official weights are (or go)")
    path.add_argument("--cache-dir")
    path.set_defaults(func=_path)
    info = sub.add_parser("info", help="load a checkpoint strictly and describe it")
    info.add_argument(
        "checkpoint",
        help="a checkpoint file, or 'fmcib' for the downloaded official file (never downloads)",
    )
    info.add_argument("--cache-dir")
    info.set_defaults(func=_info)


# fetch has no --weights: the path goes to the commands that encode.
_FETCH_FLAGS = {
    "pass weights=<path to the file> instead of the registered name": "give the file's path "
    "to the commands that encode instead (skfmcib extract --weights <path to the file>)",
    "pass weights=<path to the file>": "give the file's path to the commands that encode "
    "(skfmcib extract --weights <path to the file>)",
    **FLAGS,
}


def _fetch(args: argparse.Namespace) -> int:
    try:
        print(fetch_weights("fmcib", cache_dir=args.cache_dir))
    except WeightsDownloadError as exc:
        print(f"skfmcib weights fetch: {as_flags(str(exc), _FETCH_FLAGS)}", file=sys.stderr)
        return 1
    return 0


def _path(args: argparse.Namespace) -> int:
    target = cached_weights_path("fmcib", cache_dir=args.cache_dir)
    print(target)
    return 0 if target.is_file() else 1


def _info(args: argparse.Namespace) -> int:
    if args.checkpoint in REGISTRY:
        target = cached_weights_path(args.checkpoint, cache_dir=args.cache_dir)
        if not target.is_file():  # info describes; it does not download
            print(
                f"skfmcib weights info: the {args.checkpoint!r} weights are not downloaded "
                f"({target} does not exist); run 'skfmcib weights fetch' first",
                file=sys.stderr,
            )
            return 1
    try:
        encoder, info = load_encoder(args.checkpoint, cache_dir=args.cache_dir, progress=False)
    except (CheckpointError, WeightsDownloadError, OSError) as exc:
        text = str(exc).replace("; random weights are weights=None", "")
        print(f"skfmcib weights info: {text}", file=sys.stderr)
        return 1
    bad = bad_values(encoder)
    if bad:
        print(
            f"skfmcib weights info: {info.path}: NaN or infinite values, or negative "
            f"batch-norm variances, in {len(bad)} of the encoder's entries "
            f"({listing(bad, 5)}): these weights give NaN features",
            file=sys.stderr,
        )
        return 1
    n_params = sum(p.numel() for p in encoder.parameters())
    print(f"source:       {info.source}")
    print(f"sha256:       {info.digest}")
    print(f"architecture: {info.config.to_dict()}")
    print(f"parameters:   {n_params:,}")
    print(f"features:     {encoder.out_features}")
    return 0
