"""Lesion malignancy from FMCIB features, against a radiomics baseline.

The paper's linear evaluation: features -> StandardScaler -> LogisticRegression, its
penalty tuned by GridSearchCV, evaluated in 5-fold cross-validation that keeps each
patient's lesions in one fold; AUC and mAP with bootstrap 95 % intervals.

Run::

    python examples/malignancy.py

The lesions come from a generated cohort (synthetic CTs in NIfTI with a lesion table);
replace ``make_lesion_cohort`` with your own table (see ``own_csv.py``). The encoder uses
the official FMCIB weights (downloaded once, 738 MB, CC BY-NC 4.0);
``SKFMCIB_WEIGHTS=random`` uses a randomly initialised one (runs offline; its results
say nothing about FMCIB), ``SKFMCIB_WEIGHTS=/path/to/checkpoint`` another checkpoint.
``SKFMCIB_QUICK=1`` makes everything tiny, to check that the script runs.
"""

import tempfile
from pathlib import Path

from _encoder import QUICK, example_encoder

from skfmcib.datasets import make_lesion_cohort
from skfmcib.plotting import plot_roc
from skfmcib.radiomics import RadiomicsTransformer
from skfmcib.tasks import compare_results, evaluate_malignancy, malignancy_pipeline

workdir = Path(tempfile.mkdtemp(prefix="skfmcib_malignancy_"))

# The encoder first: its weights are resolved (downloaded once) before any work.
fmcib = example_encoder()

# 1. A lesion table: image path, seed point (LPS mm), patient and labels per lesion.
quick_cohort = dict(spacing=(1.5, 1.5, 3.0)) if QUICK else {}  # coarse voxels: fast
cohort = make_lesion_cohort(
    40 if QUICK else 200, workdir / "cohort", random_state=0, **quick_cohort
)

# 2. The feature steps. memory= caches each lesion's features, so the refits of
#    cross-validation encode every lesion only once.
fmcib.set_params(memory=workdir / "features")
features = {"FMCIB": fmcib, "radiomics": RadiomicsTransformer()}

# 3. Nested, patient-grouped cross-validation of each full pipeline.
results = {}
for name, step in features.items():
    model = malignancy_pipeline(features=step)
    results[name] = evaluate_malignancy(
        model,
        cohort,
        cohort["malignant"],
        groups=cohort["patient_id"],
        cv=3 if QUICK else 5,
        n_resamples=100 if QUICK else 1000,
        random_state=0,
    )
    print(
        f"{name:>10}: AUC {results[name].metrics['roc_auc']}, "
        f"mAP {results[name].metrics['average_precision']}, "
        f"C chosen per fold {[p['model__C'] for p in results[name].best_params]}"
    )

# 4. What FMCIB adds: paired bootstrap of the difference.
diff = compare_results(
    results["FMCIB"], results["radiomics"], n_resamples=100 if QUICK else 1000, random_state=0
)
print(f"FMCIB - radiomics: AUC {diff['roc_auc'].format(2)} (interval above 0: FMCIB better)")

# 5. ROC curves of the out-of-fold predictions.
ax = plot_roc(
    cohort["malignant"],
    {name: r.y_score for name, r in results.items()},
    folds=results["FMCIB"].fold,  # one model per fold: a curve per fold and their mean
    labels={name: f"{name}: AUC {r.metrics['roc_auc']}" for name, r in results.items()},
    title="Malignancy, out-of-fold predictions",
)
ax.figure.savefig("malignancy_roc.png", dpi=120)
print("ROC curves written to malignancy_roc.png")
