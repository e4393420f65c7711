"""Bootstrap intervals, survival metrics, group-aware folds, label-efficiency curves, tasks."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from scipy.stats import norm
from sklearn.base import BaseEstimator, ClassifierMixin
from sklearn.datasets import make_classification
from sklearn.decomposition import PCA
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import average_precision_score, roc_auc_score
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sksurv.linear_model import CoxPHSurvivalAnalysis
from sksurv.metrics import concordance_index_censored, concordance_index_ipcw
from sksurv.util import Surv

from skfmcib.evaluation import (
    BootstrapCI,
    BootstrapWarning,
    bootstrap_ci,
    bootstrap_ci_difference,
    harrell_c,
    label_efficiency_curve,
    make_cv,
    survival_auc,
    uno_c,
)
from skfmcib.tasks import (
    _average_precision,
    compare_results,
    cross_validated_predictions,
    evaluate_malignancy,
    evaluate_site,
    evaluate_survival,
    malignancy_pipeline,
    site_pipeline,
    survival_pipeline,
)

# ------------------------------------------------------------------------ bootstrap


def test_bootstrap_interval_covers_the_truth_at_its_nominal_rate():
    """Over many samples with a known mean, the 90 % interval holds it about 90 % of the time."""
    rng = np.random.default_rng(0)
    hits, trials = 0, 300
    for seed in range(trials):
        x = rng.exponential(1.0, 80)  # skewed: true mean 1
        ci = bootstrap_ci(
            lambda _, s: s.mean(), x, x, n_resamples=300, alpha=0.1, random_state=seed
        )
        hits += ci.low <= 1.0 <= ci.high
    assert 0.82 <= hits / trials <= 0.96


def test_bootstrap_auc_interval_covers_a_known_auc():
    rng = np.random.default_rng(1)
    d = 1.0
    truth = norm.cdf(d / np.sqrt(2))  # binormal AUC
    y = rng.integers(0, 2, 400)
    score = rng.normal(d * y, 1.0)
    ci = bootstrap_ci(roc_auc_score, y, score, n_resamples=500, random_state=0)
    assert ci.estimate == pytest.approx(roc_auc_score(y, score))
    assert ci.low < truth < ci.high
    assert 0.05 < ci.high - ci.low < 0.15
    assert ci.confidence == 0.95 and ci.n_resamples + ci.n_failed == 500


def test_resampling_patients_widens_the_interval_of_correlated_lesions():
    """Three identical lesions per patient carry the information of one."""
    rng = np.random.default_rng(2)
    y1 = rng.integers(0, 2, 60)
    s1 = rng.normal(y1, 1.0)
    y, s = np.repeat(y1, 3), np.repeat(s1, 3)
    patients = np.repeat(np.arange(60), 3)
    naive = bootstrap_ci(roc_auc_score, y, s, n_resamples=400, random_state=0)
    grouped = bootstrap_ci(roc_auc_score, y, s, groups=patients, n_resamples=400, random_state=0)
    per_patient = bootstrap_ci(roc_auc_score, y1, s1, n_resamples=400, random_state=0)
    width = {k: ci.high - ci.low for k, ci in dict(n=naive, g=grouped, p=per_patient).items()}
    assert width["g"] > 1.4 * width["n"]
    assert width["g"] == pytest.approx(width["p"], rel=0.25)


def test_resamples_without_both_classes_are_left_out_counted_and_warned_of():
    y = np.array([0] * 10 + [1])
    score = np.linspace(0, 1, 11)
    with pytest.warns(BootstrapWarning, match=r"roc_auc_score: .* on 3\d% of the bootstrap"):
        ci = bootstrap_ci(roc_auc_score, y, score, strata=None, n_resamples=200, random_state=0)
    assert ci.n_failed > 50  # about (10/11)^11 = 35 % of resamples lack the positive
    assert ci.n_resamples + ci.n_failed == 200
    assert ci.estimate == 1.0 and ci.incomplete


def test_stratified_resamples_keep_the_rare_class():
    """By default a classification target is resampled within its classes."""
    y = np.array([0] * 10 + [1, 1])
    score = np.linspace(0, 1, 12)
    ci = bootstrap_ci(roc_auc_score, y, score, n_resamples=200, random_state=0)
    assert ci.n_failed == 0 and ci.single_unit_strata == 0 and not ci.incomplete
    # A class of one sample is the same in every resample: the interval is marked.
    with pytest.warns(BootstrapWarning, match="1 class was carried by a single sample"):
        ci = bootstrap_ci(roc_auc_score, y[:11], score[:11], n_resamples=200, random_state=0)
    assert ci.n_failed == 0 and ci.single_unit_strata == 1 and ci.incomplete


def test_metric_undefined_everywhere_is_an_error():
    with pytest.raises(ValueError, match=r"the metric is undefined on the whole sample .*nan"):
        bootstrap_ci(lambda y, s: float("nan"), [0, 1], [0.1, 0.2], n_resamples=10)


def test_metric_undefined_or_not_finite_on_the_whole_sample_is_named():
    with pytest.raises(ValueError, match=r"roc_auc_score is undefined on the whole sample "):
        bootstrap_ci(roc_auc_score, np.zeros(10), np.arange(10.0), n_resamples=10)
    with pytest.raises(ValueError, match=r"the metric is undefined .*: it is inf"):
        bootstrap_ci(lambda y, s: np.inf, [0, 1, 0, 1], [0.1, 0.2, 0.3, 0.4], n_resamples=10)
    with pytest.raises(ValueError, match=r"AUC is undefined in every one of the 2 folds"):
        bootstrap_ci(roc_auc_score, [0, 0, 1, 1], [0.1, 0.2, 0.3, 0.4], folds=[0, 0, 1, 1],
                     n_resamples=10, name="AUC")  # fmt: skip


def test_a_metric_defined_on_the_sample_but_on_no_resample_is_an_error():
    def all_distinct(y, s):
        return 1.0 if len(np.unique(s)) == len(s) else float("nan")

    x = np.arange(50.0)
    with pytest.raises(ValueError, match="could not be computed on any of 20 bootstrap"):
        bootstrap_ci(all_distinct, x, x, n_resamples=20, random_state=0)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [({"n_resamples": 0}, "n_resamples"), ({"alpha": 1.5}, "alpha"), ({"groups": [0]}, "groups")],
)
def test_bootstrap_arguments_are_checked(kwargs, match):
    with pytest.raises(ValueError, match=match):
        bootstrap_ci(roc_auc_score, [0, 1, 0, 1], [0.1, 0.9, 0.2, 0.8], **kwargs)


def test_bootstrap_of_a_survival_metric_on_a_structured_target():
    rng = np.random.default_rng(3)
    risk = rng.normal(size=150)
    time = rng.exponential(np.exp(-risk))
    y = Surv.from_arrays(rng.random(150) < 0.7, time)
    ci = bootstrap_ci(harrell_c, y, risk, n_resamples=200, random_state=0)
    assert ci.estimate == pytest.approx(concordance_index_censored(y["event"], y["time"], risk)[0])
    assert 0.5 < ci.low < ci.estimate < ci.high < 1.0


def test_paired_difference_of_identical_scores_is_zero_and_of_better_scores_positive():
    rng = np.random.default_rng(4)
    y = rng.integers(0, 2, 200)
    good, weak = rng.normal(1.5 * y, 1.0), rng.normal(0.3 * y, 1.0)
    same = bootstrap_ci_difference(roc_auc_score, y, good, good, n_resamples=100, random_state=0)
    assert tuple(same) == (0.0, 0.0, 0.0)
    better = bootstrap_ci_difference(roc_auc_score, y, good, weak, n_resamples=300, random_state=0)
    assert better.low > 0
    assert better.estimate == pytest.approx(roc_auc_score(y, good) - roc_auc_score(y, weak))


def test_fold_wise_estimate_ignores_the_scale_of_each_folds_model():
    """Perfect rankings within folds, but each fold's model shifted: pooling mixes scales."""
    rng = np.random.default_rng(8)
    folds = np.repeat(np.arange(4), 25)
    y = rng.integers(0, 2, 100)
    score = y + 0.1 * rng.random(100) - 3.0 * folds  # fold k's model scores 3 k lower
    assert roc_auc_score(y, score) < 0.8  # pooled
    ci = bootstrap_ci(roc_auc_score, y, score, folds=folds, n_resamples=100, random_state=0)
    assert ci.estimate == 1.0 and ci.low == 1.0


