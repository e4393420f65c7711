"""Model selection with the feature cache: GridSearchCV time over one transform's time.

    python benchmarks/gridsearch_cache.py [--lesions 40] [--precision fp32]

``GridSearchCV(Pipeline(FMCIBTransformer(memory=...), StandardScaler(),
LogisticRegression()), 4 values of C, cv=5)`` on full-size CTs, timed whole (its
first fit loads the weights; the cache starts empty) in a new process, against one
``transform`` of the same rows by a fitted transformer without a cache, in another.
The search also counts the patches its encoders ran on (a forward hook).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from _common import (
    DEFAULT_WORKDIR,
    build_scans,
    lesion_table,
    machine,
    make_checkpoint,
    run_child,
)

CHILD = r"""
import json, sys, tempfile, time
import numpy as np, pandas as pd, torch
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from skfmcib import FMCIBTransformer
from skfmcib.encoder import ResNet3D

mode, csv, ckpt, precision = sys.argv[1:5]
X = pd.read_csv(csv)
y = np.arange(len(X)) % 2
patches = [0]
def count(module, args, output):
    if isinstance(module, ResNet3D):
        patches[0] += args[0].shape[0]
torch.nn.modules.module.register_module_forward_hook(count)
params = dict(weights=ckpt, device="cpu", precision=precision, progress=False)
if mode == "transform":
    model = FMCIBTransformer(**params).fit()
    t = time.perf_counter()
    model.transform(X)
elif mode == "fit_transform":
    t = time.perf_counter()
    FMCIBTransformer(**params).fit_transform(X)
else:
    cache = tempfile.mkdtemp(prefix="skfmcib-cache-")
    pipe = make_pipeline(FMCIBTransformer(memory=cache, **params), StandardScaler(),
                         LogisticRegression(max_iter=2000))
    search = GridSearchCV(pipe, {"logisticregression__C": [0.01, 0.1, 1.0, 10.0]}, cv=5)
    t = time.perf_counter()
    search.fit(X, y)
print("@@RESULT " + json.dumps({"seconds": time.perf_counter() - t, "patches": patches[0]}))
"""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR)
    ap.add_argument("--lesions", type=int, default=40)
    ap.add_argument("--precision", default="fp32", choices=["fp32", "bf16"])
    args = ap.parse_args()
    print(machine())
    paths, kind = build_scans(args.workdir, 4)
    table = lesion_table(paths, max(1, args.lesions // len(paths)), seed=2)
    csv = args.workdir / "gridsearch.csv"
    table.to_csv(csv, index=False)
    ckpt = make_checkpoint(args.workdir)
    one = run_child(CHILD, "transform", csv, ckpt, args.precision)
    with_weights = run_child(CHILD, "fit_transform", csv, ckpt, args.precision)
    grid = run_child(CHILD, "grid", csv, ckpt, args.precision)
    ratio = grid["seconds"] / one["seconds"]
    ratio_fit = grid["seconds"] / with_weights["seconds"]
    print(f"{len(table)} lesions on 4 {kind} scans, {args.precision}")
    print("| run | seconds | patches encoded |")
    print("| --- | ---: | ---: |")
    print(f"| one transform (weights loaded before) | {one['seconds']:.1f} | {one['patches']} |")
    print(f"| one fit_transform (loads the weights) | {with_weights['seconds']:.1f} | "
          f"{with_weights['patches']} |")  # fmt: skip
    print(f"| GridSearchCV, 5 folds x 4 candidates + refit | {grid['seconds']:.1f} | "
          f"{grid['patches']} |")  # fmt: skip
    print(f"ratio: {ratio:.2f} to the transform, {ratio_fit:.2f} to the fit_transform")
    (args.workdir / "gridsearch_cache.json").write_text(
        json.dumps(
            {
                "lesions": len(table),
                "transform": one,
                "fit_transform": with_weights,
                "grid": grid,
                "ratio": ratio,
                "ratio_fit_transform": ratio_fit,
            }
        )  # fmt: skip
    )


if __name__ == "__main__":
    main()
