"""FMCIBTransformer: reference features, scikit-learn rules, pickling and bad input."""

from __future__ import annotations

import gc
import pickle
import runpy
import warnings

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import patch_transformer_expected_failures, write_image
from sklearn.base import clone
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.estimator_checks import parametrize_with_checks

from skfmcib import FMCIBTransformer, load_patches
from skfmcib.patches import RowWarning
from skfmcib.table import RowError
from skfmcib.weights import CheckpointError, save_checkpoint

TINY = {"arch": "resnet10", "widen_factor": 0.25}


def tiny(**kwargs) -> FMCIBTransformer:
    params = dict(weights=None, arch=TINY, random_state=0, device="cpu")
    params.update(kwargs)
    return FMCIBTransformer(**params)


@pytest.fixture
def lesion_table(tmp_path):
    rng = np.random.default_rng(1)
    rows = []
    for k in range(3):
        hu = rng.normal(-300, 300, size=(48, 80, 80)).astype(np.int16)
        path = write_image(tmp_path / f"ct{k}.nii.gz", hu, spacing=(1.0, 1.0, 2.0))
        for _ in range(2):
            seed = rng.uniform([30, 30, 40], [50, 50, 56])
            rows.append((str(path), *seed))
    return pd.DataFrame(rows, columns=["image_path", "coordX", "coordY", "coordZ"])


# --- parity with the reference package -------------------------------------------------


@pytest.fixture(scope="module")
def reference_checkpoint(tmp_path_factory):
    from conftest import shared_data_dir

    data = shared_data_dir()
    if data is None:
        pytest.skip("real-CT data not found: set SKFMCIB_SHARED_DATA or place ../shared/data")
    make = runpy.run_path(str(data / "fixtures" / "make_weights.py"))["make"]
    path = tmp_path_factory.mktemp("weights") / "fmcib_seed2024.torch"
    with warnings.catch_warnings():
        # The script leaves its spec file for the garbage collector to close.
        warnings.simplefilter("ignore", ResourceWarning)
        make(str(path), seed=2024)
        gc.collect()
    return path


@pytest.mark.slow
def test_features_match_reference(shared_data, reference_checkpoint):
    ref = np.load(shared_data / "fixtures" / "reference_outputs.npz")
    table = pd.read_csv(shared_data / "ct" / "seeds.csv")
    table["image_path"] = [str(shared_data / "ct" / p) for p in table["image_path"]]
    fmcib = FMCIBTransformer(weights=reference_checkpoint, device="cpu")
    # The reference's own patches through our encoder: the network is the same.
    from_patches = fmcib.fit(None).transform(ref["patches"])
    rel = np.abs(from_patches - ref["features"]).max() / np.abs(ref["features"]).max()
    assert rel < 1e-5, rel
    # End to end from the CT for interior lesions (border rows are centred by design).
    interior = (table["case"] == "interior").to_numpy()
    feats = fmcib.transform(table[interior])
    assert feats.shape == (interior.sum(), 4096) and feats.dtype == np.float32
    rel = np.abs(feats - ref["features"][interior]).max() / np.abs(ref["features"]).max()
    assert rel < 1e-5, rel


# --- basic behaviour on generated data --------------------------------------------------


