"""Pipelined reading: threads change the speed, never the numbers or their order."""

from __future__ import annotations

import threading
import time

import numpy as np
import pandas as pd
import pytest
from conftest import write_image

from skfmcib import FMCIBTransformer, load_patches
from skfmcib._pipeline import prefetch
from skfmcib.patches import iter_patches, resolve_n_jobs
from skfmcib.table import RowError

TINY = {"arch": "resnet10", "widen_factor": 0.25}


@pytest.fixture
def interleaved(tmp_path):
    """Rows of three images (two formats), interleaved, with one bad row."""
    rng = np.random.default_rng(4)
    paths = []
    for k, ext in enumerate(("nii.gz", "nrrd", "nii")):
        hu = rng.normal(-200, 300, size=(36, 64, 64)).astype(np.int16)
        paths.append(write_image(tmp_path / f"ct{k}.{ext}", hu, spacing=(1.0, 1.0, 2.0)))
    rows = [(str(paths[i % 3]), *rng.uniform([24, 24, 28], [40, 40, 44])) for i in range(10)]
    table = pd.DataFrame(rows, columns=["image_path", "coordX", "coordY", "coordZ"])
    table.index = [f"lesion{i}" for i in range(len(table))]
    return table


def test_prefetch_keeps_task_order_whatever_the_threads():
    def task(k, delay):
        def run():
            for j in range(3):
                time.sleep(delay)
                yield (k, j)

        return run

    tasks = [task(k, 0.01 * ((7 * k) % 4)) for k in range(6)]
    expected = [(k, j) for k in range(6) for j in range(3)]
    for n in (0, 1, 3):
        assert list(prefetch(tasks, n, buffer=1)) == expected


def test_prefetch_raises_task_errors_in_order_and_stops_its_threads():
    def good():
        yield from range(3)

    def bad():
        yield 10
        raise OSError("disk on fire")

    def endless():
        while True:
            yield -1

    before = threading.active_count()
    results = prefetch([good, bad, endless], 2, buffer=2)
    assert [next(results) for _ in range(4)] == [0, 1, 2, 10]
    with pytest.raises(OSError, match="disk on fire"):
        next(results)
    assert threading.active_count() == before
    # A consumer that stops early stops the threads too.
    results = prefetch([endless, endless], 2, buffer=2)
    next(results)
    results.close()
    assert threading.active_count() == before


def test_iter_patches_groups_rows_by_image_for_any_thread_count(interleaved):
    table = interleaved.copy()
    table.iloc[4, 1] = 1e6  # outside the scan
    runs = {n: list(iter_patches(table, n_jobs=n)) for n in (0, 1, 3)}
    order = [pos for pos, _ in runs[0]]
    assert sorted(order) == list(range(len(table)))
    images = [table["image_path"].iloc[pos] for pos in order]
    assert images == sorted(images, key=images.index)  # each image's rows together
    for n in (1, 3):
        assert [pos for pos, _ in runs[n]] == order
        for (_, a), (_, b) in zip(runs[0], runs[n], strict=True):
            if isinstance(a, RowError):
                assert isinstance(b, RowError) and str(a) == str(b)
            else:
                np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(load_patches(interleaved, n_jobs=0), load_patches(interleaved))


def test_pipelined_transform_equals_sequential_transform_exactly(interleaved):
    def model(n_jobs, batch_size=4):
        return FMCIBTransformer(
            weights=None,
            arch=TINY,
            random_state=0,
            device="cpu",
            n_jobs=n_jobs,
            batch_size=batch_size,
        ).fit()

    sequential = model(0).transform(interleaved)
    for n_jobs in (1, 3, None):
        np.testing.assert_array_equal(model(n_jobs).transform(interleaved), sequential)
    # Rows stay in the input's order: each row equals that lesion encoded alone.
    for i in (1, 8):
        alone = model(2, batch_size=1).transform(interleaved.iloc[[i]])
        np.testing.assert_allclose(alone[0], sequential[i], rtol=1e-5, atol=1e-6)
    out = model(2).set_output(transform="pandas").transform(interleaved)
    assert list(out.index) == list(interleaved.index)


