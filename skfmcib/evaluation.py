"""Evaluation as the paper reports it: bootstrap intervals and label-efficiency curves.

scikit-learn and scikit-survival provide the metrics; this module adds what they lack:

- :func:`bootstrap_ci` (and :func:`bootstrap_ci_difference`): bootstrap (BCa)
  intervals for any metric ``metric(y_true, y_score)``, including survival metrics on
  structured targets, resampling lesions or whole patients;
- :func:`label_efficiency_curve`: cross-validated scores when only a fraction of the
  training labels is used (the paper's 100, 50, 20 and 10 % curves);
- survival metrics in the ``metric(y, risk)`` form: :func:`harrell_c`, :func:`uno_c`
  and the paper's binary :func:`survival_auc` at a horizon.

Plots of these results are in :mod:`skfmcib.plotting`.

These functions (and the ``evaluate_*`` functions of :mod:`skfmcib.tasks`) fit and
score many small models. They run with a single BLAS thread (:mod:`threadpoolctl`):
for problems of this size several BLAS threads mostly wait for each other, and on a
busy machine, or next to the encoder's own threads, they can be ten times slower.
The encoder (torch) keeps its threads.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from numbers import Integral, Real
from typing import Protocol

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike
from scipy.stats import norm, rankdata
from sklearn import get_config
from sklearn.base import BaseEstimator, clone, is_classifier
from sklearn.exceptions import UndefinedMetricWarning
from sklearn.metrics import check_scoring
from sklearn.model_selection import (
    GroupKFold,
    KFold,
    StratifiedGroupKFold,
    StratifiedKFold,
)
from sklearn.model_selection._search import BaseSearchCV
from sklearn.pipeline import Pipeline
from sklearn.utils import _safe_indexing, check_random_state
from sklearn.utils.multiclass import type_of_target
from sksurv.metrics import concordance_index_censored, concordance_index_ipcw
from sksurv.util import check_y_survival
from threadpoolctl import threadpool_limits

from ._text import counted, listing, user_stacklevel


class Splitter(Protocol):
    """What ``cv`` takes besides a number of folds: a scikit-learn splitter."""

    def split(
        self, X: ArrayLike, y: ArrayLike | None = ..., groups: ArrayLike | None = ...
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]: ...


__all__ = [
    "FAILED_SHARE_WARNING",
    "BootstrapCI",
    "BootstrapWarning",
    "bootstrap_ci",
    "bootstrap_ci_difference",
    "harrell_c",
    "horizon_status",
    "is_survival_target",
    "label_efficiency_curve",
    "make_cv",
    "rank_auc",
    "one_blas_thread",
    "split_target",
    "survival_auc",
    "uno_c",
]

Metric = Callable[[np.ndarray, np.ndarray], float]


def one_blas_thread() -> threadpool_limits:
    """Context in which BLAS (numpy, scipy) uses one thread; see the module's notes.

    Returns
    -------
    threadpoolctl.threadpool_limits
        A context manager: BLAS libraries use one thread inside its ``with`` block, and
        their earlier number of threads again after it.

    Examples
    --------
    >>> from threadpoolctl import threadpool_info
    >>> from skfmcib.evaluation import one_blas_thread
    >>> with one_blas_thread():
    ...     threads = {p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"}
    >>> threads <= {1}
    True
    """
    return threadpool_limits(limits=1, user_api="blas")


# ----------------------------------------------------------------------- bootstrap

#: Share of failed bootstrap resamples above which :func:`bootstrap_ci` warns.
FAILED_SHARE_WARNING = 0.05


class BootstrapWarning(UserWarning):
    """A bootstrap interval describes only part of the data, or is likely too narrow.

    Raised (as a warning) when more than :data:`FAILED_SHARE_WARNING` of the resamples
    were undefined, when folds where the metric is undefined were left out of the
    estimate, or when a class (stratum) of a fold is carried by a single sample or
    patient; :attr:`BootstrapCI.incomplete` marks such intervals.
    """


@dataclass(frozen=True)
class BootstrapCI:
    """A point estimate with a bootstrap confidence interval.

    Unpacks as ``estimate, low, high``. Made by :func:`bootstrap_ci` and
    :func:`bootstrap_ci_difference`; the attributes below are also the constructor's
    parameters, in this order.

    Attributes
    ----------
    estimate : float
        The metric on the whole sample.
    low, high : float
        Bounds of the interval.
    confidence : float
        Confidence level of the interval, ``1 - alpha``.
    n_resamples : int
        Resamples the interval was computed from.
    n_failed : int
        Resamples left out because the metric is undefined on them (for example a
        resample holding one class only, or no comparable survival pairs).
    method : str
        How the interval was computed: ``"bca"``, ``"percentile"``, or ``"basic"``
        when ``"bca"`` was asked for but the resampled metric was so biased that the
        estimate lay outside the central 68 % of its bootstrap distribution (see
        :func:`bootstrap_ci`): treat such intervals with care.
    folds_left_out : tuple
        With ``folds``: the folds where the metric is undefined on all their samples
        (one class only, say), left out of the estimate and of the interval.
    single_unit_strata : int
        With ``strata``: how many classes (strata labels) of a fold a single unit (one
        sample, or one patient) carries: that unit is in every resample, alone, so the
        interval does not reflect how its class's scores vary and is likely too narrow.

    Examples
    --------
    >>> from skfmcib.evaluation import BootstrapCI
    >>> ci = BootstrapCI(0.81234, 0.7, 0.9, 0.95, 1000, 0)
    >>> estimate, low, high = ci
    >>> str(ci), ci.format(3), ci.incomplete
    ('0.81 [0.70, 0.90]', '0.812 [0.700, 0.900]', False)
    """

    estimate: float
    low: float
    high: float
    confidence: float
    n_resamples: int
    n_failed: int
    method: str = "percentile"
    folds_left_out: tuple = ()
    single_unit_strata: int = 0

    def __iter__(self) -> Iterator[float]:
        return iter((self.estimate, self.low, self.high))

    @property
    def failed_share(self) -> float:
        """Share of the resamples drawn on which the metric was undefined."""
        drawn = self.n_resamples + self.n_failed
        return self.n_failed / drawn if drawn else 0.0

    @property
    def incomplete(self) -> bool:
        """Whether the interval describes only part of the data.

        True when more than :data:`FAILED_SHARE_WARNING` of the resamples failed (the
        interval then describes only the resamples where the metric is defined, and is
        likely too narrow), when folds were left out of the estimate, or when a class of
        a fold was carried by a single unit (``single_unit_strata``; likely too narrow
        as well).
        """
        return (
            self.failed_share > FAILED_SHARE_WARNING
            or bool(self.folds_left_out)
            or self.single_unit_strata > 0
        )

    def format(self, digits: int = 2) -> str:
        """The estimate and its interval as text: ``"estimate [low, high]"``.

        Parameters
        ----------
        digits : int, default=2
            Decimals of each number.

        Returns
        -------
        str

        Examples
        --------
        >>> from skfmcib.evaluation import BootstrapCI
        >>> BootstrapCI(0.81234, 0.7, 0.9, 0.95, 1000, 0).format(1)
        '0.8 [0.7, 0.9]'
        """
        return f"{self.estimate:.{digits}f} [{self.low:.{digits}f}, {self.high:.{digits}f}]"

    def __str__(self) -> str:
        return self.format()


def _check_bootstrap_args(n_resamples, alpha) -> None:
    if isinstance(n_resamples, bool) or not isinstance(n_resamples, Integral) or n_resamples < 1:
        raise ValueError(f"n_resamples must be a positive integer, got {n_resamples!r}")
    if isinstance(alpha, bool) or not isinstance(alpha, Real) or not 0 < alpha < 1:
        raise ValueError(f"alpha must be a number in (0, 1), got {alpha!r}")


def _check_groups(groups, n: int) -> np.ndarray | None:
    """``groups`` as an array of ``n`` patient ids, refusing missing ones (NaN, None)."""
    if groups is None:
        return None
    groups = groups.to_numpy() if isinstance(groups, pd.Series) else np.asarray(groups)
    if groups.ndim != 1:
        raise ValueError(
            f"groups must be one patient id per sample (1-D), got shape {groups.shape}"
        )
    if len(groups) != n:
        raise ValueError(f"groups has {len(groups)} entries for {n} samples")
    missing = np.flatnonzero(pd.isna(groups))
    if len(missing):
        raise ValueError(
            f"groups: {len(missing)} of {n} patient ids missing (NaN or None), at positions "
            f"{listing(missing.tolist())}; give every lesion its patient, or drop those lesions"
        )
    return groups


def _units(n: int, groups, folds, strata=None) -> list[list[np.ndarray]]:
    """The resampling units (rows of a sample or a group) of each stratum."""
    return [members for _, _, members, _ in _labelled_units(n, groups, folds, strata)]


def _single_unit_strata(n: int, groups, folds, strata, left_out: tuple = ()) -> int:
    """Labels carried by a single unit of a fold (in every resample, alone: nothing
    shows how their scores vary); negative labels (units the metric ignores, see
    :func:`horizon_status`) and folds left out of the estimate not counted."""
    if strata is None:
        return 0
    return sum(
        alone and not (_is_number(label) and label < 0) and fold not in left_out
        for fold, label, _, alone in _labelled_units(n, groups, folds, strata)
    )


def _plain(value):
    """A numpy scalar as the Python value (``str``, ``int``...); others as they are."""
    return value.item() if isinstance(value, np.generic) else value


def _is_number(value) -> bool:
    return isinstance(value, (Real, np.number)) and not isinstance(value, (bool, np.bool_))


def _labelled_units(n: int, groups, folds, strata=None) -> list[tuple]:
    """``(fold, stratum label, units, alone)`` of each stratum; a unit is the rows of a
    sample or group.

    The strata are the folds, and within a fold, with ``strata``, the units' stratum
    label: a sample's own, a group's rarest one (the label carried by the fewest of the
    fold's groups; the first in sorted order on ties). ``alone``: the stratum's label is
    carried by a single unit of the fold. Without ``strata`` the label is None.
    """
    units = np.arange(n) if groups is None else _check_groups(groups, n)
    folds = np.zeros(n, dtype=int) if folds is None else np.asarray(folds)
    if len(folds) != n:
        raise ValueError(f"folds has {len(folds)} entries for {n} samples")
    codes = None
    if strata is not None:
        if len(strata) != n:
            raise ValueError(f"strata has {len(strata)} entries for {n} samples")
        names, codes = np.unique(np.asarray(strata), return_inverse=True)
        codes = codes.ravel()
    fold_names, fold_codes = np.unique(folds, return_inverse=True)
    by_stratum = []
    for k in range(fold_codes.max() + 1):
        fold = _plain(fold_names[k])
        rows = np.flatnonzero(fold_codes == k)
        _, unit_codes = np.unique(units[rows], return_inverse=True)
        members = [rows[unit_codes == u] for u in range(unit_codes.max() + 1)]
        if codes is None:
            by_stratum.append((fold, None, members, False))
            continue
        carried = [np.unique(codes[m]) for m in members]
        carriers = np.bincount(np.concatenate(carried), minlength=codes.max() + 1)
        keys = np.array([c[np.argmin(carriers[c])] for c in carried])
        by_stratum.extend(
            (
                fold,
                _plain(names[s]),
                [m for m, key in zip(members, keys, strict=True) if key == s],
                bool(carriers[s] == 1),
            )
            for s in np.unique(keys)
        )
    return by_stratum


def _resampler(
    n: int, groups, folds, rng: np.random.RandomState, strata=None
) -> Callable[[], np.ndarray]:
    """A function drawing one bootstrap sample of row indices.

    The units drawn are samples, or groups (patients) when given; with ``folds``, each
    fold's units are drawn separately, so every resample keeps the folds' sizes; with
    ``strata``, each stratum's units within a fold too (see :func:`_units`).
    """
    if groups is None and folds is None and strata is None:
        return lambda: rng.randint(0, n, n)
    by_stratum = _units(n, groups, folds, strata)

    def draw() -> np.ndarray:
        picked = []
        for members in by_stratum:
            picked.extend(members[i] for i in rng.randint(0, len(members), len(members)))
        return np.concatenate(picked)

    return draw


def _jackknife(statistic: Callable[[np.ndarray], float], n: int, groups, folds) -> np.ndarray:
    """The statistic with each unit (sample or group) left out in turn."""
    members = [m for stratum in _units(n, groups, folds) for m in stratum]
    keep = np.ones(n, dtype=bool)
    values = []
    for rows in members:
        keep[rows] = False
        value = _attempt(statistic, np.flatnonzero(keep))
        keep[rows] = True
        if value is not None:
            values.append(value)
    return np.asarray(values)


def _bias_z(values: np.ndarray, estimate: float) -> float:
    """BCa's bias correction z0: the normal quantile of the resamples below the estimate."""
    b = len(values)
    below = (np.sum(values < estimate) + 0.5 * np.sum(values == estimate)) / b
    return float(norm.ppf(np.clip(below, 0.5 / b, 1 - 0.5 / b)))


def _bca_levels(values: np.ndarray, estimate: float, jack: np.ndarray, alpha: float):
    """Percentile levels of the bias-corrected and accelerated (BCa) interval."""
    z0 = _bias_z(values, estimate)
    accel = 0.0
    if len(jack) > 2:
        d = jack.mean() - jack
        denom = 6.0 * np.sum(d**2) ** 1.5
        accel = float(np.sum(d**3) / denom) if denom > 0 else 0.0
    levels = []
    for z in norm.ppf([alpha / 2, 1 - alpha / 2]):
        levels.append(float(norm.cdf(z0 + (z0 + z) / (1 - accel * (z0 + z)))))
    if not all(np.isfinite(levels)) or levels[0] >= levels[1]:
        return [alpha / 2, 1 - alpha / 2]  # degenerate correction: plain percentiles
    return levels


#: What makes a metric undefined on some rows: it raises one of these, or returns NaN.
_UNDEFINED = (ValueError, ArithmeticError, UndefinedMetricWarning)


def _attempt(
    statistic: Callable[[np.ndarray], float], idx: np.ndarray, reasons: list | None = None
) -> float | None:
    """The statistic on some rows, or None where the metric is undefined there.

    Undefined: the metric raises (a ``ValueError``, an ``ArithmeticError``, or
    scikit-learn's ``UndefinedMetricWarning``, which :func:`_metric_warnings` turns into
    an error) or returns a non-finite value. Other warnings are no failure. The reason
    is appended to ``reasons`` when given.
    """
    try:
        value = float(statistic(idx))
    except _UNDEFINED as exc:
        if reasons is not None:
            reasons.append((str(exc) or type(exc).__name__).rstrip("."))
        return None
    if math.isfinite(value):
        return value
    if reasons is not None:
        reasons.append(f"it is {value}")
    return None


@contextmanager
def _metric_warnings() -> Iterator[None]:
    """Context of many metric evaluations: undefined-metric warnings are errors.

    Other warnings are collected and shown once each (per category and place) on
    leaving, instead of once per resample.
    """
    caught: list = []
    failed = True
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            warnings.simplefilter("error", UndefinedMetricWarning)
            yield
        failed = False
    finally:  # shown also when the bootstrap fails
        seen = set()
        for w in caught:
            key = (w.category, w.filename, w.lineno)
            if key not in seen:
                seen.add(key)
                # A warning turned into an error must not hide the bootstrap's own.
                with contextlib.suppress(Warning) if failed else contextlib.nullcontext():
                    warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)


def _per_fold(
    statistic: Callable[[np.ndarray], float], folds: np.ndarray | None, name: str
) -> tuple[Callable[[np.ndarray], float], tuple]:
    """The statistic itself, or with folds its mean over the folds; the folds left out.

    The folds are those where the metric is defined on all the samples; a resample in
    which one of them is undefined (a single class drawn, say) fails as a whole, rather
    than averaging fewer folds, which would move its value.
    """
    if folds is None:
        return statistic, ()
    every = np.arange(len(folds))
    fold_values = np.unique(folds)
    defined, reasons = [], []
    for k in fold_values:
        if _attempt(statistic, every[folds == k], reasons) is not None:
            defined.append(k)
    if not defined:
        raise ValueError(
            f"{name} is undefined in every one of the {len(fold_values)} folds (on fold "
            f"{fold_values[0]!r}: {reasons[0]}); more samples per fold or fewer folds may help"
        )
    left_out = tuple(_plain(k) for k in fold_values if k not in defined)

    def mean_over_folds(idx: np.ndarray) -> float:
        fold_of = folds[idx]
        values = []
        for k in defined:
            value = _attempt(statistic, idx[fold_of == k])
            if value is None:
                raise ValueError(f"the metric is undefined in fold {k} of this sample")
            values.append(value)
        return float(np.mean(values))

    return mean_over_folds, left_out


def _estimate(statistic: Callable[[np.ndarray], float], n: int, name: str, folds) -> float:
    """The statistic on the whole sample; an error naming the metric where undefined."""
    reasons: list[str] = []
    value = _attempt(statistic, np.arange(n), reasons)
    if value is None:
        where = "on the defined folds" if folds is not None else "on the whole sample"
        raise ValueError(
            f"{name} is undefined {where} ({n} samples): {reasons[0]}; a bootstrap interval "
            "needs a finite estimate"
        )
    return value


def _warn_incomplete(ci: BootstrapCI, name: str, n_folds: int) -> None:
    parts = []
    if ci.folds_left_out:
        left = ci.folds_left_out
        parts.append(
            f"it is undefined on all the samples of {counted(len(left), 'fold')} of "
            f"{n_folds} ({listing(list(left))}), left out of the estimate and the interval "
            f"(which average the other {n_folds - len(left)})"
        )
    if ci.single_unit_strata:
        one = ci.single_unit_strata == 1
        of = " of a fold" if n_folds else ""
        parts.append(
            f"{ci.single_unit_strata} {'class' if one else 'classes'}{of} "
            f"{'was' if one else 'were'} carried by a single sample or patient, the same in "
            "every resample, so the interval does not reflect how its scores vary and is "
            "likely too narrow"
        )
    if ci.failed_share > FAILED_SHARE_WARNING:
        drawn = ci.n_resamples + ci.n_failed
        parts.append(
            f"it was undefined on {ci.failed_share:.0%} of the bootstrap resamples "
            f"({ci.n_failed} of {drawn}), left out, so the interval describes only the "
            "resamples where it is defined and is likely too narrow"
        )
    more = "More samples per fold (or fewer folds)" if n_folds else "More samples"
    warnings.warn(
        f"{name}: {'; and '.join(parts)}. {more} avoid it.",
        BootstrapWarning,
        stacklevel=user_stacklevel(),
    )


def _auto_strata(y_true: np.ndarray) -> np.ndarray | None:
    """What ``strata="auto"`` stratifies on: the classes, or the event indicator."""
    if is_survival_target(y_true):
        return np.asarray(y_true[y_true.dtype.names[0]])
    if y_true.ndim != 1:
        return None
    try:
        kind = type_of_target(y_true)
    except ValueError:
        return None
    return y_true if kind == "binary" else None


def _metric_name(metric) -> str:
    while isinstance(metric, partial):
        metric = metric.func
    name = getattr(metric, "__name__", None)
    return name if name and name != "<lambda>" else "the metric"


def _bootstrap(
    statistic: Callable[[np.ndarray], float],
    n: int,
    *,
    groups,
    folds,
    strata,
    n_resamples: int,
    alpha: float,
    method: str,
    random_state,
    name: str,
    bounds: tuple[float, float] | None = None,
) -> BootstrapCI:
    _check_bootstrap_args(n_resamples, alpha)
    if method not in ("bca", "percentile"):
        raise ValueError(f"method must be 'bca' or 'percentile', got {method!r}")
    draw = _resampler(n, groups, folds, check_random_state(random_state), strata)
    folds = None if folds is None else np.asarray(folds)
    with _metric_warnings():
        statistic, left_out = _per_fold(statistic, folds, name)
        estimate = _estimate(statistic, n, name, folds)
        values = []
        with one_blas_thread():
            for _ in range(n_resamples):
                value = _attempt(statistic, draw())
                if value is not None:
                    values.append(value)
        n_failed = n_resamples - len(values)
        if not values:
            raise ValueError(
                f"{name} could not be computed on any of {n_resamples} bootstrap resamples "
                "(too few samples, or a single class in every resample)"
            )
        values = np.asarray(values)
        levels = [alpha / 2, 1 - alpha / 2]
        q_low, q_high = np.quantile(values, levels)
        if method == "bca" and abs(_bias_z(values, estimate)) > 1.0:
            # Too biased for BCa, whose levels then crowd into one tail and give a
            # spuriously narrow interval: shift the percentile interval by the bias
            # instead (the basic bootstrap interval), and say so.
            low, high, method = 2 * estimate - q_high, 2 * estimate - q_low, "basic"
            if bounds is not None:  # the shift can leave the metric's range
                low, high = np.clip([low, high], *bounds)
        elif method == "bca":
            with one_blas_thread():
                jack = _jackknife(statistic, n, groups, folds)
            low, high = np.quantile(values, _bca_levels(values, estimate, jack, alpha))
        else:
            low, high = q_low, q_high
    ci = BootstrapCI(
        estimate,
        float(low),
        float(high),
        1 - alpha,
        len(values),
        n_failed,
        method,
        left_out,
        _single_unit_strata(n, groups, folds, strata, left_out),
    )
    if ci.incomplete:
        _warn_incomplete(ci, name, 0 if folds is None else len(np.unique(folds)))
    return ci


def _as_array(a) -> np.ndarray:
    return a if isinstance(a, np.ndarray) else np.asarray(a)


def bootstrap_ci(
    metric: Metric,
    y_true: ArrayLike,
    y_score: ArrayLike,
    *,
    groups: ArrayLike | None = None,
    folds: ArrayLike | None = None,
    strata: str | ArrayLike | None = "auto",
    n_resamples: int = 1000,
    alpha: float = 0.05,
    method: str = "bca",
    random_state: int | np.random.RandomState | None = None,
    bounds: tuple[float, float] | None = None,
    name: str | None = None,
) -> BootstrapCI:
    """Point estimate and bootstrap confidence interval of a metric.

    Parameters
    ----------
    metric : callable
        ``metric(y_true, y_score) -> float``, e.g. :func:`sklearn.metrics.roc_auc_score`,
        :func:`sklearn.metrics.average_precision_score`, :func:`harrell_c`. Wrap other
        signatures with :func:`functools.partial` or a lambda.
    y_true : array-like of shape (n_samples,)
        Labels, or a structured survival array (:class:`sksurv.util.Surv`).
    y_score : array-like of shape (n_samples,) or (n_samples, n_classes)
        Scores, probabilities, predicted labels or risks, whatever ``metric`` takes.
    groups : array-like of shape (n_samples,), optional
        Resample whole groups (patients) instead of samples: lesions of one patient are
        not independent, and resampling patients gives honest intervals.
    folds : array-like of shape (n_samples,), optional
        The cross-validation fold each out-of-fold prediction comes from. The statistic
        is then the cross-validation estimate: the metric on each fold's samples,
        averaged over the folds (as :func:`~sklearn.model_selection.cross_validate`
        reports it; folds where the metric is undefined are left out), and each fold is
        resampled on its own. Models fitted in different folds may score on different
        scales (another penalty, another intercept), so a ranking metric of predictions
        pooled over folds would mix those scales.
    strata : "auto", array-like of shape (n_samples,) or None, default="auto"
        Resample within strata, so that every resample keeps each stratum's number of
        units (samples, or groups): a resample then holds every class a fold holds, and
        a metric such as the AUC stays defined on it even where a class is rare (two
        negatives in a fold of twelve). Dropping the resamples that happened to miss the
        rare class instead would describe only those that drew it, and give intervals
        far too narrow. With ``groups``, a group's stratum is its rarest label: the one
        carried by the fewest groups of its fold (so a class is kept whenever it is the
        rarest, and in binary tasks always). ``"auto"``: the classes of a binary target,
        the event indicator of a survival target, else none. Multiclass targets are not
        stratified by default: with classes of one patient per fold, each such patient
        would be a stratum of its own, the same in every resample, and the interval
        would shrink to nothing (balanced accuracy and the mean average precision over
        the classes present need no class in particular); pass ``strata=y_true`` where a
        metric needs every class. A stratum of a single unit is held fixed, so a class
        carried by one sample or patient of a fold adds nothing to the interval's width:
        such intervals are too narrow; these classes are counted in
        ``single_unit_strata`` and the interval marked ``incomplete`` (negative labels,
        units the metric ignores, are not counted). None: plain resampling. For
        :func:`survival_auc`, pass the status at the horizon,
        ``horizon_status(y, horizon)``.
    n_resamples : int, default=1000
        Bootstrap resamples.
    alpha : float, default=0.05
        The interval covers ``1 - alpha`` (95 % by default).
    method : {"bca", "percentile"}, default="bca"
        ``"bca"``: the bias-corrected and accelerated interval (Efron 1987), percentiles
        of the bootstrap distribution shifted for its bias and skew; the acceleration
        comes from a jackknife over the resampling units (samples or groups). It matters
        for metrics whose resamples are biased, such as average precision (duplicated
        samples raise it). When the bias is so large that the estimate lies outside the
        central 68 % of the bootstrap distribution (BCa's bias correction beyond one
        standard deviation), BCa's levels crowd into one tail and give a spuriously
        narrow interval; the basic interval ``2 * estimate - (high, low)`` of the
        percentiles is returned instead, with ``method="basic"``: a rough interval.
        Small folds of a cross-validation with rare classes do this to average
        precision.
        ``"percentile"``: the plain percentiles.
    random_state : int, RandomState instance or None, default=None
        Seeds the resampling.
    bounds : (float, float), optional
        The metric's range, e.g. ``(0, 1)`` for AUC: a basic interval, which shifts the
        percentiles, is clipped to it (percentile and BCa intervals lie within the
        resampled values anyway).
    name : str, optional
        How messages name the metric (by default the function's name).

    Returns
    -------
    BootstrapCI
        ``estimate`` (the metric on all samples), ``low``, ``high``. Resamples on which
        the metric is undefined (it raises a ``ValueError`` or ``ArithmeticError``,
        raises scikit-learn's ``UndefinedMetricWarning``, or returns NaN or infinity;
        e.g. one class only) are left out and counted in ``n_failed``; with ``folds``,
        so is a resample in which any fold where the metric is defined on all samples
        becomes undefined. Other warnings of the metric are no failure (they are shown
        once). Folds where the metric is undefined on all their samples are left out of
        the estimate and listed in ``folds_left_out``.

    Raises
    ------
    ValueError
        When the metric is undefined (or not finite) on the whole sample, in every
        fold, or on every resample.

    Warns
    -----
    BootstrapWarning
        When more than 5 % (:data:`FAILED_SHARE_WARNING`) of the resamples failed,
        folds were left out, or a class of a fold is carried by a single sample or
        patient: the interval then describes only part of the data, or is likely too
        narrow (``incomplete`` is true). The message names the metric and the reason.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn.metrics import roc_auc_score
    >>> from skfmcib.evaluation import bootstrap_ci
    >>> rng = np.random.default_rng(0)
    >>> y = rng.integers(0, 2, 200)
    >>> score = y + rng.normal(0, 1, 200)
    >>> ci = bootstrap_ci(roc_auc_score, y, score, n_resamples=200, random_state=0)
    >>> ci.low < ci.estimate < ci.high
    True
    >>> print(ci)
    0.76 [0.70, 0.82]
    """
    y_true, y_score = _as_array(y_true), _as_array(y_score)
    if len(y_true) != len(y_score):
        raise ValueError(f"y_true has {len(y_true)} samples but y_score has {len(y_score)}")

    def statistic(idx: np.ndarray) -> float:
        return metric(y_true[idx], y_score[idx])

    return _bootstrap(
        statistic,
        len(y_true),
        groups=groups,
        folds=folds,
        strata=_auto_strata(y_true) if _is_auto(strata) else strata,
        n_resamples=n_resamples,
        alpha=alpha,
        method=method,
        random_state=random_state,
        name=_metric_name(metric) if name is None else name,
        bounds=bounds,
    )


def _is_auto(strata) -> bool:
    return isinstance(strata, str) and strata == "auto"


def bootstrap_ci_difference(
    metric: Metric,
    y_true: ArrayLike,
    y_score: ArrayLike,
    y_score_reference: ArrayLike,
    *,
    groups: ArrayLike | None = None,
    folds: ArrayLike | None = None,
    strata: str | ArrayLike | None = "auto",
    n_resamples: int = 1000,
    alpha: float = 0.05,
    method: str = "bca",
    random_state: int | np.random.RandomState | None = None,
    bounds: tuple[float, float] | None = None,
    name: str | None = None,
) -> BootstrapCI:
    """Paired bootstrap interval of ``metric(y, y_score) - metric(y, y_score_reference)``.

    Both scores are evaluated on the same resamples, so the interval of the difference
    is much narrower than two separate intervals suggest. An interval that excludes 0
    says the two models differ at level ``alpha``.

    Parameters
    ----------
    metric : callable
        ``metric(y_true, y_score) -> float``.
    y_true : array-like of shape (n_samples,)
        Labels or a structured survival array.
    y_score : array-like of shape (n_samples,) or (n_samples, n_classes)
        Scores of the model.
    y_score_reference : array-like of shape (n_samples,) or (n_samples, n_classes)
        Scores of the reference model (e.g. the radiomics baseline).
    groups : array-like of shape (n_samples,), optional
        Resample whole groups (patients) instead of samples, as in
        :func:`bootstrap_ci`.
    folds : array-like of shape (n_samples,), optional
        The cross-validation fold of each out-of-fold prediction, as in
        :func:`bootstrap_ci`: the statistic is then the mean over folds of each fold's
        difference, i.e. the difference of the two cross-validation estimates.
    strata : "auto", array-like of shape (n_samples,) or None, default="auto"
        What to resample within, as in :func:`bootstrap_ci`.
    n_resamples : int, default=1000
        Bootstrap resamples.
    alpha : float, default=0.05
        The interval covers ``1 - alpha`` (95 % by default).
    method : {"bca", "percentile"}, default="bca"
        How the interval is computed, as in :func:`bootstrap_ci`.
    random_state : int, RandomState instance or None, default=None
        Seeds the resampling.
    bounds : (float, float), optional
        The range of the metric itself, e.g. ``(0, 1)``: a basic interval of the
        difference is clipped to ``(low - high, high - low)``.
    name : str, optional
        How messages name the statistic (by default ``"difference of "`` and the
        metric function's name).

    Returns
    -------
    BootstrapCI
        The difference and its interval.

    Examples
    --------
    >>> import numpy as np
    >>> from sklearn.metrics import roc_auc_score
    >>> from skfmcib.evaluation import bootstrap_ci_difference
    >>> rng = np.random.default_rng(0)
    >>> y = rng.integers(0, 2, 300)
    >>> good, weak = y + rng.normal(0, 0.7, 300), y + rng.normal(0, 2.0, 300)
    >>> diff = bootstrap_ci_difference(roc_auc_score, y, good, weak, random_state=0)
    >>> bool(diff.low > 0)
    True
    """
    y_true = _as_array(y_true)
    a, b = _as_array(y_score), _as_array(y_score_reference)
    if not len(y_true) == len(a) == len(b):
        raise ValueError(
            f"y_true, y_score and y_score_reference have {len(y_true)}, {len(a)} and "
            f"{len(b)} samples"
        )

    def statistic(idx: np.ndarray) -> float:
        return metric(y_true[idx], a[idx]) - metric(y_true[idx], b[idx])

    return _bootstrap(
        statistic,
        len(y_true),
        groups=groups,
        folds=folds,
        strata=_auto_strata(y_true) if _is_auto(strata) else strata,
        n_resamples=n_resamples,
        alpha=alpha,
        method=method,
        random_state=random_state,
        name=f"difference of {_metric_name(metric)}" if name is None else name,
        bounds=None if bounds is None else (bounds[0] - bounds[1], bounds[1] - bounds[0]),
    )


# ----------------------------------------------------------------- survival metrics


def is_survival_target(y: ArrayLike) -> bool:
    """Whether ``y`` is a structured (event, time) array as scikit-survival uses.

    Parameters
    ----------
    y : array-like
        A target: labels, or a structured array such as
        :func:`sksurv.util.Surv.from_arrays` makes.

    Returns
    -------
    bool
        True when ``y`` has a structured dtype of two fields (event and time).

    Examples
    --------
    >>> from sksurv.util import Surv
    >>> from skfmcib.evaluation import is_survival_target
    >>> is_survival_target(Surv.from_arrays([True, False], [3.0, 5.0])), is_survival_target([0, 1])
    (True, False)
    """
    dtype = getattr(y, "dtype", None)
    return dtype is not None and dtype.names is not None and len(dtype.names) == 2


def harrell_c(y: np.ndarray, risk: ArrayLike) -> float:
    """Harrell's concordance index of risk scores (higher risk, earlier event).

    Parameters
    ----------
    y : structured array of shape (n_samples,)
        Event indicator and time (:class:`sksurv.util.Surv`).
    risk : array-like of shape (n_samples,)
        Predicted risk, e.g. ``CoxnetSurvivalAnalysis.predict``.

    Returns
    -------
    float

    Examples
    --------
    >>> from sksurv.util import Surv
    >>> from skfmcib.evaluation import harrell_c
    >>> y = Surv.from_arrays([True, True, False, True], [2.0, 4.0, 5.0, 8.0])
    >>> harrell_c(y, [4.0, 3.0, 2.0, 1.0])
    1.0
    """
    event, time = check_y_survival(y)
    return float(concordance_index_censored(event, time, np.asarray(risk, dtype=float))[0])


def uno_c(
    y: np.ndarray,
    risk: ArrayLike,
    *,
    y_train: np.ndarray | None = None,
    tau: float | None = None,
) -> float:
    """Uno's inverse-probability-of-censoring weighted concordance index.

    Parameters
    ----------
    y : structured array of shape (n_samples,)
        Event indicator and time of the evaluated samples.
    risk : array-like of shape (n_samples,)
        Predicted risk.
    y_train : structured array, optional
        Data the censoring distribution is estimated from (by default ``y`` itself).
    tau : float, optional
        Truncation time: only pairs whose earlier time is below ``tau`` count. Choose it
        where enough samples are still followed up; by default the largest time at which
        the censoring distribution is still positive.

    Returns
    -------
    float

    See Also
    --------
    sksurv.metrics.concordance_index_ipcw : The implementation.

    Examples
    --------
    >>> from sksurv.util import Surv
    >>> from skfmcib.evaluation import uno_c
    >>> y = Surv.from_arrays([True, True, False, True, False], [2.0, 4.0, 5.0, 8.0, 9.0])
    >>> uno_c(y, [5.0, 4.0, 3.0, 2.0, 1.0])
    1.0
    """
    reference = y if y_train is None else y_train
    if tau is None:
        tau = _default_tau(reference)
    return float(concordance_index_ipcw(reference, y, np.asarray(risk, dtype=float), tau=tau)[0])


def _default_tau(y) -> float | None:
    """The largest time before which the censoring survival stays positive."""
    event, time = check_y_survival(y)
    last = time.max()
    if event[time == last].all():
        return None  # censoring distribution positive everywhere
    return float(np.nextafter(last, -np.inf))


def survival_auc(y: np.ndarray, risk: ArrayLike, *, horizon: float) -> float:
    """AUC of risk scores for the binary endpoint "event by ``horizon``".

    The paper's 2-year survival AUC: samples with an event at or before ``horizon`` are
    positives, samples followed beyond ``horizon`` are negatives, and samples censored
    before ``horizon`` (status unknown) are left out. For a censoring-weighted version
    use :func:`sksurv.metrics.cumulative_dynamic_auc`.

    Parameters
    ----------
    y : structured array of shape (n_samples,)
        Event indicator and time.
    risk : array-like of shape (n_samples,)
        Predicted risk (higher: earlier event).
    horizon : float
        Time of the endpoint, in the units of ``y`` (24 for two years in months).

    Returns
    -------
    float

    Examples
    --------
    >>> from sksurv.util import Surv
    >>> from skfmcib.evaluation import survival_auc
    >>> y = Surv.from_arrays([True, False, True, False], [10.0, 12.0, 30.0, 40.0])
    >>> survival_auc(y, [0.9, 0.8, 0.4, 0.1], horizon=24)  # the sample censored at 12 is left out
    1.0
    """
    event, time = check_y_survival(y)
    risk = np.asarray(risk, dtype=float)
    reason = _horizon_undefined(event, time, horizon, "sample")
    if reason:
        raise ValueError(f"survival_auc is undefined: {reason}")
    positive = event & (time <= horizon)
    known = positive | (time > horizon)
    return rank_auc(positive[known], risk[known])


def _horizon_undefined(event: np.ndarray, time: np.ndarray, horizon: float, unit: str) -> str:
    """Why the AUC at ``horizon`` is undefined on these targets, or ''."""
    if not (time > horizon).any():
        return (
            f"no {unit} is followed beyond the horizon {horizon:g} (the longest follow-up "
            f"is {time.max():g}), so none is known to be event-free then; choose a horizon "
            "within the follow-up"
        )
    if not (event & (time <= horizon)).any():
        first = (
            f"the first event is at {time[event].min():g}" if event.any() else "no event at all"
        )
        return f"no event at or before the horizon {horizon:g} ({first}); choose a later horizon"
    return ""


def horizon_status(y: np.ndarray, horizon: float) -> np.ndarray:
    """Status at ``horizon``: 1 event by then, 0 followed beyond it, -1 censored before.

    The classes of :func:`survival_auc`, to stratify its bootstrap on
    (``bootstrap_ci(..., strata=horizon_status(y, horizon))``). The AUC ignores the
    lesions censored before the horizon; their negative label tells the bootstrap not
    to count a stratum of one of them as one that narrows the interval.

    Parameters
    ----------
    y : structured array of shape (n_samples,)
        Event indicator and time.
    horizon : float
        Time of the endpoint.

    Returns
    -------
    ndarray of int

    Examples
    --------
    >>> from sksurv.util import Surv
    >>> from skfmcib.evaluation import horizon_status
    >>> horizon_status(Surv.from_arrays([True, False, True], [10.0, 12.0, 30.0]), 24).tolist()
    [1, -1, 0]
    """
    event, time = check_y_survival(y)
    return np.where(event & (time <= horizon), 1, np.where(time > horizon, 0, -1))


def rank_auc(is_positive: ArrayLike, score: ArrayLike) -> float:
    """ROC AUC from the Mann-Whitney U statistic; equals :func:`~sklearn.metrics.roc_auc_score`.

    Without scikit-learn's input validation, which costs milliseconds per call: this
    is the AUC the bootstrap evaluates a thousand times.

    Parameters
    ----------
    is_positive : array-like of bool, shape (n_samples,)
        Which samples are positive.
    score : array-like of shape (n_samples,)
        Scores; ties count one half.

    Returns
    -------
    float

    Raises
    ------
    ValueError
        When all samples are of one class.

    Examples
    --------
    >>> from skfmcib.evaluation import rank_auc
    >>> rank_auc([False, True, False, True], [0.1, 0.8, 0.8, 0.9])
    0.875
    """
    pos = np.asarray(is_positive, dtype=bool)
    n_pos = int(pos.sum())
    n_neg = len(pos) - n_pos
    if n_pos == 0 or n_neg == 0:
        raise ValueError("the ROC AUC needs samples of both classes")
    ranks = rankdata(np.asarray(score, dtype=float))  # ties get their mean rank
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


# ------------------------------------------------------------ cross-validation folds


def make_cv(
    cv: int | Splitter = 5,
    *,
    y: ArrayLike | None = None,
    groups: ArrayLike | None = None,
    classifier: bool = True,
    shuffle: bool = True,
    random_state: int | np.random.RandomState | None = None,
) -> Splitter:
    """The cross-validation splitter the evaluation functions use.

    Lesions of one patient stay in one fold when ``groups`` is given
    (:class:`~sklearn.model_selection.StratifiedGroupKFold` for classification,
    :class:`~sklearn.model_selection.GroupKFold` otherwise). Survival targets are
    stratified on the event indicator when split with :func:`split_target`.

    Parameters
    ----------
    cv : int or cross-validation splitter, default=5
        Number of folds, or a splitter (an object with scikit-learn's ``split``
        method) returned as is.
    y : array-like, optional
        The target; a classification target (or a survival target, through its event
        indicator) makes the folds stratified.
    groups : array-like, optional
        Group (patient) of each sample.
    classifier : bool, default=True
        Whether the estimator is a classifier (stratify on ``y``).
    shuffle : bool, default=True
        Shuffle before splitting.
    random_state : int, RandomState instance or None, default=None
        Seed of the shuffling.

    Returns
    -------
    cross-validation splitter

    Examples
    --------
    >>> from skfmcib.evaluation import make_cv
    >>> make_cv(3, groups=[0, 0, 1, 1, 2, 2], random_state=0)
    StratifiedGroupKFold(n_splits=3, random_state=0, shuffle=True)
    """
    if not isinstance(cv, Integral) or isinstance(cv, bool):
        return cv
    rs = random_state if shuffle else None
    stratify = classifier or (y is not None and is_survival_target(y))
    if groups is not None:
        if stratify:
            return StratifiedGroupKFold(n_splits=cv, shuffle=shuffle, random_state=rs)
        return GroupKFold(n_splits=cv, shuffle=shuffle, random_state=rs)
    if stratify:
        return StratifiedKFold(n_splits=cv, shuffle=shuffle, random_state=rs)
    return KFold(n_splits=cv, shuffle=shuffle, random_state=rs)


def split_target(y: ArrayLike) -> np.ndarray:
    """What folds are stratified on: the labels, or a survival target's event indicator.

    Parameters
    ----------
    y : array-like of shape (n_samples,)
        Labels, or a structured survival array (:class:`sksurv.util.Surv`).

    Returns
    -------
    ndarray of shape (n_samples,)
        The labels as an array, or the survival target's event indicator (bool).

    Examples
    --------
    >>> from sksurv.util import Surv
    >>> from skfmcib.evaluation import split_target
    >>> split_target(Surv.from_arrays([True, False], [3.0, 5.0])).tolist()
    [True, False]
    """
    if is_survival_target(y):
        return check_y_survival(y)[0]
    return np.asarray(y)


# ------------------------------------------------------------------ label efficiency


def _nested_subsets(
    train: np.ndarray, strata: np.ndarray | None, fractions: Sequence[float], rng
) -> dict[float, np.ndarray]:
    """Nested random subsets of ``train`` (each fraction contains the smaller ones).

    Stratified: each stratum keeps its share, and at least one sample.
    """
    if strata is None:
        order = rng.permutation(train)
        return {f: np.sort(order[: max(1, math.ceil(f * len(train)))]) for f in fractions}
    out = {}
    by_stratum = [rng.permutation(train[strata[train] == s]) for s in np.unique(strata[train])]
    for f in fractions:
        out[f] = np.sort(
            np.concatenate([idx[: max(1, math.ceil(f * len(idx)))] for idx in by_stratum])
        )
    return out


def _grouped_splits(splitter, X, y, groups, where: str) -> list[tuple[np.ndarray, np.ndarray]]:
    """The splits of ``splitter``; an error if one puts a group (patient) on both sides.

    scikit-learn's warning that a splitter ignores ``groups`` is replaced by that error
    (a splitter may ignore them and still keep them apart).
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "The groups parameter is ignored", UserWarning)
        splits = list(splitter.split(X, y, groups))
    if groups is None:
        return splits
    for train, test in splits:
        shared = np.intersect1d(groups[train], groups[test])
        if len(shared):
            raise ValueError(
                f"{where} puts {len(shared)} of the groups ({listing(shared.tolist(), 3)}) "
                "in both the training and the test part of a split: with groups "
                "(patients), give a number of folds or a group-aware splitter (GroupKFold, "
                "StratifiedGroupKFold)"
            )
    return splits


def _inner_groups(estimator, groups_train, random_state, y_train):
    """Make the inner search of ``estimator`` group-aware; return (estimator, fit params).

    A splitter given as the search's ``cv`` is kept, but must keep the groups apart.
    """
    if groups_train is None:
        return estimator, {}
    if isinstance(estimator, BaseSearchCV):
        search, prefix = estimator, ""
    elif isinstance(estimator, Pipeline) and isinstance(estimator.steps[-1][1], BaseSearchCV):
        name, search = estimator.steps[-1]
        prefix = f"{name}__"
    else:
        return estimator, {}
    inner = make_cv(
        search.cv if search.cv is not None else 5,
        groups=groups_train,
        classifier=is_classifier(search.estimator),
        random_state=random_state,
    )
    rows = np.zeros((len(groups_train), 1))
    y_split = split_target(_as_array(y_train))
    _grouped_splits(inner, rows, y_split, groups_train, f"the inner search's cv={inner!r}")
    estimator.set_params(**{f"{prefix}cv": inner})
    if get_config().get("enable_metadata_routing", False):
        # Routed by the pipeline to the search, whose grouped splitter asks for them;
        # the step__param form is refused when routing is on.
        return estimator, {"groups": groups_train}
    return estimator, {f"{prefix}groups": groups_train}


def label_efficiency_curve(
    estimator: BaseEstimator,
    X: ArrayLike | pd.DataFrame,
    y: ArrayLike,
    *,
    fractions: Sequence[float] = (1.0, 0.5, 0.2, 0.1),
    cv: int | Splitter = 5,
    scoring: str | Callable | None = None,
    groups: ArrayLike | None = None,
    n_repeats: int = 1,
    random_state: int | np.random.RandomState | None = None,
) -> pd.DataFrame:
    """Cross-validated score against the fraction of training labels used.

    For every cross-validation fold, the training part is subsampled to each fraction
    (nested subsets, stratified by class, or by event for survival targets, keeping at
    least one sample of each), the estimator is fitted on the subsample and scored on
    the whole test fold, which is the same for every fraction.

    Parameters
    ----------
    estimator : estimator
        Cloned for every fit. With very small fractions, prefer a head with fixed
        hyper-parameters: an inner search has too few labels to split.
    X : array-like or DataFrame of shape (n_samples, ...)
        Input (a feature matrix is much faster than a lesion table: computing features
        is then done once).
    y : array-like of shape (n_samples,)
        Target (labels or a structured survival array).
    fractions : sequence of float, default=(1.0, 0.5, 0.2, 0.1)
        Fractions of the training labels, in (0, 1].
    cv : int or splitter, default=5
        Folds (see :func:`make_cv`; patients stay together when ``groups`` is given).
    scoring : str or callable, optional
        A scikit-learn scorer; by default ``estimator.score`` (accuracy for classifiers,
        Harrell's concordance index for scikit-survival models).
    groups : array-like of shape (n_samples,), optional
        Patient of each sample, for group-aware folds.
    n_repeats : int, default=1
        Independent subsamples per fold and fraction.
    random_state : int, RandomState instance or None, default=None
        Seeds the folds and subsamples.

    Returns
    -------
    DataFrame
        One row per fold, repeat and fraction, with columns ``fraction``, ``repeat``,
        ``fold``, ``n_train`` and ``score``.

    Examples
    --------
    >>> from sklearn.datasets import make_classification
    >>> from sklearn.linear_model import LogisticRegression
    >>> from skfmcib.evaluation import label_efficiency_curve
    >>> X, y = make_classification(200, 10, random_state=0)
    >>> curve = label_efficiency_curve(LogisticRegression(), X, y, scoring="roc_auc",
    ...                                random_state=0)
    >>> curve.groupby("fraction")["score"].mean().round(2).to_dict()
    {0.1: 0.93, 0.2: 0.97, 0.5: 0.98, 1.0: 0.98}
    """
    fractions = [float(f) for f in fractions]
    if not fractions or any(not 0 < f <= 1 for f in fractions):
        raise ValueError(f"fractions must lie in (0, 1], got {fractions}")
    if isinstance(n_repeats, bool) or not isinstance(n_repeats, Integral) or n_repeats < 1:
        raise ValueError(f"n_repeats must be a positive integer, got {n_repeats!r}")
    y_arr = _as_array(y)
    groups = _check_groups(groups, len(y_arr))
    strata = split_target(y_arr) if is_classifier(estimator) or is_survival_target(y_arr) else None
    if strata is not None and type_of_target(strata) not in ("binary", "multiclass"):
        strata = None
    splitter = make_cv(
        cv,
        y=y_arr,
        groups=groups,
        classifier=is_classifier(estimator),
        random_state=random_state,
    )
    scorer = check_scoring(estimator, scoring)
    rng = check_random_state(random_state)
    split_y = split_target(y_arr)
    rows = []
    with one_blas_thread():
        splits = _grouped_splits(splitter, X, split_y, groups, f"cv={splitter!r}")
        for fold, (train, test) in enumerate(splits):
            X_test, y_test = _safe_indexing(X, test), y_arr[test]
            for repeat in range(n_repeats):
                for fraction, subset in _nested_subsets(train, strata, fractions, rng).items():
                    model, fit_params = _inner_groups(
                        clone(estimator),
                        None if groups is None else groups[subset],
                        random_state,
                        y_arr[subset],
                    )
                    model.fit(_safe_indexing(X, subset), y_arr[subset], **fit_params)
                    rows.append(
                        {
                            "fraction": fraction,
                            "repeat": repeat,
                            "fold": fold,
                            "n_train": len(subset),
                            "score": float(scorer(model, X_test, y_test)),
                        }
                    )
    return pd.DataFrame(rows, columns=["fraction", "repeat", "fold", "n_train", "score"])
