"""The paper's three downstream tasks as scikit-learn pipelines, and their evaluation.

Each builder returns a :class:`~sklearn.pipeline.Pipeline` with two steps:

- ``"features"``: :class:`~skfmcib.FMCIBTransformer` (``features="fmcib"``), the
  :class:`~skfmcib.radiomics.RadiomicsTransformer` baseline (``"radiomics"``), any
  transformer, or ``None`` when ``X`` already is a feature matrix;
- ``"head"``: :class:`~sklearn.model_selection.GridSearchCV` over
  ``StandardScaler -> PCA -> model``: an L2-penalised logistic regression
  (malignancy), a multinomial one (anatomical site) or scikit-survival's ridge-penalised
  Cox model (survival).

The PCA keeps every component: it only rotates the standardised features onto the
span of the training lesions. An L2 (ridge) penalty does not change under rotations,
and the penalised solution lies in that span, so the model's predictions are the same
as on the standardised features themselves (up to the solver's tolerance); but with
4096 features and a few hundred lesions, the model is fitted on a few hundred columns
instead of 4096, which makes the search many times faster.

The search sits after the feature step because the encoder is frozen: the features of
a lesion do not depend on which lesions the pipeline is fitted on, so tuning the head
on features computed once selects exactly what a search over the whole pipeline
(``GridSearchCV(Pipeline([fmcib, scaler, model]))``) would, without encoding every
lesion again for every candidate and fold.

The ``evaluate_*`` functions run the pipeline in (nested) cross-validation, keeping the
lesions of one patient in one fold when ``groups`` is given (also in the inner search),
and report the paper's metrics as cross-validation estimates: each metric on each outer
fold's test lesions, averaged over the folds, as
:func:`~sklearn.model_selection.cross_validate` does. (Pooling the predictions of all
folds first would mix the scales of models fitted with different penalties.) The
bootstrap intervals resample patients within each fold and, for binary labels, the event
indicator or the status at the survival horizon, within strata that keep every fold's
classes (see :func:`~skfmcib.evaluation.bootstrap_ci`); intervals that describe only part
of the data raise a :class:`~skfmcib.evaluation.BootstrapWarning`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike
from sklearn.base import BaseEstimator, clone, is_classifier
from sklearn.decomposition import PCA
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import make_scorer
from sklearn.model_selection import GridSearchCV
from sklearn.model_selection._search import BaseSearchCV
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils import _safe_indexing
from sksurv.linear_model import CoxPHSurvivalAnalysis
from sksurv.metrics import as_concordance_index_ipcw_scorer
from sksurv.util import check_y_survival

from ._text import listing
from .evaluation import (
    BootstrapCI,
    Splitter,
    _check_groups,
    _grouped_splits,
    _horizon_undefined,
    _inner_groups,
    bootstrap_ci,
    bootstrap_ci_difference,
    harrell_c,
    horizon_status,
    is_survival_target,
    make_cv,
    one_blas_thread,
    rank_auc,
    split_target,
    survival_auc,
    uno_c,
)

__all__ = [
    "MetricSpec",
    "TaskResult",
    "balanced_accuracy_scorer",
    "compare_results",
    "cross_validated_predictions",
    "evaluate_malignancy",
    "evaluate_site",
    "evaluate_survival",
    "malignancy_pipeline",
    "site_pipeline",
    "survival_pipeline",
]

#: Default search grid of the logistic regressions' inverse penalty ``C``.
C_GRID = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)
#: Default search grid of the Cox model's ridge penalty ``alpha``.
ALPHA_GRID = (10.0, 100.0, 1000.0, 10000.0)


# ---------------------------------------------------------------------------- metrics


# The classification metrics below equal scikit-learn's (tests compare them on random
# data with ties) but skip its input validation, which costs milliseconds per call and
# dominated a thousand bootstrap resamples.


def _balanced_accuracy(y_true, y_pred) -> float:
    """Mean recall over the classes present in ``y_true`` (``balanced_accuracy_score``).

    Predicting a class absent from ``y_true`` is no problem (scikit-learn warns).
    """
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    if len(y_true) == 0:
        raise ValueError("balanced accuracy of no samples")
    return float(np.mean([np.mean(y_pred[y_true == c] == c) for c in np.unique(y_true)]))


def _roc_auc(y_true, y_score, positive) -> float:
    """Area under the ROC curve (``roc_auc_score``), from the Mann-Whitney U statistic."""
    return rank_auc(np.asarray(y_true) == positive, y_score)


def _average_precision(is_positive, y_score) -> float:
    """Average precision (``average_precision_score``): sum of (R_k - R_k-1) P_k."""
    is_positive = np.asarray(is_positive, dtype=bool)
    n_pos = int(is_positive.sum())
    if n_pos == 0:
        raise ValueError("average precision needs a positive sample")
    score = np.asarray(y_score, dtype=float)
    order = np.argsort(-score, kind="mergesort")
    ranked = score[order]
    last = np.r_[np.flatnonzero(np.diff(ranked)), len(ranked) - 1]  # end of each threshold
    tps = np.cumsum(is_positive[order])[last]
    precision = tps / (last + 1)
    recall = tps / n_pos
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


#: Balanced accuracy as a scorer for searches and label-efficiency curves. Small folds
#: may lack a class that the model predicts; the score (mean recall over the classes
#: present) is still defined, so scikit-learn's warning about it is not shown.
balanced_accuracy_scorer = make_scorer(_balanced_accuracy)


# --------------------------------------------------------------------------- builders


def _feature_step(features):
    if features is None or (isinstance(features, str) and features == "passthrough"):
        return "passthrough"
    if isinstance(features, str):
        if features == "fmcib":
            from .transformer import FMCIBTransformer

            return FMCIBTransformer()
        if features == "radiomics":
            from .radiomics import RadiomicsTransformer

            return RadiomicsTransformer()
        raise ValueError(
            f"features must be 'fmcib', 'radiomics', None or a transformer, got {features!r}"
        )
    if not hasattr(features, "transform"):
        raise TypeError(f"features must be a transformer, got {type(features).__name__}")
    return features


def _head(model) -> Pipeline:
    return Pipeline(
        [("scale", StandardScaler()), ("rotate", PCA(svd_solver="full")), ("model", model)]
    )


def _with_search(features, head: Pipeline, param_grid, scoring, cv, tune: bool) -> Pipeline:
    if tune:
        head = GridSearchCV(head, param_grid, scoring=scoring, cv=cv, error_score="raise")
    return Pipeline([("features", _feature_step(features)), ("head", head)])


def malignancy_pipeline(
    features: str | BaseEstimator | None = "fmcib",
    *,
    param_grid: dict | None = None,
    cv: int | Splitter = 3,
    scoring: str | Callable = "roc_auc",
    tune: bool = True,
    C: float = 0.01,
) -> Pipeline:
    """Features -> StandardScaler -> (PCA) -> LogisticRegression, tuned by GridSearchCV.

    The PCA keeps every component, a rotation that leaves the L2-penalised model's
    predictions unchanged and makes it fast (see the module's documentation).

    Parameters
    ----------
    features : "fmcib", "radiomics", transformer or None, default="fmcib"
        The feature step: :class:`~skfmcib.FMCIBTransformer` with its defaults (the
        official weights), the radiomics baseline, a configured transformer, or None
        when ``X`` already holds features.
    param_grid : dict, optional
        The search grid (keys like ``"model__C"``); by default ``C`` in :data:`C_GRID`.
    cv : int or splitter, default=3
        Inner cross-validation of the search. To keep the lesions of a patient together
        pass a :class:`~sklearn.model_selection.StratifiedGroupKFold` and fit with
        ``head__groups=patient_ids``, or ``groups=patient_ids`` where scikit-learn's
        metadata routing is on (the ``evaluate_*`` functions do both, either way).
    scoring : str or callable, default="roc_auc"
        What the search maximises.
    tune : bool, default=True
        False gives the plain head with ``C`` fixed (for tiny training sets, such as
        label-efficiency curves, where an inner search cannot split).
    C : float, default=0.01
        Inverse penalty when ``tune=False``.

    Returns
    -------
    Pipeline
        Steps ``"features"`` and ``"head"`` (a GridSearchCV, or the plain head).

    Examples
    --------
    >>> from sklearn.datasets import make_classification
    >>> from skfmcib.tasks import malignancy_pipeline
    >>> X, y = make_classification(60, 20, random_state=0)
    >>> model = malignancy_pipeline(features=None).fit(X, y)  # X: features already
    >>> model.named_steps["head"].best_params_
    {'model__C': 0.0001}
    >>> model.predict_proba(X[:2]).shape
    (2, 2)

    On lesion tables, with the official FMCIB weights:

    >>> from skfmcib import make_lesion_cohort
    >>> cohort = make_lesion_cohort(60, "data/synthetic", random_state=0)  # doctest: +SKIP
    >>> model = malignancy_pipeline("fmcib")  # doctest: +SKIP
    >>> model.fit(cohort, cohort["malignant"])  # doctest: +SKIP
    """
    head = _head(LogisticRegression(C=C, max_iter=5000))
    grid = {"model__C": list(C_GRID)} if param_grid is None else param_grid
    return _with_search(features, head, grid, scoring, cv, tune)


def site_pipeline(
    features: str | BaseEstimator | None = "fmcib",
    *,
    param_grid: dict | None = None,
    cv: int | Splitter = 3,
    scoring: str | Callable | None = None,
    tune: bool = True,
    C: float = 0.01,
) -> Pipeline:
    """Features -> StandardScaler -> (PCA) -> multinomial LogisticRegression, tuned.

    The classes are weighted inversely to their frequency (``class_weight="balanced"``),
    as befits the balanced-accuracy target.

    Parameters
    ----------
    features : "fmcib", "radiomics", transformer or None, default="fmcib"
        The feature step, as in :func:`malignancy_pipeline`: the FMCIB features, the
        radiomics baseline, a configured transformer, or None when ``X`` already holds
        features.
    param_grid : dict, default=None
        The search grid (keys like ``"model__C"``); None: ``C`` in :data:`C_GRID`.
    cv : int or splitter, default=3
        Inner cross-validation of the search (see :func:`malignancy_pipeline` to keep
        the lesions of a patient together).
    scoring : str or callable, default=None
        What the search maximises; None: :data:`balanced_accuracy_scorer`.
    tune : bool, default=True
        False gives the plain head with ``C`` fixed.
    C : float, default=0.01
        Inverse penalty when ``tune=False``.

    Returns
    -------
    Pipeline
        Steps ``"features"`` and ``"head"``.

    Examples
    --------
    >>> from sklearn.datasets import make_classification
    >>> from skfmcib.tasks import site_pipeline
    >>> X, y = make_classification(90, 20, n_informative=6, n_classes=3, random_state=0)
    >>> site_pipeline(features=None).fit(X, y).predict_proba(X[:2]).shape
    (2, 3)
    """
    head = _head(LogisticRegression(C=C, class_weight="balanced", max_iter=5000))
    grid = {"model__C": list(C_GRID)} if param_grid is None else param_grid
    scoring = balanced_accuracy_scorer if scoring is None else scoring
    return _with_search(features, head, grid, scoring, cv, tune)


def survival_pipeline(
    features: str | BaseEstimator | None = "fmcib",
    *,
    param_grid: dict | None = None,
    cv: int | Splitter = 3,
    tau: float | None = None,
    tune: bool = True,
    alpha: float = 1000.0,
) -> Pipeline:
    """Features -> StandardScaler -> (PCA) -> ridge Cox model, tuned by GridSearchCV.

    The model is scikit-survival's :class:`~sksurv.linear_model.CoxPHSurvivalAnalysis`
    with a ridge penalty ``alpha`` (the search picks it); ``predict`` gives the risk
    score (the linear predictor). The PCA keeps every component, a rotation that leaves
    the ridge model's predictions unchanged and makes it fast. The target is a
    structured array, e.g. ``Surv.from_arrays(event, time)``.

    Parameters
    ----------
    features : "fmcib", "radiomics", transformer or None, default="fmcib"
        The feature step, as in :func:`malignancy_pipeline`: the FMCIB features, the
        radiomics baseline, a configured transformer, or None when ``X`` already holds
        features.
    param_grid : dict, optional
        The search grid; by default ``alpha`` in :data:`ALPHA_GRID`.
    cv : int or splitter, default=3
        Inner cross-validation of the search: a number of
        :class:`~sklearn.model_selection.KFold` folds, or a splitter such as
        :class:`~sklearn.model_selection.GroupKFold` to keep the lesions of a patient
        together (see :func:`malignancy_pipeline`).
    tau : float, optional
        None: the search maximises Harrell's concordance index (the model's ``score``).
        A time: it maximises Uno's IPCW concordance index truncated at ``tau``
        (:func:`sksurv.metrics.as_concordance_index_ipcw_scorer`, whose grid keys then
        start with ``"estimator__"``).
    tune : bool, default=True
        False gives the plain head with ``alpha`` fixed (for tiny training sets, where
        an inner search cannot split).
    alpha : float, default=1000.0
        Penalty when ``tune=False``.

    Returns
    -------
    Pipeline
        Steps ``"features"`` and ``"head"``.

    Examples
    --------
    >>> import numpy as np
    >>> from sksurv.util import Surv
    >>> from skfmcib.tasks import survival_pipeline
    >>> rng = np.random.default_rng(0)
    >>> X = rng.normal(size=(80, 10))
    >>> time = rng.exponential(np.exp(-X[:, 0]))
    >>> y = Surv.from_arrays(rng.random(80) < 0.8, time)
    >>> model = survival_pipeline(features=None).fit(X, y)
    >>> risk = model.predict(X)
    >>> bool(np.corrcoef(risk, X[:, 0])[0, 1] > 0.5)
    True
    """
    head = _head(CoxPHSurvivalAnalysis(alpha=alpha))
    prefix = ""
    if tau is not None:
        head = as_concordance_index_ipcw_scorer(head, tau=tau)
        prefix = "estimator__"
    if param_grid is None:
        param_grid = {f"{prefix}model__alpha": list(ALPHA_GRID)}
    return _with_search(features, head, param_grid, None, cv, tune)


# ------------------------------------------------------------------------- evaluation


@dataclass(frozen=True)
class MetricSpec:
    """A metric of a task: its name, label, function and which prediction it takes.

    The ``evaluate_*`` functions make these (:attr:`TaskResult.specs`); the attributes
    below are also the constructor's parameters, in this order.

    Attributes
    ----------
    name : str
        Key in :attr:`TaskResult.metrics` (e.g. ``"roc_auc"``).
    label : str
        Human-readable label (e.g. ``"AUC"``).
    function : callable
        ``function(y_true, prediction) -> float``.
    uses : {"score", "pred"}
        Whether it takes the scores (probabilities, risks) or the predicted labels.
    bounds : (float, float) or None
        The metric's range (``(0, 1)`` for every metric here), to which a rough
        (basic) bootstrap interval is clipped.
    strata : callable or None
        ``strata(y_true)``: what the bootstrap resamples within (see
        :func:`~skfmcib.evaluation.bootstrap_ci`); None: its ``"auto"``, the classes or
        the event indicator. The horizon AUC uses the status at the horizon.
    """

    name: str
    label: str
    function: Callable[[np.ndarray, np.ndarray], float]
    uses: str = "score"
    bounds: tuple[float, float] | None = (0.0, 1.0)
    strata: Callable[[np.ndarray], np.ndarray] | None = None

    def strata_of(self, y_true: np.ndarray) -> str | np.ndarray:
        """The ``strata`` argument of the bootstrap for targets ``y_true``.

        Parameters
        ----------
        y_true : ndarray of shape (n_samples,)
            The targets (labels or a structured survival array).

        Returns
        -------
        "auto" or ndarray of shape (n_samples,)
            ``"auto"`` without ``strata``, else ``strata(y_true)``.

        Examples
        --------
        >>> import numpy as np
        >>> from skfmcib.tasks import MetricSpec
        >>> MetricSpec("roc_auc", "AUC", lambda y, s: 0.5).strata_of(np.array([0, 1]))
        'auto'
        """
        return "auto" if self.strata is None else self.strata(y_true)


@dataclass
class TaskResult:
    """Cross-validated predictions of a task and its metrics with bootstrap intervals.

    Made by :func:`evaluate_malignancy`, :func:`evaluate_site` and
    :func:`evaluate_survival`; the attributes below are also the constructor's
    parameters, in this order.

    Attributes
    ----------
    task : str
        ``"malignancy"``, ``"site"`` or ``"survival"``.
    metrics : dict of str to BootstrapCI
        Each metric's cross-validation estimate (mean over the outer folds) and
        bootstrap interval, in the order of ``specs``.
    specs : list of MetricSpec
        How each metric was computed.
    y_true : ndarray
        The target, in the input's order.
    y_score : ndarray
        Out-of-fold scores: the positive class's probability (malignancy), class
        probabilities in the order of ``classes`` (site) or risk scores (survival).
        Scores of different folds come from different models: compare them within a
        fold (``fold``), as the metrics do.
    y_pred : ndarray or None
        Out-of-fold predicted labels (classification).
    fold : ndarray of int
        The outer fold each sample was tested in.
    best_params : list of dict
        The search's choice in each outer fold (empty dicts without a search).
    groups : ndarray or None
        The patients, when given.
    classes : ndarray or None
        Class labels (classification).
    """

    task: str
    metrics: dict[str, BootstrapCI]
    specs: list[MetricSpec]
    y_true: np.ndarray
    y_score: np.ndarray
    y_pred: np.ndarray | None
    fold: np.ndarray
    best_params: list[dict] = field(default_factory=list)
    groups: np.ndarray | None = None
    classes: np.ndarray | None = None

    def prediction(self, spec: MetricSpec) -> np.ndarray | None:
        """The prediction ``spec`` is computed from (``y_score`` or ``y_pred``).

        Parameters
        ----------
        spec : MetricSpec
            One of :attr:`specs`.

        Returns
        -------
        ndarray or None
            ``y_pred`` when ``spec.uses == "pred"`` (None for survival results, which
            have no predicted labels), else ``y_score``.

        Examples
        --------
        >>> import numpy as np
        >>> from skfmcib.tasks import MetricSpec, TaskResult
        >>> result = TaskResult("malignancy", {}, [], np.array([0, 1]), np.array([0.2, 0.7]),
        ...                     np.array([0, 1]), np.array([0, 1]))
        >>> result.prediction(MetricSpec("roc_auc", "AUC", lambda y, s: 0.5)).tolist()
        [0.2, 0.7]
        """
        return self.y_pred if spec.uses == "pred" else self.y_score

    def to_frame(self) -> pd.DataFrame:
        """The metrics as a table.

        Columns ``task``, ``metric``, ``label``, ``estimate``, ``low`` and ``high``.

        Returns
        -------
        DataFrame
        """
        return pd.DataFrame(
            [
                {
                    "task": self.task,
                    "metric": spec.name,
                    "label": spec.label,
                    "estimate": self.metrics[spec.name].estimate,
                    "low": self.metrics[spec.name].low,
                    "high": self.metrics[spec.name].high,
                }
                for spec in self.specs
            ]
        )


def _search_of(estimator):
    if isinstance(estimator, BaseSearchCV):
        return estimator
    if isinstance(estimator, Pipeline) and isinstance(estimator.steps[-1][1], BaseSearchCV):
        return estimator.steps[-1][1]
    return None


def cross_validated_predictions(
    estimator: BaseEstimator,
    X: ArrayLike | pd.DataFrame,
    y: ArrayLike,
    *,
    groups: ArrayLike | None = None,
    cv: int | Splitter = 5,
    method: str = "predict_proba",
    random_state: int | np.random.RandomState | None = None,
) -> tuple[np.ndarray, np.ndarray, list[dict], np.ndarray | None]:
    """Out-of-fold predictions of an estimator (with its inner search kept group-aware).

    Like :func:`sklearn.model_selection.cross_val_predict`, and in addition: the folds
    keep each patient's lesions together (``groups``), an inner search (the ``"head"``
    of the task pipelines) splits by patient too, the chosen hyper-parameters are
    returned, and ``predict_proba`` columns follow all classes even when a class is
    missing from a training fold.

    Parameters
    ----------
    estimator : estimator
        Cloned for each fold.
    X : array-like or DataFrame
        Input (features or a lesion table).
    y : array-like
        Target (labels or a structured survival array).
    groups : array-like, optional
        Patient of each sample.
    cv : int or splitter, default=5
        Outer folds (see :func:`skfmcib.evaluation.make_cv`).
    method : {"predict_proba", "predict", "decision_function"}, default="predict_proba"
        What to predict.
    random_state : int, RandomState instance or None, default=None
        Seeds the folds.

    Returns
    -------
    predictions : ndarray
        In the input's order.
    fold : ndarray of int
        Outer fold of each sample.
    best_params : list of dict
        The inner search's choice per fold (empty dicts without a search).
    classes : ndarray or None
        Column order of ``predict_proba`` output.

    Examples
    --------
    >>> from sklearn.datasets import make_classification
    >>> from skfmcib.tasks import cross_validated_predictions, malignancy_pipeline
    >>> X, y = make_classification(60, 10, random_state=0)
    >>> patients = [i // 3 for i in range(60)]
    >>> proba, fold, params, classes = cross_validated_predictions(
    ...     malignancy_pipeline(features=None), X, y, groups=patients, random_state=0)
    >>> proba.shape, len(params), classes.tolist()
    ((60, 2), 5, [0, 1])
    """
    y = y if isinstance(y, np.ndarray) else np.asarray(y)
    groups = _check_groups(groups, len(y))
    classifier = is_classifier(estimator)
    splitter = make_cv(cv, y=y, groups=groups, classifier=classifier, random_state=random_state)
    classes = np.unique(y) if method == "predict_proba" else None
    with one_blas_thread():
        return _cross_validated(estimator, X, y, groups, splitter, method, classes, random_state)


def _cross_validated(estimator, X, y, groups, splitter, method, classes, random_state):
    out = None
    fold = np.full(len(y), -1)
    best_params: list[dict] = []
    splits = _grouped_splits(splitter, X, split_target(y), groups, f"cv={splitter!r}")
    _check_partition(splits, len(y), splitter)
    for k, (train, test) in enumerate(splits):
        model, fit_params = _inner_groups(
            clone(estimator), None if groups is None else groups[train], random_state, y[train]
        )
        model.fit(_safe_indexing(X, train), y[train], **fit_params)
        pred = getattr(model, method)(_safe_indexing(X, test))
        if method == "predict_proba":
            full = np.zeros((len(test), len(classes)))
            full[:, np.searchsorted(classes, model.classes_)] = pred
            pred = full
        if out is None:
            out = np.zeros((len(y), *np.shape(pred)[1:]), dtype=np.float64)
        out[test] = pred
        fold[test] = k
        search = _search_of(model)
        best_params.append(dict(search.best_params_) if search is not None else {})
    return out, fold, best_params, classes


def _check_partition(splits, n: int, splitter) -> None:
    """Refuse splits whose test sets do not partition the ``n`` samples."""
    tested = np.zeros(n, dtype=int)
    for _, test in splits:
        np.add.at(tested, test, 1)
    never, twice = np.flatnonzero(tested == 0), np.flatnonzero(tested > 1)
    if not len(never) and not len(twice):
        return
    problems = []
    if len(never):
        problems.append(
            f"{len(never)} of the {n} samples are in no test set (positions "
            f"{listing(never.tolist(), 5)})"
        )
    if len(twice):
        problems.append(
            f"{len(twice)} of the {n} samples are in more than one test set (positions "
            f"{listing(twice.tolist(), 5)})"
        )
    raise ValueError(
        f"cv={splitter!r} does not partition the samples: {' and '.join(problems)}. "
        "Out-of-fold predictions, like scikit-learn's cross_val_predict, only work for "
        "partitions (every sample tested exactly once): give a number of folds or a "
        "K-fold splitter (KFold, StratifiedKFold, GroupKFold, StratifiedGroupKFold), "
        "not a shuffle-split"
    )


def _bootstrap_all(result: TaskResult, n_resamples, alpha, random_state) -> None:
    for spec in result.specs:
        result.metrics[spec.name] = bootstrap_ci(
            spec.function,
            result.y_true,
            result.prediction(spec),
            groups=result.groups,
            folds=result.fold,
            strata=spec.strata_of(result.y_true),
            n_resamples=n_resamples,
            alpha=alpha,
            random_state=random_state,
            bounds=spec.bounds,
            name=f"{result.task} {spec.label}",
        )


def _check_features(X, task: str) -> None:
    """Refuse a feature matrix with rows that are NaN throughout, or any infinite
    value, naming the rows.

    Such rows are lesions whose features could not be computed
    (``FMCIBTransformer(on_error="nan")``): an imputer would make up every feature of
    them. Rows with some NaN are left to the estimator (an imputer, a model that
    takes NaN). Lesion tables (non-numeric columns) are not checked.
    """
    if isinstance(X, pd.DataFrame):
        if X.shape[1] == 0 or not all(pd.api.types.is_numeric_dtype(d) for d in X.dtypes):
            return
        values = X.to_numpy(dtype=float)
    elif isinstance(X, np.ndarray) and X.ndim == 2 and X.dtype.kind in "fiub":
        values = X
    else:
        return
    bad = np.flatnonzero(np.isnan(values).all(axis=1)) if values.shape[1] else []
    if len(bad):
        raise ValueError(
            f"{task}: X has features that are all NaN in {len(bad)} of {len(values)} rows, "
            f"at positions {listing(list(bad))} (lesions whose features could not be "
            "computed: FMCIBTransformer(on_error='nan') leaves them NaN); drop those "
            "lesions, with their labels and groups, first"
        )
    infinite = np.flatnonzero(np.isinf(values).any(axis=1))
    if len(infinite):
        raise ValueError(
            f"{task}: X has infinite features in {len(infinite)} of {len(values)} rows, at "
            f"positions {listing(list(infinite))}; no model or imputer takes them"
        )


def _check_labels(y, task: str) -> np.ndarray:
    """``y`` as an array, refusing missing labels (NaN, None) with their positions."""
    y = np.asarray(y)
    missing = np.flatnonzero(pd.isna(y)) if y.dtype.kind in "fcOU" else np.array([], int)
    if len(missing):
        raise ValueError(
            f"{task}: {len(missing)} of {len(y)} labels missing (NaN or None), at positions "
            f"{listing(missing)}; drop those lesions first"
        )
    return y


def _check_survival(y) -> np.ndarray:
    """A structured survival target, refusing missing times or events with positions."""
    if is_survival_target(y):
        event, time = (np.asarray(y[name]) for name in y.dtype.names)
        missing = np.flatnonzero(pd.isna(time) | pd.isna(event))
        if len(missing):
            raise ValueError(
                f"survival: {len(missing)} of {len(y)} targets missing (NaN or None time or "
                f"event), at positions {listing(missing.tolist())}; drop those lesions first"
            )
    check_y_survival(y)  # a structured array of a bool event and a time
    return y


def _check_horizon(y, horizon: float, label: str) -> None:
    """Refuse a horizon at which the horizon AUC is undefined on the whole cohort."""
    event, time = check_y_survival(y)
    reason = _horizon_undefined(event, time, horizon, "lesion")
    if reason:
        raise ValueError(f"survival: the {label} is undefined: {reason}")


def _check_binary(y) -> np.ndarray:
    y = _check_labels(y, "malignancy")
    classes = np.unique(y)
    if len(classes) != 2:
        raise ValueError(f"malignancy needs two classes, got {classes.tolist()}")
    return y


def evaluate_malignancy(
    estimator: BaseEstimator,
    X: ArrayLike | pd.DataFrame,
    y: ArrayLike,
    *,
    groups: ArrayLike | None = None,
    cv: int | Splitter = 5,
    n_resamples: int = 1000,
    alpha: float = 0.05,
    random_state: int | np.random.RandomState | None = None,
) -> TaskResult:
    """Cross-validated malignancy AUC and mAP (average precision) with bootstrap intervals.

    Parameters
    ----------
    estimator : estimator
        A classifier with ``predict_proba``, typically :func:`malignancy_pipeline`.
    X : array-like or DataFrame
        Features, or a lesion table when the estimator computes features.
    y : array-like of shape (n_samples,)
        Binary labels (1: malignant).
    groups : array-like, optional
        Patient of each lesion; folds, inner search and bootstrap then keep patients
        together.
    cv : int or splitter, default=5
        Outer folds.
    n_resamples : int, default=1000
        Bootstrap resamples.
    alpha : float, default=0.05
        1 - confidence level.
    random_state : int, RandomState instance or None, default=None
        Seeds folds and bootstrap.

    Returns
    -------
    TaskResult
        Metrics ``roc_auc`` (AUC), ``average_precision`` (mAP) and ``balanced_accuracy``
        (at probability 0.5): means over the outer folds of each fold's metric.

    Raises
    ------
    ValueError
        Before anything is fitted, naming the positions: missing labels, feature rows
        that are NaN throughout or hold an infinite value, missing patient ids in
        ``groups``; and a ``cv`` whose test sets do not partition the samples (each
        must be tested once).

    Warns
    -----
    BootstrapWarning
        When a metric's interval describes only part of the data (see
        :func:`~skfmcib.evaluation.bootstrap_ci`).

    Examples
    --------
    >>> from sklearn.datasets import make_classification
    >>> from skfmcib.tasks import evaluate_malignancy, malignancy_pipeline
    >>> X, y = make_classification(80, 10, random_state=0)
    >>> result = evaluate_malignancy(malignancy_pipeline(features=None), X, y,
    ...                              n_resamples=200, random_state=0)
    >>> print(result.metrics["roc_auc"])
    0.94 [0.84, 0.97]
    """
    y = _check_binary(y)
    _check_features(X, "malignancy")
    proba, fold, params, classes = cross_validated_predictions(
        estimator, X, y, groups=groups, cv=cv, random_state=random_state
    )
    positive = classes[1]
    specs = [
        MetricSpec("roc_auc", "AUC", partial(_roc_auc, positive=positive)),
        MetricSpec("average_precision", "mAP", partial(_ap, positive=positive)),
        MetricSpec("balanced_accuracy", "balanced accuracy", _balanced_accuracy, "pred"),
    ]
    result = TaskResult(
        task="malignancy",
        metrics={},
        specs=specs,
        y_true=y,
        y_score=proba[:, 1],
        y_pred=np.where(proba[:, 1] >= 0.5, positive, classes[0]),
        fold=fold,
        best_params=params,
        groups=_check_groups(groups, len(y)),
        classes=classes,
    )
    _bootstrap_all(result, n_resamples, alpha, random_state)
    return result


def _ap(y_true, y_score, positive) -> float:
    return _average_precision(np.asarray(y_true) == positive, y_score)


def _macro_ap(y_true, proba, classes) -> float:
    """Mean over classes of one-vs-rest average precision (classes present only)."""
    present = np.isin(classes, y_true)
    if present.sum() < 2:
        raise ValueError("mAP needs at least two classes present")
    aps = [
        _average_precision(y_true == c, proba[:, j]) for j, c in enumerate(classes) if present[j]
    ]
    return float(np.mean(aps))


def evaluate_site(
    estimator: BaseEstimator,
    X: ArrayLike | pd.DataFrame,
    y: ArrayLike,
    *,
    groups: ArrayLike | None = None,
    cv: int | Splitter = 5,
    n_resamples: int = 1000,
    alpha: float = 0.05,
    random_state: int | np.random.RandomState | None = None,
) -> TaskResult:
    """Cross-validated anatomical-site balanced accuracy and mAP with bootstrap intervals.

    Parameters
    ----------
    estimator : estimator
        A multiclass classifier with ``predict_proba``, typically :func:`site_pipeline`.
    X : array-like or DataFrame
        Features or a lesion table.
    y : array-like of shape (n_samples,)
        Class labels (strings or integers).
    groups, cv, n_resamples, alpha, random_state
        As in :func:`evaluate_malignancy`.

    Returns
    -------
    TaskResult
        Metrics ``balanced_accuracy`` and ``mean_average_precision`` (mAP: one-vs-rest
        average precision, averaged over the classes present): means over the outer
        folds of each fold's metric; ``y_score`` holds the probabilities in the order
        of ``classes``.

    Examples
    --------
    >>> from sklearn.datasets import make_classification
    >>> from skfmcib.tasks import evaluate_site, site_pipeline
    >>> X, y = make_classification(90, 20, n_informative=6, n_classes=3, random_state=0)
    >>> result = evaluate_site(site_pipeline(features=None), X, y, n_resamples=100,
    ...                        random_state=0)
    >>> sorted(result.metrics)
    ['balanced_accuracy', 'mean_average_precision']
    """
    y = _check_labels(y, "site")
    _check_features(X, "site")
    proba, fold, params, classes = cross_validated_predictions(
        estimator, X, y, groups=groups, cv=cv, random_state=random_state
    )
    specs = [
        MetricSpec("balanced_accuracy", "balanced accuracy", _balanced_accuracy, "pred"),
        MetricSpec("mean_average_precision", "mAP", partial(_macro_ap, classes=classes)),
    ]
    result = TaskResult(
        task="site",
        metrics={},
        specs=specs,
        y_true=y,
        y_score=proba,
        y_pred=classes[np.argmax(proba, axis=1)],
        fold=fold,
        best_params=params,
        groups=_check_groups(groups, len(y)),
        classes=classes,
    )
    _bootstrap_all(result, n_resamples, alpha, random_state)
    return result


def evaluate_survival(
    estimator: BaseEstimator,
    X: ArrayLike | pd.DataFrame,
    y: ArrayLike,
    *,
    groups: ArrayLike | None = None,
    cv: int | Splitter = 5,
    horizon: float = 24.0,
    tau: float | None = None,
    n_resamples: int = 1000,
    alpha: float = 0.05,
    random_state: int | np.random.RandomState | None = None,
) -> TaskResult:
    """Cross-validated concordance (Harrell's, Uno's) and horizon AUC, with intervals.

    Parameters
    ----------
    estimator : estimator
        A scikit-survival model whose ``predict`` gives risk scores, typically
        :func:`survival_pipeline`.
    X : array-like or DataFrame
        Features or a lesion table.
    y : structured array of shape (n_samples,)
        Event indicator and time, e.g. ``Surv.from_arrays(event, time)``.
    groups : array-like of shape (n_samples,), optional
        Patient of each lesion; folds, inner search and bootstrap then keep patients
        together.
    cv : int or splitter, default=5
        Outer folds; a number of folds is stratified on the event.
    horizon : float, default=24.0
        Time of the binary endpoint of :func:`~skfmcib.evaluation.survival_auc` (the
        paper's 2-year survival: 24 with times in months).
    tau : float, optional
        Truncation time of Uno's concordance index (see
        :func:`~skfmcib.evaluation.uno_c`).
    n_resamples : int, default=1000
        Bootstrap resamples.
    alpha : float, default=0.05
        1 - confidence level.
    random_state : int, RandomState instance or None, default=None
        Seeds folds and bootstrap.

    Returns
    -------
    TaskResult
        Metrics ``c_index_harrell``, ``c_index_uno`` (censoring distribution from the
        whole cohort) and ``survival_auc``; ``y_score`` holds the risk scores. The
        bootstrap of ``survival_auc`` is stratified on the status at the horizon
        (:func:`~skfmcib.evaluation.horizon_status`), the others on the event.

    Raises
    ------
    ValueError
        As :func:`evaluate_malignancy`; also for targets with a missing time or event
        (named by position) and a ``horizon`` at which the AUC is undefined on the whole
        cohort: no lesion followed beyond it, or no event at or before it.

    Examples
    --------
    >>> import numpy as np
    >>> from sksurv.util import Surv
    >>> from skfmcib.tasks import evaluate_survival, survival_pipeline
    >>> rng = np.random.default_rng(0)
    >>> X = rng.normal(size=(100, 10))
    >>> y = Surv.from_arrays(rng.random(100) < 0.8, 30 * rng.exponential(np.exp(-X[:, 0])))
    >>> result = evaluate_survival(survival_pipeline(features=None), X, y,
    ...                            n_resamples=100, random_state=0)
    >>> result.metrics["c_index_harrell"].estimate > 0.6
    True
    """
    y = _check_survival(y)
    label = "2-year AUC" if horizon == 24.0 else f"AUC at t = {horizon:g}"
    _check_horizon(y, horizon, label)
    _check_features(X, "survival")
    risk, fold, params, _ = cross_validated_predictions(
        estimator, X, y, groups=groups, cv=cv, method="predict", random_state=random_state
    )
    specs = [
        MetricSpec("c_index_harrell", "C-index (Harrell)", harrell_c),
        MetricSpec("c_index_uno", "C-index (Uno, IPCW)", partial(uno_c, y_train=y, tau=tau)),
        MetricSpec(
            "survival_auc",
            label,
            partial(survival_auc, horizon=horizon),
            strata=partial(horizon_status, horizon=horizon),
        ),
    ]
    result = TaskResult(
        task="survival",
        metrics={},
        specs=specs,
        y_true=y,
        y_score=risk,
        y_pred=None,
        fold=fold,
        best_params=params,
        groups=_check_groups(groups, len(y)),
    )
    _bootstrap_all(result, n_resamples, alpha, random_state)
    return result


def _same_metric(a, b) -> bool:
    """Whether two metric functions compute the same thing (partials: same settings)."""
    if not (isinstance(a, partial) and isinstance(b, partial)):
        return a is b or a == b
    if a.func is not b.func or a.args or b.args or set(a.keywords) != set(b.keywords):
        return False
    return all(
        np.array_equal(a.keywords[k], b.keywords[k])
        if isinstance(a.keywords[k], np.ndarray)
        else a.keywords[k] == b.keywords[k]
        for k in a.keywords
    )


def _settings(function) -> str:
    if not isinstance(function, partial):
        return getattr(function, "__name__", repr(function))
    shown = {k: v for k, v in function.keywords.items() if not isinstance(v, np.ndarray)}
    return ", ".join(f"{k}={v!r}" for k, v in shown.items()) or function.func.__name__


def compare_results(
    result: TaskResult,
    reference: TaskResult,
    *,
    n_resamples: int = 1000,
    alpha: float = 0.05,
    random_state: int | np.random.RandomState | None = None,
) -> dict[str, BootstrapCI]:
    """Paired bootstrap intervals of each metric's difference between two models.

    Parameters
    ----------
    result, reference : TaskResult
        Evaluations of the same task on the same lesions and folds (e.g. FMCIB features
        and the radiomics baseline, evaluated with the same ``cv``, ``groups`` and
        ``random_state``).
    n_resamples, alpha, random_state
        As in :func:`~skfmcib.evaluation.bootstrap_ci_difference`.

    Returns
    -------
    dict of str to BootstrapCI
        ``result - reference`` for every metric; an interval above 0 says ``result`` is
        better at level ``alpha``.

    Examples
    --------
    >>> from sklearn.datasets import make_classification
    >>> from skfmcib.tasks import compare_results, evaluate_malignancy, malignancy_pipeline
    >>> X, y = make_classification(80, 10, random_state=0)
    >>> a = evaluate_malignancy(malignancy_pipeline(features=None), X, y, n_resamples=50,
    ...                         random_state=0)
    >>> b = evaluate_malignancy(malignancy_pipeline(features=None), X[:, 5:], y,
    ...                         n_resamples=50, random_state=0)
    >>> sorted(compare_results(a, b, n_resamples=50, random_state=0))
    ['average_precision', 'balanced_accuracy', 'roc_auc']
    """
    if result.task != reference.task or len(result.y_true) != len(reference.y_true):
        raise ValueError("compare results of the same task on the same samples")
    if not np.array_equal(result.y_true, reference.y_true):
        raise ValueError("the two results are not on the same samples in the same order")
    if not np.array_equal(result.fold, reference.fold):
        raise ValueError(
            "the two results come from different folds; evaluate both with the same cv, "
            "groups and random_state"
        )
    for spec, ref_spec in zip(result.specs, reference.specs, strict=True):
        if not _same_metric(spec.function, ref_spec.function):
            raise ValueError(
                f"the two results computed {spec.label} with other settings "
                f"({_settings(spec.function)} against {_settings(ref_spec.function)}); "
                "evaluate both with the same horizon and tau"
            )
    out = {}
    for spec, ref_spec in zip(result.specs, reference.specs, strict=True):
        out[spec.name] = bootstrap_ci_difference(
            spec.function,
            result.y_true,
            result.prediction(spec),
            reference.prediction(ref_spec),
            groups=result.groups,
            folds=result.fold,
            strata=spec.strata_of(result.y_true),
            n_resamples=n_resamples,
            alpha=alpha,
            random_state=random_state,
            bounds=spec.bounds,
            name=f"{result.task} {spec.label} difference",
        )
    return out
