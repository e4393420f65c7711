"""``skfmcib demo``: the paper's three downstream tasks on a generated cohort, in one command.

Generates a synthetic labelled cohort (:func:`skfmcib.datasets.make_lesion_cohort`),
computes FMCIB features and the radiomics baseline once per lesion, evaluates the
malignancy, anatomical-site and survival pipelines (:mod:`skfmcib.tasks`) in
patient-grouped nested cross-validation with bootstrap intervals, prints a table of
both feature sets side by side, and writes figures (ROC curves, Kaplan-Meier curves by
predicted risk, label-efficiency curves, site confusion matrices) and CSV files.

Exit status: 0 on success, 1 when the weights cannot be obtained, 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import contextlib
import re
import sys
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .._precision import PRECISIONS
from . import as_flags

#: Smallest cohort the demo accepts: fewer lesions leave folds without some classes.
MIN_LESIONS = 30
#: The tiny encoder of ``--quick`` (128 features, randomly initialised).
QUICK_ARCH = {"arch": "resnet10", "widen_factor": 0.25}
#: Voxel size of the ``--quick`` cohort (coarser than the default, five times faster).
QUICK_SPACING = (1.5, 1.5, 3.0)
#: Time of the binary survival endpoint, in the cohort's unit (months).
HORIZON = 24.0
FIGURES = (
    "malignancy_roc.png",
    "survival_kaplan_meier.png",
    "label_efficiency.png",
    "site_confusion.png",
)
#: What a demo writes in its folder; an earlier demo's are replaced only with --overwrite.
_OUTPUTS = ("results.csv", "predictions.csv", "cohort", *FIGURES)


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Add ``demo`` to the command line."""
    p = subparsers.add_parser(
        "demo",
        help="run the malignancy, site and survival tasks on a generated cohort",
        description=(
            "Generate a synthetic cohort of CT lesions, extract FMCIB features and a "
            "radiomics baseline, evaluate the paper's three downstream tasks (malignancy, "
            "anatomical site, survival) in cross-validation grouped by patient, print the "
            "results with bootstrap 95% intervals and write figures into DIR."
        ),
        epilog=(
            "Offline, or to try it anywhere in minutes: skfmcib demo --weights random. "
            "Continuous integration: skfmcib demo --quick."
        ),
    )
    g = p.add_argument_group("encoder")
    g.add_argument(
        "--weights",
        default=None,
        help="'fmcib' (the official weights, downloaded once; default), 'random' (a "
        "randomly initialised encoder; runs anywhere, results labelled as such) or the "
        "path of a checkpoint",
    )
    g.add_argument(
        "--arch",
        default=None,
        help="encoder architecture, resnet10 ... resnet50 (default: the checkpoint's, else "
        "FMCIB's ResNet-50 with 4096 features)",
    )
    g.add_argument("--widen-factor", type=float, default=None, help="width multiplier")
    g.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ... (auto)")
    g.add_argument(
        "--precision",
        choices=PRECISIONS,
        default="fp32",
        help="arithmetic of the encoder (fp32); bf16 is faster on CPUs and GPUs with "
        "bfloat16 units, within cosine 0.999 of fp32",
    )
    g.add_argument("--batch-size", type=int, default=8, help="patches per batch (8)")
    g = p.add_argument_group("cohort and evaluation")
    g.add_argument(
        "--n-lesions",
        type=int,
        default=None,
        help=f"lesions in the generated cohort (default 100; --quick: 40; at least {MIN_LESIONS})",
    )
    g.add_argument(
        "--out",
        default="skfmcib-demo",
        metavar="DIR",
        help="folder for the cohort, figures and CSV files (default ./skfmcib-demo)",
    )
    g.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the results of an earlier demo in --out",
    )
    g.add_argument("--folds", type=int, default=None, help="outer folds (default 5; --quick: 3)")
    g.add_argument(
        "--n-resamples",
        type=int,
        default=None,
        help="bootstrap resamples (default 1000; --quick: 200)",
    )
    g.add_argument("--seed", type=int, default=0, help="seed of cohort, encoder and splits (0)")
    g.add_argument(
        "--quick",
        action="store_true",
        help="a small, fast run for tests: random tiny encoder, 40 lesions in coarse "
        "(1.5 x 1.5 x 3 mm) scans, 3 folds, 200 resamples, one label-efficiency repeat "
        "(explicit options still apply)",
    )
    p.set_defaults(func=run)
    return p


