"""Process-level helpers: malloc keeps the encoder's freed memory only while asked to."""

from __future__ import annotations

import ctypes
import threading

import numpy as np
import pytest

import skfmcib._process as process
from skfmcib import FMCIBTransformer

glibc_only = pytest.mark.skipif(process._LIBC is None, reason="needs glibc's mallopt")

BLOCK = 96 * 2**20  # above glibc's largest mmap threshold (32 MiB)


def _malloc_block() -> tuple[int, bool]:
    """Allocate and touch a block as torch does; return it and whether it was mmapped."""
    libc = process._LIBC
    libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
    ptr = libc.malloc(BLOCK)
    assert ptr
    ctypes.memset(ptr, 1, BLOCK)
    # glibc's chunk header: the size word before the block, bit 1 = IS_MMAPPED.
    mapped = bool(ctypes.c_size_t.from_address(ptr - ctypes.sizeof(ctypes.c_size_t)).value & 2)
    return ptr, mapped


def _free(ptr: int) -> None:
    process._LIBC.free.argtypes = [ctypes.c_void_p]
    process._LIBC.free(ptr)


def _anon_mib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("RssAnon"):
                return int(line.split()[1]) // 1024
    raise AssertionError("no RssAnon")


@glibc_only
def test_freed_memory_is_reused_inside_the_block_and_given_back_after(monkeypatch):
    monkeypatch.delenv("SKFMCIB_KEEP_FREED_MEMORY", raising=False)
    ptr, mapped = _malloc_block()
    _free(ptr)
    assert mapped  # outside: a new mapping each time, unmapped when freed
    with process.freed_memory_kept():
        ptr, mapped = _malloc_block()
        assert not mapped  # from the heap
        _free(ptr)
        kept = _anon_mib()
        with process.freed_memory_kept():  # nested
            again, mapped = _malloc_block()
            assert not mapped
            _free(again)
        # The inner block's end changed nothing: the outer one is still in effect.
        assert _anon_mib() > kept - 16
        again, mapped = _malloc_block()
        assert not mapped
        _free(again)
    # Given back at the end of the outermost block, and the defaults are back.
    assert _anon_mib() < kept - BLOCK // 2**20 // 2
    ptr, mapped = _malloc_block()
    _free(ptr)
    assert mapped


@glibc_only
def test_keeping_memory_can_be_switched_off(monkeypatch):
    monkeypatch.setenv("SKFMCIB_KEEP_FREED_MEMORY", "0")
    with process.freed_memory_kept():
        ptr, mapped = _malloc_block()
        _free(ptr)
    assert mapped


@glibc_only
def test_concurrent_blocks_restore_only_when_the_last_ends(monkeypatch):
    monkeypatch.delenv("SKFMCIB_KEEP_FREED_MEMORY", raising=False)
    inside, leave = threading.Event(), threading.Event()

    def other() -> None:
        with process.freed_memory_kept():
            inside.set()
            leave.wait(10)

    thread = threading.Thread(target=other)
    thread.start()
    assert inside.wait(10)
    with process.freed_memory_kept():
        pass  # ends first: the other thread's block is still running
    ptr, mapped = _malloc_block()
    _free(ptr)
    assert not mapped
    leave.set()
    thread.join()
    ptr, mapped = _malloc_block()
    _free(ptr)
    assert mapped


def test_encoder_features_do_not_depend_on_keeping_memory(monkeypatch):
    patches = np.random.default_rng(0).random((5, 1, 50, 50, 50), dtype=np.float32)
    arch = {"arch": "resnet10", "widen_factor": 0.5}
    features = {}
    for keep in ("0", "1"):
        monkeypatch.setenv("SKFMCIB_KEEP_FREED_MEMORY", keep)
        model = FMCIBTransformer(weights=None, arch=arch, random_state=0, device="cpu")
        features[keep] = model.fit(patches).transform(patches)
    assert features["0"].tobytes() == features["1"].tobytes()
