"""Extraction on a Dask cluster (a LocalCluster of 2 worker processes) equals a local run."""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import pytest
from conftest import write_image

distributed = pytest.importorskip("distributed")

from sklearn.linear_model import LogisticRegression  # noqa: E402
from sklearn.model_selection import GridSearchCV  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402

from skfmcib import FMCIBTransformer  # noqa: E402
from skfmcib.cli import main  # noqa: E402
from skfmcib.encoder import EncoderConfig  # noqa: E402
from skfmcib.extract import extract, read_provenance  # noqa: E402
from skfmcib.weights import load_encoder, save_checkpoint  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def client():
    # LocalCluster sets OMP_NUM_THREADS=1 (and the like) in this process's environment
    # for its workers; put the environment back so later tests' subprocesses keep theirs.
    environ = dict(os.environ)
    cluster = distributed.LocalCluster(
        n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None
    )
    try:
        with distributed.Client(cluster) as c:
            yield c
        cluster.close()
    finally:
        os.environ.clear()
        os.environ.update(environ)


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    folder = tmp_path_factory.mktemp("dask")
    rng = np.random.default_rng(3)
    rows = []
    for k in range(5):
        hu = rng.normal(-300, 300, size=(24, 60, 60)).astype(np.int16)
        write_image(folder / f"ct{k}.nii.gz", hu, spacing=(1.0, 1.0, 2.5))
        for _ in range(2):
            rows.append((f"ct{k}.nii.gz", *rng.uniform([20, 20, 20], [40, 40, 40])))
    rows.append(("missing.nii.gz", 1.0, 2.0, 3.0))
    pd.DataFrame(rows, columns=["image_path", "coordX", "coordY", "coordZ"]).to_csv(
        folder / "seeds.csv", index=False
    )
    net, _ = load_encoder(None, config=EncoderConfig("resnet10", 0.25), random_state=0)
    save_checkpoint(net, folder / "tiny.torch")
    return folder


def features(path) -> np.ndarray:
    frame = pd.read_csv(path)
    return frame[[c for c in frame.columns if c.startswith("fmcib_")]].to_numpy(np.float32)


def test_dask_run_equals_local_run(client, study, tmp_path):
    model = FMCIBTransformer(weights=study / "tiny.torch", device="cpu")
    local = extract(study / "seeds.csv", tmp_path / "local.csv", transformer=model, chunk_size=2)
    remote = extract(
        study / "seeds.csv",
        tmp_path / "dask.csv",
        transformer=model,
        chunk_size=2,
        scheduler=client.scheduler.address,
    )
    assert (local.n_failed, remote.n_failed) == (1, 1) and remote.n_written == 10
    np.testing.assert_allclose(features(local.out), features(remote.out), rtol=1e-5)
    pd.testing.assert_frame_equal(pd.read_csv(local.errors_path), pd.read_csv(remote.errors_path))
    assert read_provenance(remote.out)["weights_digest"] == local.provenance["weights_digest"]

    # One encoder per worker process, loaded on its first chunk and kept.
    def cached():
        from skfmcib import distributed as d

        return len(d._CACHE)

    assert set(client.run(cached).values()) <= {0, 1}
    assert sum(client.run(cached).values()) >= 1


def test_cli_scheduler_option(client, study, tmp_path):
    out = tmp_path / "f.csv"
    argv = [
        "extract",
        str(study / "seeds.csv"),
        "-o",
        str(out),
        "--weights",
        str(study / "tiny.torch"),
        "--device",
        "cpu",
        "--scheduler",
        client.scheduler.address,
        "-q",
    ]
    assert main(argv) == 1  # the missing image
    local = extract(
        study / "seeds.csv",
        tmp_path / "l.csv",
        transformer=FMCIBTransformer(weights=study / "tiny.torch", device="cpu"),
    )
    np.testing.assert_allclose(features(out), features(local.out), rtol=1e-5)


def test_grid_search_under_the_dask_joblib_backend(client, study):
    from joblib import parallel_backend

    table = pd.read_csv(study / "seeds.csv").iloc[:10]
    table["image_path"] = [str(study / p) for p in table["image_path"]]
    y = np.tile([0, 1], 5)
    pipe = make_pipeline(
        FMCIBTransformer(
            weights=None,
            arch={"arch": "resnet10", "widen_factor": 0.25},
            random_state=0,
            device="cpu",
        ),
        LogisticRegression(max_iter=100),
    )
    search = GridSearchCV(pipe, {"logisticregression__C": [0.1, 1.0]}, cv=2)
    with parallel_backend("dask"):
        search.fit(table, y)
    assert search.best_params_["logisticregression__C"] in (0.1, 1.0)
    assert search.predict(table).shape == (10,)