# ------------------------------------------------------------------------- settings


@dataclass
class Settings:
    weights: str
    arch: object
    n_lesions: int
    folds: int
    n_resamples: int
    repeats: int
    out: Path
    seed: int
    quick: bool


def _settings(args: argparse.Namespace) -> Settings:
    quick = bool(args.quick)
    weights = args.weights or ("random" if quick else "fmcib")
    arch = args.arch
    if args.widen_factor is not None:
        if arch is None:
            raise ValueError("--widen-factor needs --arch")
        arch = {"arch": arch, "widen_factor": args.widen_factor}
    if arch is None and quick and weights == "random":
        arch = QUICK_ARCH
    n_lesions = args.n_lesions if args.n_lesions is not None else (40 if quick else 100)
    if n_lesions < MIN_LESIONS:
        raise ValueError(
            f"--n-lesions must be at least {MIN_LESIONS}: smaller cohorts leave folds "
            "without some classes"
        )
    folds = args.folds if args.folds is not None else (3 if quick else 5)
    if folds < 3:
        raise ValueError(
            "--folds must be at least 3: with 2, the survival model's inner search is left "
            "folds too small to compare any two patients"
        )
    n_resamples = args.n_resamples if args.n_resamples is not None else (200 if quick else 1000)
    if n_resamples < 1:
        raise ValueError("--n-resamples must be positive")
    if args.batch_size < 1:
        raise ValueError("--batch-size must be positive")
    out = Path(args.out).expanduser()
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {out} is a file; the demo writes a folder")
    if not args.overwrite and any((out / name).exists() for name in _OUTPUTS):
        raise ValueError(
            f"--out {out} holds an earlier demo's results; pass --overwrite to replace "
            "them, or choose another --out"
        )
    return Settings(
        weights=weights,
        arch=arch,
        n_lesions=n_lesions,
        folds=folds,
        n_resamples=n_resamples,
        repeats=1 if quick else 3,
        out=out,
        seed=args.seed,
        quick=quick,
    )


# ------------------------------------------------------------------------- progress


class _Stages:
    """Numbered stage lines on stderr, each ended with its duration."""

    def __init__(self, total: int, stream=None) -> None:
        self.total, self.k = total, 0
        self.stream = sys.stderr if stream is None else stream
        self.start = self._t0 = time.perf_counter()

    def begin(self, text: str) -> None:
        self.k += 1
        self._t0 = time.perf_counter()
        self.stream.write(f"[{self.k}/{self.total}] {text} ...\n")
        self.stream.flush()

    def end(self, note: str = "") -> None:
        took = time.perf_counter() - self._t0
        extra = f"; {note}" if note else ""
        self.stream.write(f"      done in {took:.1f} s{extra}\n")
        self.stream.flush()

    def note(self, text: str) -> None:
        self.stream.write(f"      {text}\n")
        self.stream.flush()

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.start


# ----------------------------------------------------------------------------- run


def _encoder_label(weights: str, out_features: int) -> str:
    if weights == "random":
        return "FMCIB (random weights)"
    if weights == "fmcib":
        return "FMCIB"
    return f"FMCIB ({Path(weights).name})"


def _make_transformer(s: Settings, args: argparse.Namespace):
    from ..transformer import FMCIBTransformer

    random = s.weights == "random"
    return FMCIBTransformer(
        weights=None if random else s.weights,
        arch=s.arch,
        device=args.device,
        batch_size=args.batch_size,
        precision=args.precision,
        progress="auto",
        random_state=s.seed if random else None,
    )


def _load_patches(table) -> np.ndarray:
    from .._progress import Progress
    from ..patches import PATCH_SIZE, iter_patches
    from ..table import RowError

    out = np.empty((len(table), 1, PATCH_SIZE, PATCH_SIZE, PATCH_SIZE), dtype=np.float32)
    with Progress(len(table), unit="lesions") as bar:
        for pos, patch in iter_patches(table):
            if isinstance(patch, RowError):
                raise patch
            out[pos, 0] = patch
            bar.update()
    return out