def test_resampling_within_folds_keeps_their_sizes():
    from skfmcib.evaluation import _resampler

    folds = np.repeat([0, 1, 2], [10, 20, 30])
    patients = np.arange(60) // 2
    draw = _resampler(60, patients, folds, np.random.RandomState(0))
    for _ in range(20):
        idx = draw()
        assert np.bincount(folds[idx]).tolist() == [10, 20, 30]
        assert (np.bincount(idx, minlength=60)[0::2] == np.bincount(idx, minlength=60)[1::2]).all()


def test_bca_interval_corrects_the_upward_bias_of_resampled_average_precision():
    """Duplicated samples raise average precision: percentiles sit above the estimate."""
    rng = np.random.default_rng(9)
    y = rng.integers(0, 2, 40)
    score = rng.normal(0.6 * y, 1.0)
    kwargs = dict(n_resamples=400, random_state=0)
    plain = bootstrap_ci(average_precision_score, y, score, method="percentile", **kwargs)
    bca = bootstrap_ci(average_precision_score, y, score, **kwargs)
    assert plain.estimate == bca.estimate
    assert bca.low < plain.low and bca.high < plain.high  # shifted down
    assert bca.low < bca.estimate < bca.high
    with pytest.raises(ValueError, match="method"):
        bootstrap_ci(average_precision_score, y, score, method="basic")


def test_bca_falls_back_to_the_basic_interval_when_resamples_are_far_off():
    """A statistic no resample reaches (the share of distinct samples, 1 on the data)."""

    def distinct_share(y, s):
        return len(np.unique(s)) / len(s)

    x = np.arange(50.0)
    ci = bootstrap_ci(distinct_share, x, x, n_resamples=200, random_state=0)
    assert ci.method == "basic" and ci.estimate == 1.0
    resampled = bootstrap_ci(
        distinct_share, x, x, n_resamples=200, random_state=0, method="percentile"
    )
    assert resampled.high < 0.8 and resampled.method == "percentile"
    assert ci.low == pytest.approx(2 - resampled.high) and ci.high == pytest.approx(
        2 - resampled.low
    )


def test_bootstrap_ci_formats_and_unpacks():
    ci = BootstrapCI(0.8, 0.7, 0.9, 0.95, 100, 0)
    assert str(ci) == "0.80 [0.70, 0.90]"
    est, lo, hi = ci
    assert (est, lo, hi) == (0.8, 0.7, 0.9)


# ----------------------------------------------------------------- survival metrics


def _survival_data(n=120, seed=0):
    rng = np.random.default_rng(seed)
    risk = rng.normal(size=n)
    time = 20 * rng.exponential(np.exp(-risk))
    censor = rng.uniform(5, 60, n)
    return Surv.from_arrays(time <= censor, np.minimum(time, censor)), risk