def test_table_and_patch_inputs_give_the_same_features(lesion_table):
    fmcib = tiny().fit(lesion_table)
    from_table = fmcib.transform(lesion_table)
    patches = load_patches(lesion_table)
    assert from_table.shape == (6, 128) and from_table.dtype == np.float32
    np.testing.assert_allclose(from_table, fmcib.transform(patches), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(
        from_table, fmcib.transform(patches[:, 0].reshape(6, -1)), rtol=1e-5, atol=1e-6
    )
    # Batching does not change the numbers.
    np.testing.assert_allclose(
        from_table, tiny(batch_size=1).fit().transform(lesion_table), rtol=1e-5, atol=1e-6
    )


def test_random_weights_are_reproducible_and_seeded(lesion_table):
    a = tiny(random_state=3).fit().transform(lesion_table)
    b = tiny(random_state=3).fit().transform(lesion_table)
    c = tiny(random_state=4).fit().transform(lesion_table)
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


def test_feature_names_and_pandas_output(lesion_table):
    fmcib = tiny().fit()
    names = fmcib.get_feature_names_out()
    assert names[0] == "fmcib_0" and names[-1] == "fmcib_127" and len(names) == 128
    lesion_table.index = [f"lesion{i}" for i in range(len(lesion_table))]
    out = fmcib.set_output(transform="pandas").transform(lesion_table)
    assert isinstance(out, pd.DataFrame)
    assert list(out.columns) == list(names)
    assert list(out.index) == list(lesion_table.index)


def test_pipeline_with_logistic_regression_cross_validates(lesion_table):
    table = pd.concat([lesion_table] * 2, ignore_index=True)
    y = np.tile([0, 1], len(table) // 2)
    pipe = make_pipeline(tiny(), StandardScaler(), LogisticRegression(max_iter=200))
    scores = cross_val_score(pipe, table, y, cv=2)
    assert scores.shape == (2,) and np.all((scores >= 0) & (scores <= 1))


def test_clone_keeps_parameters_and_drops_state(lesion_table):
    fmcib = tiny(batch_size=3, precision="bf16").fit()
    twin = clone(fmcib)
    assert twin.get_params() == fmcib.get_params()
    assert not hasattr(twin, "weights_info_")


# --- pickling -----------------------------------------------------------------------------


def test_pickle_stores_where_weights_came_from_not_the_weights(tmp_path, lesion_table):
    net = tiny().fit().encoder_
    ckpt = tmp_path / "enc.torch"
    save_checkpoint(net, ckpt)
    fmcib = FMCIBTransformer(weights=ckpt, device="cpu").fit()
    expected = fmcib.transform(lesion_table)
    blob = pickle.dumps(fmcib)
    assert len(blob) < 20_000, len(blob)  # the checkpoint itself is ~1 MB
    restored = pickle.loads(blob)
    np.testing.assert_array_equal(restored.transform(lesion_table), expected)
    # A changed file is noticed, never silently used.
    stale = pickle.loads(blob)
    save_checkpoint(tiny(random_state=9).fit().encoder_, ckpt)
    with pytest.raises(RuntimeError, match="changed since this transformer was fitted"):
        stale.transform(lesion_table)


def test_pickle_with_a_relative_weights_path_works_from_another_directory(
    tmp_path, lesion_table, monkeypatch
):
    fitted_in, elsewhere = tmp_path / "fitted_in", tmp_path / "elsewhere"
    fitted_in.mkdir()
    elsewhere.mkdir()
    save_checkpoint(tiny().fit().encoder_, fitted_in / "enc.torch")
    monkeypatch.chdir(fitted_in)
    fmcib = FMCIBTransformer(weights="enc.torch", device="cpu").fit()
    expected = fmcib.transform(lesion_table)
    blob = pickle.dumps(fmcib)
    # Another file of the same name where the pickle is loaded is not used either.
    save_checkpoint(tiny(random_state=9).fit().encoder_, elsewhere / "enc.torch")
    monkeypatch.chdir(elsewhere)
    restored = pickle.loads(blob)
    assert restored.weights == "enc.torch"  # the parameter is kept as given
    np.testing.assert_array_equal(restored.transform(lesion_table), expected)


def test_pickle_of_random_weights_reinitialises_identically(lesion_table):
    fmcib = tiny(random_state=None).fit()
    expected = fmcib.transform(lesion_table)
    blob = pickle.dumps(fmcib)
    assert len(blob) < 20_000
    np.testing.assert_array_equal(pickle.loads(blob).transform(lesion_table), expected)


# --- bad input and parameters ---------------------------------------------------------------


def test_bad_row_raises_or_becomes_nan(lesion_table, tmp_path):
    table = lesion_table.copy()
    table.loc[2, "image_path"] = str(tmp_path / "absent.nii.gz")
    table.loc[4, "coordX"] = 1e5
    with pytest.raises(RowError, match=r"row 2 \(.*absent.nii.gz\): no such file"):
        tiny().fit().transform(table)
    with pytest.warns(RowWarning) as record:
        out = tiny(on_error="nan").fit().transform(table)
    messages = " ".join(str(w.message) for w in record)
    assert "row 2" in messages and "row 4" in messages and "outside the scan" in messages
    bad = np.isnan(out).all(axis=1)
    assert bad.tolist() == [False, False, True, False, True, False]
    good = tiny().fit().transform(lesion_table)
    np.testing.assert_allclose(out[~bad], good[~bad], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("form", ["records", "columns", "values"])
def test_a_table_that_is_not_a_dataframe_is_named_as_such(lesion_table, form):
    X = {
        "records": lesion_table.to_dict("records"),
        "columns": lesion_table.to_dict("list"),
        "values": lesion_table.to_numpy(),
    }[form]
    match = r"expected a lesion table \(a pandas DataFrame .*pass pandas\.DataFrame"
    with pytest.raises(ValueError, match=match):
        tiny().fit(X)
    with pytest.raises(ValueError, match=match):
        tiny().fit().transform(X)


@pytest.mark.parametrize("backend", ["numpy_nullable", "pyarrow"])
def test_a_missing_path_of_any_string_type_is_empty(lesion_table, backend):
    table = lesion_table.convert_dtypes(dtype_backend=backend)
    table.loc[1, "image_path"] = pd.NA
    with pytest.raises(RowError, match=r"row 1 \(\): image_path is empty"):
        tiny().fit().transform(table)


@pytest.mark.parametrize(
    "params, match",
    [
        ({"batch_size": 0}, "batch_size"),
        ({"precision": "int8"}, "precision"),
        ({"coordinate_system": "RAI"}, "coordinate_system"),
        ({"on_error": "ignore"}, "on_error"),
        ({"device": "cuda:7"}, "cuda"),
        ({"device": "tpu-ish"}, "device"),
        ({"device": "mps"}, "'mps' asked for, but it is not available here"),
        ({"arch": 5}, "arch"),
    ],
)
def test_invalid_parameters_fail_in_fit(params, match):
    if params.get("device") == "cuda:7" and torch.cuda.device_count() > 7:
        pytest.skip("this machine has 8 GPUs")
    if params.get("device") == "mps" and torch.backends.mps.is_available():
        pytest.skip("this machine has an Apple GPU")
    with pytest.raises(ValueError, match=match):
        tiny(**params).fit()


def test_non_finite_patches_are_refused_in_fit_and_transform():
    patches = np.random.default_rng(0).random((5, 1, 50, 50, 50), dtype=np.float32)
    fmcib = tiny().fit(patches)
    bad = patches.copy()
    bad[1, 0, 25, 25, 25] = np.nan
    bad[3, 0, 0, 0, 0] = np.inf
    with pytest.raises(ValueError, match=r"2 of 5 patches .* \(patch 1, 3\)"):
        fmcib.transform(bad)
    with pytest.raises(ValueError, match="NaN"):
        tiny().fit(bad)


def test_wrong_checkpoint_is_a_clear_error(tmp_path):
    ckpt = tmp_path / "other.torch"
    save_checkpoint(tiny(arch={"arch": "resnet18", "widen_factor": 0.25}).fit().encoder_, ckpt)
    with pytest.raises(CheckpointError, match="other.torch"):
        FMCIBTransformer(weights=ckpt, arch=TINY).fit()
    corrupt = tmp_path / "corrupt.torch"
    corrupt.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="corrupt.torch"):
        FMCIBTransformer(weights=corrupt).fit()


def test_transform_before_fit_is_an_error(lesion_table):
    from sklearn.exceptions import NotFittedError

    with pytest.raises(NotFittedError):
        tiny().transform(lesion_table)


def test_precision_bf16_stays_close_to_fp32(lesion_table):
    fp32 = tiny().fit().transform(lesion_table)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # autocast notes on some CPUs
        bf16 = tiny(precision="bf16").fit().transform(lesion_table)
    cos = np.sum(fp32 * bf16, 1) / np.linalg.norm(fp32, axis=1) / np.linalg.norm(bf16, axis=1)
    assert cos.min() >= 0.999, cos


# --- scikit-learn's own estimator checks ---------------------------------------------------

EXPECTED_FAILED_CHECKS = patch_transformer_expected_failures("encodes")


@parametrize_with_checks([tiny()], expected_failed_checks=lambda est: EXPECTED_FAILED_CHECKS)
def test_sklearn_estimator_checks(estimator, check):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        check(estimator)


# --- torch is imported when the weights load ---------------------------------------------


def test_importing_skfmcib_does_not_import_torch_until_the_weights_load(tmp_path):
    import subprocess
    import sys

    hu = np.full((30, 60, 60), 40, dtype=np.int16)
    path = write_image(tmp_path / "ct.nii.gz", hu, spacing=(1.0, 1.0, 2.0))
    code = f"""
import sys
import pandas as pd
from skfmcib import FMCIBTransformer
model = FMCIBTransformer(weights=None, arch={TINY!r}, random_state=0)
assert "torch" not in sys.modules, "import skfmcib imported torch"
table = pd.DataFrame({{"image_path": [{str(path)!r}], "coordX": [30.0], "coordY": [30.0],
                      "coordZ": [30.0]}})
model.get_params(); model.set_params(batch_size=2)
assert "torch" not in sys.modules, "building the estimator imported torch"
features = model.fit_transform(table)
assert "torch" in sys.modules and features.shape == (1, 128)
print("ok")
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


def test_each_top_level_name_is_one_object_however_it_is_reached():
    import subprocess
    import sys

    # A name exported lazily must not share its name with a submodule: importing the
    # submodule rebinds the package's attribute, so the name would change meaning.
    code = """
import importlib, pkgutil, skfmcib
names = list(skfmcib.__all__)
first = {n: getattr(skfmcib, n) for n in names}
for m in pkgutil.iter_modules(skfmcib.__path__):
    importlib.import_module("skfmcib." + m.name)
ns = {}
exec("from skfmcib import *", ns)
changed = [n for n in names if getattr(skfmcib, n) is not first[n] or ns[n] is not first[n]]
assert not changed, changed
print("ok")
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


@pytest.mark.parametrize(
    ("cuda", "hip", "expected"),
    [("None", "None", False), ("'12.4'", "None", True), ("None", "'6.2'", True)],
)
def test_torch_build_is_read_without_importing_torch(tmp_path, monkeypatch, cuda, hip, expected):
    import importlib.machinery

    from skfmcib import transformer

    fake = tmp_path / "torch"
    fake.mkdir()
    (fake / "version.py").write_text(f"cuda = {cuda}\nhip = {hip}\n")
    spec = importlib.machinery.ModuleSpec("torch", None, is_package=True)
    spec.submodule_search_locations = [str(fake)]
    monkeypatch.setattr(transformer.importlib.util, "find_spec", lambda name: spec)
    assert transformer._torch_build_has_gpu() is expected
    (fake / "version.py").write_text("raise ImportError('odd build')\n")
    assert transformer._torch_build_has_gpu() is True  # unknown: torch itself is asked


def test_device_strings_decide_cuda_without_torch_when_they_can():
    from skfmcib.transformer import _will_use_cuda

    assert _will_use_cuda("cpu") is False
    assert _will_use_cuda("cuda:1") is True
    assert _will_use_cuda(torch.device("cpu")) is False
    assert _will_use_cuda("auto") is torch.cuda.is_available()


# --- used from several threads ---------------------------------------------------------------


def test_random_weights_fitted_in_threads_at_once_are_the_seeds_weights(lesion_table):
    from concurrent.futures import ThreadPoolExecutor

    patches = np.random.default_rng(0).random((2, 1, 50, 50, 50), dtype=np.float32)
    alone = tiny(random_state=5).fit().transform(patches)
    with ThreadPoolExecutor(8) as pool:
        results = list(
            pool.map(lambda _: tiny(random_state=5).fit().transform(patches), range(32))
        )
    for features in results:
        np.testing.assert_array_equal(features, alone)


def test_precision_changed_while_transform_runs_keeps_nothing(lesion_table, tmp_path, monkeypatch):
    from skfmcib import runtime

    model = tiny(memory=str(tmp_path / "cache"), batch_size=2).fit()
    encode = runtime.encode

    def changed_meanwhile(*args, **kwargs):
        model.set_params(precision="bf16")  # as another thread might, mid-call
        return encode(*args, **kwargs)

    monkeypatch.setattr(runtime, "encode", changed_meanwhile)
    with pytest.raises(RuntimeError, match="precision changed from 'fp32' to 'bf16'"):
        model.transform(lesion_table)
    monkeypatch.setattr(runtime, "encode", encode)
    # Nothing was filed under fp32: a fresh fp32 transformer computes every row itself.
    fresh = tiny(memory=str(tmp_path / "cache"), batch_size=2).fit()
    expected = tiny(batch_size=2).fit().transform(lesion_table)  # the same batches, fp32
    np.testing.assert_array_equal(fresh.transform(lesion_table), expected)
