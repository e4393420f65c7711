"""Shared helpers of the benchmarks: realistic scans, the checkpoint, measured subprocesses.

Nothing here is part of the package. Scans are built from the real CT beside the
checkout (``../shared/data`` or ``$SKFMCIB_SHARED_DATA``) when it is there, else from a
generated phantom, and cached in the work folder so that re-runs skip the build.
"""

from __future__ import annotations

import compileall
import json
import os
import platform
import runpy
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEFAULT_WORKDIR = Path(tempfile.gettempdir()) / "skfmcib-bench"
# Full-size chest CT: about 0.7 x 0.7 x 1.25 mm, 520 x 430 x 270 voxels.
SPACING = (0.7, 0.7, 1.25)


def shared_data_dir() -> Path | None:
    """The shared real-CT data: $SKFMCIB_SHARED_DATA, else ../shared/data beside the repo."""
    env = os.environ.get("SKFMCIB_SHARED_DATA")
    for c in [Path(env)] if env else [REPO.parent / "shared" / "data"]:
        if (c / "ct").is_dir():
            return c
    return None


def machine() -> str:
    """One line about the machine and its current load (other work skews timings)."""
    load = os.getloadavg() if hasattr(os, "getloadavg") else ("?",) * 3
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            info = f.read()
        name = next(ln.split(":", 1)[1].strip() for ln in info.splitlines() if "model name" in ln)
        flags = next(ln for ln in info.splitlines() if ln.startswith("flags"))
        units = [u for u in ("amx_bf16", "avx512_bf16", "avx512f") if f" {u}" in flags]
        cpu = f"{name} ({', '.join(units) or 'no bf16 units'})"
    except (OSError, StopIteration):
        pass
    return f"{os.cpu_count()} CPU cores, {cpu}; load average " + " ".join(
        f"{v:.2f}" if isinstance(v, float) else v for v in load
    )


def wait_until_quiet(max_wait_s: float, threshold: float = 0.15) -> str:
    """Wait (at most ``max_wait_s``) until other processes use under ``threshold`` cores.

    Timings on a shared machine measure the neighbours as much as the code: this waits
    for a quiet moment (2 s without other work) and says how long it waited.
    """
    import psutil

    if max_wait_s <= 0:
        return "not waited"
    me = os.getpid()
    start = time.monotonic()
    while True:
        procs = [p for p in psutil.process_iter() if p.pid != me]
        for p in procs:
            try:
                p.cpu_percent(None)
            except psutil.Error:
                pass
        time.sleep(2.0)
        busy = 0.0
        for p in procs:
            try:
                busy += p.cpu_percent(None) / 100.0
            except psutil.Error:
                pass
        waited = time.monotonic() - start
        if busy < threshold:
            return f"quiet after {waited:.0f} s"
        if waited > max_wait_s:
            return f"still busy ({busy:.1f} cores used by others) after {waited:.0f} s"


def _source_ct(seed: int = 0):
    """The real CT (3 mm) as float32 SimpleITK image, or a generated chest-like phantom."""
    import SimpleITK as sitk

    data = shared_data_dir()
    if data is not None and (data / "ct" / "example_ct.nii.gz").exists():
        return sitk.ReadImage(str(data / "ct" / "example_ct.nii.gz"), sitk.sitkFloat32), "real"
    rng = np.random.default_rng(seed)
    z, y, x = np.mgrid[:112, :101, :122].astype(np.float32)
    body = ((x - 61) / 55) ** 2 + ((y - 50) / 42) ** 2 < 1
    lungs = (((x - 38) / 18) ** 2 + ((y - 48) / 26) ** 2 < 1) | (
        ((x - 84) / 18) ** 2 + ((y - 48) / 26) ** 2 < 1
    )
    hu = np.where(body, 40.0, -1000.0)
    hu[lungs & body] = -850.0
    for _ in range(40):  # nodules and vessels
        c = rng.uniform([10, 20, 20], [100, 80, 100])
        r = rng.uniform(1.0, 4.0)
        hu[((z - c[0]) ** 2 + (y - c[1]) ** 2 + (x - c[2]) ** 2) < r * r] = rng.uniform(-100, 200)
    img = sitk.GetImageFromArray(hu.astype(np.float32))
    img.SetSpacing((3.0, 3.0, 3.0))
    img.SetOrigin((-180.0, -150.0, -160.0))
    return img, "generated"


