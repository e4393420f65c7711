"""Figures of downstream results: ROC curves, Kaplan-Meier curves by risk, label efficiency.

matplotlib is an optional dependency (``pip install 'skfmcib[plot]'``); it is imported
only when a function here is called. Every function draws on ``ax`` when given, else on
a new figure, and returns the axes.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike
from sksurv.util import check_y_survival

if TYPE_CHECKING:  # matplotlib is optional
    from matplotlib.axes import Axes

__all__ = ["plot_kaplan_meier", "plot_label_efficiency", "plot_roc"]


def _pyplot():
    try:
        import matplotlib.pyplot as plt
    except ImportError as exc:  # pragma: no cover - depends on the installation
        raise ImportError(
            "plotting needs matplotlib, an optional dependency: pip install 'skfmcib[plot]'"
        ) from exc
    return plt


def _axes(ax: Axes | None, figsize=(5.0, 4.5)) -> Axes:
    if ax is not None:
        return ax
    _, ax = _pyplot().subplots(figsize=figsize, layout="constrained")
    return ax


def plot_roc(
    y_true: ArrayLike,
    scores: Mapping[str, ArrayLike],
    *,
    folds: ArrayLike | None = None,
    labels: Mapping[str, str] | None = None,
    ax: Axes | None = None,
    title: str | None = None,
) -> Axes:
    """ROC curves of several models on the same lesions, with the chance diagonal.

    Parameters
    ----------
    y_true : array-like of shape (n_samples,)
        Binary labels (the larger one is positive).
    scores : mapping of str to array-like
        Model name -> scores (e.g. out-of-fold probabilities of the positive class).
    folds : array-like of shape (n_samples,), optional
        Cross-validation fold of each out-of-fold score. Scores of different folds come
        from different models, so each fold gets its own ROC curve (thin) and the model
        their mean (thick; true positive rates averaged at each false positive rate),
        with the mean of the folds' AUCs: the cross-validation estimate.
    labels : mapping of str to str, optional
        Legend text per model (by default the name with its AUC); e.g. the AUC with its
        bootstrap interval.
    ax : matplotlib Axes, optional
        Where to draw.
    title : str, optional
        Axes title.

    Returns
    -------
    matplotlib Axes

    Examples
    --------
    >>> import numpy as np
    >>> from skfmcib.plotting import plot_roc
    >>> rng = np.random.default_rng(0)
    >>> y = rng.integers(0, 2, 100)
    >>> ax = plot_roc(y, {"model": y + rng.normal(0, 1, 100)})
    >>> ax.get_legend_handles_labels()[1]
    ['model (AUC = 0.77)', 'chance']
    >>> ax = plot_roc(y, {"model": y + rng.normal(0, 1, 100)}, folds=np.arange(100) % 4)
    >>> ax.get_legend_handles_labels()[1]
    ['model (mean AUC over 4 folds = 0.70)', 'chance']
    """
    from sklearn.metrics import auc, roc_curve

    ax = _axes(ax)
    y_true = np.asarray(y_true)
    positive = np.unique(y_true)[-1]
    colors = _pyplot().rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (name, score) in enumerate(scores.items()):
        label = (labels or {}).get(name)
        color = colors[i % len(colors)]
        if folds is None:
            # Drawn here rather than by RocCurveDisplay, whose styling arguments differ
            # between the scikit-learn versions supported (curve_kwargs from 1.7).
            fpr, tpr, _ = roc_curve(y_true, np.asarray(score), pos_label=positive)
            if label is None:
                label = f"{name} (AUC = {auc(fpr, tpr):.2f})"
            ax.plot(fpr, tpr, color=color, linewidth=2, label=label)
            continue
        score, folds_ = np.asarray(score), np.asarray(folds)
        grid = np.linspace(0, 1, 201)
        curves, aucs = [], []
        for k in np.unique(folds_):
            in_fold = folds_ == k
            if len(np.unique(y_true[in_fold])) < 2:
                continue  # no ROC curve without both classes
            fpr, tpr, _ = roc_curve(y_true[in_fold], score[in_fold], pos_label=positive)
            ax.plot(fpr, tpr, color=color, alpha=0.3, linewidth=1)
            curves.append(np.interp(grid, fpr, tpr))
            aucs.append(auc(fpr, tpr))
        mean = np.mean(curves, axis=0)
        mean[0] = 0.0
        if label is None:
            label = f"{name} (mean AUC over {len(aucs)} folds = {np.mean(aucs):.2f})"
        ax.plot(grid, mean, color=color, linewidth=2.5, label=label)
    ax.plot([0, 1], [0, 1], linestyle="--", color="0.6", linewidth=1, label="chance")
    ax.set(xlim=(-0.01, 1.01), ylim=(-0.01, 1.01), aspect="equal")
    ax.set_xlabel("False positive rate (1 - specificity)")
    ax.set_ylabel("True positive rate (sensitivity)")
    ax.legend(loc="lower right", fontsize="small")
    if title:
        ax.set_title(title)
    return ax


def plot_kaplan_meier(
    y: np.ndarray,
    risk: ArrayLike,
    *,
    folds: ArrayLike | None = None,
    n_groups: int = 2,
    ax: Axes | None = None,
    title: str | None = None,
    time_unit: str = "months",
    show_ci: bool = True,
) -> Axes:
    """Kaplan-Meier curves of groups split at quantiles of predicted risk.

    With ``n_groups=2`` the lesions are split at the median risk into "low risk" and
    "high risk"; the legend gives each group's size and the log-rank p-value
    (:func:`sksurv.compare.compare_survival`). Use out-of-fold risks, so that the split
    is made by a model that never saw the lesion, and pass their ``folds``.

    Parameters
    ----------
    y : structured array of shape (n_samples,)
        Event indicator and time.
    risk : array-like of shape (n_samples,)
        Predicted risk scores.
    folds : array-like of shape (n_samples,), optional
        Cross-validation fold of each out-of-fold risk. Risks of different folds come
        from different models, possibly on different scales, so the quantiles are then
        taken within each fold: a lesion is "high risk" when its risk is above the
        median of its fold.
    n_groups : int, default=2
        Number of risk groups (quantiles).
    ax : matplotlib Axes, optional
        Where to draw.
    title : str, optional
        Axes title.
    time_unit : str, default="months"
        Unit of the time axis.
    show_ci : bool, default=True
        Shade the 95 % log-log confidence band of each curve.

    Returns
    -------
    matplotlib Axes

    Examples
    --------
    >>> import numpy as np
    >>> from sksurv.util import Surv
    >>> from skfmcib.plotting import plot_kaplan_meier
    >>> rng = np.random.default_rng(0)
    >>> risk = rng.normal(size=100)
    >>> y = Surv.from_arrays(rng.random(100) < 0.8, 30 * rng.exponential(np.exp(-risk)))
    >>> ax = plot_kaplan_meier(y, risk)
    >>> for text in ax.get_legend_handles_labels()[1]:
    ...     print(text)
    low risk (n = 50, 33 events)
    high risk (n = 50, 39 events)
    log-rank p = 8.79e-08
    """
    from sksurv.compare import compare_survival
    from sksurv.nonparametric import kaplan_meier_estimator

    event, time = check_y_survival(y)
    risk = np.asarray(risk, dtype=float)
    if n_groups < 2:
        raise ValueError(f"n_groups must be at least 2, got {n_groups}")
    quantiles = np.linspace(0, 1, n_groups + 1)[1:-1]
    group = np.zeros(len(risk), dtype=int)
    folds_ = np.zeros(len(risk), dtype=int) if folds is None else np.asarray(folds)
    for k in np.unique(folds_):
        in_fold = folds_ == k
        edges = np.quantile(risk[in_fold], quantiles)
        group[in_fold] = np.searchsorted(edges, risk[in_fold], side="right")
    names = (
        ["low risk", "high risk"]
        if n_groups == 2
        else [f"risk group {k + 1} of {n_groups}" for k in range(n_groups)]
    )
    ax = _axes(ax)
    colors = _pyplot().get_cmap("coolwarm")(np.linspace(0.05, 0.95, n_groups))
    for k in range(n_groups):
        mask = group == k
        if not mask.any():
            continue
        if show_ci and mask.sum() > 1:
            t, s, (lo, hi) = kaplan_meier_estimator(event[mask], time[mask], conf_type="log-log")
            ax.fill_between(t, lo, hi, step="post", color=colors[k], alpha=0.15, linewidth=0)
        else:
            t, s = kaplan_meier_estimator(event[mask], time[mask])
        t, s = np.r_[0.0, t], np.r_[1.0, s]
        label = f"{names[k]} (n = {mask.sum()}, {event[mask].sum()} events)"
        ax.step(t, s, where="post", color=colors[k], linewidth=2, label=label)
        censored = mask & ~event
        if censored.any():
            at = np.searchsorted(t, time[censored], side="right") - 1
            ax.plot(time[censored], s[at], "|", color=colors[k], markersize=8)
    if len(np.unique(group)) > 1:
        _, p = compare_survival(y, group)
        ax.plot([], [], " ", label=f"log-rank p = {p:.3g}")
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlim(left=0)
    ax.set_xlabel(f"Time ({time_unit})")
    ax.set_ylabel("Event-free probability")
    ax.legend(loc="lower left", fontsize="small")
    if title:
        ax.set_title(title)
    return ax


def plot_label_efficiency(
    curves: pd.DataFrame | Mapping[str, pd.DataFrame],
    *,
    ax: Axes | None = None,
    metric: str = "score",
    title: str | None = None,
    reference: float | None = None,
) -> Axes:
    """Score against the fraction of training labels, mean and standard error over folds.

    Parameters
    ----------
    curves : DataFrame or mapping of str to DataFrame
        Output of :func:`skfmcib.evaluation.label_efficiency_curve`, or one per model.
    ax : matplotlib Axes, optional
        Where to draw.
    metric : str, default="score"
        Y-axis label (e.g. ``"AUC"``).
    title : str, optional
        Axes title.
    reference : float, optional
        Draw a dashed horizontal line there (e.g. 0.5, chance for an AUC).

    Returns
    -------
    matplotlib Axes

    Examples
    --------
    >>> import pandas as pd
    >>> from skfmcib.plotting import plot_label_efficiency
    >>> curve = pd.DataFrame({"fraction": [1.0, 1.0, 0.1, 0.1], "repeat": 0,
    ...                       "fold": [0, 1, 0, 1], "n_train": [40, 40, 4, 4],
    ...                       "score": [0.8, 0.9, 0.6, 0.7]})
    >>> ax = plot_label_efficiency({"model": curve}, metric="AUC")
    >>> ax.get_xlabel()
    'Fraction of training labels (%)'
    """
    if isinstance(curves, pd.DataFrame):
        curves = {"": curves}
    ax = _axes(ax)
    ticks: set[float] = set()
    markers = "osD^v"
    n = len(curves)
    for i, (name, curve) in enumerate(curves.items()):
        stats = curve.groupby("fraction")["score"].agg(["mean", "std", "count"])
        x = 100 * stats.index.to_numpy()
        sem = (stats["std"] / np.sqrt(stats["count"])).fillna(0).to_numpy()
        shift = 1.03 ** (i - (n - 1) / 2)  # side by side, so that error bars do not overlap
        ax.errorbar(
            x * shift,
            stats["mean"],
            yerr=sem,
            marker=markers[i % len(markers)],
            capsize=3,
            linewidth=2,
            label=name or None,
        )
        ticks.update(x)
    if reference is not None:
        ax.axhline(reference, color="0.6", linestyle="--", linewidth=1, label="chance")
    ax.set_xscale("log")
    xt = sorted(ticks)
    ax.set_xticks(xt, [f"{v:g}" for v in xt])
    ax.minorticks_off()
    ax.set_xlabel("Fraction of training labels (%)")
    ax.set_ylabel(f"{metric} (mean ± s.e. over folds)")
    if any(curves) or reference is not None:
        ax.legend(loc="lower right", fontsize="small")
    if title:
        ax.set_title(title)
    return ax