def run(args: argparse.Namespace) -> int:
    """Run the demo; returns the exit status."""
    try:
        s = _settings(args)
    except ValueError as exc:
        print(f"skfmcib demo: {exc}", file=sys.stderr)
        return 2
    try:
        import matplotlib  # noqa: F401

        can_plot = True
    except ImportError:
        can_plot = False

    stages = _Stages(8)
    if not can_plot:
        stages.note(
            "matplotlib is not installed, so no figures will be written "
            "(pip install 'skfmcib[plot]')"
        )

    # 1. the encoder first: offline, the official weights fail here, within seconds
    from ..weights import CheckpointError, WeightsDownloadError

    stages.begin(
        "Loading the encoder"
        + (" (random initialisation)" if s.weights == "random" else f" ({s.weights} weights)")
    )
    fmcib = _make_transformer(s, args)
    try:
        fmcib.fit()
    except WeightsDownloadError as exc:
        print(
            f"\nskfmcib demo: the official FMCIB weights are not available.\n"
            f"{as_flags(str(exc))}\n",
            file=sys.stderr,
        )
        print(
            "Pass --weights random to run the demo anywhere with a randomly initialised "
            "encoder (results labelled as such), or --weights PATH with a checkpoint file "
            "(e.g. model_weights.torch downloaded on another machine).",
            file=sys.stderr,
        )
        return 1
    except (FileNotFoundError, CheckpointError) as exc:
        print(f"skfmcib demo: {exc}", file=sys.stderr)
        print(
            "Pass --weights fmcib, --weights random or the path of a checkpoint.", file=sys.stderr
        )
        return 1
    except ValueError as exc:  # --arch, --widen-factor or --device the encoder refuses
        print(f"skfmcib demo: error: {exc}", file=sys.stderr)
        return 2
    label = _encoder_label(s.weights, fmcib.n_features_out_)
    stages.end(f"{fmcib.n_features_out_} features per lesion")

    # 2. the cohort
    from ..datasets import make_lesion_cohort

    cohort_dir = s.out / "cohort"
    stages.begin(f"Generating a cohort of {s.n_lesions} lesions in {cohort_dir}")
    spacing = {"spacing": QUICK_SPACING} if s.quick else {}
    cohort = make_lesion_cohort(
        s.n_lesions, cohort_dir, random_state=s.seed, overwrite=True, **spacing
    )
    n_patients = cohort["patient_id"].nunique()
    stages.end(f"{n_patients} patients")

    # 3. features, once per lesion
    from ..radiomics import RadiomicsTransformer

    stages.begin("Reading the 50 mm patches")
    patches = _load_patches(cohort)
    stages.end()
    stages.begin(f"Encoding {len(patches)} patches ({label})")
    t0 = time.perf_counter()
    X_fmcib = fmcib.transform(patches)
    rate = len(patches) / max(time.perf_counter() - t0, 1e-9)
    X_radiomics = RadiomicsTransformer().fit_transform(patches)
    stages.end(f"{rate:.1f} patches/s; radiomics baseline: {X_radiomics.shape[1]} features")

    # 4.-6. the tasks
    results, curves = _evaluate(cohort, {label: X_fmcib, "radiomics": X_radiomics}, s, stages)

    # 7. report
    stages.begin(f"Writing results and figures to {s.out}")
    s.out.mkdir(parents=True, exist_ok=True)
    table = _results_table(results, label)
    table.to_csv(s.out / "results.csv", index=False)
    _predictions(cohort, results).to_csv(s.out / "predictions.csv", index=False)
    figures = []
    if can_plot:
        figures = _figures(results, curves, label, s)
    stages.end()

    print(_header(s, label, len(cohort), n_patients, fmcib.n_features_out_, X_radiomics.shape[1]))
    print(_format_table(table, label))
    print()
    if figures:
        print(f"Figures in {s.out}: {', '.join(figures)}")
    elif not can_plot:
        print("No figures: matplotlib is not installed (pip install 'skfmcib[plot]').")
    print(f"Tables in {s.out}: results.csv, predictions.csv; cohort in {cohort_dir}")
    print(f"Total time: {stages.elapsed:.0f} s")
    return 0