def test_uno_c_matches_scikit_survival_and_handles_a_censored_last_time():
    y, risk = _survival_data()
    tau = np.quantile(y["time"], 0.8)
    expected = concordance_index_ipcw(y, y, risk, tau=tau)[0]
    assert uno_c(y, risk, tau=tau) == pytest.approx(expected)
    y[np.argmax(y["time"])] = (False, y["time"].max())  # the last time censored
    assert 0.5 < uno_c(y, risk) <= 1.0


def test_survival_auc_leaves_out_lesions_censored_before_the_horizon():
    y = Surv.from_arrays([True, False, True, False, True], [5.0, 10.0, 30.0, 40.0, 20.0])
    risk = np.array([0.9, 0.0, 0.2, 0.1, 0.7])
    # positives: events by 24 (risk .9, .7); negatives: followed beyond 24 (.2, .1)
    assert survival_auc(y, risk, horizon=24) == 1.0
    assert survival_auc(y, -risk, horizon=24) == 0.0


# --------------------------------------------------------------------------- folds


@pytest.mark.parametrize("classifier", [True, False])
def test_group_aware_folds_never_split_a_patient(classifier):
    rng = np.random.default_rng(5)
    patients = np.repeat(np.arange(30), rng.integers(1, 5, 30))
    y = rng.integers(0, 2, len(patients))
    cv = make_cv(5, groups=patients, classifier=classifier, random_state=0)
    seen = set()
    for train, test in cv.split(np.zeros(len(y)), y, patients):
        assert not set(patients[train]) & set(patients[test])
        seen |= set(test)
    assert seen == set(range(len(y)))


class _PatientSpy(ClassifierMixin, BaseEstimator):
    """A classifier whose score fails when a validation patient was also in training."""

    def __init__(self, c=1.0):
        self.c = c

    def fit(self, X, y):
        self.classes_ = np.unique(y)
        self.train_patients_ = set(X[:, 0])
        return self

    def predict_proba(self, X):
        return np.tile([0.5, 0.5], (len(X), 1))

    def score(self, X, y):
        assert not self.train_patients_ & set(X[:, 0]), "inner folds split a patient"
        return self.c


def test_inner_search_keeps_patients_together_and_outer_folds_too():
    rng = np.random.default_rng(6)
    patients = np.repeat(np.arange(24), 3)
    X = np.column_stack([patients, rng.normal(size=len(patients))])
    y = rng.integers(0, 2, len(patients))
    search = GridSearchCV(_PatientSpy(), {"c": [0.1, 1.0]}, cv=3, error_score="raise")
    proba, fold, params, classes = cross_validated_predictions(
        search, X, y, groups=patients, cv=4, random_state=0
    )
    for p in np.unique(patients):
        assert len(set(fold[patients == p])) == 1
    assert params == [{"c": 1.0}] * 4 and proba.shape == (len(y), 2)


def test_groups_reach_the_inner_search_with_metadata_routing_on():
    import sklearn

    X, y = make_classification(60, 6, random_state=0)
    patients = np.repeat(np.arange(20), 3)

    def evaluate():
        result = evaluate_malignancy(
            malignancy_pipeline(features=None), X, y, groups=patients, cv=3,
            n_resamples=20, random_state=0,
        )  # fmt: skip
        return result.metrics["roc_auc"]

    off = evaluate()
    with sklearn.config_context(enable_metadata_routing=True):
        assert evaluate() == off
        # A pipeline whose last step is a search, with its own inner splitter spied on.
        spy = make_pipeline(
            StandardScaler(),
            GridSearchCV(_PatientSpy(), {"c": [0.1, 1.0]}, cv=3, error_score="raise"),
        )
        Xp = np.column_stack([patients, X[:, 0]])
        _, fold, _, _ = cross_validated_predictions(
            spy, Xp, y, groups=patients, cv=4, random_state=0
        )
        for p in np.unique(patients):
            assert len(set(fold[patients == p])) == 1
        curve = label_efficiency_curve(
            spy,
            Xp,
            y,
            cv=3,
            groups=patients,
            fractions=(1.0, 0.5),
            scoring="roc_auc",
            random_state=0,
        )
        assert len(curve) == 6


def test_probability_columns_follow_all_classes_when_a_fold_lacks_one():
    X = np.arange(20, dtype=float)[:, None]
    y = np.array(["a"] * 9 + ["b"] * 9 + ["c"] * 2)
    proba, fold, _, classes = cross_validated_predictions(
        LogisticRegression(), X, y, cv=2, random_state=0
    )
    assert classes.tolist() == ["a", "b", "c"] and proba.shape == (20, 3)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)


# ------------------------------------------------------------------ label efficiency


def test_label_efficiency_curve_has_one_row_per_fold_repeat_and_fraction():
    X, y = make_classification(120, 8, random_state=0)
    patients = np.repeat(np.arange(40), 3)
    curve = label_efficiency_curve(
        LogisticRegression(),
        X,
        y,
        cv=4,
        scoring="roc_auc",
        groups=patients,
        n_repeats=2,
        random_state=0,
    )
    assert list(curve.columns) == ["fraction", "repeat", "fold", "n_train", "score"]
    assert len(curve) == 4 * 2 * 4
    n_train = curve.groupby("fraction")["n_train"].mean()
    assert n_train[1.0] == pytest.approx(90) and n_train[0.1] == pytest.approx(10, abs=1)
    assert n_train.is_monotonic_increasing
    means = curve.groupby("fraction")["score"].mean()
    assert means[1.0] > 0.8 and means[1.0] >= means[0.1] - 0.02


