"""End to end: skfmcib against the reference package on full-size CTs, same lesions and weights.

Each side runs in a new process (interpreter start, imports, weights, reading the
scans, encoding), timed from outside, with the peak memory of its process tree.

    python benchmarks/end_to_end.py                         # builds the reference venv
    python benchmarks/end_to_end.py --reference-python /path/to/venv/bin/python
    python benchmarks/end_to_end.py --repeat 5 --reference-repeat 5 --rest 60 --wait-quiet 30
    python benchmarks/end_to_end.py --no-reference --cohort 48
    python benchmarks/end_to_end.py --no-reference --format nii   # uncompressed scans
    python benchmarks/end_to_end.py --no-reference --cohort 400 --device cuda \
        --precision bf16 --batch-size auto --n-jobs -1        # on a GPU machine

The reference (``foundation-cancer-image-biomarker``, needs Python < 3.12) is installed
into ``benchmarks/.ref-venv`` on first use (several GB: it pulls a CUDA build of torch).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from _common import (
    DEFAULT_WORKDIR,
    REPO,
    build_scans,
    child_json,
    compile_package,
    lesion_table,
    machine,
    make_checkpoint,
    run_measured,
    wait_until_quiet,
)

REF_VENV = REPO / "benchmarks" / ".ref-venv"

FILES_READ = r"""
def _files_read():
    # Libraries and modules this process mapped or imported: warmed before the next run.
    found = set()
    with open("/proc/self/maps") as maps:
        for line in maps:
            fields = line.split()
            if len(fields) >= 6 and fields[5].startswith("/"):
                found.add(fields[5])
    for module in list(sys.modules.values()):
        for attr in ("__file__", "__cached__"):
            name = getattr(module, attr, None)
            if isinstance(name, str):
                found.add(name)
    return sorted(found)
"""

OURS = (
    FILES_READ
    + r"""
import json, sys, time
t0 = time.perf_counter()
import numpy as np, pandas as pd
from skfmcib import FMCIBTransformer
t1 = time.perf_counter()
csv, ckpt, out, precision, n_jobs, encoder_only, device, batch = sys.argv[1:9]
table = pd.read_csv(csv)
model = FMCIBTransformer(weights=ckpt, device=device, precision=precision, progress=False,
                         n_jobs=None if n_jobs == "default" else int(n_jobs),
                         batch_size=batch if batch == "auto" else int(batch))
# fit_transform, as a Pipeline calls it: the first images are read while weights load.
feats = model.fit_transform(table)
t2 = time.perf_counter()
np.save(out, feats)
result = {"import_s": t1 - t0, "fit_transform_s": t2 - t1}
if encoder_only == "1":
    # The encoder alone on as many patches, already in memory: the speed limit.
    x = np.random.default_rng(0).random((len(table), 1, 50, 50, 50), dtype=np.float32)
    t4 = time.perf_counter()
    model.transform(x)
    result["encoder_only_s"] = time.perf_counter() - t4
    t5 = time.perf_counter()
    model.transform(table)  # weights loaded, scans in the page cache
    result["transform_s"] = time.perf_counter() - t5
result["files"] = _files_read()
print("@@RESULT " + json.dumps(result))
"""
)

REFERENCE = (
    FILES_READ
    + r"""
