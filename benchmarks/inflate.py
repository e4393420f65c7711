"""Reading a whole full-size ``.nii.gz`` CT: skfmcib (ISA-L) against SimpleITK and zlib.

    python benchmarks/inflate.py

Builds (or reuses) the end-to-end benchmark's first scan (523 x 433 x 269 int16,
``.nii.gz``) and times, in this process, the best of ``--repeat`` reads of the whole
scan: skfmcib's ``read_image`` (inflated with ISA-L where ``isal`` is installed; region
reads of ``open_image`` take the same path), SimpleITK's ``ReadImage`` (zlib-ng),
and Python's ``zlib`` inflating the file's bytes (no NIfTI decoding). Each is timed
alone and beside a thread running Python code, as when torch is imported while the
first scans are read. Prints the times and the ratios to SimpleITK's read.
"""

from __future__ import annotations

import argparse
import threading
import time
import zlib
from pathlib import Path

import numpy as np
from _common import DEFAULT_WORKDIR, build_scans, machine


def _best(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def _beside_busy_thread(fn, repeat: int) -> float:
    stop = threading.Event()

    def busy() -> None:
        x = 0
        while not stop.is_set():
            for i in range(1000):
                x += i

    thread = threading.Thread(target=busy, daemon=True)
    thread.start()
    try:
        return _best(fn, repeat)
    finally:
        stop.set()
        thread.join()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    print(machine())

    import SimpleITK as sitk

    from skfmcib import _inflate
    from skfmcib.io import open_image, read_image

    paths, _ = build_scans(args.workdir, n_scans=1)
    path = str(paths[0])
    with open_image(path) as source:
        strategy, size = source.strategy, source.geometry.size
    whole = sitk.GetArrayFromImage(sitk.ReadImage(path))
    data = Path(path).read_bytes()
    print(
        f"{path}: {size[0]} x {size[1]} x {size[2]} voxels, {whole.nbytes / 2**20:.0f} MiB "
        f"inflated, {len(data) / 2**20:.0f} MiB on disk; skfmcib reads it by {strategy!r} "
        f"(isal installed: {_inflate.available()})"
    )

    def ours() -> np.ndarray:
        return read_image(path).array

    if not np.array_equal(ours(), whole):
        raise SystemExit(f"{path}: skfmcib's voxels differ from SimpleITK's")

    readers = {
        "skfmcib read_image": ours,
        "SimpleITK ReadImage": lambda: sitk.ReadImage(path),
        "Python zlib (bytes only)": lambda: zlib.decompress(data, wbits=31),
    }
    results = {
        name: (_best(fn, args.repeat), _beside_busy_thread(fn, args.repeat))
        for name, fn in readers.items()
    }
    base = results["SimpleITK ReadImage"]
    print("| reader | alone s | SimpleITK / it | beside a busy Python thread s | SimpleITK / it |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for name, (alone, busy) in results.items():
        print(
            f"| {name} | {alone:.3f} | {base[0] / alone:.2f} | {busy:.3f} | {base[1] / busy:.2f} |"
        )


if __name__ == "__main__":
    main()