def test_label_efficiency_subsamples_keep_every_class():
    X, y = make_classification(60, 5, n_classes=3, n_informative=3, random_state=0)
    y[:3] = 2  # keep a rare class around
    curve = label_efficiency_curve(
        LogisticRegression(), X, y, fractions=(0.05,), cv=3, random_state=0
    )
    assert (curve["n_train"] >= 3).all()  # at least one lesion of each class


def test_label_efficiency_of_a_survival_model():
    y, risk = _survival_data(90)
    X = np.column_stack([risk + np.random.default_rng(0).normal(0, 0.5, 90), np.ones(90)])
    curve = label_efficiency_curve(
        CoxPHSurvivalAnalysis(alpha=1.0), X, y, fractions=(1.0, 0.5), cv=3, random_state=0
    )
    assert len(curve) == 6 and (curve["score"] > 0.55).all()  # Harrell's C, the model's score


def test_label_efficiency_rejects_bad_fractions():
    with pytest.raises(ValueError, match="fractions"):
        label_efficiency_curve(
            LogisticRegression(), np.zeros((4, 1)), [0, 1, 0, 1], fractions=(0,)
        )


# --------------------------------------------------------------------------- tasks


def test_rotated_heads_predict_like_heads_on_the_standardised_features():
    """The PCA step of the heads changes nothing but speed (L2 penalties are rotation-free)."""
    X, y = make_classification(40, 150, random_state=0)
    rotated = malignancy_pipeline(features=None, tune=False, C=0.05)
    plain = make_pipeline(StandardScaler(), LogisticRegression(C=0.05, tol=1e-10, max_iter=10_000))
    rotated.set_params(head__model__tol=1e-10, head__model__max_iter=10_000)
    np.testing.assert_allclose(
        rotated.fit(X, y).predict_proba(X), plain.fit(X, y).predict_proba(X), atol=1e-5
    )
    ys, _ = _survival_data(40)
    cox = survival_pipeline(features=None, tune=False, alpha=10.0).fit(X, ys)
    cox_plain = make_pipeline(StandardScaler(), CoxPHSurvivalAnalysis(alpha=10.0)).fit(X, ys)
    np.testing.assert_allclose(cox.predict(X), cox_plain.predict(X), rtol=1e-4, atol=1e-6)
    assert isinstance(rotated.named_steps["head"].named_steps["rotate"], PCA)


def test_feature_step_choices():
    from skfmcib import FMCIBTransformer
    from skfmcib.radiomics import RadiomicsTransformer

    assert isinstance(malignancy_pipeline().named_steps["features"], FMCIBTransformer)
    assert isinstance(site_pipeline("radiomics").named_steps["features"], RadiomicsTransformer)
    assert survival_pipeline(None).named_steps["features"] == "passthrough"
    with pytest.raises(ValueError, match="features"):
        malignancy_pipeline("pyradiomics")


def _cohort_like(n_patients=30, seed=0):
    """Features that carry the labels, three lesions per patient."""
    rng = np.random.default_rng(seed)
    patients = np.repeat(np.arange(n_patients), 3)
    n = len(patients)
    site = rng.choice(["lung", "liver", "bone"], n)
    malignant = rng.integers(0, 2, n)
    risk = rng.normal(size=n) + malignant
    time = 20 * rng.exponential(np.exp(-risk))
    censor = rng.uniform(5, 60, n)
    y_surv = Surv.from_arrays(time <= censor, np.minimum(time, censor))
    X = np.column_stack(
        [
            malignant + rng.normal(0, 0.5, n),
            (site == "lung") + rng.normal(0, 0.3, n),
            (site == "bone") + rng.normal(0, 0.3, n),
            risk + rng.normal(0, 0.5, n),
            rng.normal(size=(n, 6)),
        ]
    )
    return X, malignant, site, y_surv, patients


def test_evaluate_malignancy_reports_auc_and_map_grouped_by_patient():
    X, malignant, _, _, patients = _cohort_like()
    result = evaluate_malignancy(
        malignancy_pipeline(features=None),
        X,
        malignant,
        groups=patients,
        n_resamples=200,
        random_state=0,
    )
    auc = result.metrics["roc_auc"]
    in_fold = [result.fold == k for k in range(5)]
    per_fold = [roc_auc_score(malignant[f], result.y_score[f]) for f in in_fold]
    assert auc.estimate == pytest.approx(np.mean(per_fold))  # the cross-validation estimate
    per_fold = [average_precision_score(malignant[f], result.y_score[f]) for f in in_fold]
    assert result.metrics["average_precision"].estimate == pytest.approx(np.mean(per_fold))
    assert 0.7 < auc.low < auc.estimate < auc.high
    for p in np.unique(patients):
        assert len(set(result.fold[patients == p])) == 1
    assert len(result.best_params) == 5 and "model__C" in result.best_params[0]
    frame = result.to_frame()
    assert list(frame["metric"]) == ["roc_auc", "average_precision", "balanced_accuracy"]
    assert (frame["low"] <= frame["estimate"]).all() and (frame["estimate"] <= frame["high"]).all()


def test_missing_labels_are_named_before_anything_is_fitted():
    X, malignant, site, _, _ = _cohort_like()
    with_nan = malignant.astype(float)
    with_nan[[3, 7]] = np.nan
    with pytest.raises(ValueError, match=r"malignancy: 2 of \d+ labels missing .* 3, 7;"):
        evaluate_malignancy(malignancy_pipeline(features=None), X, with_nan)
    with_none = site.astype(object)
    with_none[5] = None
    with pytest.raises(ValueError, match=r"site: 1 of \d+ labels missing .* positions 5;"):
        evaluate_site(site_pipeline(features=None), X, with_none)