def test_pipelined_transform_raises_the_first_bad_row_and_cleans_up(interleaved, tmp_path):
    table = interleaved.copy()
    table.iloc[7, 0] = str(tmp_path / "missing.nii.gz")
    before = threading.active_count()
    model = FMCIBTransformer(weights=None, arch=TINY, random_state=0, device="cpu", n_jobs=3)
    with pytest.raises(RowError, match=r"row lesion7 \(.*missing.nii.gz\): no such file"):
        model.fit().transform(table)
    assert threading.active_count() == before


@pytest.mark.parametrize("bad", ["two", 1.5, True])
def test_invalid_n_jobs_fails_in_fit(bad):
    with pytest.raises(ValueError, match="n_jobs"):
        FMCIBTransformer(weights=None, arch=TINY, n_jobs=bad).fit()


def test_resolve_n_jobs():
    assert resolve_n_jobs(0) == 0 and resolve_n_jobs(5) == 5
    assert resolve_n_jobs(None) >= 1 and resolve_n_jobs(-1) >= 1


def test_fit_transform_reads_while_loading_and_equals_fit_then_transform(interleaved, tmp_path):
    from skfmcib.weights import CheckpointError

    params = dict(weights=None, arch=TINY, random_state=0, device="cpu", batch_size=4)
    expected = FMCIBTransformer(**params).fit().transform(interleaved)
    model = FMCIBTransformer(**params)
    np.testing.assert_array_equal(model.fit_transform(interleaved), expected)
    assert model.n_features_out_ == 128 and model.weights_info_.source == "random"
    # Errors of either side reach the caller: a bad row, bad weights, every row bad.
    bad = interleaved.copy()
    bad.iloc[3, 0] = str(tmp_path / "nowhere.nii")
    with pytest.raises(RowError, match="row lesion3"):
        FMCIBTransformer(**params).fit_transform(bad)
    corrupt = tmp_path / "corrupt.torch"
    corrupt.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="corrupt.torch"):
        FMCIBTransformer(weights=corrupt, device="cpu").fit_transform(interleaved)
    nowhere = interleaved.assign(image_path=str(tmp_path / "nowhere.nii"))
    with pytest.warns(UserWarning, match="no such file"):
        out = FMCIBTransformer(**params, on_error="nan").fit_transform(nowhere)
    assert out.shape == (10, 128) and np.isnan(out).all()


def test_prefetch_reads_ahead_while_the_consumer_is_busy():
    started = []

    def task(k):
        def run():
            started.append(k)
            yield k

        return run

    tasks = [task(k) for k in range(8)]
    for ahead, expected in ((4, 5), (1, 2)):
        started.clear()
        items = prefetch(tasks, 1, ahead=ahead)
        assert next(items) == 0
        time.sleep(0.3)  # the consumer is busy (encoding): the thread goes on reading
        assert len(started) == expected  # 1 running + `ahead` queued, then it waits
        assert list(items) == list(range(1, 8))


def test_first_batch_is_half_a_batch_then_full_batches(interleaved):
    model = FMCIBTransformer(weights=None, arch=TINY, random_state=0, device="cpu", batch_size=4)
    sizes = []
    encode = model._encode
    model._encode = lambda encoder, batch: sizes.append(len(batch)) or encode(encoder, batch)
    model.fit_transform(interleaved)
    assert sizes == [2, 4, 4]
    sizes.clear()
    model.transform(interleaved)
    assert sizes == [2, 4, 4]  # batches depend on the table only, not on timing


