"""The gzip stream behind gzipped NIfTI reads: content, members, corrupt and cut files."""

from __future__ import annotations

import gzip

import numpy as np
import pytest

from skfmcib import _inflate
from skfmcib._inflate import GzipError, GzipStream

pytestmark = pytest.mark.skipif(not _inflate.available(), reason="isal is not installed")


def _content(n=3_000_000, seed=0):
    rng = np.random.default_rng(seed)
    # Compressible like a CT: small integers in runs.
    return np.repeat(rng.integers(0, 40, n // 8, dtype=np.int16), 4).tobytes()


def _read_all(path, block):
    out = []
    with GzipStream(str(path)) as stream:
        while len(data := stream.read(block)) == block:
            out.append(data)
        out.append(data)
        assert stream.read(block) == b""  # the end stays the end
    return b"".join(out)


@pytest.mark.parametrize("block", [1, 4097, 2**20, 2**23])
def test_content_is_gzips_whatever_the_block(tmp_path, monkeypatch, block):
    content = _content()
    path = tmp_path / "a.gz"
    path.write_bytes(gzip.compress(content, compresslevel=6))
    if block == 1:  # tiny input and output slices too
        monkeypatch.setattr(_inflate, "_INPUT_BYTES", 1000)
        monkeypatch.setattr(_inflate, "_MIN_INPUT_BYTES", 1000)
        content = content[:200_000]
        path.write_bytes(gzip.compress(content))
        block = 999
    else:
        monkeypatch.setattr(_inflate, "BLOCK_BYTES", 2**21)  # blocks joined
    assert _read_all(path, block) == content


def test_members_one_after_another_and_trailing_bytes(tmp_path):
    content = _content()
    path = tmp_path / "a.gz"
    parts = [content[:5], content[5:1_000_000], b"", content[1_000_000:]]
    path.write_bytes(b"".join(gzip.compress(p) for p in parts) + b"\0\0\0\0")
    assert _read_all(path, 2**16) == content


def test_skip_then_read(tmp_path):
    content = _content()
    path = tmp_path / "a.gz"
    path.write_bytes(gzip.compress(content))
    with GzipStream(str(path)) as stream:
        stream.skip(2_000_001)
        assert stream.read(1000) == content[2_000_001:2_001_001]
        with pytest.raises(GzipError, match="ends before"):
            stream.skip(len(content))


def test_finish_checks_the_end(tmp_path):
    data = gzip.compress(_content())
    bad = tmp_path / "bad.gz"
    bad.write_bytes(data[:-8] + bytes([data[-8] ^ 1]) + data[-7:])  # the CRC-32
    with GzipStream(str(bad)) as stream:
        assert len(stream.read(100)) == 100
        with pytest.raises(GzipError, match="checksum"):
            stream.finish()


def test_a_cut_file_and_a_bad_checksum_are_errors(tmp_path):
    data = gzip.compress(_content())
    cut = tmp_path / "cut.gz"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(GzipError, match="ends in the middle"):
        _read_all(cut, 2**16)
    bad = tmp_path / "bad.gz"
    bad.write_bytes(data[:-8] + bytes([data[-8] ^ 1]) + data[-7:])  # the CRC-32
    with pytest.raises(GzipError, match="corrupt.*checksum"):
        _read_all(bad, 2**16)
    empty = tmp_path / "empty.gz"
    empty.write_bytes(b"")
    with pytest.raises(GzipError):
        _read_all(empty, 16)
    text = tmp_path / "text.gz"
    text.write_bytes(b"not gzip at all")
    with pytest.raises(GzipError, match="corrupt"):
        _read_all(text, 16)


def test_the_file_is_released_after_an_error(tmp_path):
    bad = tmp_path / "bad.gz"
    bad.write_bytes(b"\x1f\x8b" + b"\xff" * 100)
    stream = GzipStream(str(bad))
    with pytest.raises(GzipError):
        stream.read(64)
    stream.close()  # no exported buffer left
    assert stream._map is None
