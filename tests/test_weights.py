"""skfmcib.weights: download and cache, checkpoint layouts, strict loading, saving."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import pickle
import random
import re
import socket
import threading
import warnings
from dataclasses import replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import rewrite_keeping_size_and_mtime

from skfmcib import weights
from skfmcib.encoder import EncoderConfig, ResNet3D
from skfmcib.weights import (
    FMCIB_WEIGHTS,
    REGISTRY,
    CheckpointError,
    WeightsChecksumError,
    WeightsDownloadError,
    WeightsLicenseNotice,
    WeightsRecord,
    cached_weights_path,
    default_cache_dir,
    fetch_weights,
    file_digest,
    load_encoder,
    read_checkpoint,
    save_checkpoint,
)

SMALL = EncoderConfig(arch="resnet10", widen_factor=0.25)
OTHER = EncoderConfig(arch="resnet18", widen_factor=0.5)
PAYLOAD = random.Random(0).randbytes(300_000)


# ------------------------------------------------------------------ a local server


class _Server:
    """An HTTP server on 127.0.0.1 serving one file, recording the requests it gets."""

    def __init__(
        self,
        data: bytes,
        *,
        ranges: bool = True,
        truncate_at: int | None = None,
        status: int | None = None,
        length: bool = True,
    ) -> None:
        self.data, self.ranges, self.truncate_at, self.status = data, ranges, truncate_at, status
        self.length = length  # send Content-Length (else the end is where it hangs up)
        self.requests: list[str | None] = []  # the Range header of each request
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output quiet
                pass

            def do_GET(self):
                rng = self.headers.get("Range")
                outer.requests.append(rng)
                if outer.status is not None:
                    self.send_error(outer.status)
                    return
                data, start = outer.data, 0
                match = re.fullmatch(r"bytes=(\d+)-", rng or "")
                if match and outer.ranges:
                    start = int(match.group(1))
                    if start >= len(data):
                        self.send_response(416)
                        self.send_header("Content-Range", f"bytes */{len(data)}")
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                else:
                    self.send_response(200)
                body = data[start:]
                if outer.length:
                    self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if outer.truncate_at is not None:
                    body = body[: outer.truncate_at]  # then hang up early
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/files/w.torch?download=1"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def serve():
    servers: list[_Server] = []

    def start(data: bytes = PAYLOAD, **kwargs) -> _Server:
        servers.append(_Server(data, **kwargs))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


def _record(url: str, data: bytes = PAYLOAD, **changes) -> WeightsRecord:
    record = WeightsRecord(
        name="testw",
        url=url,
        filename="w.torch",
        size=len(data),
        md5=hashlib.md5(data).hexdigest(),
    )
    return replace(record, **changes)


def _closed_port_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/w.torch"


# ----------------------------------------------------------------------- registry


def test_official_record_points_at_zenodo_record_10528450():
    assert FMCIB_WEIGHTS.api_url == "https://zenodo.org/api/records/10528450"
    assert REGISTRY["fmcib"] is FMCIB_WEIGHTS
    assert FMCIB_WEIGHTS.url == (
        "https://zenodo.org/records/10528450/files/model_weights.torch?download=1"
    )
    assert FMCIB_WEIGHTS.filename == "model_weights.torch"
    assert FMCIB_WEIGHTS.license == "CC BY-NC 4.0"


def test_default_cache_dir_precedence(monkeypatch, tmp_path):
    monkeypatch.delenv("SKFMCIB_CACHE_DIR", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    assert default_cache_dir() == Path.home() / ".cache" / "skfmcib"
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert default_cache_dir() == tmp_path / "xdg" / "skfmcib"
    monkeypatch.setenv("SKFMCIB_CACHE_DIR", str(tmp_path / "own"))
    assert default_cache_dir() == tmp_path / "own"
    assert cached_weights_path("fmcib") == tmp_path / "own" / "fmcib" / "model_weights.torch"


def test_unknown_weights_name_is_rejected(tmp_path):
    with pytest.raises(ValueError, match="registered"):
        fetch_weights("nope", cache_dir=tmp_path)


# ----------------------------------------------------------------------- download


def test_fresh_download_is_verified_and_moved_into_place(serve, tmp_path):
    server = serve()
    path = fetch_weights(_record(server.url), cache_dir=tmp_path, progress=False)
    assert path == tmp_path / "testw" / "w.torch"
    assert path.read_bytes() == PAYLOAD
    assert not path.with_name("w.torch.part").exists()
    assert server.requests == [None]


def test_partial_download_resumes_with_a_range_request(serve, tmp_path):
    server = serve()
    record = _record(server.url)
    part = tmp_path / "testw" / "w.torch.part"
    part.parent.mkdir()
    part.write_bytes(PAYLOAD[:1000])
    path = fetch_weights(record, cache_dir=tmp_path, progress=False)
    assert server.requests == ["bytes=1000-"]
    assert path.read_bytes() == PAYLOAD


def test_server_ignoring_range_restarts_from_scratch(serve, tmp_path):
    server = serve(ranges=False)
    part = tmp_path / "testw" / "w.torch.part"
    part.parent.mkdir()
    part.write_bytes(b"x" * 1000)  # not even a prefix of the file: must be discarded
    path = fetch_weights(_record(server.url), cache_dir=tmp_path, progress=False)
    assert server.requests == ["bytes=1000-"]
    assert path.read_bytes() == PAYLOAD


def test_complete_part_of_unknown_size_restarts_after_416(serve, tmp_path):
    server = serve()
    part = tmp_path / "testw" / "w.torch.part"
    part.parent.mkdir()
    part.write_bytes(PAYLOAD)
    record = _record(server.url, size=None)
    path = fetch_weights(record, cache_dir=tmp_path, progress=False)
    assert server.requests == [f"bytes={len(PAYLOAD)}-", None]
    assert path.read_bytes() == PAYLOAD


def test_interrupted_download_keeps_the_part_and_resumes(serve, tmp_path):
    broken = serve(truncate_at=1234)
    record = _record(broken.url)
    with pytest.raises(WeightsDownloadError, match="resume"):
        fetch_weights(record, cache_dir=tmp_path, progress=False)
    part = tmp_path / "testw" / "w.torch.part"
    assert part.stat().st_size == 1234
    good = serve()
    path = fetch_weights(record, cache_dir=tmp_path, url=good.url, progress=False)
    assert good.requests == ["bytes=1234-"]
    assert path.read_bytes() == PAYLOAD


def test_a_cut_download_without_length_is_kept_and_resumed_when_the_size_is_known(serve, tmp_path):
    broken = serve(truncate_at=1234, length=False)
    record = _record(broken.url)
    with pytest.raises(WeightsDownloadError, match=r"stopped at 1234 of \d+ bytes"):
        fetch_weights(record, cache_dir=tmp_path, progress=False)
    assert (tmp_path / "testw" / "w.torch.part").stat().st_size == 1234
    good = serve(length=False)
    path = fetch_weights(record, cache_dir=tmp_path, url=good.url, progress=False)
    assert good.requests == ["bytes=1234-"] and path.read_bytes() == PAYLOAD


def test_a_stale_partial_file_is_downloaded_again_from_the_start(serve, tmp_path):
    server = serve()
    part = tmp_path / "testw" / "w.torch.part"
    part.parent.mkdir()
    part.write_bytes(b"x" * 1000)  # another file's start: resuming gives a wrong md5
    path = fetch_weights(_record(server.url), cache_dir=tmp_path, progress=False)
    assert server.requests == ["bytes=1000-", None] and path.read_bytes() == PAYLOAD
    # With nothing to check it against, a partial file is never resumed.
    part.write_bytes(b"x" * 1000)
    unchecked = _record(server.url, size=None, md5=None)
    path.unlink()
    assert fetch_weights(unchecked, cache_dir=tmp_path, progress=False).read_bytes() == PAYLOAD
    assert server.requests[2:] == [None]


def test_md5_mismatch_deletes_the_download_and_raises(serve, tmp_path):
    server = serve()
    record = _record(server.url, md5="0" * 32)
    with pytest.raises(WeightsChecksumError, match="md5") as excinfo:
        fetch_weights(record, cache_dir=tmp_path, progress=False)
    assert isinstance(excinfo.value, WeightsDownloadError)
    assert not (tmp_path / "testw" / "w.torch.part").exists()
    assert not (tmp_path / "testw" / "w.torch").exists()


def test_server_size_differing_from_the_record_fails_before_downloading(serve, tmp_path):
    server = serve()
    record = _record(server.url, size=len(PAYLOAD) + 1)
    with pytest.raises(WeightsChecksumError, match=str(len(PAYLOAD) + 1)):
        fetch_weights(record, cache_dir=tmp_path, progress=False)
    assert not (tmp_path / "testw" / "w.torch.part").exists()


def test_connection_refused_explains_where_to_put_the_file(tmp_path):
    record = _record(_closed_port_url())
    with pytest.raises(WeightsDownloadError) as excinfo:
        fetch_weights(record, cache_dir=tmp_path, progress=False)
    message = str(excinfo.value)
    assert str(tmp_path / "testw" / "w.torch") in message
    assert record.url in message
    assert "weights=" in message
    assert record.md5 in message


def test_http_error_is_reported_with_the_status(serve, tmp_path):
    server = serve(status=404)
    with pytest.raises(WeightsDownloadError, match="HTTP 404"):
        fetch_weights(_record(server.url), cache_dir=tmp_path, progress=False)


def test_cached_file_is_used_without_any_request(serve, tmp_path):
    server = serve()
    record = _record(server.url)
    target = cached_weights_path(record, cache_dir=tmp_path)
    target.parent.mkdir(parents=True)
    target.write_bytes(PAYLOAD)
    assert fetch_weights(record, cache_dir=tmp_path) == target
    assert server.requests == []
    # not even a reachable server is needed
    assert fetch_weights(record, cache_dir=tmp_path, url=_closed_port_url()) == target


def test_cached_file_of_the_wrong_size_is_downloaded_again(serve, tmp_path):
    server = serve()
    record = _record(server.url)
    target = cached_weights_path(record, cache_dir=tmp_path)
    target.parent.mkdir(parents=True)
    target.write_bytes(b"truncated")
    assert fetch_weights(record, cache_dir=tmp_path, progress=False).read_bytes() == PAYLOAD
    assert server.requests == [None]


def _zenodo_json(data: bytes, filename: str = "w.torch") -> bytes:
    entry = {
        "key": filename,
        "size": len(data),
        "checksum": f"md5:{hashlib.md5(data).hexdigest()}",
    }
    return json.dumps({"id": 1, "files": [{"key": "other.txt", "size": 1}, entry]}).encode()


def test_unpinned_record_is_checked_against_the_published_record(serve, tmp_path):
    api, server = serve(_zenodo_json(PAYLOAD)), serve()
    record = _record(server.url, size=None, md5=None, api_url=api.url)
    assert fetch_weights(record, cache_dir=tmp_path, progress=False).read_bytes() == PAYLOAD
    assert api.requests == [None] and server.requests == [None]


def test_download_differing_from_the_published_record_is_deleted(serve, tmp_path):
    api, server = serve(_zenodo_json(PAYLOAD[:-1] + b"?")), serve()
    record = _record(server.url, size=None, md5=None, api_url=api.url)
    with pytest.raises(WeightsChecksumError, match="md5"):
        fetch_weights(record, cache_dir=tmp_path, progress=False)
    assert not (tmp_path / "testw" / "w.torch").exists()


@pytest.mark.parametrize(
    "api_body", [b"not json", json.dumps({"files": [{"key": "other"}]}).encode()]
)
def test_unusable_published_record_refuses_to_download(serve, tmp_path, api_body):
    api, server = serve(api_body), serve()
    record = _record(server.url, size=None, md5=None, api_url=api.url)
    with pytest.raises(WeightsDownloadError, match="w.torch"):
        fetch_weights(record, cache_dir=tmp_path, progress=False)
    assert server.requests == []


def test_progress_is_reported_on_stderr(serve, tmp_path, capsys):
    server = serve()
    fetch_weights(_record(server.url), cache_dir=tmp_path, progress=True)
    err = capsys.readouterr().err
    assert "w.torch" in err and "100.0%" in err


def test_license_notice_is_shown_once(serve, tmp_path, monkeypatch):
    monkeypatch.setattr(weights, "_NOTICES_SHOWN", set())
    record = _record(_closed_port_url(), license="CC BY-NC 4.0")
    target = cached_weights_path(record, cache_dir=tmp_path)
    target.parent.mkdir(parents=True)
    target.write_bytes(PAYLOAD)
    with pytest.warns(WeightsLicenseNotice, match="non-commercial"):
        fetch_weights(record, cache_dir=tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fetch_weights(record, cache_dir=tmp_path)


# --------------------------------------------------------------------- checkpoints


@pytest.fixture(scope="module")
def small():
    encoder, _ = load_encoder(None, config=SMALL, random_state=0)
    return encoder


@pytest.fixture(scope="module")
def x():
    return torch.randn(2, 1, 32, 32, 32, generator=torch.Generator().manual_seed(1))


def _sd(encoder: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in encoder.state_dict().items()}


def _same_outputs(a: torch.nn.Module, b: torch.nn.Module, x: torch.Tensor) -> bool:
    with torch.no_grad():
        return torch.equal(a.eval()(x), b.eval()(x))


LAYOUTS = {
    "trunk_state_dict": lambda sd: {"trunk_state_dict": sd},
    "lightning": lambda sd: {
        "state_dict": {
            **{f"model.trunk.{k}": v for k, v in sd.items()},
            "model.heads.0.weight": torch.zeros(4, 128),
            "model.heads.0.bias": torch.zeros(4),
        },
        "epoch": 7,
    },
    "lightning_ddp": lambda sd: {
        "state_dict": {f"module.model.trunk.{k}": v for k, v in sd.items()}
        | {"module.model.heads.0.weight": torch.zeros(4, 128)}
    },
    "bare": lambda sd: sd,
    "bare_dataparallel": lambda sd: {f"module.{k}": v for k, v in sd.items()},
    "trunk_with_inner_module": lambda sd: {
        "trunk_state_dict": {f"trunk.module.{k}": v for k, v in sd.items()}
    },
}


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_each_layout_loads_strictly(layout, small, x, tmp_path):
    path = tmp_path / f"{layout}.torch"
    torch.save(LAYOUTS[layout](_sd(small)), path)
    encoder, info = load_encoder(path, config=SMALL)
    assert _same_outputs(small, encoder, x)
    assert info.source == str(path.resolve())
    assert info.digest == hashlib.sha256(path.read_bytes()).hexdigest()
    assert info.config == SMALL


def test_lightning_extras_are_kept_and_heads_dropped(small, tmp_path):
    path = tmp_path / "l.ckpt"
    torch.save(LAYOUTS["lightning"](_sd(small)), path)
    ckpt = read_checkpoint(path)
    assert not any("heads" in k for k in ckpt.state_dict)
    assert set(ckpt.state_dict) == set(small.state_dict())
    assert ckpt.extra == {"epoch": 7}
    assert ckpt.config is None and ckpt.path == path.resolve()


def test_encoder_config_in_the_file_chooses_the_architecture(small, x, tmp_path):
    path = tmp_path / "c.torch"
    torch.save({"trunk_state_dict": _sd(small), "encoder_config": SMALL.to_dict()}, path)
    encoder, info = load_encoder(path)
    assert info.config == SMALL
    assert _same_outputs(small, encoder, x)


def test_legacy_non_zip_checkpoints_load_without_mmap(small, x, tmp_path):
    path = tmp_path / "legacy.pt"
    torch.save({"trunk_state_dict": _sd(small)}, path, _use_new_zipfile_serialization=False)
    encoder, _ = load_encoder(path, config=SMALL)
    assert _same_outputs(small, encoder, x)


def test_missing_num_batches_tracked_is_tolerated(small, x, tmp_path):
    sd = {k: v for k, v in _sd(small).items() if not k.endswith("num_batches_tracked")}
    path = tmp_path / "nbt.torch"
    torch.save(sd, path)
    encoder, _ = load_encoder(path, config=SMALL)
    assert _same_outputs(small, encoder, x)


def test_half_precision_weights_are_loaded_as_float32(small, tmp_path):
    sd = {k: v.half() if v.is_floating_point() else v for k, v in _sd(small).items()}
    path = tmp_path / "half.torch"
    torch.save(sd, path)
    encoder, _ = load_encoder(path, config=SMALL)
    assert all(p.dtype == torch.float32 for p in encoder.parameters())


def test_loaded_encoder_is_usable_and_the_file_stays_untouched(small, tmp_path):
    path = save_checkpoint(small, tmp_path / "s.torch")
    before = path.read_bytes()
    encoder, _ = load_encoder(path)
    assert not encoder.training
    for name, p in encoder.named_parameters():
        assert isinstance(p, torch.nn.Parameter) and p.requires_grad, name
        assert p.dtype == torch.float32 and p.is_contiguous() and p.device.type == "cpu"
    assert all(not b.is_meta for b in encoder.buffers())
    out = encoder(torch.randn(1, 1, 50, 50, 50))
    out.sum().backward()
    assert encoder.conv1.weight.grad is not None
    with torch.no_grad():
        for p in encoder.parameters():
            p.add_(1.0)  # memory-mapped tensors are copy-on-write
    assert path.read_bytes() == before


# ------------------------------------------------------------------ strict errors


def test_missing_key_is_named_with_the_file(small, tmp_path):
    sd = _sd(small)
    del sd["layer4.0.conv2.weight"]
    path = tmp_path / "missing.torch"
    torch.save({"trunk_state_dict": sd}, path)
    with pytest.raises(CheckpointError) as excinfo:
        load_encoder(path, config=SMALL)
    message = str(excinfo.value)
    assert str(path.resolve()) in message
    assert "missing keys (1): layer4.0.conv2.weight" in message


def test_unexpected_key_is_named_with_the_file(small, tmp_path):
    sd = _sd(small)
    sd["fc.weight"] = torch.zeros(3, 128)
    path = tmp_path / "unexpected.torch"
    torch.save({"trunk_state_dict": sd}, path)
    with pytest.raises(CheckpointError, match=r"unexpected keys \(1\): fc\.weight") as excinfo:
        load_encoder(path, config=SMALL)
    assert str(path.resolve()) in str(excinfo.value)


def test_wrong_architecture_lists_keys_and_suggests_the_right_one(tmp_path):
    other, _ = load_encoder(None, config=OTHER, random_state=0)
    path = tmp_path / "resnet18.torch"
    torch.save({"trunk_state_dict": _sd(other)}, path)
    with pytest.raises(CheckpointError) as excinfo:
        load_encoder(path, config=SMALL)
    message = str(excinfo.value)
    assert str(path.resolve()) in message
    assert "unexpected keys" in message and "layer1.1.conv1.weight" in message
    assert "shape mismatches" in message and "conv1.weight: checkpoint (32, 1, 7, 7, 7)" in message
    assert "different architecture (arch='resnet18', widen_factor=0.5" in message


def test_fmcib_default_architecture_rejects_a_small_checkpoint(small, tmp_path):
    path = tmp_path / "small.torch"
    torch.save(_sd(small), path)
    with pytest.raises(CheckpointError, match="arch='resnet10', widen_factor=0.25"):
        load_encoder(path)  # no config anywhere: the FMCIB ResNet-50 is expected


def test_one_mis_shaped_tensor_is_named_without_guessing_another_architecture(small, tmp_path):
    state = _sd(small)
    state["conv1.weight"] = state["conv1.weight"][:3].clone()
    path = tmp_path / "odd.torch"
    torch.save({"trunk_state_dict": state, "encoder_config": small.config.to_dict()}, path)
    with pytest.raises(CheckpointError, match=r"shape mismatches \(1\): conv1\.weight") as excinfo:
        load_encoder(path)
    assert "different architecture" not in str(excinfo.value)


def test_corrupt_file_is_refused_with_its_name(tmp_path):
    path = tmp_path / "random.torch"
    path.write_bytes(random.Random(1).randbytes(4096))
    with pytest.raises(CheckpointError, match="not a readable torch checkpoint") as excinfo:
        read_checkpoint(path)
    assert str(path.resolve()) in str(excinfo.value)


def test_truncated_checkpoint_is_refused(small, tmp_path):
    path = save_checkpoint(small, tmp_path / "t.torch")
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match=re.escape(str(path.resolve()))):
        load_encoder(path)


TRIPPED: list[str] = []


def _trip() -> None:  # would run if the pickle were loaded unsafely
    TRIPPED.append("code ran")


class _Tripwire:
    def __reduce__(self):
        return (_trip, ())


def test_pickled_objects_are_refused_without_running_code(small, tmp_path):
    path = tmp_path / "unsafe.torch"
    torch.save({"trunk_state_dict": _sd(small), "payload": _Tripwire()}, path)
    with pytest.raises(CheckpointError, match="Refusing to load") as excinfo:
        read_checkpoint(path)
    assert str(path.resolve()) in str(excinfo.value)
    assert "_trip" in str(excinfo.value)
    assert TRIPPED == []


@pytest.mark.parametrize("blocked", [os.system, exec])
def test_blocked_modules_are_named_and_loading_unsafely_is_never_advised(tmp_path, blocked):
    class Payload:
        def __reduce__(self):
            return (blocked, ("print('code ran')",))

    path = tmp_path / "unsafe.torch"
    torch.save({"trunk_state_dict": {}, "payload": Payload()}, path)
    with pytest.raises(CheckpointError, match="Refusing to load") as excinfo:
        read_checkpoint(path)
    assert blocked.__name__ in str(excinfo.value)
    assert "weights_only` set to `False" not in str(excinfo.value)


@pytest.mark.parametrize(
    ("content", "says"),
    [
        (b"<!DOCTYPE html><html><body>Not Found</body></html>", "a web page"),
        (b"", "the file is empty"),
        (pickle.dumps({"conv1.weight": [1.0]}, protocol=4), "a plain Python pickle"),
    ],
)
def test_files_that_are_not_checkpoints_say_what_they_look_like(tmp_path, content, says):
    path = tmp_path / "model.torch"
    path.write_bytes(content)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the error says it all: no warning of torch's
        with pytest.raises(CheckpointError, match="not a readable torch checkpoint") as excinfo:
            read_checkpoint(path)
    assert says in str(excinfo.value) and "weights_only" not in str(excinfo.value)


def test_a_safetensors_file_with_another_suffix_is_recognised(small, tmp_path):
    pytest.importorskip("safetensors")
    path = save_checkpoint(small, tmp_path / "enc.safetensors")
    renamed = path.rename(tmp_path / "enc.torch")
    with pytest.raises(CheckpointError, match="safetensors file: give it the .safetensors"):
        read_checkpoint(renamed)


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ([1, 2, 3], "holds a list"),
        ({"trunk_state_dict": {"conv1.weight": 3}}, r"'conv1\.weight' \(int\)"),
        ({"trunk_state_dict": [torch.zeros(1)]}, "'trunk_state_dict' is a list"),
        ({"epoch": 1, "name": "x"}, r"found top-level keys \['epoch', 'name'\]"),
        ({"trunk_state_dict": {}, "encoder_config": {"depth": 3}}, "encoder_config"),
        (
            {"trunk_state_dict": {}, "encoder_config": {"arch": "resnet999"}},
            r"invalid 'encoder_config': unknown architecture 'resnet999'",
        ),
    ],
)
def test_files_without_a_tensor_mapping_are_refused(content, match, tmp_path):
    path = tmp_path / "odd.torch"
    torch.save(content, path)
    with pytest.raises(CheckpointError, match=match) as excinfo:
        read_checkpoint(path)
    assert str(path.resolve()) in str(excinfo.value)


def test_missing_file_and_unknown_name(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_checkpoint(tmp_path / "absent.torch")
    with pytest.raises(FileNotFoundError, match="not a registered weights name") as excinfo:
        load_encoder(str(tmp_path / "absent.torch"))
    assert "weights=None" not in str(excinfo.value)
    with pytest.raises(FileNotFoundError, match="random weights are weights=None"):
        load_encoder("random")
    with pytest.raises(TypeError):
        load_encoder(42)


# ------------------------------------------------------------------------ digests


def test_digest_is_sha256_memoised_and_follows_changes(tmp_path, monkeypatch):
    path = tmp_path / "f.bin"
    path.write_bytes(b"abc")
    calls = []
    real = weights._hash_file
    monkeypatch.setattr(weights, "_hash_file", lambda p, a: calls.append(p) or real(p, a))
    first = file_digest(path)
    assert first == hashlib.sha256(b"abc").hexdigest()
    assert file_digest(str(path)) == first
    assert len(calls) == 1
    path.write_bytes(b"abcd")
    assert file_digest(path) == hashlib.sha256(b"abcd").hexdigest()
    assert len(calls) == 2


def test_digest_memo_misses_a_same_size_rewrite_with_the_old_mtime(tmp_path):
    path = tmp_path / "f.bin"
    path.write_bytes(b"abc")
    assert file_digest(path) == hashlib.sha256(b"abc").hexdigest()
    rewrite_keeping_size_and_mtime(path, b"xyz")
    assert file_digest(path) == hashlib.sha256(b"xyz").hexdigest()


def test_loading_does_not_hash_the_file_until_the_digest_is_asked_for(
    small, tmp_path, monkeypatch
):
    path = save_checkpoint(small, tmp_path / "w.torch")
    calls = []
    real = weights._hash_file
    monkeypatch.setattr(weights, "_hash_file", lambda p, a: calls.append(p) or real(p, a))
    _, info = load_encoder(path)
    assert calls == []
    assert "not computed yet" in repr(info)
    assert info.digest == hashlib.sha256(path.read_bytes()).hexdigest()
    assert info.digest == read_checkpoint(path).digest
    assert len(calls) == 1  # memoised
    # Pickling stores the digest; the copy compares equal and needs no file.
    copy = pickle.loads(pickle.dumps(info))
    assert copy == info and copy.digest == info.digest and hash(copy) == hash(info)


def test_digest_of_a_file_changed_after_loading_is_refused(small, tmp_path):
    path = save_checkpoint(small, tmp_path / "w.torch")
    _, info = load_encoder(path)
    ckpt = read_checkpoint(path)
    other, _ = load_encoder(None, config=SMALL, random_state=1)
    save_checkpoint(other, path)  # replaced: new inode and contents
    with pytest.raises(CheckpointError, match="changed after its weights were read"):
        _ = info.digest
    with pytest.raises(CheckpointError, match="changed after its weights were read"):
        _ = ckpt.digest
    # Rewritten in place at the same size with the old modification time: still seen.
    path = save_checkpoint(small, tmp_path / "v.torch")
    _, info = load_encoder(path)
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    rewrite_keeping_size_and_mtime(path, bytes(data))
    with pytest.raises(CheckpointError, match="changed after its weights were read"):
        _ = info.digest
    _, again = load_encoder(save_checkpoint(small, path))
    path.unlink()
    with pytest.raises(CheckpointError, match="removed after its weights were read"):
        _ = again.digest


# ------------------------------------------------------------------- random init


def test_random_init_is_deterministic_and_leaves_the_global_rng_alone(x):
    state = torch.get_rng_state()
    a, info = load_encoder(None, config=SMALL, random_state=3)
    b, _ = load_encoder(None, config=SMALL, random_state=3)
    c, _ = load_encoder(None, config=SMALL, random_state=4)
    assert torch.equal(torch.get_rng_state(), state)
    assert _same_outputs(a, b, x)
    assert not torch.equal(a.conv1.weight, c.conv1.weight)
    assert (info.source, info.digest, info.config, info.path) == (
        "random",
        "random:3",
        SMALL,
        None,
    )
    assert not a.training
    assert load_encoder(None, config=SMALL, random_state=np.int64(3))[1].digest == "random:3"
    with pytest.raises(TypeError, match="random_state"):
        load_encoder(None, config=SMALL, random_state=0.5)


def test_random_init_defaults_to_the_fmcib_architecture():
    encoder, info = load_encoder(None, config={"arch": "resnet10", "widen_factor": 0.25})
    assert info.config == SMALL and info.digest == "random:None"
    assert encoder.out_features == 128


# ------------------------------------------------------------------------- saving


@pytest.mark.parametrize("suffix", [".torch", ".safetensors"])
def test_save_and_reload_gives_identical_outputs(suffix, small, x, tmp_path):
    if suffix == ".safetensors":
        pytest.importorskip("safetensors")
    path = save_checkpoint(small, tmp_path / "sub" / f"net{suffix}", extra={"note": "v1"})
    encoder, info = load_encoder(path)
    assert info.config == SMALL
    assert info.digest == file_digest(path)
    assert _same_outputs(small, encoder, x)
    ckpt = read_checkpoint(path)
    assert ckpt.extra == {"note": "v1"}
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]  # no temporaries


def test_save_rejects_reserved_and_unsafe_extras(small, tmp_path):
    with pytest.raises(ValueError, match="reserved"):
        save_checkpoint(small, tmp_path / "a.torch", extra={"encoder_config": {}})
    with pytest.raises(TypeError, match="Tripwire"):
        save_checkpoint(small, tmp_path / "a.torch", extra={"obj": _Tripwire()})
    with pytest.raises(TypeError):
        save_checkpoint(torch.nn.Linear(2, 2), tmp_path / "a.torch")
    assert list(tmp_path.iterdir()) == []


def test_failed_save_leaves_the_previous_file(small, tmp_path, monkeypatch):
    path = save_checkpoint(small, tmp_path / "keep.torch")
    before = path.read_bytes()

    def fail(obj, f):
        Path(f).write_bytes(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", fail)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(small, path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.torch"]


# ------------------------------------------------------------- the registered name


def test_load_encoder_fmcib_reads_the_cached_official_file(small, x, tmp_path, monkeypatch):
    monkeypatch.setattr(weights, "_NOTICES_SHOWN", set())
    # A record of the small encoder's architecture stands in for the 700 MB file.
    record = replace(FMCIB_WEIGHTS, url=_closed_port_url(), config=small.config)
    monkeypatch.setitem(REGISTRY, "fmcib", record)
    target = cached_weights_path("fmcib", cache_dir=tmp_path)
    save_checkpoint(small, target)
    with pytest.warns(WeightsLicenseNotice, match="CC BY-NC 4.0") as notices:
        encoder, info = load_encoder("fmcib", cache_dir=tmp_path)
    assert notices[0].filename == __file__  # points at the caller's line, not the package's
    assert info.source == "fmcib" and info.path == target.resolve()
    assert _same_outputs(small, encoder, x)


def _official_cache_path(cache_dir, monkeypatch) -> Path:
    """Where the official file goes in ``cache_dir``; downloading it would fail at once."""
    monkeypatch.setattr(weights, "_NOTICES_SHOWN", {"fmcib"})
    monkeypatch.setitem(REGISTRY, "fmcib", replace(FMCIB_WEIGHTS, url=_closed_port_url()))
    return cached_weights_path("fmcib", cache_dir=cache_dir)


def test_another_encoder_in_the_official_cache_place_is_refused(small, tmp_path, monkeypatch):
    target = _official_cache_path(tmp_path, monkeypatch)
    save_checkpoint(small, target)  # records its own, smaller architecture
    with pytest.raises(CheckpointError, match=r"holds a checkpoint of another encoder.*remove it"):
        load_encoder("fmcib", cache_dir=tmp_path)


def test_a_corrupt_cached_official_file_says_to_remove_it(tmp_path, monkeypatch):
    target = _official_cache_path(tmp_path, monkeypatch)
    target.parent.mkdir(parents=True)
    target.write_bytes(random.Random(2).randbytes(4096))
    with pytest.raises(CheckpointError, match=r"cached copy of the registered weights 'fmcib'"):
        load_encoder("fmcib", cache_dir=tmp_path)


def test_a_cache_folder_that_cannot_be_written_is_a_download_error(tmp_path, monkeypatch):
    target = _official_cache_path(tmp_path, monkeypatch)
    # The lock file cannot be opened (as in a read-only folder): here, a folder by its name.
    target.with_name(target.name + ".lock").mkdir(parents=True)
    with pytest.raises(WeightsDownloadError, match="Cannot write to the weights cache folder"):
        fetch_weights("fmcib", cache_dir=tmp_path, progress=False)


def test_load_encoder_fmcib_offline_explains_the_manual_route(tmp_path, monkeypatch):
    monkeypatch.setattr(weights, "_NOTICES_SHOWN", {"fmcib"})
    offline = replace(FMCIB_WEIGHTS, url=_closed_port_url(), api_url=_closed_port_url())
    monkeypatch.setitem(REGISTRY, "fmcib", offline)
    with pytest.raises(WeightsDownloadError) as excinfo:
        load_encoder("fmcib", cache_dir=tmp_path, progress=False)
    assert str(tmp_path / "fmcib" / "model_weights.torch") in str(excinfo.value)


# ------------------------------------------------------------ the real FMCIB layout


@pytest.mark.slow
def test_fmcib_layout_loads_strictly_and_reproduces_reference_features(shared_data, tmp_path):
    fixtures = shared_data / "fixtures"
    spec = importlib.util.spec_from_file_location("make_weights", fixtures / "make_weights.py")
    make_weights = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make_weights)
    path = tmp_path / "model_weights.torch"
    with warnings.catch_warnings():  # the fixture script leaves a file to the GC
        warnings.simplefilter("ignore", ResourceWarning)
        make_weights.make(str(path), 2024)

    ckpt = read_checkpoint(path)
    assert len(ckpt.state_dict) == 322
    encoder, info = load_encoder(path)  # no config: the FMCIB ResNet-50 defaults
    assert info.config == EncoderConfig()
    assert isinstance(encoder, ResNet3D) and encoder.out_features == 4096
    assert sum(p.numel() for p in encoder.parameters()) == 184_477_824

    reference = np.load(fixtures / "reference_outputs.npz")
    with torch.inference_mode():
        features = encoder(torch.from_numpy(reference["patches"])).numpy()
    # Relative to each row's largest feature (930-2160): float32 sums in another
    # order (another thread count, another CPU) move small features by up to ~1e-6 of it.
    scale = np.abs(reference["features"]).max(axis=1, keepdims=True)
    assert (np.abs(features - reference["features"]) / scale).max() < 1e-5


def test_a_save_removes_the_temporary_file_a_killed_writer_left(tmp_path):
    import subprocess
    import sys

    from skfmcib._files import _HOST

    finished = subprocess.Popen([sys.executable, "-c", "pass"])
    finished.wait()  # its pid no longer runs
    target = tmp_path / "enc.pt"
    abandoned = tmp_path / f".enc.pt.{_HOST}.{finished.pid}.0badc0de.tmp"
    in_progress = tmp_path / f".enc.pt.{_HOST}.{os.getpid()}.5ca1ab1e.tmp"
    elsewhere = tmp_path / f".enc.pt.another-host.{finished.pid}.0ddba11.tmp"
    for leftover in (abandoned, in_progress, elsewhere):
        leftover.write_bytes(b"half a checkpoint")
    save_checkpoint(ResNet3D(EncoderConfig("resnet10", 0.125)), target)
    assert read_checkpoint(target).config.arch == "resnet10"
    assert not abandoned.exists()
    assert in_progress.exists() and elsewhere.exists()  # a writer still running, or unknown


# ------------------------------------------------ a weights file changed while in use


def _tiny_file(path: Path, seed: int) -> Path:
    net, _ = load_encoder(None, config=SMALL, random_state=seed)
    return save_checkpoint(net, path)


def test_weights_rewritten_in_place_after_fit_are_refused(tmp_path):
    # Weights are memory-mapped pages of the file: rewritten in place, the fitted model's
    # weights would change under it (and the cache would file them under the old digest).
    from skfmcib import FMCIBTransformer

    path = _tiny_file(tmp_path / "w.torch", seed=0)
    patches = np.random.default_rng(0).random((2, 1, 50, 50, 50), dtype=np.float32)
    model = FMCIBTransformer(weights=path, arch=SMALL.to_dict(), device="cpu").fit()
    before = model.transform(patches)
    inode = path.stat().st_ino
    torch.save({"trunk_state_dict": load_encoder(None, config=SMALL, random_state=1)[0]
                .state_dict()}, path)  # fmt: skip
    assert path.stat().st_ino == inode  # the same file, rewritten
    with pytest.raises(CheckpointError, match=r"w\.torch was rewritten after its weights were"):
        model.transform(patches)
    # Cut short: an error, not a crash reading pages that no longer exist.
    path.write_bytes(b"")
    with pytest.raises(CheckpointError, match="rewritten"):
        model.transform(patches)
    # Replaced by a rename, the file read stays as it was: the model keeps its weights.
    fresh = FMCIBTransformer(weights=_tiny_file(path, 0), arch=SMALL.to_dict(), device="cpu")
    fresh.fit()
    np.testing.assert_array_equal(fresh.transform(patches), before)
    _tiny_file(tmp_path / "new.torch", seed=1).replace(path)
    np.testing.assert_array_equal(fresh.transform(patches), before)


# ------------------------------------------------ weights that cannot give features


@pytest.mark.parametrize(
    ("entry", "value", "says"),
    [
        ("layer1.0.conv1.weight", float("nan"), r"1 entry \(layer1\.0\.conv1\.weight\)"),
        ("bn1.weight", float("inf"), r"\(bn1\.weight\)"),
        ("bn1.running_var", -1.0, r"\(bn1\.running_var \(negative variance\)\)"),
    ],
)
def test_weights_that_give_nan_features_are_named_and_nothing_is_cached(
    tmp_path, entry, value, says
):
    from skfmcib import FMCIBTransformer

    net, _ = load_encoder(None, config=SMALL, random_state=0)
    assert weights.bad_values(net) == []
    with torch.no_grad():
        net.state_dict()[entry].view(-1)[0] = value
    path = save_checkpoint(net, tmp_path / "broken.torch")
    patches = np.random.default_rng(0).random((3, 1, 50, 50, 50), dtype=np.float32)
    model = FMCIBTransformer(weights=path, device="cpu", memory=tmp_path / "cache").fit()
    with pytest.raises(CheckpointError, match=r"broken\.torch: .*patches 0, 1, 2.*" + says):
        model.transform(patches)
    assert not list((tmp_path / "cache").rglob("*.npy"))


def test_finite_weights_that_overflow_name_the_rows(tmp_path):
    from skfmcib import FMCIBTransformer

    model = FMCIBTransformer(weights=None, arch=SMALL.to_dict(), device="cpu").fit()
    patches = np.zeros((3, 1, 50, 50, 50), dtype=np.float32)
    patches[1] = 3e38  # finite, but no convolution of it is
    with pytest.raises(ValueError, match=r"features for patch 1 at precision 'fp32'; are the"):
        model.transform(patches)