def test_evaluate_site_reports_balanced_accuracy_and_map():
    X, _, site, _, patients = _cohort_like(seed=1)
    result = evaluate_site(
        site_pipeline(features=None), X, site, groups=patients, n_resamples=100, random_state=0
    )
    assert result.classes.tolist() == ["bone", "liver", "lung"]
    assert result.y_score.shape == (len(site), 3)
    assert result.metrics["balanced_accuracy"].estimate > 0.7
    assert result.metrics["mean_average_precision"].estimate > 0.7


@pytest.mark.parametrize("tau", [None, 20.0])
def test_evaluate_survival_reports_concordance_and_horizon_auc(tau):
    X, _, _, y, patients = _cohort_like(seed=2)
    # Fold 0 holds no lesion followed beyond 24: its 2-year AUC is undefined, left out.
    with pytest.warns(BootstrapWarning, match=r"survival 2-year AUC: .* 1 fold of 5 \(0\)"):
        result = evaluate_survival(
            survival_pipeline(features=None, tau=tau),
            X,
            y,
            groups=patients,
            horizon=24.0,
            n_resamples=100,
            random_state=0,
        )
    auc = result.metrics["survival_auc"]
    assert auc.folds_left_out == (0,) and auc.incomplete
    per_fold_auc = [
        survival_auc(y[result.fold == k], result.y_score[result.fold == k], horizon=24.0)
        for k in range(1, 5)
    ]
    assert auc.estimate == pytest.approx(np.mean(per_fold_auc))
    assert set(result.metrics) == {"c_index_harrell", "c_index_uno", "survival_auc"}
    assert result.metrics["c_index_harrell"].estimate > 0.6
    per_fold = [harrell_c(y[result.fold == k], result.y_score[result.fold == k]) for k in range(5)]
    assert result.metrics["c_index_harrell"].estimate == pytest.approx(np.mean(per_fold))
    assert [s.label for s in result.specs][2] == "2-year AUC"


def test_compare_results_gives_paired_differences():
    X, malignant, _, _, patients = _cohort_like(seed=3)
    kwargs = dict(groups=patients, cv=3, n_resamples=100, random_state=0)
    full = evaluate_malignancy(malignancy_pipeline(features=None), X, malignant, **kwargs)
    noise = evaluate_malignancy(malignancy_pipeline(features=None), X[:, 4:], malignant, **kwargs)
    diff = compare_results(full, noise, n_resamples=100, random_state=0)
    assert diff["roc_auc"].estimate == pytest.approx(
        full.metrics["roc_auc"].estimate - noise.metrics["roc_auc"].estimate
    )
    assert diff["roc_auc"].low > 0
    with pytest.raises(ValueError, match="same"):
        compare_results(full, evaluate_site(site_pipeline(None), X, malignant, **kwargs))


@pytest.mark.parametrize("seed", range(5))
def test_task_metrics_equal_scikit_learns(seed):
    """The tasks' metrics skip scikit-learn's input checks (speed) but give its numbers."""
    from sklearn.metrics import balanced_accuracy_score

    from skfmcib.tasks import _average_precision, _balanced_accuracy, _roc_auc

    rng = np.random.default_rng(seed)
    n = int(rng.integers(5, 80))
    y = rng.choice(["benign", "malignant"], n)
    y[:2] = ["benign", "malignant"]
    score = np.round(rng.normal(size=n), 1)  # many ties
    assert _roc_auc(y, score, "malignant") == pytest.approx(roc_auc_score(y, score))
    expected_ap = average_precision_score(y, score, pos_label="malignant")
    assert _average_precision(y == "malignant", score) == pytest.approx(expected_ap)
    labels = rng.choice(["lung", "liver", "bone", "kidney"], n)
    pred = rng.choice(["lung", "liver", "bone", "lymph_node"], n)
    pred[0] = "lymph_node"  # a class absent from the labels
    with pytest.warns(UserWarning, match="y_pred contains classes not in y_true"):
        expected = balanced_accuracy_score(labels, pred)
    assert _balanced_accuracy(labels, pred) == pytest.approx(expected)
    with pytest.raises(ValueError):
        _roc_auc(y[y == "benign"], score[y == "benign"], "malignant")


# ------------------------------------------------------------------------- plotting


@pytest.fixture
def pyplot():
    mpl = pytest.importorskip("matplotlib")
    mpl.use("Agg")
    import matplotlib.pyplot as plt

    yield plt
    plt.close("all")


def test_plots_draw_what_they_say(pyplot):
    from skfmcib.plotting import plot_kaplan_meier, plot_label_efficiency, plot_roc

    rng = np.random.default_rng(7)
    y = rng.integers(0, 2, 80)
    ax = plot_roc(y, {"a": y + rng.normal(0, 1, 80), "b": rng.normal(size=80)})
    assert len(ax.lines) == 3 and ax.get_xlabel().startswith("False positive rate")
    ys, risk = _survival_data(80)
    ax = plot_kaplan_meier(ys, risk, n_groups=3)
    labels = ax.get_legend_handles_labels()[1]
    assert labels[0].startswith("risk group 1 of 3 (n = 27") and labels[-1].startswith("log-rank")
    curve = label_efficiency_curve(
        LogisticRegression(), *make_classification(60, 5, random_state=0), random_state=0
    )
    ax = plot_label_efficiency({"m": curve}, metric="accuracy", reference=0.5)
    assert [t.get_text() for t in ax.get_xticklabels()] == ["10", "20", "50", "100"]


def test_plotting_without_matplotlib_names_the_extra(monkeypatch):
    import sys

    from skfmcib.plotting import plot_roc

    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    with pytest.raises(ImportError, match=r"pip install 'skfmcib\[plot\]'"):
        plot_roc([0, 1], {"a": [0.1, 0.9]})


