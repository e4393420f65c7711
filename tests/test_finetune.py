"""Fine-tuning estimators: training really trains, state survives saving, sklearn fits."""

from __future__ import annotations

import copy
import pickle
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.base import clone
from sklearn.model_selection import GridSearchCV, cross_val_score
from sksurv.util import Surv

from skfmcib._training import load_state
from skfmcib.encoder import EncoderConfig
from skfmcib.finetune import FMCIBClassifier, FMCIBSurvivalAnalysis, cox_ph_loss
from skfmcib.weights import load_encoder, save_checkpoint

TINY = {"arch": "resnet10", "widen_factor": 0.125}
FAST = dict(weights=None, arch=TINY, device="cpu", batch_size=8, lr=1e-3, random_state=0)


def make_blobs(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Soft-tissue patches with a bright (label 1) or dark (label 0) central sphere."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 2
    z, y, x = np.ogrid[:50, :50, :50]
    r2 = (z - 25.0) ** 2 + (y - 25.0) ** 2 + (x - 25.0) ** 2
    X = (0.34 + 0.02 * rng.standard_normal((n, 1, 50, 50, 50))).astype(np.float32)
    for i in range(n):
        radius = rng.uniform(6, 12)
        X[i, 0][r2 <= radius**2] += 0.25 if labels[i] else -0.2
    return X, labels


@pytest.fixture(scope="module")
def blobs():
    return make_blobs(12)


def survival_target(labels: np.ndarray, seed: int = 0):
    """Times shorter for label 1 (bright blobs), a third censored."""
    rng = np.random.default_rng(seed)
    time_ = np.where(labels == 1, 5.0, 20.0) + rng.uniform(0, 10, len(labels))
    event = np.arange(len(labels)) % 3 != 0
    return Surv.from_arrays(event=event, time=time_)


# ------------------------------------------------------------------- Cox loss


def _partial_likelihood_by_hand(risk, time_, event):
    total, n_events = 0.0, 0
    for i in range(len(risk)):
        if event[i]:
            at_risk = [j for j in range(len(risk)) if time_[j] >= time_[i]]
            total += risk[i] - np.log(sum(np.exp(risk[j]) for j in at_risk))
            n_events += 1
    return -total / n_events


def test_cox_loss_matches_breslow_partial_likelihood_computed_by_hand():
    risk = np.array([0.3, -1.2, 0.8, 0.05, 1.5, -0.4])
    time_ = np.array([4.0, 2.0, 4.0, 7.0, 1.0, 4.0])  # a three-way tie at t=4
    event = np.array([1, 1, 0, 1, 1, 1], dtype=bool)
    expected = _partial_likelihood_by_hand(risk, time_, event)
    got = cox_ph_loss(torch.tensor(risk), torch.tensor(time_), torch.tensor(event))
    assert float(got) == pytest.approx(expected, rel=1e-12)
    # order of the samples does not matter
    perm = np.array([5, 3, 0, 4, 2, 1])
    got = cox_ph_loss(
        torch.tensor(risk[perm]), torch.tensor(time_[perm]), torch.tensor(event[perm])
    )
    assert float(got) == pytest.approx(expected, rel=1e-12)


def test_cox_loss_gradient_pushes_early_events_up():
    risk = torch.zeros(3, requires_grad=True)
    cox_ph_loss(risk, torch.tensor([1.0, 2.0, 3.0]), torch.tensor([1, 1, 0])).backward()
    assert risk.grad[0] < 0 < risk.grad[2]  # gradient descent raises the earliest risk


def test_cox_loss_without_events_is_zero_and_differentiable():
    risk = torch.randn(4, requires_grad=True)
    loss = cox_ph_loss(risk, torch.arange(4.0), torch.zeros(4, dtype=torch.bool))
    loss.backward()
    assert float(loss.detach()) == 0.0 and torch.equal(risk.grad, torch.zeros(4))


# ------------------------------------------------------------- training works


def test_fine_tuning_changes_weights_and_lowers_loss_on_a_repeated_batch(blobs, start_checkpoint):
    X, y = blobs[0][:8], blobs[1][:8]
    start, _ = load_encoder(start_checkpoint)
    clf = FMCIBClassifier(
        **{**FAST, "weights": str(start_checkpoint)},
        max_epochs=6,
        augment=False,
        lr_schedule="constant",
    ).fit(X, y)
    losses = [h["train_loss"] for h in clf.history_]
    assert len(losses) == 6 and losses[-1] < 0.5 * losses[0]
    before, after = start.state_dict(), clf.encoder_.state_dict()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert "conv1.weight" in changed and "layer4.0.conv2.weight" in changed


def test_classifier_separates_bright_from_dark_lesions(blobs):
    X, y = blobs
    clf = FMCIBClassifier(**{**FAST, "lr": 3e-3}, max_epochs=8, lr_schedule="constant")
    clf.fit(X[:8], y[:8])
    assert clf.score(X[8:], y[8:]) == 1.0
    proba = clf.predict_proba(X)
    assert proba.shape == (12, 2) and np.allclose(proba.sum(1), 1.0)


def test_string_labels_and_balanced_class_weight(blobs):
    X, y = blobs
    names = np.where(y == 1, "malignant", "benign")
    clf = FMCIBClassifier(**FAST, max_epochs=1, class_weight="balanced").fit(X[:7], names[:7])
    assert list(clf.classes_) == ["benign", "malignant"]
    assert set(clf.predict(X)) <= {"benign", "malignant"}


def test_balanced_class_weight_weighs_every_lesion_whatever_its_batch(blobs):
    # One lesion per batch: the class weight must still scale its loss (a weighted mean
    # over the batch would divide it out again).
    X, y = blobs
    X, y = X[:8], np.array([0] * 6 + [1] * 2)
    kw = dict(FAST, batch_size=1, max_epochs=1, lr=1e-2, optimizer="sgd", augment=False)
    plain = FMCIBClassifier(**kw).fit(X, y)
    balanced = FMCIBClassifier(**kw, class_weight="balanced").fit(X, y)
    np.testing.assert_allclose(balanced._class_weights.numpy(), [8 / 12, 8 / 4])
    assert np.abs(balanced.predict_proba(X) - plain.predict_proba(X)).max() > 1e-4
    logits, target = torch.tensor([[0.3, -0.2], [0.1, 0.4]]), torch.tensor([1, 0])
    by_hand = torch.nn.functional.cross_entropy(logits, target, reduction="none")
    by_hand = (balanced._class_weights[target] * by_hand).mean()
    torch.testing.assert_close(balanced._loss(logits, target), by_hand)


@pytest.fixture(scope="module")
def start_checkpoint(tmp_path_factory):
    """A random tiny encoder saved as a checkpoint, to fine-tune from."""
    encoder, _ = load_encoder(None, config=EncoderConfig(**TINY), random_state=3)
    return save_checkpoint(encoder, tmp_path_factory.mktemp("start") / "start.pt")


def test_freeze_encoder_keeps_encoder_weights_and_statistics(blobs, start_checkpoint):
    X, y = blobs
    start, _ = load_encoder(start_checkpoint)
    clf = FMCIBClassifier(
        **{**FAST, "weights": str(start_checkpoint)}, max_epochs=2, freeze="encoder"
    )
    clf.fit(X, y)
    for key, value in start.state_dict().items():
        assert torch.equal(value, clf.encoder_.state_dict()[key]), key
    # the head did learn: a run with a negligible learning rate ends elsewhere
    idle = FMCIBClassifier(**{**FAST, "weights": str(start_checkpoint), "lr": 1e-12}, max_epochs=2)
    assert not torch.equal(clf.head_[0].weight, idle.fit(X, y).head_[0].weight)


def test_freeze_first_stages_fixes_only_those(blobs, start_checkpoint):
    X, y = blobs
    start, _ = load_encoder(start_checkpoint)
    clf = FMCIBClassifier(**{**FAST, "weights": str(start_checkpoint)}, max_epochs=2, freeze=2)
    clf.fit(X, y)
    before, after = start.state_dict(), clf.encoder_.state_dict()
    for key in before:
        same = torch.equal(before[key], after[key])
        if key.startswith(("conv1.", "bn1.", "layer1.", "layer2.")):
            assert same, key
        elif key.endswith(("weight", "running_mean")):
            assert not same, key


def test_early_stopping_restores_the_best_epoch(tmp_path, blobs):
    X, y = blobs
    clf = FMCIBClassifier(
        **{**FAST, "lr": 1e-2},
        max_epochs=30,
        validation_fraction=0.34,
        n_iter_no_change=2,
        checkpoint_dir=tmp_path,
    ).fit(X, y)
    valid = [h["valid_loss"] for h in clf.history_]
    assert clf.n_iter_ < 30 and clf.n_iter_ == clf.best_epoch_ + 2
    assert clf.best_epoch_ == int(np.argmin(valid)) + 1
    state = load_state(clf.checkpoint_path_)
    assert state["stopped"] and len(state["valid_index"]) == 5
    for key, value in state["best_state"].items():
        if key.startswith("encoder."):
            assert torch.equal(value, clf.encoder_.state_dict()[key[len("encoder.") :]]), key


def test_verbose_prints_one_line_per_epoch(blobs, capsys):
    X, y = blobs
    FMCIBClassifier(**FAST, max_epochs=2, verbose=1, validation_fraction=0.25).fit(X, y)
    out = capsys.readouterr().out.splitlines()
    assert [line.split()[:2] for line in out] == [["epoch", "1/2"], ["epoch", "2/2"]]
    assert "train_loss" in out[0] and "valid_loss" in out[0]


def test_bf16_autocast_trains(blobs):
    X, y = blobs
    clf = FMCIBClassifier(**FAST, max_epochs=1, precision="bf16").fit(X[:4], y[:4])
    assert np.isfinite(clf.history_[0]["train_loss"])
    assert clf.predict_proba(X[:2]).dtype == np.float64


# ----------------------------------------------------------------- persistence


def test_save_and_load_give_identical_outputs(tmp_path, blobs):
    from skfmcib.transformer import FMCIBTransformer

    X, y = blobs
    clf = FMCIBClassifier(**FAST, max_epochs=2).fit(X, y)
    path = clf.save(tmp_path / "clf.pt")
    again = FMCIBClassifier.load(path, device="cpu")
    np.testing.assert_array_equal(again.predict_proba(X), clf.predict_proba(X))
    np.testing.assert_array_equal(again.classes_, clf.classes_)
    # the file is an ordinary encoder checkpoint: the transformer reads it as is
    features = FMCIBTransformer(weights=str(path), device="cpu").fit().transform(X)
    with torch.no_grad():
        expected = clf.encoder_(torch.from_numpy(X)).numpy()
    np.testing.assert_allclose(features, expected, rtol=1e-5, atol=1e-6)
    # ... and fine-tuning can start from it
    more = FMCIBClassifier(**{**FAST, "weights": str(path)}, max_epochs=1).fit(X, y)
    assert more.weights_info_.digest == again.weights_info_.digest
    with pytest.raises(ValueError, match="not a saved FMCIBSurvivalAnalysis"):
        FMCIBSurvivalAnalysis.load(path)
    with pytest.raises(TypeError, match="load sets head from the file"):
        FMCIBClassifier.load(path, head="linear")


def test_load_gives_back_the_saved_parameters(tmp_path, blobs):
    X, y = blobs
    clf = FMCIBClassifier(
        **{**FAST, "batch_size": 4}, max_epochs=1, coordinate_system="RAS", checkpoint_dir=tmp_path
    ).fit(X, y)
    again = FMCIBClassifier.load(clf.save(tmp_path / "clf.pt"))
    for name in ("coordinate_system", "batch_size", "lr", "max_epochs", "random_state"):
        assert again.get_params()[name] == clf.get_params()[name], name
    # the file holds the architecture; where it ran stays where it ran
    assert again.arch is None and again.device == "auto" and again.checkpoint_dir is None
    assert FMCIBClassifier.load(tmp_path / "clf.pt", batch_size=2).batch_size == 2


def test_a_loaded_or_fine_tuned_model_does_not_follow_its_file(tmp_path, blobs):
    X, y = blobs
    encoder, _ = load_encoder(None, config=EncoderConfig(**TINY), random_state=3)
    start_checkpoint = save_checkpoint(encoder, tmp_path / "start.pt")
    clf = FMCIBClassifier(**FAST, max_epochs=1).fit(X, y)
    path = clf.save(tmp_path / "clf.pt")
    loaded = FMCIBClassifier.load(path, device="cpu")
    frozen = FMCIBClassifier(
        **{**FAST, "weights": str(start_checkpoint)}, freeze="encoder", max_epochs=1
    ).fit(X, y)
    before = loaded.predict_proba(X), frozen.predict_proba(X)
    other = FMCIBClassifier(**{**FAST, "random_state": 5}, max_epochs=1).fit(X, y)
    other.save(tmp_path / "other.pt")
    shutil.copyfile(tmp_path / "other.pt", path)  # rewritten in place
    shutil.copyfile(tmp_path / "other.pt", start_checkpoint)
    np.testing.assert_array_equal(loaded.predict_proba(X), before[0])
    np.testing.assert_array_equal(frozen.predict_proba(X), before[1])
    path.write_bytes(b"")  # cut short: a file still read would end the process
    np.testing.assert_array_equal(loaded.predict_proba(X), before[0])


def test_a_refit_that_fails_leaves_the_fitted_classifier_as_it_was(tmp_path, blobs):
    X, y = blobs
    clf = FMCIBClassifier(**FAST, max_epochs=1).fit(X, y)
    before = clf.predict(X)
    labels = np.array(list("abcd"))[np.arange(len(y)) % 4]
    with pytest.raises(FileNotFoundError):
        clf.set_params(weights=str(tmp_path / "absent.pt")).fit(X, labels)
    np.testing.assert_array_equal(clf.classes_, [0, 1])
    np.testing.assert_array_equal(clf.predict(X), before)


def test_load_restores_the_best_epoch_and_names_a_damaged_file(tmp_path, blobs):
    X, y = blobs
    clf = FMCIBClassifier(**FAST, max_epochs=3, validation_fraction=0.5, n_iter_no_change=3)
    clf.fit(X, y)
    path = clf.save(tmp_path / "clf.pt")
    assert FMCIBClassifier.load(path).best_epoch_ == clf.best_epoch_ is not None
    checkpoint = torch.load(path, weights_only=True)
    for name, change in (
        ("no 'classes' entry", lambda c: c.pop("classes")),
        ("Sequential", lambda c: c["head_state_dict"].popitem()),
        ("max_epochs must be", lambda c: c["params"].update(max_epochs="x")),
        ("parameters this FMCIBClassifier does not have \\(bogus\\): written by another",
         lambda c: c["params"].update(bogus=1)),
    ):  # fmt: skip
        damaged = copy.deepcopy(checkpoint)
        change(damaged)
        torch.save(damaged, tmp_path / "damaged.pt")
        with pytest.raises(ValueError, match=rf"damaged\.pt: .*{name}"):
            FMCIBClassifier.load(tmp_path / "damaged.pt")
    # The caller's own mistakes are the caller's, not the file's.
    with pytest.raises(ValueError, match="^Invalid parameter 'devcie'"):
        FMCIBClassifier.load(path, devcie="cpu")
    with pytest.raises(ValueError, match="^batch_size must be a positive integer"):
        FMCIBClassifier.load(path, batch_size=0)


def test_a_damaged_training_state_is_named(tmp_path, blobs):
    X, y = blobs
    params = {**FAST, "max_epochs": 1, "checkpoint_dir": str(tmp_path)}
    FMCIBClassifier(**params).fit(X, y)
    (state,) = tmp_path.glob("*.pt")
    state.write_bytes(state.read_bytes()[: state.stat().st_size // 3])
    with pytest.raises(ValueError, match=rf"{state.name}: cannot read this training state .*"
                                         r"delete the file, or pass resume=False"):  # fmt: skip
        FMCIBClassifier(**params).fit(X, y)
    assert FMCIBClassifier(**params, resume=False).fit(X, y).n_iter_ == 1


def test_random_state_generators_are_told_apart_in_the_run_id(tmp_path, blobs):
    X, y = blobs
    # Starting weights from a file: the same digest whatever the seeds.
    start = save_checkpoint(load_encoder(None, config=EncoderConfig(**TINY))[0], tmp_path / "w.pt")
    params = {**FAST, "weights": str(start), "max_epochs": 1, "checkpoint_dir": tmp_path}
    one = FMCIBClassifier(**{**params, "random_state": np.random.RandomState(1)}).fit(X, y)
    two = FMCIBClassifier(**{**params, "random_state": np.random.RandomState(2)}).fit(X, y)
    assert one.checkpoint_path_ != two.checkpoint_path_
    again = FMCIBClassifier(**{**params, "random_state": np.random.RandomState(1)}).fit(X, y)
    assert again.checkpoint_path_ == one.checkpoint_path_  # resumed after a restart
    np.testing.assert_array_equal(again.predict_proba(X), one.predict_proba(X))


def test_pickled_classifier_keeps_its_trained_weights(blobs):
    X, y = blobs
    clf = FMCIBClassifier(**FAST, max_epochs=1).fit(X, y)
    again = pickle.loads(pickle.dumps(clf))
    np.testing.assert_array_equal(again.predict_proba(X), clf.predict_proba(X))


def test_survival_save_load_and_survival_functions(tmp_path, blobs):
    X, labels = blobs
    y = survival_target(labels)
    est = FMCIBSurvivalAnalysis(**FAST, max_epochs=2).fit(X, y)
    again = FMCIBSurvivalAnalysis.load(est.save(tmp_path / "surv.pt"), device="cpu")
    np.testing.assert_array_equal(again.predict(X), est.predict(X))
    surv = est.predict_survival_function(X[:3], return_array=True)
    assert surv.shape == (3, len(est.unique_times_))
    np.testing.assert_array_equal(again.predict_survival_function(X[:3], return_array=True), surv)
    assert np.all(np.diff(surv, axis=1) <= 0)


def _last_linear(head: torch.nn.Module) -> torch.nn.Linear:
    return [m for m in head.modules() if isinstance(m, torch.nn.Linear)][-1]


def test_survival_functions_do_not_change_with_a_shift_of_every_log_risk(blobs):
    X, labels = blobs
    y = survival_target(labels)
    est = FMCIBSurvivalAnalysis(**FAST, max_epochs=1).fit(X, y)
    before = est.predict_survival_function(X[:4], return_array=True)
    with torch.no_grad():  # log-risks beyond exp's range (about 709): 720 more for all
        _last_linear(est.head_).bias += 720.0
        target, *_ = est._prepare_targets(X, y)
        est._after_fit(np.asarray(X, dtype=np.float32), target)
    after = est.predict_survival_function(X[:4], return_array=True)
    assert np.isfinite(after).all()
    # Equal but for float32 rounding of the network's outputs near 720 (6e-5 a step).
    np.testing.assert_allclose(after, before, atol=1e-4)


def test_a_validation_part_without_events_is_refused_before_training(blobs):
    X, labels = blobs
    y = survival_target(labels)
    y["event"][:] = False
    y["event"][[0, 1]] = True  # 2 events of 12: a held-out sixth holds none
    est = FMCIBSurvivalAnalysis(**FAST, max_epochs=3, validation_fraction=0.15)
    with pytest.raises(ValueError, match=r"holds out 2 lesions of 12 with 0 events"):
        est.fit(X, y)


# ---------------------------------------------------------------------- resume

# A training process that dies (os._exit, as under kill -9) while writing the state of
# its third epoch, leaving a half-written temporary file behind.
_CHILD = """
import os, sys
import numpy as np, torch
from skfmcib.finetune import FMCIBClassifier

real_save, calls = torch.save, []


def save_then_die(obj, path, *args, **kwargs):
    calls.append(path)
    if len(calls) == 3:
        with open(path, "wb") as fh:
            fh.write(b"half a checkpoint")
        os._exit(9)
    return real_save(obj, path, *args, **kwargs)


torch.save = save_then_die
# The parent's thread count: sums split over other thread counts round differently.
torch.set_num_threads(int(sys.argv[3]))
X, y = np.load(sys.argv[1]), np.load(sys.argv[2])
FMCIBClassifier(**{params}).fit(X, y)
"""


def test_interrupted_training_resumes_to_the_uninterrupted_result(tmp_path, blobs, capsys):
    X, y = blobs[0][:4], blobs[1][:4]
    np.save(tmp_path / "X.npy", X)
    np.save(tmp_path / "y.npy", y)
    params = {**FAST, "batch_size": 2, "max_epochs": 5, "checkpoint_dir": str(tmp_path / "ck")}
    script = tmp_path / "child.py"
    script.write_text(textwrap.dedent(_CHILD).replace("{params}", repr(params)))
    child = subprocess.run(
        [
            sys.executable,
            str(script),
            str(tmp_path / "X.npy"),
            str(tmp_path / "y.npy"),
            str(torch.get_num_threads()),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert child.returncode == 9, child.stderr[-3000:]
    (state_file,) = (tmp_path / "ck").glob("*.pt")  # the state of epoch 2, intact
    assert load_state(state_file)["epoch"] == 2
    assert len(list((tmp_path / "ck").glob(".*.tmp"))) == 1  # the dead write

    resumed = FMCIBClassifier(**{**params, "verbose": 1}).fit(X, y)
    assert "after epoch 2" in capsys.readouterr().out
    assert len(resumed.history_) == 5
    straight = FMCIBClassifier(**{**params, "checkpoint_dir": None}).fit(X, y)
    assert resumed.history_ == [
        {**h, "time": r["time"]} for h, r in zip(straight.history_, resumed.history_, strict=True)
    ]
    for key, value in straight.encoder_.state_dict().items():
        assert torch.equal(value, resumed.encoder_.state_dict()[key]), key
    np.testing.assert_array_equal(resumed.predict_proba(X), straight.predict_proba(X))


def test_finished_run_is_reloaded_not_retrained(tmp_path, blobs, capsys):
    X, y = blobs
    params = {**FAST, "max_epochs": 1, "checkpoint_dir": tmp_path, "verbose": 1}
    first = FMCIBClassifier(**params).fit(X, y)
    capsys.readouterr()
    second = FMCIBClassifier(**params).fit(X, y)
    assert capsys.readouterr().out.splitlines() == [
        f"resuming from {first.checkpoint_path_} after epoch 1"
    ]
    np.testing.assert_array_equal(second.predict_proba(X), first.predict_proba(X))
    # other data: another state file, trained from scratch
    FMCIBClassifier(**params).fit(X[:10], y[:10])
    assert len(list(tmp_path.glob("*.pt"))) == 2
    # resume=False starts over
    third = FMCIBClassifier(**{**params, "resume": False}).fit(X, y)
    assert "resuming" not in capsys.readouterr().out
    assert third.history_[0]["train_loss"] == first.history_[0]["train_loss"]


# --------------------------------------------------------------- scikit-learn


def test_clone_and_params_are_stored_as_given():
    rs = np.random.RandomState(0)
    clf = FMCIBClassifier(weights=None, arch=TINY, random_state=rs, freeze=2)
    params = clf.get_params()
    assert params["random_state"] is rs and params["arch"] is TINY
    cloned = clone(clf)
    assert cloned.get_params()["arch"] == TINY and cloned.freeze == 2
    assert FMCIBSurvivalAnalysis().head == "linear" and FMCIBClassifier().head == "mlp"


def test_classifier_in_cross_val_score_and_grid_search(blobs):
    X, y = blobs
    base = FMCIBClassifier(**FAST, max_epochs=1)
    scores = cross_val_score(base, X, y, cv=2)
    assert scores.shape == (2,) and np.all((scores >= 0) & (scores <= 1))
    search = GridSearchCV(base, {"head": ["mlp", "linear"]}, cv=2).fit(X, y)
    assert search.best_params_["head"] in ("mlp", "linear")
    assert search.best_estimator_.head_spec_["kind"] == search.best_params_["head"]


def test_survival_in_grid_search(blobs):
    X, labels = blobs
    y = survival_target(labels)
    base = FMCIBSurvivalAnalysis(**FAST, max_epochs=1)
    search = GridSearchCV(base, {"lr": [1e-3, 1e-4]}, cv=2).fit(X, y)
    assert 0.0 <= search.best_score_ <= 1.0
    risk = search.predict(X)
    assert risk.shape == (12,) and np.all(np.isfinite(risk))
    assert 0.0 <= search.score(X, y) <= 1.0


def test_survival_rejects_plain_targets(blobs):
    X, labels = blobs
    with pytest.raises(ValueError, match="structured array"):
        FMCIBSurvivalAnalysis(**FAST, max_epochs=1).fit(X, labels)


def test_no_target_is_named_as_scikit_learn_names_it(blobs):
    X, _ = blobs
    with pytest.raises(ValueError, match="requires y to be passed, but the target y is None"):
        FMCIBClassifier(**FAST, max_epochs=1).fit(X, None)


def test_one_class_is_named_plainly(blobs):
    X, _ = blobs
    with pytest.raises(ValueError, match=r"only one class: 1$"):
        FMCIBClassifier(**FAST, max_epochs=1).fit(X, np.ones(len(X), dtype=np.int64))


def test_non_finite_patches_are_refused(blobs):
    X, y = blobs
    bad = np.array(X, dtype=np.float32, copy=True)
    bad[2].flat[1000] = np.nan
    with pytest.raises(ValueError, match=r"1 of 12 patches .* \(patch 2\)"):
        FMCIBClassifier(**FAST, max_epochs=1).fit(bad, y)
    with pytest.raises(ValueError, match="NaN or infinite"):
        FMCIBSurvivalAnalysis(**FAST, max_epochs=1).fit(bad, survival_target(y))


def test_lesion_table_input(tmp_path):
    import SimpleITK as sitk

    rows = []
    for k, hu in enumerate((-200, 200)):
        arr = np.full((60, 60, 60), 40, dtype=np.int16)
        arr[0, :4, :4] = -1000  # air, as any CT has
        arr[20:30, 20:30, 20:30] = hu
        arr[35:45, 35:45, 35:45] = -hu
        img = sitk.GetImageFromArray(arr)
        path = tmp_path / f"ct{k}.nii.gz"
        sitk.WriteImage(img, str(path))
        rows += [
            (str(path), 25.0, 25.0, 25.0, int(hu > 0)),
            (str(path), 40.0, 40.0, 40.0, int(hu < 0)),
        ]
    table = pd.DataFrame(rows, columns=["image_path", "coordX", "coordY", "coordZ", "label"])
    clf = FMCIBClassifier(**FAST, max_epochs=1).fit(table, table["label"])
    assert clf.predict(table).shape == (4,)
    # RAS coordinates of the same points read the same patches
    ras = table.assign(coordX=-table["coordX"], coordY=-table["coordY"])
    clf.set_params(coordinate_system="RAS")
    np.testing.assert_array_equal(
        clf.predict_proba(ras), clf.set_params(coordinate_system="LPS").predict_proba(table)
    )


@pytest.mark.parametrize(
    ("param", "value"),
    [
        ("max_epochs", 0),
        ("batch_size", 1.5),
        ("lr", -1.0),
        ("optimizer", "adam"),
        ("lr_schedule", "step"),
        ("validation_fraction", 1.0),
        ("freeze", 5),
        ("freeze", "all"),
        ("head", "transformer"),
        ("precision", "fp8"),
        ("coordinate_system", "RAI"),
    ],
)
def test_invalid_parameters_are_rejected_at_fit(param, value, blobs):
    X, y = blobs
    clf = FMCIBClassifier(**FAST).set_params(**{param: value})
    with pytest.raises(ValueError, match=param if param != "head" else "head"):
        clf.fit(X, y)


def test_unfitted_estimator_refuses_to_predict(blobs):
    from sklearn.exceptions import NotFittedError

    with pytest.raises(NotFittedError):
        FMCIBClassifier().predict(blobs[0])


def test_diverging_training_is_an_error_not_a_model_of_nan(blobs):
    X, y = blobs
    clf = FMCIBClassifier(**{**FAST, "lr": 1e12}, max_epochs=2)
    with pytest.raises(ValueError, match=r"training diverged: the loss is nan at epoch 1"):
        clf.fit(X, y)
    assert not hasattr(clf, "history_")


def test_a_diverged_loss_in_reduced_precision_names_the_precision():
    from skfmcib import _training

    with pytest.raises(ValueError, match=r"precision='bf16' may be the cause: try 'fp32'"):
        _training.check_finite_loss(float("nan"), 2, 3, 1e-4, "bf16")
    with pytest.raises(ValueError, match=r"\(learning rate 0\.0001\); lower lr") as info:
        _training.check_finite_loss(float("inf"), 2, 3, 1e-4)
    assert "precision" not in str(info.value)
