"""Feature cache (memory=): hits skip the encoder, anything that changes features misses."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import joblib
import numpy as np
import pandas as pd
import pytest
import torch
from conftest import rewrite_keeping_size_and_mtime, write_dicom_series, write_image
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from skfmcib import FMCIBTransformer, load_patches
from skfmcib.encoder import ResNet3D
from skfmcib.weights import save_checkpoint

TINY = {"arch": "resnet10", "widen_factor": 0.25}


def tiny(memory, **kwargs) -> FMCIBTransformer:
    params = dict(weights=None, arch=TINY, random_state=0, device="cpu", memory=memory)
    params.update(kwargs)
    return FMCIBTransformer(**params)


class EncoderCalls:
    """Counts patches that go through any FMCIB encoder's forward (a global torch hook)."""

    def __init__(self) -> None:
        self.patches = 0
        self.calls = 0

    def __call__(self, module, args, output) -> None:
        if isinstance(module, ResNet3D):
            self.calls += 1
            self.patches += int(args[0].shape[0])

    def reset(self) -> None:
        self.patches = self.calls = 0


@pytest.fixture
def encoder_calls():
    counter = EncoderCalls()
    handle = torch.nn.modules.module.register_module_forward_hook(counter)
    yield counter
    handle.remove()


def _hu(seed, shape=(40, 72, 72)) -> np.ndarray:
    return np.random.default_rng(seed).normal(-300, 300, size=shape).astype(np.int16)


@pytest.fixture
def table(tmp_path):
    rows = []
    rng = np.random.default_rng(7)
    for k in range(2):
        path = write_image(tmp_path / f"ct{k}.nii.gz", _hu(k), spacing=(1.0, 1.0, 2.0))
        for _ in range(3):
            rows.append((str(path), *rng.uniform([30, 30, 36], [42, 42, 44])))
    return pd.DataFrame(rows, columns=["image_path", "coordX", "coordY", "coordZ"])


def test_second_transform_reads_the_cache_and_never_runs_the_encoder(
    tmp_path, table, encoder_calls
):
    memory = tmp_path / "cache"
    first = tiny(memory).fit().transform(table)
    assert encoder_calls.patches == len(table)
    encoder_calls.reset()
    model = tiny(memory).fit()
    second = model.transform(table)
    third = model.transform(table.iloc[::-1])
    assert encoder_calls.patches == 0
    np.testing.assert_array_equal(first, second)
    np.testing.assert_array_equal(first[::-1], third)
    # The same features as without a cache, from a joblib.Memory too.
    np.testing.assert_array_equal(first, tiny(None).fit().transform(table))
    from_memory = tiny(joblib.Memory(str(memory), verbose=0)).fit().transform(table)
    np.testing.assert_array_equal(first, from_memory)
    assert encoder_calls.patches == len(table)  # only the memory=None model encoded


def test_rewritten_or_touched_image_misses(tmp_path, table, encoder_calls):
    memory = tmp_path / "cache"
    before = tiny(memory).fit().transform(table)
    path = Path(table["image_path"][0])
    write_image(path, _hu(99), spacing=(1.0, 1.0, 2.0))  # new content, same path
    encoder_calls.reset()
    after = tiny(memory).fit().transform(table)
    assert encoder_calls.patches == 3  # the three rows of that image
    assert not np.allclose(after[:3], before[:3])
    np.testing.assert_array_equal(after[3:], before[3:])
    # Same bytes, new modification time: missed too (the identity is the file's stat).
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    encoder_calls.reset()
    again = tiny(memory).fit().transform(table)
    assert encoder_calls.patches == 3
    np.testing.assert_array_equal(again, after)


def test_changed_seed_misses_only_that_row(tmp_path, table, encoder_calls):
    memory = tmp_path / "cache"
    before = tiny(memory).fit().transform(table)
    moved = table.copy()
    moved.loc[4, "coordX"] += 1.0
    encoder_calls.reset()
    after = tiny(memory).fit().transform(moved)
    assert encoder_calls.patches == 1
    assert not np.allclose(after[4], before[4])
    np.testing.assert_array_equal(np.delete(after, 4, 0), np.delete(before, 4, 0))


@pytest.mark.parametrize(
    "change",
    [
        {"random_state": 1},
        {"arch": {"arch": "resnet10", "widen_factor": 0.5}},
        {"arch": {"arch": "resnet18", "widen_factor": 0.25}},
        {"precision": "bf16"},
    ],
    ids=["random_state", "widen_factor", "arch", "precision"],
)
def test_encoder_changes_miss(tmp_path, table, encoder_calls, change):
    memory = tmp_path / "cache"
    tiny(memory).fit().transform(table)
    encoder_calls.reset()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # autocast notes on some CPUs
        tiny(memory, **change).fit().transform(table)
    assert encoder_calls.patches == len(table)


