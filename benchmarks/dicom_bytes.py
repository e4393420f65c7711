"""Bytes read from disk for one lesion in a 300-slice DICOM series: skfmcib vs SimpleITK.

    python benchmarks/dicom_bytes.py

Builds a 300-slice, 512 x 512 CT series (0.7 x 0.7 x 1 mm, uncompressed), then, each
in a new process with the modules already imported, counts the bytes the process
reads (``rchar`` of ``/proc/self/io``: every read call, page cache or not) while
(1) skfmcib opens the series and extracts one lesion's patch, (2) SimpleITK's series
reader (GDCM, as the reference reads it) reads the series, (3) SimpleITK reads one slice
file, (4) pydicom reads one slice file.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
from _common import DEFAULT_WORKDIR, machine, run_child

CHILD = r"""
import json, sys, time
import numpy as np, pydicom, SimpleITK as sitk
from skfmcib.io import open_image
from skfmcib.patches import extract_patch

def rchar():
    with open("/proc/self/io") as f:
        return next(int(l.split()[1]) for l in f if l.startswith("rchar"))

mode, directory = sys.argv[1], sys.argv[2]
files = sorted(str(p) for p in __import__("pathlib").Path(directory).iterdir())
out = {}
before, t = rchar(), time.perf_counter()
if mode == "skfmcib":
    with open_image(directory) as source:
        g = source.geometry
        seed = g.origin + g.index_to_physical @ (np.array(g.size) / 2.0)
        extract_patch(source, seed)
        out["pixel_files"] = len(source.files_read)
elif mode == "simpleitk":
    ids = sitk.ImageSeriesReader.GetGDCMSeriesIDs(directory)
    names = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(directory, ids[0])
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(names)
    reader.Execute()
elif mode == "sitk-one-file":
    sitk.ReadImage(files[150])
elif mode == "pydicom-one-file":
    pydicom.dcmread(files[150]).pixel_array
out["bytes"] = rchar() - before
out["seconds"] = time.perf_counter() - t
print("@@RESULT " + json.dumps(out))
"""


def build_series(directory: Path, n: int = 300) -> Path:
    import SimpleITK as sitk

    if directory.exists() and len(list(directory.iterdir())) == n:
        return directory
    print(f"writing a {n}-slice series to {directory} ...", flush=True)
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:512, :512]
    body = (((xx - 256) / 230.0) ** 2 + ((yy - 256) / 180.0) ** 2 < 1) * 1040 - 1000
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    uid = "1.2.826.0.1.3680043.8.498.300"
    for k in range(n):
        hu = (body + rng.normal(0, 20, body.shape)).astype(np.int16)
        sl = sitk.GetImageFromArray(hu[None])
        tags = {
            "0008|0060": "CT",
            "0008|0016": "1.2.840.10008.5.1.4.1.1.2",
            "0008|0018": f"{uid}.{k + 1}",
            "0020|000d": "1.2.826.0.1.3680043.8.498.301",
            "0020|000e": uid,
            "0020|0013": str(k + 1),
            "0020|0032": f"-179.2\\-179.2\\{-150.0 + k:.1f}",
            "0020|0037": "1\\0\\0\\0\\1\\0",
            "0028|0030": "0.7\\0.7",
            "0018|0050": "1.0",
            "0028|1052": "0",
            "0028|1053": "1",
        }
        for tag, value in tags.items():
            sl.SetMetaData(tag, value)
        writer.SetFileName(str(directory / f"slice{k:03d}.dcm"))
        writer.Execute(sl)
    return directory


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR)
    args = ap.parse_args()
    print(machine())
    d = build_series(args.workdir / "dicom300")
    sizes = sorted(p.stat().st_size for p in d.iterdir())
    total = sum(sizes)
    one = sizes[len(sizes) // 2]
    results = {}
    for mode in ("skfmcib", "simpleitk", "sitk-one-file", "pydicom-one-file"):
        results[mode] = run_child(CHILD, mode, d)
    print(f"\nseries: {len(sizes)} files, {total / 2**20:.1f} MiB\n")
    print("| reader | MiB read | of the series | seconds |")
    print("| --- | ---: | ---: | ---: |")
    for mode in ("skfmcib", "simpleitk"):
        r = results[mode]
        print(
            f"| {mode} (one lesion) | {r['bytes'] / 2**20:.1f} | {r['bytes'] / total:.1%} | "
            f"{r['seconds']:.2f} |"
        )
    for mode in ("sitk-one-file", "pydicom-one-file"):
        r = results[mode]
        print(f"| {mode} | {r['bytes'] / 2**20:.2f} | {r['bytes'] / one:.1f}x the file | "
              f"{r['seconds']:.3f} |")  # fmt: skip
    opened = results["skfmcib"]["pixel_files"]
    print(f"\nskfmcib read the pixel data of {opened} of {len(sizes)} files")
    (args.workdir / "dicom_bytes.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