def test_prefetch_runs_as_many_tasks_at_once_as_running_allows():
    lock = threading.Lock()
    now, most = [0], [0]

    def task(k):
        def run():
            with lock:
                now[0] += 1
                most[0] = max(most[0], now[0])
            time.sleep(0.05)
            with lock:
                now[0] -= 1
            yield k

        return run

    tasks = [task(k) for k in range(8)]
    for allowed, expected in ((1, 1), (3, 3)):
        most[0] = 0
        out = list(prefetch(tasks, 3, buffer=1, running=lambda allowed=allowed: allowed))
        assert out == list(range(8)) and most[0] == expected
    # Lowered while tasks run: the limit applies to the tasks that start afterwards.
    limit = [3]
    most[0] = 0
    items = prefetch(tasks, 3, buffer=1, running=lambda: limit[0])
    assert next(items) == 0
    limit[0] = 1
    time.sleep(0.2)  # tasks already started finish; the next ones start one at a time
    most[0] = 0
    assert list(items) == list(range(1, 8)) and most[0] == 1


def test_fit_transform_reads_with_every_core_until_the_weights_are_loaded(
    interleaved, monkeypatch
):
    import os

    from skfmcib import transformer

    monkeypatch.setattr(os, "cpu_count", lambda: 4)  # default: 2 threads, 4 while loading
    seen = {}
    real = transformer._iter_patches

    def spy(table, coordinate_system, n_threads, running=None, check=None):
        seen.update(n_threads=n_threads, running=running)
        return real(table, coordinate_system, n_threads, running, check)

    monkeypatch.setattr(transformer, "_iter_patches", spy)
    params = dict(weights=None, arch=TINY, random_state=0, device="cpu")
    FMCIBTransformer(**params).fit_transform(interleaved)
    assert seen["n_threads"] == 4 and seen["running"]() == 2  # the weights are loaded now
    FMCIBTransformer(**params, n_jobs=3).fit_transform(interleaved)
    assert seen["n_threads"] == 3 and seen["running"] is None  # as asked
    FMCIBTransformer(**params).fit().transform(interleaved)
    assert seen["n_threads"] == 2 and seen["running"] is None


@pytest.mark.parametrize("n_threads", [0, 2])
def test_prefetch_raises_what_check_raises_while_it_waits(n_threads):
    release = threading.Event()
    failed = threading.Event()

    def slow():
        yield "first"
        release.wait(10)  # a long read
        yield "second"

    def check():
        if failed.is_set():
            raise RuntimeError("the weights did not load")

    items = prefetch([slow], n_threads=n_threads, check=check)
    assert next(items) == "first"
    failed.set()
    if n_threads == 0:
        release.set()  # the calling thread reads: checked before the next item
    with pytest.raises(RuntimeError, match="did not load"):
        next(items)
    release.set()


@pytest.mark.skipif(not hasattr(__import__("os"), "mkfifo"), reason="needs named pipes")
def test_a_weights_error_is_raised_while_the_first_image_is_still_read(tmp_path):
    # The image is a named pipe: reading it blocks until something writes to it. The
    # mistyped weights path must be reported without waiting for that read, whose row
    # would otherwise fail first ("cannot read image").
    import os

    fifo = tmp_path / "ct.nii"
    os.mkfifo(fifo)
    table = pd.DataFrame({"image_path": [str(fifo)], "coordX": [0.0], "coordY": [0.0],
                          "coordZ": [0.0]})  # fmt: skip

    done = threading.Event()

    def unblock_readers():
        # Once the weights thread has failed, give the transformer ample time to stop
        # its reading threads, then end every read of the pipe (an empty file).
        while any(t.name == "skfmcib-weights" for t in threading.enumerate()):
            time.sleep(0.01)
        time.sleep(2.0)
        while not done.is_set():
            try:
                os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
            except OSError:  # no reader has the pipe open now
                time.sleep(0.01)

    writer = threading.Thread(target=unblock_readers, daemon=True)
    writer.start()
    model = FMCIBTransformer(weights=str(tmp_path / "mistyped.pt"), progress=False)
    try:
        with pytest.raises(FileNotFoundError, match="mistyped.pt"):
            model.fit_transform(table)
    finally:
        done.set()
        writer.join(10)