def build_scans(workdir: Path, n_scans: int = 4, ext: str = "nii.gz") -> tuple[list[Path], str]:
    """Full-size CTs (resampled to ``SPACING``, CT noise added), cached in ``workdir``.

    ``.nii.gz`` scans are kept in ``workdir``, other formats in a folder of their own:
    SimpleITK's NIfTI reader (nifti_clib, under the reference package) opens
    ``ct0.nii`` when asked for ``ct0.nii.gz`` if both lie in one folder, so the
    reference would read the uncompressed twin.
    """
    import SimpleITK as sitk

    folder = workdir if ext == "nii.gz" else workdir / ext
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"ct{k}.{ext}" for k in range(n_scans)]
    if ext == "nii.gz":
        twins = [p.with_suffix("") for p in paths if p.with_suffix("").exists()]
        if twins:
            raise SystemExit(
                f"{twins[0]} lies beside {twins[0].name}.gz: SimpleITK's NIfTI reader (under "
                "the reference package) would read it instead of the compressed scan. "
                f"Remove the uncompressed ct*.nii files from {workdir} (earlier versions "
                "of this script wrote them there; they now go to its nii/ folder)."
            )
    stamp = folder / f"scans.{ext}.json"
    if stamp.exists() and all(p.exists() for p in paths):
        return paths, json.loads(stamp.read_text())["source"]
    src, kind = _source_ct()
    extent = np.array(src.GetSize()) * np.array(src.GetSpacing())
    size = [int(round(e / s)) for e, s in zip(extent, SPACING, strict=True)]
    print(f"building {n_scans} scans of {size} voxels from the {kind} CT in {workdir} ...")
    fine = sitk.Resample(
        src, size, sitk.Transform(), sitk.sitkLinear, src.GetOrigin(), SPACING,
        src.GetDirection(), -1024.0, sitk.sitkFloat32,
    )  # fmt: skip
    base = sitk.GetArrayFromImage(fine)
    for k, path in enumerate(paths):
        rng = np.random.default_rng(100 + k)
        hu = (base + rng.normal(0, 15, base.shape).astype(np.float32)).round().astype(np.int16)
        img = sitk.GetImageFromArray(hu)
        img.CopyInformation(fine)
        sitk.WriteImage(img, str(path), useCompression=ext.endswith(".gz"))
    stamp.write_text(json.dumps({"source": kind, "size": size, "spacing": SPACING}))
    return paths, kind


def lesion_table(paths: list[Path], per_scan: int, seed: int = 0):
    """Seeds well inside each scan (>= 30 mm from every border: no padding anywhere)."""
    import pandas as pd
    import SimpleITK as sitk

    rng = np.random.default_rng(seed)
    rows = []
    for path in paths:
        reader = sitk.ImageFileReader()
        reader.SetFileName(str(path))
        reader.ReadImageInformation()
        size = np.array(reader.GetSize())
        margin = np.ceil(30.0 / np.array(reader.GetSpacing()))
        for _ in range(per_scan):
            index = rng.uniform(margin, size - 1 - margin)
            direction = np.array(reader.GetDirection()).reshape(3, 3)
            point = np.array(reader.GetOrigin()) + direction @ (
                np.array(reader.GetSpacing()) * index
            )
            rows.append((str(path), *point.tolist()))
    return pd.DataFrame(rows, columns=["image_path", "coordX", "coordY", "coordZ"])


