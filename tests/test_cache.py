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


def _one_lesion(path) -> pd.DataFrame:
    return pd.DataFrame({"image_path": [str(path)], "coordX": [36.0], "coordY": [36.0],
                         "coordZ": [40.0]})  # fmt: skip


def test_a_header_follows_the_data_file_it_names_not_its_neighbours(tmp_path, encoder_calls):
    # ct.mhd names volume.raw: rewriting volume.raw (same size, same times) must miss;
    # an unrelated file beside ct.mhd must not.
    src = write_image(tmp_path / "src.mhd", _hu(1), spacing=(1.0, 1.0, 2.0))
    header = tmp_path / "ct[1].mhd"  # brackets: not a pattern
    header.write_text(src.read_text().replace("src.raw", "volume.raw"))
    (tmp_path / "src.raw").rename(tmp_path / "volume.raw")
    src.unlink()
    table, memory = _one_lesion(header), tmp_path / "cache"
    before = tiny(memory).fit().transform(table)
    (tmp_path / "ct[1].notes.txt").write_text("unrelated")
    encoder_calls.reset()
    tiny(memory).fit().transform(table)
    assert encoder_calls.patches == 0
    rewrite_keeping_size_and_mtime(tmp_path / "volume.raw", (_hu(2) + 0).tobytes())
    after = tiny(memory).fit().transform(table)
    assert encoder_calls.patches == 1
    np.testing.assert_array_equal(after, tiny(None).fit().transform(table))
    assert not np.allclose(after, before)


def test_the_img_half_of_a_pair_follows_its_header(tmp_path, encoder_calls):
    write_image(tmp_path / "ct.hdr", _hu(1), spacing=(1.0, 1.0, 2.0))
    table, memory = _one_lesion(tmp_path / "ct.img"), tmp_path / "cache"
    before = tiny(memory).fit().transform(table)
    moved = write_image(tmp_path / "moved" / "ct.hdr", _hu(1), spacing=(1.0, 1.0, 2.0),
                        origin=(5.0, 0.0, 0.0))  # fmt: skip
    (tmp_path / "ct.hdr").write_bytes(moved.read_bytes())  # only the header changes
    encoder_calls.reset()
    after = tiny(memory).fit().transform(table)
    assert encoder_calls.patches == 1
    assert not np.allclose(after, before)


def test_repointed_weights_link_loads_the_new_weights(tmp_path, table):
    memory = tmp_path / "cache"
    old, new = tmp_path / "v1.torch", tmp_path / "v2.torch"
    save_checkpoint(tiny(None).fit().encoder_, old)
    save_checkpoint(tiny(None, random_state=5).fit().encoder_, new)
    link = tmp_path / "current.torch"
    link.symlink_to(old)
    FMCIBTransformer(weights=link, device="cpu", memory=memory).fit().transform(table)
    link.unlink()
    link.symlink_to(new)
    model = FMCIBTransformer(weights=link, device="cpu", memory=memory).fit()
    assert model.weights_info_.path == new
    expected = FMCIBTransformer(weights=new, device="cpu").fit().transform(table)
    np.testing.assert_array_equal(model.transform(table), expected)


def test_registered_weights_follow_the_cache_folder_they_resolve_to(
    tmp_path, table, encoder_calls, monkeypatch
):
    from skfmcib.weights import REGISTRY, WeightsRecord, cached_weights_path

    record = WeightsRecord("mine", "http://127.0.0.1:9/unused", "w.torch")
    monkeypatch.setitem(REGISTRY, "mine", record)
    for folder, seed in (("A", 0), ("B", 5)):
        model = tiny(None, random_state=seed).fit()
        save_checkpoint(model.encoder_, cached_weights_path(record, cache_dir=tmp_path / folder))
    memory = tmp_path / "features"
    found = {}
    # The environment variable, then a relative cache_dir from two working folders.
    for name, env, cwd, cache_dir in (
        ("A", tmp_path / "A", None, None),
        ("B", tmp_path / "B", None, None),
        ("A", None, tmp_path, "A"),
        ("B", None, tmp_path, "B"),
    ):
        if env is not None:
            monkeypatch.setenv("SKFMCIB_CACHE_DIR", str(env))
        else:
            monkeypatch.delenv("SKFMCIB_CACHE_DIR", raising=False)
            monkeypatch.chdir(cwd)
        params = dict(weights="mine", cache_dir=cache_dir, memory=memory)
        model = tiny(**params).fit()
        assert model.weights_info_.path == (tmp_path / name / "mine" / "w.torch").resolve()
        out = model.transform(table)
        found.setdefault(name, out)
        np.testing.assert_array_equal(out, found[name])
    expected = tiny(None, random_state=5).fit().transform(table)
    np.testing.assert_allclose(found["B"], expected, rtol=0, atol=1e-5)
    assert not np.allclose(found["A"], found["B"])


