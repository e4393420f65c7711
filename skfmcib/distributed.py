"""Feature extraction on a Dask distributed cluster.

:func:`skfmcib.extract.extract` with ``scheduler=`` sends each chunk of whole
images to a worker with ``client.submit``. Every worker process loads the encoder
once, on the first chunk it receives, and keeps it for the others (a cache keyed
by the transformer's parameters); the driver writes each finished chunk as a part
file, so a distributed run resumes like a local one. The same chunks go through the
same code as in a local run; the features equal a local run's to float32 rounding
(about 1e-6 relative: a worker's torch threads sum in another order than the local
process's).

Workers read the images and the checkpoint themselves: the paths in the table and
``weights`` must mean the same files on every worker (a shared file system). Relative
paths are made absolute where the run starts. A worker that finds the weights file
replaced since it loaded it (another size, modification or status-change time, or
inode) loads it again.

Needs the optional ``distributed`` package: ``pip install 'skfmcib[dask]'``.
"""

from __future__ import annotations

import json
import os
import threading
import time
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from ._files import file_state
from .extract import ChunkResult, ExtractError, encode_chunk
from .transformer import FMCIBTransformer

__all__ = ["get_client", "map_chunks", "worker_transformer"]

# Per parameters: the weights file's identity when loaded, the fitted transformer, its lock.
_CACHE: dict[str, tuple[tuple | None, FMCIBTransformer, threading.Lock]] = {}
_CACHE_LOCK = threading.Lock()
_CONNECT_SECONDS = 30


def _require_distributed():
    try:
        import distributed
    except ImportError as exc:
        raise ExtractError(
            "running on a Dask cluster needs the optional 'distributed' package: "
            "pip install 'skfmcib[dask]'"
        ) from exc
    return distributed


def _cache_key(params: Mapping[str, Any]) -> str:
    return json.dumps({k: params[k] for k in sorted(params)}, sort_keys=True, default=repr)


def _file_identity(weights: Any) -> tuple | None:
    """A weights file's path and :func:`~skfmcib._files.file_state`; None for others."""
    if not isinstance(weights, (str, os.PathLike)):
        return None
    try:
        return (os.path.abspath(weights), *file_state(weights))
    except (OSError, ValueError):
        return None  # a registry name, or a file the load will report as missing


def worker_transformer(params: Mapping[str, Any]) -> tuple[FMCIBTransformer, threading.Lock]:
    """The fitted transformer for ``params`` in this process, loaded on first use.

    A weights file that was replaced or rewritten since (another size, modification or
    status-change time, or inode) is loaded again. The process keeps the transformer of the latest
    parameters only, so that the runs a worker serves do not pile up encoders.

    Parameters
    ----------
    params : mapping
        :meth:`FMCIBTransformer.get_params` output.

    Returns
    -------
    transformer : FMCIBTransformer
        Fitted, shared by every task of this process with the same parameters.
    lock : threading.Lock
        Held while encoding, so that threads of one worker share its encoder in turn.

    Examples
    --------
    >>> from skfmcib.distributed import worker_transformer
    >>> params = {"weights": None, "arch": {"arch": "resnet10", "widen_factor": 0.25},
    ...           "random_state": 0, "device": "cpu"}
    >>> a, _ = worker_transformer(params)
    >>> b, _ = worker_transformer(dict(params))
    >>> a is b, a.n_features_out_
    (True, 128)
    """
    key = _cache_key(params)
    identity = _file_identity(params.get("weights"))
    with _CACHE_LOCK:
        entry = _CACHE.get(key)
        if entry is None or entry[0] != identity:
            # One encoder per process: runs with other parameters (another batch size,
            # other weights) would otherwise each keep theirs for the worker's life.
            # The old one goes before the new one loads; a task still using it keeps it.
            _CACHE.clear()
            model = FMCIBTransformer(**dict(params)).set_params(on_error="nan", progress=False)
            entry = (identity, model.fit(None), threading.Lock())
            _CACHE[key] = entry
    return entry[1], entry[2]