def test_changed_weights_file_misses(tmp_path, table, encoder_calls):
    memory = tmp_path / "cache"
    ckpt = tmp_path / "enc.torch"
    save_checkpoint(tiny(None).fit().encoder_, ckpt)
    before = FMCIBTransformer(weights=ckpt, device="cpu", memory=memory).fit().transform(table)
    encoder_calls.reset()
    FMCIBTransformer(weights=ckpt, device="cpu", memory=memory).fit().transform(table)
    assert encoder_calls.patches == 0
    save_checkpoint(tiny(None, random_state=5).fit().encoder_, ckpt)  # same path, new weights
    encoder_calls.reset()
    after = FMCIBTransformer(weights=ckpt, device="cpu", memory=memory).fit().transform(table)
    assert encoder_calls.patches == len(table)
    assert not np.allclose(after, before)


def test_weights_rewritten_at_the_same_size_and_mtime_miss(tmp_path, table, encoder_calls):
    # A checkpoint saved again over the same path within the file system's time
    # resolution (or copied keeping timestamps) keeps its size and modification time.
    memory = tmp_path / "cache"
    ckpt, other = tmp_path / "enc.torch", tmp_path / "new.torch"  # same-length names
    save_checkpoint(tiny(None).fit().encoder_, ckpt)
    save_checkpoint(tiny(None, random_state=5).fit().encoder_, other)
    before = FMCIBTransformer(weights=ckpt, device="cpu", memory=memory).fit().transform(table)
    rewrite_keeping_size_and_mtime(ckpt, other.read_bytes())
    encoder_calls.reset()
    after = FMCIBTransformer(weights=ckpt, device="cpu", memory=memory).fit().transform(table)
    assert encoder_calls.patches == len(table)
    expected = FMCIBTransformer(weights=other, device="cpu").fit().transform(table)
    np.testing.assert_array_equal(after, expected)
    assert not np.allclose(after, before)


def test_dicom_series_cache_follows_its_files(tmp_path, encoder_calls):
    hu = _hu(3, (24, 64, 64))
    d = write_dicom_series(tmp_path / "dcm", hu, spacing=(1.0, 1.0, 2.0), origin=(0, 0, 0))
    table = pd.DataFrame({"image_path": [str(d)], "coordX": [32.0], "coordY": [30.0]})
    table["coordZ"] = 22.0
    memory = tmp_path / "cache"
    before = tiny(memory).fit().transform(table)
    write_dicom_series(d, hu + 50, spacing=(1.0, 1.0, 2.0), origin=(0, 0, 0))
    encoder_calls.reset()
    after = tiny(memory).fit().transform(table)
    assert encoder_calls.patches == 1
    assert not np.allclose(after, before)


def test_patch_arrays_are_cached_by_content(tmp_path, table, encoder_calls):
    memory = tmp_path / "cache"
    patches = load_patches(table)
    first = tiny(memory).fit().transform(patches)
    encoder_calls.reset()
    second = tiny(memory).fit().transform(patches)
    assert encoder_calls.patches == 0
    np.testing.assert_array_equal(first, second)
    patches[2, 0, 25, 25, 25] += 0.01
    tiny(memory).fit().transform(patches)
    assert encoder_calls.patches == 1


def test_bad_rows_are_not_cached(tmp_path, table, encoder_calls):
    bad = table.copy()
    bad.loc[1, "coordX"] = 1e5
    memory = tmp_path / "cache"
    with pytest.warns(UserWarning, match="row 1"):
        out = tiny(memory, on_error="nan").fit().transform(bad)
    assert np.isnan(out[1]).all() and np.isfinite(np.delete(out, 1, 0)).all()
    encoder_calls.reset()
    tiny(memory).fit().transform(table)
    assert encoder_calls.patches == 1


def test_grid_search_encodes_each_lesion_once(tmp_path, encoder_calls):
    rows = []
    rng = np.random.default_rng(0)
    for k in range(4):
        path = write_image(tmp_path / f"ct{k}.nii.gz", _hu(10 + k), spacing=(1.0, 1.0, 2.0))
        for _ in range(5):
            rows.append((str(path), *rng.uniform([30, 30, 36], [42, 42, 44])))
    X = pd.DataFrame(rows, columns=["image_path", "coordX", "coordY", "coordZ"])
    X = X.sample(frac=1.0, random_state=0)  # rows of the images interleaved
    y = np.arange(len(X)) % 2
    pipe = Pipeline(
        [
            ("fmcib", tiny(tmp_path / "cache")),
            ("scale", StandardScaler()),
            ("clf", LogisticRegression(max_iter=500)),
        ]
    )
    search = GridSearchCV(pipe, {"clf__C": [0.01, 0.1, 1.0, 10.0]}, cv=5).fit(X, y)
    assert encoder_calls.patches == len(X)  # 5 folds x 4 candidates + refit: once each
    assert search.best_estimator_.predict(X).shape == (len(X),)