def test_an_unreadable_entry_is_a_miss_and_is_written_again(
    tmp_path, table, encoder_calls, monkeypatch
):
    import skfmcib._cache as cache_module

    memory = tmp_path / "cache"
    expected = tiny(memory).fit().transform(table)
    entries = sorted(memory.rglob("*.npy"))
    assert len(entries) == len(table)
    entries[0].write_bytes(entries[0].read_bytes()[:20])  # truncated
    np.savez(entries[1].with_suffix(""), a=np.zeros(3))  # an .npz archive
    entries[1].with_suffix(".npz").replace(entries[1])
    entries[2].write_bytes(b"PK\x03\x04" + b"\0" * 40)  # a zip cut short
    for patches in (1, 0):  # written again, then read
        # As in a new process: nothing kept in memory.
        monkeypatch.setattr(cache_module, "_RECENT", cache_module._Recent())
        encoder_calls.reset()
        out = tiny(memory).fit().transform(table)
        # Encoded apart, the rows differ from their batch of 6 by float32 rounding.
        np.testing.assert_allclose(out, expected, rtol=0, atol=1e-5 * np.abs(expected).max())
        assert encoder_calls.patches == 3 * patches
    for entry in entries[:3]:
        assert np.load(entry, allow_pickle=False).shape == (expected.shape[1],)


class _Planted:
    """A pickle that creates a file when it is loaded."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (Path.touch, (self.path,))


def test_reading_a_cache_folder_never_unpickles(tmp_path, table, encoder_calls, monkeypatch):
    memory = tmp_path / "cache"
    expected = tiny(memory).fit().transform(table)
    entries = sorted(memory.rglob("*.npy"))
    assert len(entries) == len(table)
    # Someone with write access replaces every entry with a pickle that runs code; a
    # joblib entry (output.pkl) planted beside them is not read either.
    marker = tmp_path / "code-ran"
    for entry in entries:
        joblib.dump(_Planted(marker), entry)
        joblib.dump(_Planted(marker), entry.with_name("output.pkl"))
    import skfmcib._cache as cache_module

    monkeypatch.setattr(cache_module, "_RECENT", cache_module._Recent())  # a new process
    encoder_calls.reset()
    out = tiny(memory).fit().transform(table)
    assert not marker.exists()
    assert encoder_calls.patches == len(table)  # unreadable entries: computed again
    np.testing.assert_allclose(out, expected, rtol=0, atol=1e-5 * np.abs(expected).max())


def test_memory_clear_removes_the_entries(tmp_path, table, encoder_calls, monkeypatch):
    import skfmcib._cache as cache_module

    memory = joblib.Memory(str(tmp_path / "cache"), verbose=0)
    tiny(memory).fit().transform(table)
    assert len(list((tmp_path / "cache").rglob("*.npy"))) == len(table)
    memory.clear(warn=False)
    monkeypatch.setattr(cache_module, "_RECENT", cache_module._Recent())  # a new process
    assert not list((tmp_path / "cache").rglob("*.npy"))
    encoder_calls.reset()
    tiny(memory).fit().transform(table)
    assert encoder_calls.patches == len(table)


def test_an_entry_that_cannot_be_written_is_warned_about_and_returned(
    tmp_path, table, monkeypatch
):
    import skfmcib._cache as cache_module

    def full_disk(path, value):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(cache_module, "_save", full_disk)
    monkeypatch.setattr(cache_module, "_RECENT", cache_module._Recent())
    with pytest.warns(UserWarning, match="could not be stored.*No space left") as caught:
        out = tiny(tmp_path / "cache").fit().transform(table)
    assert sum("could not be stored" in str(w.message) for w in caught) == 1
    np.testing.assert_array_equal(out, tiny(None).fit().transform(table))


@pytest.mark.parametrize("name", ["ct.nii.gz/x.nii.gz", "a" * 300 + ".nii.gz", "ct\0.nii.gz"])
def test_paths_the_system_refuses_are_bad_rows_with_a_cache_too(tmp_path, table, name):
    bad = table.copy()
    bad.loc[1, "image_path"] = str(tmp_path / name)
    (tmp_path / "ct.nii.gz").write_bytes(b"")  # a file, so ct.nii.gz/x is not a folder
    with pytest.warns(UserWarning, match="row 1"):
        out = tiny(tmp_path / "cache", on_error="nan").fit().transform(bad)
    assert np.isnan(out[1]).all() and np.isfinite(np.delete(out, 1, 0)).all()
    with pytest.raises(ValueError, match="row 1"):
        tiny(tmp_path / "cache").fit().transform(bad)


def test_a_cache_folder_that_is_not_writable_is_read_and_warned_about_once(
    tmp_path, table, encoder_calls, monkeypatch
):
    memory = tmp_path / "cache"
    expected = tiny(memory).fit().transform(table.iloc[:3])
    (memory / "joblib").chmod(0o555)
    for folder in memory.rglob("*"):
        if folder.is_dir():
            folder.chmod(0o555)
    if os.access(memory / "joblib", os.W_OK):  # root: permissions do not stop writes
        import skfmcib._cache as cache_module

        # The answer a read-only mount gives; the caching code then does as it would.
        monkeypatch.setattr(cache_module.os, "access", lambda path, mode: False)
    encoder_calls.reset()
    with pytest.warns(UserWarning, match="not writable") as caught:
        out = tiny(memory).fit().transform(table)
    assert sum("not writable" in str(w.message) for w in caught) == 1
    np.testing.assert_array_equal(out[:3], expected)
    assert encoder_calls.patches == len(table) - 3
    assert len(list(memory.rglob("*.npy"))) == 3


def test_a_cache_folder_that_cannot_be_created_is_an_error_naming_it(tmp_path, table):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(OSError, match=r"memory=.*file/cache.*cannot create the feature cache"):
        tiny(str(blocker / "cache")).fit().transform(table)


def test_precision_set_after_fit_is_used_by_transform(tmp_path, table):
    model = tiny(None, precision="bf16").fit()
    model.set_params(precision="fp32")
    np.testing.assert_array_equal(model.transform(table), tiny(None).fit().transform(table))
