"""The encoder the downstream examples use, chosen by environment variables.

``SKFMCIB_WEIGHTS``: ``fmcib`` (the default: the official weights, downloaded once),
``random`` (a randomly initialised encoder that runs offline; its results say nothing
about FMCIB) or a checkpoint path. ``SKFMCIB_QUICK=1``: a tiny random encoder, to check
that a script runs.

The examples import it as ``from _encoder import QUICK, example_encoder`` (Python puts a
script's folder first on its path). Copying an example elsewhere, copy this file too,
or replace the call with ``FMCIBTransformer(weights="fmcib")``.
"""

import os
import sys

from skfmcib import FMCIBTransformer
from skfmcib.weights import WeightsDownloadError

QUICK = os.environ.get("SKFMCIB_QUICK") == "1"
WEIGHTS = os.environ.get("SKFMCIB_WEIGHTS", "fmcib")


def example_encoder() -> FMCIBTransformer:
    """The fitted encoder the environment asks for; offline without the official
    weights, the script stops at once with what to do (not after its cohort is made)."""
    if QUICK or WEIGHTS == "random":
        arch = {"arch": "resnet10", "widen_factor": 0.25} if QUICK else None
        fmcib = FMCIBTransformer(weights=None, arch=arch, random_state=0)
    else:
        fmcib = FMCIBTransformer(weights=WEIGHTS)
    try:
        return fmcib.fit()
    except WeightsDownloadError as exc:
        sys.exit(
            f"{exc}\n\nThe official FMCIB weights could not be downloaded. To run this "
            "example offline, set SKFMCIB_WEIGHTS=random (a randomly initialised encoder; "
            "its results say nothing about FMCIB), or SKFMCIB_WEIGHTS=/path/to/"
            "model_weights.torch (a file downloaded by hand)."
        )