def _encode_on_worker(params: Mapping[str, Any], sub: pd.DataFrame) -> ChunkResult:
    model, lock = worker_transformer(params)
    with lock:
        return encode_chunk(model, sub)


def get_client(scheduler: Any):
    """A ``distributed.Client`` for an address, a scheduler file or a client.

    Parameters
    ----------
    scheduler : str, path or distributed.Client
        ``"tcp://host:8786"`` (any address Dask accepts), the path of a scheduler
        file (``.json``), or a client, returned as it is.

    Returns
    -------
    client : distributed.Client
    owned : bool
        Whether the caller made the client and should close it.
    """
    distributed = _require_distributed()
    if isinstance(scheduler, distributed.Client):
        return scheduler, False
    text = str(scheduler)
    if text.endswith(".json"):
        # distributed waits for a scheduler file to appear, whatever its timeout: wait
        # as long as for an address (a scheduler started just before writes it soon).
        deadline = time.monotonic() + _CONNECT_SECONDS
        while not Path(text).is_file():
            if time.monotonic() > deadline:
                raise ExtractError(f"no Dask scheduler file at {text} after {_CONNECT_SECONDS} s")
            time.sleep(0.2)
    try:
        if text.endswith(".json"):
            return distributed.Client(scheduler_file=text, timeout=f"{_CONNECT_SECONDS}s"), True
        return distributed.Client(text, timeout=f"{_CONNECT_SECONDS}s"), True
    except (OSError, TimeoutError, ValueError) as exc:
        raise ExtractError(f"cannot reach the Dask scheduler at {text}: {exc}") from exc


def _absolute_paths(params: Mapping[str, Any]) -> dict[str, Any]:
    """``params`` with a relative weights file or cache folder made absolute: workers
    run in folders of their own."""
    from .weights import REGISTRY

    params = dict(params)
    weights = params.get("weights")
    if (
        isinstance(weights, (str, os.PathLike))
        and weights not in REGISTRY  # a name, as load_encoder reads it first
        and Path(weights).expanduser().is_file()
    ):
        params["weights"] = str(Path(weights).expanduser().resolve())
    if isinstance(params.get("cache_dir"), (str, os.PathLike)):
        params["cache_dir"] = str(Path(params["cache_dir"]).expanduser().resolve())
    # The feature cache uses only the Memory's folder: a relative one made absolute.
    location = getattr(params.get("memory"), "location", params.get("memory"))
    if isinstance(location, (str, os.PathLike)):
        params["memory"] = str(Path(location).expanduser().resolve())
    return params


def map_chunks(
    scheduler: Any, params: Mapping[str, Any], chunks: Mapping[int, pd.DataFrame]
) -> Iterator[tuple[int, ChunkResult]]:
    """Encode chunks on a Dask cluster; yield ``(chunk id, result)`` as they finish.

    Parameters
    ----------
    scheduler : str, path or distributed.Client
        See :func:`get_client`.
    params : mapping
        The transformer's parameters (each worker builds and fits it once).
    chunks : mapping of int to DataFrame
        Rows of each chunk, indexed by their position in the table, with absolute
        image paths.

    Yields
    ------
    index : int
        The chunk's id.
    result : ChunkResult
        Its features and failed rows, in the chunk's row order.
    """
    distributed = _require_distributed()
    params = _absolute_paths(params)
    client, owned = get_client(scheduler)
    try:
        futures = {}
        run = uuid.uuid4().hex[:12]  # keys unique to this run: never a cached result
        for index, sub in chunks.items():
            future = client.submit(
                _encode_on_worker, dict(params), sub, key=f"skfmcib-{run}-chunk-{index}"
            )
            futures[future] = index
        for future in distributed.as_completed(futures):
            index = futures.pop(future)
            yield index, future.result()
            future.release()
    finally:
        for future in list(futures):
            future.cancel()
        if owned:
            client.close()