@pytest.mark.parametrize("name", ["evaluation", "tasks", "plotting", "radiomics"])
def test_docstring_examples_run(name, pyplot):
    import doctest
    import importlib

    module = importlib.import_module(f"skfmcib.{name}")
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS)
    assert result.failed == 0 and result.attempted > 0


# ------------------------------------------------------------ small folds, groups, settings


def test_a_fold_undefined_in_a_resample_fails_the_whole_resample():
    # Fold 0 has one positive patient ranked last (AUC 0), folds 1-3 rank perfectly
    # (AUC 1): every resample in which all folds are defined gives 0.75. Averaging the
    # folds left would give 1.0 whenever fold 0 loses its positive.
    y = np.array([1, 0, 0, 0, 0, 0] + [1, 1, 1, 0, 0, 0] * 3)
    s = np.array([0.0, 0.1, 0.2, 0.3, 0.4, 0.5] + [0.9, 0.8, 0.7, 0.3, 0.2, 0.1] * 3)
    fold = np.repeat(np.arange(4), 6)
    with pytest.warns(BootstrapWarning, match=r"roc_auc_score: .* on 40% of the bootstrap"):
        ci = bootstrap_ci(
            roc_auc_score, y, s, groups=np.arange(24), folds=fold, n_resamples=1000,
            method="percentile", random_state=0, strata=None,
        )  # fmt: skip
    assert (ci.estimate, ci.low, ci.high) == (0.75, 0.75, 0.75)
    # Counted as failed: fold 0 loses its positive with probability (5/6)**6 = 0.335, and
    # each other fold one of its classes with 2 / 2**6: 1 - 0.665 * (31/32)**3 = 0.395.
    assert 0.35 < ci.n_failed / 1000 < 0.44


def test_a_basic_interval_is_clipped_to_the_metric_range():
    rng = np.random.default_rng(187)  # 4 folds with 1-2 positives: biased resamples
    per = int(rng.integers(5, 9))
    fold = np.repeat(np.arange(4), per)
    y = np.zeros(4 * per, int)
    for k in range(4):
        y[k * per + rng.choice(per, rng.integers(1, 3), replace=False)] = 1
    s = y * rng.normal(0.8, 1, len(y)) + rng.normal(0, 1, len(y))
    args = (_average_precision, y, s)
    common = dict(folds=fold, n_resamples=400, random_state=0, strata=None)
    with pytest.warns(BootstrapWarning):  # resamples without a positive fail
        free = bootstrap_ci(*args, **common)
    assert free.method == "basic" and free.low < 0  # 2 * estimate - the upper percentile
    with pytest.warns(BootstrapWarning):
        bounded = bootstrap_ci(*args, **common, bounds=(0, 1))
    assert (bounded.low, bounded.high) == (0.0, free.high)


def _patients(n_patients=24, per=3, seed=0):
    rng = np.random.default_rng(seed)
    groups = np.repeat(np.arange(n_patients), per)
    X = rng.normal(size=(n_patients, 8))[groups] + 0.1 * rng.normal(size=(len(groups), 8))
    y = rng.integers(0, 2, n_patients)[groups]
    return X, y, groups


def test_a_splitter_that_ignores_groups_is_refused():
    from sklearn.model_selection import StratifiedKFold

    X, y, groups = _patients()
    ungrouped = StratifiedKFold(4, shuffle=True, random_state=0)
    with pytest.raises(ValueError, match=r"cv=StratifiedKFold.* puts \d+ of the groups"):
        cross_validated_predictions(malignancy_pipeline(features=None), X, y, groups=groups,
                                    cv=ungrouped, random_state=0)  # fmt: skip
    with pytest.raises(ValueError, match=r"the inner search's cv=StratifiedKFold"):
        cross_validated_predictions(malignancy_pipeline(features=None, cv=StratifiedKFold(3)),
                                    X, y, groups=groups, random_state=0)  # fmt: skip
    # label-efficiency curves group the inner search too
    with pytest.raises(ValueError, match=r"the inner search's cv=StratifiedKFold"):
        label_efficiency_curve(malignancy_pipeline(features=None, cv=StratifiedKFold(3)),
                               X, y, groups=groups, fractions=(1.0,), random_state=0)  # fmt: skip
    curve = label_efficiency_curve(malignancy_pipeline(features=None), X, y, groups=groups,
                                   fractions=(1.0, 0.5), cv=3, random_state=0)  # fmt: skip
    assert len(curve) == 6


def test_comparing_results_computed_with_other_settings_is_refused():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(90, 5))
    time = rng.exponential(30 * np.exp(-X[:, 0]))
    y = Surv.from_arrays(rng.random(90) < 0.8, time)
    common = dict(cv=3, n_resamples=20, random_state=0)
    a = evaluate_survival(survival_pipeline(features=None), X, y, horizon=24, **common)
    b = evaluate_survival(survival_pipeline(features=None), X[:, 1:], y, horizon=12, **common)
    with pytest.raises(ValueError, match=r"horizon=24 against horizon=12"):
        compare_results(a, b, n_resamples=20)
    c = evaluate_survival(survival_pipeline(features=None), X[:, 1:], y, horizon=24, **common)
    assert set(compare_results(a, c, n_resamples=20)) == set(a.metrics)


# ------------------------------------------- stratified bootstrap, warnings, bad input


def _rare_class_folds(seed=0):
    """Five folds of 12 samples with one to three negatives each (the demo's 2-year AUC)."""
    rng = np.random.default_rng(seed)
    fold = np.repeat(np.arange(5), 12)
    y = np.ones(60, int)
    for k in range(5):
        y[12 * k + rng.choice(12, rng.integers(1, 4), replace=False)] = 0
    return y, y + rng.normal(0, 1, 60), fold


