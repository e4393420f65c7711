"""How many labels does a task need? Score against the fraction of training labels.

The paper's label-efficiency curves: the training part of every cross-validation fold
is subsampled to 100, 50, 20 and 10 % of its lesions (stratified, nested subsets), the
head is fitted on the subsample and scored on the whole test fold. Foundation-model
features that already describe lesions well lose less when labels are scarce.

The features are computed once (fit_transform on the whole table, the encoder being
frozen) and the heads are fitted on the feature matrices, which makes the many refits
cheap. The heads use a fixed penalty: a search cannot split a handful of labels.

Run::

    python examples/label_efficiency.py

Environment: ``SKFMCIB_WEIGHTS`` (``fmcib``, the default, downloaded once; ``random``
for a randomly initialised encoder that runs offline; or a checkpoint path) and
``SKFMCIB_QUICK=1`` (everything tiny, to check that the script runs).
"""

import tempfile
from pathlib import Path

from _encoder import QUICK, example_encoder

from skfmcib.datasets import make_lesion_cohort
from skfmcib.evaluation import label_efficiency_curve
from skfmcib.plotting import plot_label_efficiency
from skfmcib.radiomics import RadiomicsTransformer
from skfmcib.tasks import malignancy_pipeline

workdir = Path(tempfile.mkdtemp(prefix="skfmcib_label_efficiency_"))

# The encoder first: its weights are resolved (downloaded once) before any work.
fmcib = example_encoder()

quick_cohort = dict(spacing=(1.5, 1.5, 3.0)) if QUICK else {}  # coarse voxels: fast
cohort = make_lesion_cohort(
    40 if QUICK else 200, workdir / "cohort", random_state=0, **quick_cohort
)


# Features once per lesion.
features = {
    "FMCIB": fmcib.fit_transform(cohort),
    "radiomics": RadiomicsTransformer().fit_transform(cohort),
}

curves = {}
for name, X in features.items():
    curves[name] = label_efficiency_curve(
        malignancy_pipeline(features=None, tune=False),  # X already holds the features
        X,
        cohort["malignant"],
        fractions=(1.0, 0.5, 0.2, 0.1),
        cv=3 if QUICK else 5,
        scoring="roc_auc",
        groups=cohort["patient_id"],
        n_repeats=1 if QUICK else 5,
        random_state=0,
    )
    summary = curves[name].groupby("fraction")[["n_train", "score"]].mean()
    print(f"{name}: mean AUC by fraction of training labels\n{summary.round(3).to_string()}\n")

ax = plot_label_efficiency(curves, metric="AUC", reference=0.5, title="Malignancy")
ax.figure.savefig("label_efficiency.png", dpi=120)
print("Curves written to label_efficiency.png")