# ------------------------------------------------------------------------ evaluation


def _evaluate(cohort, features: dict, s: Settings, stages: _Stages):
    from sksurv.util import Surv

    from ..evaluation import label_efficiency_curve
    from ..tasks import (
        balanced_accuracy_scorer,
        compare_results,
        evaluate_malignancy,
        evaluate_site,
        evaluate_survival,
        malignancy_pipeline,
        site_pipeline,
        survival_pipeline,
    )

    groups = cohort["patient_id"].to_numpy()
    y_survival = Surv.from_arrays(cohort["event"].to_numpy(bool), cohort["time"].to_numpy())
    tasks = {
        "malignancy": (
            malignancy_pipeline,
            evaluate_malignancy,
            cohort["malignant"].to_numpy(),
            "roc_auc",
        ),
        "site": (
            site_pipeline,
            evaluate_site,
            cohort["site"].to_numpy(),
            balanced_accuracy_scorer,
        ),
        "survival": (survival_pipeline, evaluate_survival, y_survival, None),
    }
    common = {"groups": groups, "cv": s.folds, "n_resamples": s.n_resamples}
    results: dict[str, dict] = {}
    curves: dict[str, dict] = {}
    for task, (builder, evaluate, y, scoring) in tasks.items():
        stages.begin(
            f"{task}: nested {s.folds}-fold cross-validation grouped by patient, "
            f"{s.n_resamples} bootstrap resamples"
        )
        results[task] = {}
        with _small_classes_noted() as (fewest, incomplete):
            for name, X in features.items():
                extra = {"horizon": HORIZON} if task == "survival" else {}
                results[task][name] = evaluate(
                    builder(features=None), X, y, random_state=s.seed, **common, **extra
                )
            names = list(features)
            results[task]["difference"] = compare_results(
                results[task][names[0]],
                results[task][names[1]],
                n_resamples=s.n_resamples,
                random_state=s.seed,
            )
            curves[task] = {
                name: label_efficiency_curve(
                    builder(features=None, tune=False),
                    X,
                    y,
                    cv=s.folds,
                    scoring=scoring,
                    groups=groups,
                    n_repeats=s.repeats,
                    random_state=s.seed,
                )
                for name, X in features.items()
            }
        stages.end("; ".join(f"{name}: {_headline(results[task][name])}" for name in features))
        if fewest:
            stages.note(
                f"some classes have fewer lesions than a split has folds (as few as "
                f"{min(fewest)}), so their folds are uneven; a larger --n-lesions evens them"
            )
        for text in dict.fromkeys(incomplete):  # the table marks these intervals with #
            stages.note(f"# {text}")
    return results, curves


@contextlib.contextmanager
def _small_classes_noted() -> Iterator[tuple[list[int], list[str]]]:
    """Collect scikit-learn's "least populated class" warnings as counts, for one note.

    The demo's small cohorts trigger it in every inner split. Warnings of incomplete
    bootstrap intervals are collected as texts (the table marks those intervals); other
    warnings pass on.
    """
    from ..evaluation import BootstrapWarning

    fewest: list[int] = []
    incomplete: list[str] = []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield fewest, incomplete
    for w in caught:
        found = re.search(r"least populated class in y has only (\d+) member", str(w.message))
        if found:
            fewest.append(int(found.group(1)))
        elif issubclass(w.category, BootstrapWarning):
            incomplete.append(str(w.message))
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)


def _headline(result) -> str:
    spec = result.specs[0]
    return f"{spec.label} {result.metrics[spec.name]}"


# ---------------------------------------------------------------------------- tables