def test_resamples_within_folds_stay_defined_when_a_class_is_rare():
    """Without strata 60 % of such resamples lose a fold's negatives and were dropped."""
    y, s, fold = _rare_class_folds()
    single = sum((y[fold == k] == 0).sum() == 1 for k in range(5))
    assert single > 0
    with pytest.warns(BootstrapWarning, match=f"{single} class.* carried by a single sample"):
        ci = bootstrap_ci(roc_auc_score, y, s, folds=fold, n_resamples=300, random_state=0)
    assert ci.n_failed == 0 and ci.single_unit_strata == single and ci.incomplete
    assert ci.estimate == pytest.approx(np.mean([roc_auc_score(y[fold == k], s[fold == k])
                                                 for k in range(5)]))  # fmt: skip
    assert ci.low < ci.estimate < ci.high


def test_stratified_patient_resamples_keep_both_classes_in_every_fold():
    from skfmcib.evaluation import _resampler

    rng = np.random.default_rng(1)
    patients = np.repeat(np.arange(20), 3)
    fold = patients % 4
    y = (rng.random(60) < 0.2).astype(int)  # few positives, mixed within patients
    y[[0, 3, 6, 9]] = 1  # at least one positive patient per fold
    draw = _resampler(60, patients, fold, np.random.RandomState(0), strata=y)
    for _ in range(200):
        idx = draw()
        assert np.bincount(fold[idx]).tolist() == [15, 15, 15, 15]  # whole patients
        for k in range(4):
            assert set(y[idx[fold[idx] == k]]) == {0, 1}
    # the resamples still vary
    assert len({tuple(np.sort(draw())) for _ in range(20)}) > 10


def test_a_fold_left_out_of_the_estimate_is_warned_of_and_recorded():
    y, s, fold = _rare_class_folds()
    y[fold == 2] = 1  # fold 2: one class only, its AUC undefined
    with pytest.warns(BootstrapWarning, match=r"^AUC: .* 1 fold of 5 \(2\), left out"):
        ci = bootstrap_ci(roc_auc_score, y, s, folds=fold, n_resamples=50, name="AUC",
                          random_state=0)  # fmt: skip
    assert ci.folds_left_out == (2,) and ci.incomplete


@pytest.mark.filterwarnings("ignore:A single label was found:UserWarning")
def test_a_metric_that_merely_warns_is_not_undefined():
    """scikit-learn's balanced accuracy warns when a fold lacks a predicted class."""
    from sklearn.metrics import balanced_accuracy_score

    rng = np.random.default_rng(0)
    yt = np.r_[np.zeros(40, int), np.ones(17, int), np.full(3, 2)]
    yp = yt.copy()
    yp[rng.choice(60, 12, replace=False)] = rng.integers(0, 3, 12)
    folds = np.arange(60) % 5
    with pytest.warns(UserWarning, match="y_pred contains classes not in y_true") as record:
        per_fold = [balanced_accuracy_score(yt[folds == k], yp[folds == k]) for k in range(5)]
        ci = bootstrap_ci(balanced_accuracy_score, yt, yp, folds=folds, n_resamples=200,
                          random_state=0)  # fmt: skip
    assert ci.estimate == pytest.approx(np.mean(per_fold)) and ci.n_failed == 0
    # shown once by the bootstrap, not once per resample
    assert sum("y_pred contains" in str(w.message) for w in record) <= 1 + len(per_fold)


def test_an_undefined_metric_warning_still_marks_a_resample_undefined():
    from sklearn.exceptions import UndefinedMetricWarning

    def share_of_ones(y, s):
        if s.min() == s.max():
            warnings.warn("one value only", UndefinedMetricWarning, stacklevel=2)
        return float(np.mean(s))

    x = np.r_[np.zeros(4), 1.0]
    with pytest.warns(BootstrapWarning, match="share_of_ones: .* on 3\\d% of the bootstrap"):
        ci = bootstrap_ci(share_of_ones, x, x, strata=None, n_resamples=400, random_state=0)
    assert 0.3 < ci.failed_share < 0.4  # (4/5)**5 = 33 % draw no 1


def test_splitters_whose_test_sets_do_not_partition_the_samples_are_refused():
    from sklearn.model_selection import GroupShuffleSplit, check_cv

    X, y, groups = _patients()
    shuffle = GroupShuffleSplit(n_splits=3, test_size=0.2, random_state=0)
    never = r"does not partition the samples: \d+ of the 72 samples are in no test set"
    with pytest.raises(ValueError, match=never + ".*only work for partitions"):
        evaluate_malignancy(malignancy_pipeline(features=None), X, y, groups=groups,
                            cv=shuffle, n_resamples=10)  # fmt: skip
    twice = [(np.arange(36, 72), np.arange(0, 40)), (np.arange(0, 36), np.arange(30, 72))]
    with pytest.raises(ValueError, match=r"10 of the 72 samples are in more than one test set"):
        cross_validated_predictions(malignancy_pipeline(features=None), X, y, cv=check_cv(twice))


def test_missing_survival_targets_are_named():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(60, 5))
    time = rng.exponential(30, 60)
    time[[5, 9]] = np.nan
    y = np.array(list(zip(rng.random(60) < 0.7, time, strict=True)),
                 dtype=[("event", bool), ("time", float)])  # fmt: skip
    with pytest.raises(ValueError, match=r"survival: 2 of 60 targets missing .* positions 5, 9"):
        evaluate_survival(survival_pipeline(features=None), X, y, n_resamples=5)


