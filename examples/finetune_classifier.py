"""Fine-tune the FMCIB encoder to classify lesions as malignant or benign.

The lesions come from a generated cohort (synthetic CTs in NIfTI with a lesion
table); replace ``make_lesion_cohort`` with your own table of ``image_path``,
``coordX``, ``coordY``, ``coordZ`` (LPS mm) and labels.

Run::

    python examples/finetune_classifier.py

It starts from the official FMCIB weights (downloaded once, 738 MB, CC BY-NC 4.0)
and trains best on a GPU. ``SKFMCIB_WEIGHTS=/path/to/checkpoint.pt`` starts from
another checkpoint (e.g. one written by ``skfmcib pretrain``). ``SKFMCIB_QUICK=1``
makes everything tiny (a small random encoder, a few lesions) to check the script
runs in seconds.
"""

import os
import sys
import tempfile
from pathlib import Path

from sklearn.metrics import roc_auc_score
from sklearn.model_selection import GroupShuffleSplit

from skfmcib.datasets import make_lesion_cohort
from skfmcib.finetune import FMCIBClassifier
from skfmcib.weights import REGISTRY, WeightsDownloadError, fetch_weights

QUICK = os.environ.get("SKFMCIB_QUICK") == "1"
WEIGHTS = os.environ.get("SKFMCIB_WEIGHTS", "fmcib")
workdir = Path(tempfile.mkdtemp(prefix="skfmcib_finetune_"))

# The weights first (downloaded once): offline, this fails in seconds, not after the cohort.
if not QUICK and WEIGHTS in REGISTRY:
    try:
        fetch_weights(WEIGHTS)
    except WeightsDownloadError as exc:
        sys.exit(
            f"{exc}\n\nThe official FMCIB weights could not be downloaded. Set "
            "SKFMCIB_WEIGHTS=/path/to/model_weights.torch to start from a file downloaded by "
            "hand, or SKFMCIB_QUICK=1 to check the script offline with a tiny random encoder."
        )

# 1. A lesion table: image path, seed point (LPS mm) and a label per lesion.
quick_cohort = dict(spacing=(1.6, 1.6, 3.0)) if QUICK else {}  # coarse voxels: fast
table = make_lesion_cohort(
    16 if QUICK else 150, workdir / "cohort", random_state=0, **quick_cohort
)
split = GroupShuffleSplit(n_splits=1, test_size=0.25, random_state=0)
train_idx, test_idx = next(split.split(table, groups=table["patient_id"]))
train, test = table.iloc[train_idx], table.iloc[test_idx]

# 2. Fine-tune encoder + head (4096 -> 2048 -> 2) with augmentation, early stopping
#    on a validation split, and a checkpoint per epoch (rerun to resume).
if QUICK:
    settings = dict(weights=None, arch={"arch": "resnet10", "widen_factor": 0.125})
    settings.update(max_epochs=2, batch_size=4, lr=1e-3, device="cpu")
else:
    settings = dict(weights=WEIGHTS)
    settings.update(max_epochs=30, batch_size=16, lr=1e-4, warmup_epochs=1)
clf = FMCIBClassifier(
    **settings,
    validation_fraction=0.2,
    n_iter_no_change=5,
    class_weight="balanced",
    checkpoint_dir=workdir / "training",
    random_state=0,
    verbose=1,
)
clf.fit(train, train["malignant"])

# 3. Evaluate on held-out patients.
proba = clf.predict_proba(test)
predicted = clf.classes_[proba.argmax(axis=1)]
if test["malignant"].nunique() == 2:
    print(f"held-out ROC AUC: {roc_auc_score(test['malignant'], proba[:, 1]):.3f}")
print(f"held-out accuracy: {(predicted == test['malignant']).mean():.3f}")

# 4. Save; reload the classifier, or use the fine-tuned encoder for features.
path = clf.save(workdir / "malignancy.pt")
again = FMCIBClassifier.load(path, device=clf.device)
assert (again.predict_proba(test) == proba).all()
print(f"saved to {path}; FMCIBTransformer(weights={str(path)!r}) gives its features")