def _results_table(results: dict, label: str):
    import pandas as pd

    rows = []
    for task, by_model in results.items():
        first = by_model[label]
        for spec in first.specs:
            row = {"task": task, "metric": spec.label, "key": spec.name}
            for model, prefix in ((label, "fmcib"), ("radiomics", "radiomics")):
                ci = by_model[model].metrics[spec.name]
                row.update(
                    {
                        f"{prefix}": ci.estimate,
                        f"{prefix}_low": ci.low,
                        f"{prefix}_high": ci.high,
                        f"{prefix}_interval": ci.method,
                        f"{prefix}_incomplete": ci.incomplete,
                    }
                )
            diff = by_model["difference"][spec.name]
            row.update(
                {
                    "difference": diff.estimate,
                    "difference_low": diff.low,
                    "difference_high": diff.high,
                    "difference_interval": diff.method,
                    "difference_incomplete": diff.incomplete,
                }
            )
            rows.append(row)
    return pd.DataFrame(rows)


def _predictions(cohort, results: dict):
    out = cohort[["lesion_id", "patient_id", "malignant", "site", "time", "event"]].copy()
    for task, by_model in results.items():
        for model, result in by_model.items():
            if model == "difference":
                continue
            prefix = "fmcib" if model != "radiomics" else "radiomics"
            out[f"fold_{task}"] = result.fold
            if task == "malignancy":
                out[f"{prefix}_malignancy_probability"] = result.y_score
            elif task == "site":
                out[f"{prefix}_site_predicted"] = result.y_pred
            else:
                out[f"{prefix}_survival_risk"] = result.y_score
    return out


def _header(s: Settings, label, n_lesions, n_patients, n_fmcib, n_radiomics) -> str:
    lines = [
        "",
        f"skfmcib demo: {n_lesions} synthetic lesions in {n_patients} patients "
        f"(cohort seed {s.seed})",
    ]
    if s.weights == "random":
        lines.append(
            "Encoder: RANDOM weights (--weights random), not the trained FMCIB model: these "
            "numbers show the pipeline, not FMCIB's performance."
        )
    elif s.weights == "fmcib":
        lines.append("Encoder: the official FMCIB weights (Pai et al. 2024).")
    else:
        lines.append(f"Encoder: weights from {s.weights}.")
    lines += [
        f"Features: {label}, {n_fmcib} per lesion, against a radiomics baseline of "
        f"{n_radiomics} hand-crafted intensity, shape and texture features, each computed "
        "once per lesion; the heads are tuned on the feature matrices, which is equivalent to "
        "tuning the full pipelines (neither feature step learns from labels).",
        f"Evaluation: {s.folds}-fold cross-validation grouped by patient, head "
        "hyper-parameters tuned in an inner grouped 3-fold search; each metric computed on "
        "each outer fold's test lesions and averaged over the folds, with 95% intervals "
        f"from {s.n_resamples} bootstrap resamples of patients within folds. Difference: "
        "paired bootstrap of FMCIB minus radiomics (an interval above 0 means FMCIB is "
        "better).",
        "",
    ]
    import textwrap

    return "\n".join(
        textwrap.fill(line, 100, subsequent_indent="  ") if line else line for line in lines
    )