def test_relative_weights_path_is_the_driver_s_file(client, study, tmp_path, monkeypatch):
    # The workers run in the folder the cluster started in, not in the driver's.
    monkeypatch.chdir(study)
    model = FMCIBTransformer(weights="tiny.torch", device="cpu")
    remote = extract(
        "seeds.csv", tmp_path / "dask.csv", transformer=model, scheduler=client.scheduler.address
    )
    local = extract("seeds.csv", tmp_path / "local.csv", transformer=model)
    assert remote.n_written == 10
    np.testing.assert_allclose(features(remote.out), features(local.out), rtol=1e-5)


def test_relative_image_paths_of_a_data_frame_are_the_driver_s(
    client, study, tmp_path, monkeypatch
):
    monkeypatch.chdir(study)
    table = pd.read_csv("seeds.csv").iloc[:4]  # paths relative to the working folder
    model = FMCIBTransformer(weights=study / "tiny.torch", device="cpu")
    remote = extract(table, tmp_path / "dask.csv", transformer=model, scheduler=client)
    local = extract(table, tmp_path / "local.csv", transformer=model)
    assert (remote.n_written, remote.n_failed) == (4, 0)
    np.testing.assert_allclose(features(remote.out), features(local.out), rtol=1e-5)


def test_a_worker_keeps_the_encoder_of_its_latest_parameters_only(monkeypatch):
    from skfmcib import distributed as skdist

    monkeypatch.setattr(skdist, "_CACHE", {})
    params = {"weights": None, "arch": {"arch": "resnet10", "widen_factor": 0.25},
              "random_state": 0, "device": "cpu"}  # fmt: skip
    first, _ = skdist.worker_transformer(params)
    second, _ = skdist.worker_transformer({**params, "batch_size": 2})
    assert len(skdist._CACHE) == 1 and second is not first
    assert skdist.worker_transformer({**params, "batch_size": 2})[0] is second


def test_memory_and_registry_names_sent_to_workers(tmp_path, monkeypatch):
    from joblib import Memory

    from skfmcib.distributed import _absolute_paths

    monkeypatch.chdir(tmp_path)
    (tmp_path / "fmcib").touch()
    sent = _absolute_paths({"weights": "fmcib", "memory": Memory("rel"), "cache_dir": "c"})
    assert sent["weights"] == "fmcib"  # a name, even beside a file of that name
    assert sent["memory"] == str(tmp_path / "rel") and sent["cache_dir"] == str(tmp_path / "c")


def test_workers_load_a_replaced_weights_file_again(client, study, tmp_path):
    weights = tmp_path / "w.torch"
    for seed in (1, 2):  # a new file renamed over the old one, as the docs advise
        net, _ = load_encoder(None, config=EncoderConfig("resnet10", 0.25), random_state=seed)
        save_checkpoint(net, tmp_path / "new.torch")
        os.replace(tmp_path / "new.torch", weights)
        model = FMCIBTransformer(weights=weights, device="cpu")
        remote = extract(
            study / "seeds.csv",
            tmp_path / f"dask{seed}.csv",
            transformer=model,
            chunk_size=2,  # chunks for both workers, each run
            scheduler=client.scheduler.address,
        )
        local = extract(study / "seeds.csv", tmp_path / f"local{seed}.csv", transformer=model)
        np.testing.assert_allclose(features(remote.out), features(local.out), rtol=1e-5)
    assert not np.allclose(features(tmp_path / "dask1.csv"), features(tmp_path / "dask2.csv"))


def test_a_scheduler_file_is_waited_for_then_an_error(client, study, tmp_path, monkeypatch):
    import threading

    from skfmcib import distributed as skdist
    from skfmcib.extract import ExtractError, parts_dir

    model = FMCIBTransformer(weights=study / "tiny.torch", device="cpu")
    # A scheduler started just before the run writes its file a moment later.
    late = tmp_path / "late.json"
    threading.Timer(1.0, client.write_scheduler_file, [str(late)]).start()
    assert extract(study / "seeds.csv", tmp_path / "l.csv", transformer=model, scheduler=late)
    monkeypatch.setattr(skdist, "_CONNECT_SECONDS", 1)
    out = tmp_path / "f.csv"
    with pytest.raises(ExtractError, match=r"no Dask scheduler file at .*none\.json after 1 s"):
        extract(study / "seeds.csv", out, transformer=model, scheduler=tmp_path / "none.json")
    # Nothing was started: no parts for --resume or --overwrite to deal with.
    assert not parts_dir(out).exists()
    assert extract(study / "seeds.csv", out, transformer=model).n_written == 10


def test_random_weights_on_a_cluster_need_a_seed(study, tmp_path):
    from skfmcib.extract import ExtractError

    model = FMCIBTransformer(weights=None, arch={"arch": "resnet10", "widen_factor": 0.25})
    with pytest.raises(ExtractError, match="would differ on every worker: give the transformer"):
        extract(study / "seeds.csv", tmp_path / "f.csv", transformer=model, scheduler="x.json")
