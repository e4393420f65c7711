"""Seeds from a many-label segmentation: skfmcib's seeds_from_masks against SimpleITK.

    python benchmarks/masks.py [--labels 117] [--slices 300]

Builds a 512 x 512 label map with ``--labels`` organs (boxes of 8 x 20 x 20 voxels, as
a whole-body segmentation has about 117), written as ``.nii.gz``, then times, in this
process, (1) ``seeds_from_masks`` (one seed per connected lesion of every label) and
(2) the baseline: SimpleITK reading the file and computing every label's centroid
(``LabelShapeStatisticsImageFilter``, per label, not per connected part). Prints both
times, their ratio, and the largest distance between the two centroids of a label.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from _common import DEFAULT_WORKDIR, machine


def build(path: Path, n_labels: int, n_slices: int) -> None:
    import SimpleITK as sitk

    rng = np.random.default_rng(0)
    labels = np.zeros((n_slices, 512, 512), dtype=np.uint8 if n_labels < 256 else np.uint16)
    for value in range(1, n_labels + 1):
        z, y, x = rng.integers([0, 20, 20], [n_slices - 8, 480, 480])
        labels[z : z + 8, y : y + 20, x : x + 20] = value
    image = sitk.GetImageFromArray(labels)
    image.SetSpacing((0.8, 0.8, 1.5))
    sitk.WriteImage(image, str(path))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--labels", type=int, default=117)
    parser.add_argument("--slices", type=int, default=300)
    parser.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR)
    args = parser.parse_args()

    import pandas as pd
    import SimpleITK as sitk

    from skfmcib.masks import seeds_from_masks

    print(machine())
    args.workdir.mkdir(parents=True, exist_ok=True)
    path = args.workdir / f"labels-{args.labels}-{args.slices}.nii.gz"
    if not path.exists():
        build(path, args.labels, args.slices)

    started = time.perf_counter()
    seeds = seeds_from_masks(pd.DataFrame({"mask_path": [str(path)]}))
    ours = time.perf_counter() - started

    started = time.perf_counter()
    stats = sitk.LabelShapeStatisticsImageFilter()
    stats.Execute(sitk.ReadImage(str(path)))
    centroids = {v: np.array(stats.GetCentroid(v)) for v in stats.GetLabels()}
    baseline = time.perf_counter() - started

    # A label may be cut in two where boxes overlap: compare labels of one part only.
    whole = seeds.groupby("mask_label").filter(lambda g: len(g) == 1)
    worst = max(
        float(np.abs(row[["coordX", "coordY", "coordZ"]].to_numpy(float) - centroids[v]).max())
        for v, row in whole.set_index("mask_label").iterrows()
    )
    print(f"{args.labels} labels, 512 x 512 x {args.slices}: {len(seeds)} lesions")
    print(f"skfmcib seeds_from_masks : {ours:6.2f} s")
    print(f"SimpleITK label centroids: {baseline:6.2f} s")
    print(f"ratio (skfmcib / SimpleITK): {ours / baseline:.2f}x")
    print(f"largest centroid difference ({len(whole)} labels in one part): {worst:.2e} mm")


if __name__ == "__main__":
    main()