def _format_table(table, label: str) -> str:
    def ci(row, prefix, signed=False):
        fmt = "+.2f" if signed else ".2f"
        mark = "*" if row[prefix + "_interval"] == "basic" else ""
        mark += "#" if row[prefix + "_incomplete"] else ""
        return (
            f"{row[prefix]:{fmt}} [{row[prefix + '_low']:{fmt}}, "
            f"{row[prefix + '_high']:{fmt}}]{mark}"
        )

    headers = ["task", "metric", label, "radiomics baseline", "difference"]
    body = [
        [r["task"], r["metric"], ci(r, "fmcib"), ci(r, "radiomics"), ci(r, "difference", True)]
        for _, r in table.iterrows()
    ]
    widths = [max(len(str(x)) for x in col) for col in zip(headers, *body, strict=True)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    previous = None
    for row in body:
        shown = list(row)
        if row[0] == previous:
            shown[0] = ""
        previous = row[0]
        lines.append("  ".join(c.ljust(w) for c, w in zip(shown, widths, strict=True)).rstrip())
    notes = []
    if any("*" in cell for row in body for cell in row):
        notes += [
            "* basic bootstrap interval: the resampled metric was strongly biased (few "
            "lesions of a class",
            "  per fold), so this interval is rough; more lesions (--n-lesions) give stable ones.",
        ]
    if any("#" in cell for row in body for cell in row):
        notes += [
            "# likely too narrow, or from part of the data: a class of some fold is one "
            "patient's alone",
            "  (the same in every resample), or the metric is undefined in some folds (left "
            "out of the",
            "  estimate) or in over 5% of the bootstrap resamples (left out of the interval); "
            "the notes",
            "  on stderr say which. More lesions (--n-lesions) or fewer --folds avoid it.",
        ]
    if notes:
        lines += ["", *notes]
    return "\n".join(lines)


# --------------------------------------------------------------------------- figures


def _figures(results: dict, curves: dict, label: str, s: Settings) -> list[str]:
    from matplotlib.figure import Figure
    from sklearn.metrics import ConfusionMatrixDisplay

    from ..plotting import plot_kaplan_meier, plot_label_efficiency, plot_roc

    suffix = " (random encoder)" if s.weights == "random" else ""
    written = []

    # ROC curves of malignancy
    mal = results["malignancy"]
    fig = Figure(figsize=(5.6, 5.2), layout="constrained")
    ax = fig.subplots()
    models = [m for m in mal if m != "difference"]
    plot_roc(
        mal[models[0]].y_true,
        {m: mal[m].y_score for m in models},
        folds=mal[models[0]].fold,
        labels={m: f"{m}: AUC {mal[m].metrics['roc_auc']}" for m in models},
        ax=ax,
        title=f"Malignancy{suffix}\nROC curve of each outer fold (thin) and their mean",
    )
    written.append(_save(fig, s.out / "malignancy_roc.png"))

    # Kaplan-Meier curves by predicted risk
    surv = results["survival"]
    fig = Figure(figsize=(11, 4.6), layout="constrained")
    axes = fig.subplots(1, 2, sharey=True)
    for ax, m in zip(axes, models, strict=True):
        c = surv[m].metrics["c_index_harrell"]
        plot_kaplan_meier(
            surv[m].y_true,
            surv[m].y_score,
            folds=surv[m].fold,
            ax=ax,
            title=f"{m}: split at each fold's median predicted risk\nHarrell's C {c}",
        )
    axes[1].set_ylabel("")
    fig.suptitle(f"Survival, out-of-fold risk{suffix}")
    written.append(_save(fig, s.out / "survival_kaplan_meier.png"))

    # label efficiency
    fig = Figure(figsize=(13, 4.4), layout="constrained")
    axes = fig.subplots(1, 3)
    metric = {"malignancy": "AUC", "site": "balanced accuracy", "survival": "Harrell's C"}
    chance = {
        "malignancy": 0.5,
        "site": 1 / len(results["site"][models[0]].classes),
        "survival": 0.5,
    }
    for ax, task in zip(axes, ("malignancy", "site", "survival"), strict=True):
        plot_label_efficiency(
            curves[task], ax=ax, metric=metric[task], title=task, reference=chance[task]
        )
    subsamples = "subsample" if s.repeats == 1 else "subsamples"
    fig.suptitle(
        f"Label efficiency{suffix}: out-of-fold score against the fraction of training "
        f"labels ({s.folds} folds x {s.repeats} {subsamples}; heads with a fixed penalty)"
    )
    written.append(_save(fig, s.out / "label_efficiency.png"))

    # site confusion matrices
    site = results["site"]
    fig = Figure(figsize=(11, 4.8), layout="constrained")
    axes = fig.subplots(1, 2)
    for ax, m in zip(axes, models, strict=True):
        r = site[m]
        ConfusionMatrixDisplay.from_predictions(
            r.y_true,
            r.y_pred,
            labels=r.classes,
            normalize="true",
            ax=ax,
            colorbar=False,
            values_format=".2f",
            cmap="Blues",
        )
        ax.set_title(f"{m}: balanced accuracy {r.metrics['balanced_accuracy']}")
        ax.tick_params(axis="x", labelrotation=30)
    fig.suptitle(f"Anatomical site, out-of-fold predictions (rows sum to 1){suffix}")
    written.append(_save(fig, s.out / "site_confusion.png"))
    return written


def _save(fig, path: Path) -> str:
    fig.savefig(path, dpi=120)
    return path.name
