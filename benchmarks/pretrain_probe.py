"""Does contrastive pretraining learn? A linear probe before and after, on held-out lesions.

Generates a synthetic cohort (:func:`skfmcib.datasets.make_lesion_cohort`),
splits it by patient, pretrains a small encoder (ResNet-10, reduced width) with
:func:`skfmcib.pretrain.pretrain` on the training patients' seeds only, then fits
the paper's linear evaluation (StandardScaler + LogisticRegression, C chosen by
cross-validation) on frozen features of the training lesions and scores the
held-out patients' lesions, for

- the pretrained encoder, and
- the same encoder at its random initialisation (the pretraining's start).

Prints the probe's held-out scores for ``malignant`` (ROC AUC) and ``site``
(balanced accuracy over 5 classes) with 95 % bootstrap intervals over the
held-out lesions, and the pretraining loss per epoch.

Run (a few minutes on 2 CPU cores)::

    python benchmarks/pretrain_probe.py

Options: ``--lesions``, ``--epochs``, ``--width``, ``--batch-size``, ``--lr``,
``--seed``, ``--workdir`` (keeps the cohort and checkpoints; default a temporary
folder).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import balanced_accuracy_score, roc_auc_score
from sklearn.model_selection import GridSearchCV, GroupShuffleSplit
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from skfmcib.datasets import make_lesion_cohort
from skfmcib.encoder import EncoderConfig
from skfmcib.pretrain import pretrain
from skfmcib.transformer import FMCIBTransformer
from skfmcib.weights import load_encoder, read_checkpoint, save_checkpoint


def probe(features_train, y_train, features_test, y_test, metric: str, seed: int = 0):
    """Fit StandardScaler + LogisticRegression (C by 3-fold CV) and score held-out data.

    Returns the score and a 95 % bootstrap interval over the held-out lesions.
    """
    pipe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=5000))
    search = GridSearchCV(pipe, {"logisticregression__C": [0.01, 0.1, 1.0, 10.0]}, cv=3)
    search.fit(features_train, y_train)
    y_test = np.asarray(y_test)
    if metric == "auc":
        output = search.predict_proba(features_test)[:, 1]
        score = roc_auc_score
    else:
        output = search.predict(features_test)
        score = balanced_accuracy_score
    rng = np.random.default_rng(seed)
    boot = []
    while len(boot) < 1000:
        idx = rng.integers(0, len(y_test), len(y_test))
        if len(np.unique(y_test[idx])) == len(np.unique(y_test)):
            boot.append(score(y_test[idx], output[idx]))
    low, high = np.percentile(boot, [2.5, 97.5])
    return score(y_test, output), low, high


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lesions", type=int, default=120)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--width", type=float, default=0.125, help="ResNet-10 widen factor")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1.0, help="peak LARS learning rate")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", default=None)
    args = parser.parse_args(argv)
    torch.manual_seed(args.seed)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="pretrain_probe_"))
    work.mkdir(parents=True, exist_ok=True)

    tic = time.perf_counter()
    cohort_dir = work / "cohort"
    if (cohort_dir / "cohort.csv").exists():
        from skfmcib.datasets import read_reference_csv

        table = read_reference_csv(cohort_dir / "cohort.csv")
    else:
        table = make_lesion_cohort(args.lesions, cohort_dir, random_state=args.seed)
    split = GroupShuffleSplit(n_splits=1, test_size=0.3, random_state=args.seed)
    train_idx, test_idx = next(split.split(table, groups=table["patient_id"]))
    train, test = table.iloc[train_idx], table.iloc[test_idx]
    print(
        f"cohort: {len(table)} lesions, {table['patient_id'].nunique()} patients; "
        f"train {len(train)} lesions, held out {len(test)} ({time.perf_counter() - tic:.0f}s)"
    )

    config = EncoderConfig(arch="resnet10", widen_factor=args.width)
    initial, _ = load_encoder(None, config=config, random_state=args.seed)
    init_path = save_checkpoint(initial, work / "random_init.pt")

    tic = time.perf_counter()
    ckpt = pretrain(
        train,
        work / "pretrained.pt",
        arch=config.to_dict(),
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        device="cpu",
        random_state=args.seed,
        volume_cache=64,
        progress=True,
    )
    history = read_checkpoint(ckpt).extra["pretraining"]["history"]
    losses = " ".join(f"{h['loss']:.3f}" for h in history)
    print(f"pretraining: {args.epochs} epochs in {time.perf_counter() - tic:.0f}s; loss {losses}")

    rows = []
    for name, weights in (("random init", init_path), ("pretrained", ckpt)):
        fmcib = FMCIBTransformer(weights=str(weights), device="cpu", progress=False).fit()
        f_train, f_test = fmcib.transform(train), fmcib.transform(test)
        auc = probe(f_train, train["malignant"], f_test, test["malignant"], "auc")
        bacc = probe(f_train, train["site"], f_test, test["site"], "bacc")
        rows.append((name, auc, bacc))
    print()
    print(f"{'encoder':<12} {'malignant ROC AUC':>24} {'site balanced accuracy':>24}")
    for name, auc, bacc in rows:
        cells = [f"{m:.3f} [{lo:.3f}, {hi:.3f}]" for m, lo, hi in (auc, bacc)]
        print(f"{name:<12} {cells[0]:>24} {cells[1]:>24}")
    print("(held-out lesions; 95 % bootstrap intervals in brackets)")


if __name__ == "__main__":
    main()