def make_checkpoint(workdir: Path) -> Path:
    """The FMCIB-layout checkpoint of the shared fixtures (seed 2024), or a seeded random one."""
    path = workdir / "fmcib_seed2024.torch"
    if path.exists():
        return path
    data = shared_data_dir()
    script = None if data is None else data / "fixtures" / "make_weights.py"
    if script is not None and script.exists():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            runpy.run_path(str(script))["make"](str(path), seed=2024)
    else:
        import torch

        from skfmcib.encoder import build_encoder
        from skfmcib.weights import save_checkpoint

        torch.manual_seed(2024)
        save_checkpoint(build_encoder(), path)
    return path


def compile_package(folder: Path = REPO / "skfmcib") -> Path:
    """Compile a package's modules to bytecode, as ``pip install`` does; return the folder.

    An installed package comes with its ``.pyc`` files, and so does the reference's
    environment. A checkout writes them on first import, unless
    ``PYTHONDONTWRITEBYTECODE`` is set: then every new process compiles the sources
    again (about 0.1 s for skfmcib), which is not what a user's process pays. The
    benchmarks' processes run in the checkout, so it is the checkout's package that
    they import.
    """
    if not compileall.compile_dir(folder, quiet=1):
        raise SystemExit(f"could not compile the modules of {folder}")
    return folder


def run_measured(cmd: list[str], env: dict | None = None, cwd: Path | None = None) -> dict:
    """Run ``cmd`` in a new process; wall time and peak memory of its process tree.

    The peak is sampled every 20 ms as the sum of the RSS of the process and all its
    descendants (the reference's data-loader workers are separate processes); the
    largest single process's peak comes from the kernel (``ru_maxrss``) via a wrapper,
    and so do the major page faults of the process tree (``ru_majflt``: pages of files
    that were not in the page cache and had to be read from disk).
    """
    import psutil

    wrapper = (
        "import resource, subprocess, sys, json;"
        "rc = subprocess.run(sys.argv[1:]).returncode;"
        "use = resource.getrusage(resource.RUSAGE_CHILDREN);"
        "print('\\n@@RUSAGE ' + json.dumps([rc, use.ru_maxrss, use.ru_majflt]))"
    )
    start = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-c", wrapper, *cmd],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=cwd,
    )
    peak = [0]
    done = threading.Event()

    def sample() -> None:
        try:
            root = psutil.Process(proc.pid)
        except psutil.Error:
            return
        while not done.is_set():
            total = 0
            try:
                family = [root, *root.children(recursive=True)]
            except psutil.Error:
                break
            for p in family[1:]:  # the wrapper itself is not measured
                try:
                    total += p.memory_info().rss
                except psutil.Error:
                    pass
            peak[0] = max(peak[0], total)
            done.wait(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out, err = proc.communicate()
    wall = time.perf_counter() - start
    done.set()
    sampler.join()
    marker = out.rfind("@@RUSAGE ")
    rc, maxrss_kb, majflt = (
        json.loads(out[marker + 9 :].strip()) if marker >= 0 else (proc.returncode, 0, 0)
    )
    if rc != 0:
        raise RuntimeError(f"{cmd[:3]} failed ({rc}):\n{err[-4000:]}")
    return {
        "wall_s": wall,
        "peak_tree_rss_mib": peak[0] / 2**20,
        "peak_process_rss_mib": maxrss_kb / 1024,
        "major_faults": majflt,
        "stdout": out[:marker] if marker >= 0 else out,
        "stderr": err,
    }


def run_child(code: str, *args) -> dict:
    """Run ``python -c code args...`` from the repository root; its ``@@RESULT`` JSON."""
    out = subprocess.run(
        [sys.executable, "-c", code, *map(str, args)],
        capture_output=True,
        text=True,
        cwd=REPO,
        check=True,
    ).stdout
    return child_json(out)


def child_json(stdout: str) -> dict:
    """The JSON line a benchmark child prints last (prefixed ``@@RESULT``)."""
    for line in reversed(stdout.splitlines()):
        if line.startswith("@@RESULT "):
            return json.loads(line[9:])
    raise RuntimeError(f"no result line in child output:\n{stdout[-2000:]}")