import json, sys, time
t0 = time.perf_counter()
import numpy as np
from fmcib.run import get_features
t1 = time.perf_counter()
csv, ckpt, out = sys.argv[1:4]
df = get_features(csv, weights_path=ckpt)
t2 = time.perf_counter()
np.save(out, df[[f"pred_{i}" for i in range(4096)]].to_numpy(np.float32))
result = {"import_s": t1 - t0, "features_s": t2 - t1, "files": _files_read()}
print("@@RESULT " + json.dumps(result))
"""
)


def reference_python(args) -> Path | None:
    if args.no_reference:
        return None
    if args.reference_python:
        python = Path(args.reference_python)
        if not python.is_file():
            sys.exit(f"--reference-python {python}: no such file")
        return python
    python = REF_VENV / "bin" / "python"
    if python.exists():
        return python
    base = _python_below_312()
    print(f"installing the reference package into {REF_VENV} (with {base}) ...", flush=True)
    subprocess.run([str(base), "-m", "venv", str(REF_VENV)], check=True)
    try:
        subprocess.run(
            [str(python), "-m", "pip", "install", "-q", "foundation-cancer-image-biomarker"],
            check=True,
        )
    except subprocess.CalledProcessError:
        shutil.rmtree(REF_VENV, ignore_errors=True)
        raise
    return python


def _python_below_312() -> str:
    if sys.version_info < (3, 12):
        return sys.executable
    for name in ("python3.11", "python3.10", "python3.9"):
        found = shutil.which(name)
        if found:
            return found
    sys.exit("the reference package needs Python < 3.12; pass --reference-python")


def _warm(paths) -> None:
    """Read files (scans, checkpoint, libraries) so that a run starts from the page cache.

    Done before every run: the reference's processes take about 15 GB, which can push the
    scans, the weights and the other side's libraries out of the page cache of a 24 GB
    machine, and the kernel's caches of directories and file metadata with them. So the
    folders of those files (and the folders above them) are listed and their entries'
    metadata read as well: an import looks up its modules in them. Without that, a run
    after the reference's took about 0.2 s longer than one after a run of its own side.
    """
    folders: set[str] = set()
    for p in paths:
        try:
            with open(p, "rb") as f:
                while f.read(1 << 24):
                    pass
        except OSError:  # a library or module file that has gone
            continue
        folder = os.path.dirname(os.path.abspath(p))
        while folder not in folders and folder != os.path.dirname(folder):
            folders.add(folder)
            folder = os.path.dirname(folder)
    for folder in folders:
        try:
            with os.scandir(folder) as entries:
                for entry in entries:
                    with contextlib.suppress(OSError):
                        entry.stat(follow_symlinks=False)
        except OSError:
            continue


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR)
    ap.add_argument("--scans", type=int, default=4)
    ap.add_argument("--lesions-per-scan", type=int, default=3)
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    ap.add_argument("--n-jobs", default="default", help="skfmcib n_jobs (default: its default)")
    ap.add_argument("--device", default="cpu", help="skfmcib device (the reference picks its own)")
    ap.add_argument("--batch-size", default="8", help="skfmcib batch_size (an int or auto)")
    ap.add_argument("--repeat", type=int, default=3, help="runs of skfmcib (median reported)")
    ap.add_argument(
        "--reference-repeat", type=int, default=1, help="runs of the reference (alternating)"
    )
    ap.add_argument("--reference-python", help="python of an environment with fmcib")
    ap.add_argument("--no-reference", action="store_true")
    ap.add_argument("--cohort", type=int, default=0, help="also run skfmcib on N lesions")
    ap.add_argument(
        "--format", default="nii.gz", choices=["nii.gz", "nii"], help="file format of the scans"
    )
    ap.add_argument(
        "--rest",
        type=float,
        default=0,
        help="seconds of idle before each run's warm-up, so that no run pays for the one "
        "before it",
    )
    ap.add_argument(
        "--wait-quiet",
        type=float,
        default=0,
        help="before each run, wait up to this many seconds for other processes to go idle",
    )
    args = ap.parse_args()

    print(machine())
    ref_python = reference_python(args)
    paths, kind = build_scans(args.workdir, args.scans, args.format)
    table = lesion_table(paths, args.lesions_per_scan)
    tag = "" if args.format == "nii.gz" else f".{args.format}"
    csv = args.workdir / f"lesions{tag}.csv"
    table.to_csv(csv, index=False)
    ckpt = make_checkpoint(args.workdir)
    where = compile_package()
    print(
        f"{len(table)} lesions on {len(paths)} {kind} scans of 0.7 x 0.7 x 1.25 mm "
        f"(.{args.format})"
    )
    print(f"skfmcib from {where}, its modules compiled to bytecode as an installed package's")

    # Before each run, the files the same side read in its previous run are read again
    # (libraries and modules as well as the scans and weights), for both sides alike.
    read_before: dict[str, list[str]] = {"skfmcib": [], "reference": []}

    # On a virtual machine, the host may take CPU time back after a minute of full load
    # (the reference's): measured here, a skfmcib run 2 s after a reference run lost
    # 0.15-0.44 s of its cores to the host ("steal" in /proc/stat), one 60 s after it
    # 0-0.01 s. --rest gives every run of either side the same idle time before it. The
    # files are warmed after the rest, just before the run: this machine's kernel pages
    # out memory left unused for about a minute (a DAMON "pageout" scheme), so a warm-up
    # before the rest left 120-280 pages for the run to read from disk again (0.09-0.63 s
    # more in four alternating pairs, see docs/performance.md).
    def run_side(side, cmd, cwd):
        if args.rest > 0:
            time.sleep(args.rest)
        _warm([*paths, ckpt, *read_before[side]])
        run = run_measured(cmd, cwd=cwd)
        run.update(child_json(run["stdout"]))
        read_before[side] = run.pop("files")
        return run

    def run_ours(csv_path, out, encoder_only):
        return run_side(
            "skfmcib",
            [sys.executable, "-c", OURS, str(csv_path), str(ckpt), str(out),
             args.precision, args.n_jobs, encoder_only, args.device, args.batch_size],
            REPO,
        )  # fmt: skip

    def run_reference():
        return run_side(
            "reference",
            [str(ref_python), "-c", REFERENCE, str(csv), str(ckpt), str(args.workdir / "ref.npy")],
            args.workdir,
        )

    def show(side, run):
        print(
            f"  {side}: {run['wall_s']:.2f} s, {run['peak_tree_rss_mib']:.0f} MiB, "
            f"{run['major_faults']} major page faults",
            flush=True,
        )

    # The two sides alternate, so that a change of load affects both.
    runs: dict[str, list[dict]] = {"skfmcib": [], "reference": []}
    if ref_python is not None:
        # One run of each side, not counted, tells which files to warm before its runs:
        # the reference's ~15 GB evicts skfmcib's files, and this kernel pages out files
        # left unused for a minute, so neither side's files can be assumed cached (the
        # reference's first run read 2240 pages from disk when it was counted: 63 s
        # against 55-60 s for the next four).
        run_ours(csv, args.workdir / "ours.npy", "0")
        print("  (skfmcib: one run to find its files, not counted)", flush=True)
        run_reference()
        print("  (reference: one run to find its files, not counted)", flush=True)
    for _ in range(args.repeat):
        print(f"  ({wait_until_quiet(args.wait_quiet)})", flush=True)
        run = run_ours(csv, args.workdir / "ours.npy", "0")
        runs["skfmcib"].append(run)
        show("skfmcib", run)
        if ref_python is not None and len(runs["reference"]) < args.reference_repeat:
            print(f"  ({wait_until_quiet(args.wait_quiet)})", flush=True)
            run = run_reference()
            runs["reference"].append(run)
            show("reference", run)

    n = len(table)
    print()
    print("| run | wall s (median; all runs) | peak RSS MiB, worst run (tree / largest "
          "process) | lesions/s (median) |")  # fmt: skip
    print("| --- | ---: | ---: | ---: |")
    medians = {}
    for name, rs in runs.items():
        if not rs:
            continue
        walls = sorted(r["wall_s"] for r in rs)
        medians[name] = float(np.median(walls))
        tree = max(r["peak_tree_rss_mib"] for r in rs)
        largest = max(r["peak_process_rss_mib"] for r in rs)
        every = ", ".join(f"{w:.2f}" for w in walls)
        print(f"| {name} | {medians[name]:.2f} ({every}) | {tree:.0f} / {largest:.0f} | "
              f"{n / medians[name]:.2f} |")  # fmt: skip
    ours = runs["skfmcib"]
    worst_bytes = max(r["peak_tree_rss_mib"] for r in ours) * 2**20
    print(
        f"\nskfmcib peak RSS, worst run: {worst_bytes / 1e9:.2f} GB "
        f"({worst_bytes / 2**30:.2f} GiB)"
    )
    print(
        f"skfmcib ({args.precision}), median: import "
        f"{np.median([r['import_s'] for r in ours]):.2f} s, weights + read + encode "
        f"{np.median([r['fit_transform_s'] for r in ours]):.2f} s"
    )
    summary = {"lesions": n, "precision": args.precision, "machine": machine()}
    if runs["reference"]:
        a = np.load(args.workdir / "ours.npy")
        b = np.load(args.workdir / "ref.npy")
        rel = float(np.abs(a - b).max() / np.abs(b).max())
        ratio = medians["reference"] / medians["skfmcib"]
        pairs = [r["wall_s"] / o["wall_s"] for r, o in zip(runs["reference"], ours, strict=False)]
        print(
            f"speed-up (median / median): {ratio:.2f}x (run by run: "
            f"{', '.join(f'{x:.2f}x' for x in pairs)}); "
            f"max |ours - reference| / max |reference| = {rel:.2e}"
        )
        summary.update(ratio=ratio, ratios_run_by_run=pairs, max_rel_diff=rel)
    if args.cohort:
        big = lesion_table(paths, max(1, args.cohort // len(paths)), seed=1)
        big_csv = args.workdir / f"cohort{tag}.csv"
        big.to_csv(big_csv, index=False)
        print(f"  ({wait_until_quiet(args.wait_quiet)})", flush=True)
        run = run_ours(big_csv, args.workdir / "big.npy", "1")
        m = len(big)
        busy = run["encoder_only_s"] / run["transform_s"]
        first = run["import_s"] + run["fit_transform_s"]
        print(
            f"\ncohort of {m} lesions: import + fit_transform {first:.1f} s "
            f"({m / first:.2f} lesions/s); a second transform (weights loaded, scans in the "
            f"page cache) {m / run['transform_s']:.2f} lesions/s; the encoder alone on as "
            f"many patches in memory {m / run['encoder_only_s']:.2f} patches/s (busy "
            f"{busy:.0%} of the transform); peak RSS {run['peak_tree_rss_mib']:.0f} MiB"
        )
        summary["cohort"] = {
            "lesions": m,
            "import_plus_fit_transform_s": first,
            "transform_lesions_per_s": m / run["transform_s"],
            "encoder_patches_per_s": m / run["encoder_only_s"],
            "encoder_busy": busy,
            "peak_tree_rss_mib": run["peak_tree_rss_mib"],
        }
    for name, rs in runs.items():
        summary[name] = [{k: v for k, v in r.items() if k not in ("stdout", "stderr")} for r in rs]
    (args.workdir / "end_to_end.json").write_text(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