def test_a_horizon_beyond_all_follow_up_is_explained():
    X, _, _, y, _ = _cohort_like()
    with pytest.raises(ValueError, match=r"2-year AUC is undefined: no lesion is followed "
                                         r"beyond the horizon 24 \(the longest"):  # fmt: skip
        evaluate_survival(survival_pipeline(features=None), X,
                          Surv.from_arrays(y["event"], np.minimum(y["time"], 20.0)),
                          n_resamples=5)  # fmt: skip
    with pytest.raises(ValueError, match=r"AUC at t = 1e\+06 is undefined: no lesion"):
        evaluate_survival(survival_pipeline(features=None), X, y, horizon=1e6, n_resamples=5)
    with pytest.raises(ValueError, match=r"survival_auc is undefined: no sample is followed"):
        survival_auc(y, np.zeros(len(y)), horizon=1e6)


def test_nan_feature_rows_and_missing_patient_ids_are_named():
    X, y, groups = _patients()
    X[[4, 10]] = np.nan  # as FMCIBTransformer(on_error="nan") leaves failed lesions
    with pytest.raises(ValueError, match=r"malignancy: X has features that are all NaN in 2 "
                                         r"of 72 rows, at positions 4, 10"):  # fmt: skip
        evaluate_malignancy(malignancy_pipeline(features=None), X, y, n_resamples=5)
    # Some NaN in a row is the estimator's to handle (an imputer, here).
    X, y, _ = _patients()
    X[4, 0] = X[10, 2] = np.nan
    imputing = make_pipeline(SimpleImputer(), LogisticRegression())
    assert np.isfinite(
        evaluate_malignancy(imputing, X, y, n_resamples=5).metrics["roc_auc"].estimate
    )
    X[7, 1] = np.inf  # which no imputer takes
    with pytest.raises(ValueError, match=r"X has infinite features in 1 of 72 rows, at "
                                         r"positions 7;"):  # fmt: skip
        evaluate_malignancy(imputing, X, y, n_resamples=5)
    X, y, groups = _patients()
    groups = np.where(np.arange(72) < 3, np.nan, groups)
    for call in (
        lambda: evaluate_malignancy(malignancy_pipeline(features=None), X, y, groups=groups),
        lambda: bootstrap_ci(roc_auc_score, y, X[:, 0], groups=groups, n_resamples=5),
        lambda: label_efficiency_curve(LogisticRegression(), X, y, groups=groups),
    ):
        with pytest.raises(ValueError, match=r"groups: 3 of 72 patient ids missing .* "
                                             r"positions 0, 1, 2;"):  # fmt: skip
            call()


def test_plot_roc_does_not_need_scikit_learn_1_7(pyplot, monkeypatch):
    """scikit-learn 1.6 (the lower bound) has no curve_kwargs in from_predictions."""
    from sklearn.metrics import RocCurveDisplay, roc_curve

    from skfmcib.plotting import plot_roc

    original = RocCurveDisplay.from_predictions.__func__

    def like_1_6(cls, *args, **kwargs):
        if "curve_kwargs" in kwargs:
            raise TypeError("from_predictions() got an unexpected keyword 'curve_kwargs'")
        return original(cls, *args, **kwargs)

    monkeypatch.setattr(RocCurveDisplay, "from_predictions", classmethod(like_1_6))
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 100)
    score = y + rng.normal(0, 1, 100)
    ax = plot_roc(y, {"model": score, "other": -score}, labels={"other": "reversed"})
    assert ax.get_legend_handles_labels()[1] == ["model (AUC = 0.77)", "reversed", "chance"]
    fpr, tpr, _ = roc_curve(y, score)
    assert np.array_equal(ax.lines[0].get_xdata(), fpr)
    assert np.array_equal(ax.lines[0].get_ydata(), tpr)


def test_text_and_categorical_labels_are_stratified():
    y = pd.Series(["benign"] * 8 + ["malignant"] * 4)
    s = np.linspace(0, 1, 12)
    expected = bootstrap_ci(roc_auc_score, (y == "malignant").to_numpy(), s, random_state=0)
    for labels in (y, y.astype("string"), y.astype("category"), y.to_numpy()):
        ci = bootstrap_ci(roc_auc_score, labels, s, random_state=0)
        assert (ci.estimate, ci.low, ci.high) == (expected.estimate, expected.low, expected.high)


def test_a_metrics_warnings_reach_the_caller_when_the_bootstrap_fails():
    def metric(y, s):
        warnings.warn("scores were clipped", UserWarning, stacklevel=2)
        return float("nan")

    with pytest.warns(UserWarning, match="scores were clipped"):
        with pytest.raises(ValueError, match="undefined on the whole sample"):
            bootstrap_ci(metric, [0, 1, 0, 1], [0.1, 0.9, 0.2, 0.8], n_resamples=10)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the warning is an error: it does not hide the failure
        with pytest.raises(ValueError, match="undefined on the whole sample"):
            bootstrap_ci(metric, [0, 1, 0, 1], [0.1, 0.9, 0.2, 0.8], n_resamples=10)


def test_single_unit_warning_without_folds_and_two_dimensional_groups():
    y, s = np.array([0] * 10 + [1]), np.linspace(0, 1, 11)
    with pytest.warns(BootstrapWarning) as caught:
        bootstrap_ci(roc_auc_score, y, s, n_resamples=50, random_state=0)
    text = str(caught[0].message)
    assert "1 class was carried by a single sample" in text and "fold" not in text
    with pytest.raises(ValueError, match=r"groups must be one patient id per sample \(1-D\), "):
        bootstrap_ci(roc_auc_score, y, s, groups=np.zeros((11, 1)), n_resamples=5)
