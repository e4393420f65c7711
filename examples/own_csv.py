"""Your own lesions: a CSV in the reference package's format, features, and a model.

The input is the reference's lesion table, one row per lesion: ``image_path`` (a
NIfTI/NRRD/MHA file or a DICOM series folder; relative paths are read from the CSV's
folder), ``coordX``, ``coordY``, ``coordZ`` (the seed in LPS millimetres; from 3D
Slicer or nibabel, which use RAS, pass ``--ras``), plus any columns of your own: a
label, a patient identifier.

The script writes the features to ``features.csv`` (the table's columns plus
``fmcib_0`` ... ``fmcib_4095``), then, given a binary label column, evaluates the
malignancy-style pipeline on them in cross-validation grouped by patient.

Run::

    python examples/own_csv.py lesions.csv --label malignant --patient patient_id
    python examples/own_csv.py      # a generated cohort stands in for your CSV

Environment: ``SKFMCIB_WEIGHTS`` (``fmcib``, the default, downloaded once; ``random``
for a randomly initialised encoder that runs offline; or a checkpoint path) and
``SKFMCIB_QUICK=1`` (everything tiny, to check that the script runs).
"""

import argparse
import tempfile
from pathlib import Path

import pandas as pd
from _encoder import QUICK, example_encoder

from skfmcib.datasets import make_lesion_cohort, read_reference_csv
from skfmcib.tasks import evaluate_malignancy, malignancy_pipeline

parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
parser.add_argument("csv", nargs="?", help="lesion table (default: a generated cohort)")
parser.add_argument("--label", default=None, help="binary label column to evaluate")
parser.add_argument("--patient", default=None, help="patient column (folds keep it together)")
parser.add_argument("--ras", action="store_true", help="coordinates are RAS, not LPS")
parser.add_argument("--out", default="features.csv", help="where to write the features")
args = parser.parse_args()

# The encoder first: its weights are resolved (downloaded once) before any work.
fmcib = example_encoder()

if args.csv is None:  # stand-in: a generated cohort writes cohort.csv in the same format
    folder = Path(tempfile.mkdtemp(prefix="skfmcib_own_csv_"))
    quick_cohort = dict(spacing=(1.5, 1.5, 3.0)) if QUICK else {}  # coarse voxels: fast
    make_lesion_cohort(40 if QUICK else 100, folder, random_state=0, **quick_cohort)
    args.csv, args.label, args.patient = folder / "cohort.csv", "malignant", "patient_id"

# 1. Read the table (paths resolved against the CSV's folder, coordinates checked).
table = read_reference_csv(args.csv)
print(f"{len(table)} lesions in {table['image_path'].nunique()} images from {args.csv}")

# 2. Features as a DataFrame (set_output), one row per lesion, saved beside the table.
fmcib.set_params(coordinate_system="RAS" if args.ras else "LPS", on_error="nan")
features = fmcib.set_output(transform="pandas").fit_transform(table)
features.index = table.index
failed = features.isna().any(axis=1)  # unreadable rows (each was named in a warning)
pd.concat([table, features], axis=1).to_csv(args.out, index=False)
print(f"{features.shape[1]} features per lesion written to {args.out}; {failed.sum()} rows failed")

# 3. A model on the features, evaluated in cross-validation grouped by patient.
if args.label is not None:
    ok = ~failed & table[args.label].notna()
    groups = table.loc[ok, args.patient] if args.patient else None
    result = evaluate_malignancy(
        malignancy_pipeline(features=None),  # the features are already computed
        features[ok],
        table.loc[ok, args.label],
        groups=groups,
        cv=3 if QUICK else 5,
        n_resamples=100 if QUICK else 1000,
        random_state=0,
    )
    print(result.to_frame()[["label", "estimate", "low", "high"]].round(3).to_string(index=False))
