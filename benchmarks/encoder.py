"""The encoder alone: patches/s of each precision and memory layout, and bf16 fidelity.

    python benchmarks/encoder.py                    # CPU: fp32 and bf16, both layouts
    python benchmarks/encoder.py --device cuda      # CUDA: fp32, bf16, fp16, batch sizes

The FMCIB ResNet-50 (4096 features) with the fixture weights, on real CT patches
(the shared lesions) when available. Fidelity: cosine similarity of each patch's
features to fp32 in the default layout.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time
from pathlib import Path

import numpy as np
import torch
from _common import DEFAULT_WORKDIR, machine, make_checkpoint, shared_data_dir

from skfmcib._process import freed_memory_kept
from skfmcib.runtime import auto_batch_size, autocast, encode, prepare_encoder
from skfmcib.weights import load_encoder


def _patches(n: int) -> np.ndarray:
    data = shared_data_dir()
    if data is not None:
        import pandas as pd

        from skfmcib import load_patches

        table = pd.read_csv(data / "ct" / "seeds.csv")
        table["image_path"] = [str(data / "ct" / p) for p in table["image_path"]]
        real = load_patches(table)
        return real[np.arange(n) % len(real)]
    rng = np.random.default_rng(0)
    return rng.normal(0.35, 0.08, size=(n, 1, 50, 50, 50)).astype(np.float32)


def _time(repeats: int, device: torch.device, fn, *fn_args) -> float:
    """Best of ``repeats`` timings of ``fn(*fn_args)``, after one warm-up call."""
    fn(*fn_args)  # warm-up: kernel selection, weight packing
    if device.type == "cuda":
        torch.cuda.synchronize()
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn(*fn_args)
        if device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t)
    return best


def _layout_variant(net, device, precision, channels_last):
    """prepare_encoder's choice, or the other layout, for comparison."""
    net = prepare_encoder(net, device, precision)
    fmt = torch.channels_last_3d if channels_last else torch.contiguous_format
    return net.to(memory_format=fmt), fmt


@torch.inference_mode()
def _run(net, x, device, precision, fmt, keep=True):
    # As runtime.encode, in either layout; keep=False: without malloc's memory reuse.
    t = torch.from_numpy(x).to(device=device, memory_format=fmt)
    kept = freed_memory_kept() if keep and device.type == "cpu" else contextlib.nullcontext()
    with kept, autocast(device, precision):
        return net(t).float().cpu().numpy()


def _cos(a, b):
    return np.sum(a * b, 1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--batch-size", type=int, nargs="*", default=None)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--workdir", default=str(DEFAULT_WORKDIR))
    args = ap.parse_args()

    device = torch.device(args.device)
    print(machine() if device.type == "cpu" else torch.cuda.get_device_name(device))
    workdir = Path(args.workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    ckpt = make_checkpoint(workdir)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")

    rows = []
    if device.type == "cpu":
        sizes = args.batch_size or [8]
        x = _patches(max(sizes))
        variants = [("fp32", False, True), ("fp32", True, True), ("fp32", False, False)]
        variants += [("bf16", False, True), ("bf16", True, True)]
        for bs in sizes:
            ref = None  # fp32 in the checkpoint's layout, on the same patches
            for precision, cl, keep in variants:
                net, fmt = _layout_variant(load_encoder(ckpt)[0], device, precision, cl)
                feats = _run(net, x[:bs], device, precision, fmt, keep)
                if ref is None:
                    ref = feats
                secs = _time(args.repeats, device, _run, net, x[:bs], device, precision, fmt, keep)
                cos = _cos(ref, feats)
                rows.append(
                    {"precision": precision, "layout": "channels_last_3d" if cl else "contiguous",
                     "malloc_reuse": keep, "batch": bs, "patches_per_s": bs / secs,
                     "min_cosine": float(cos.min())}
                )  # fmt: skip
                print(rows[-1], flush=True)
                del net
    else:
        x_all = _patches(64)
        ref = None
        for precision in ("fp32", "bf16", "fp16"):
            net = prepare_encoder(load_encoder(ckpt)[0], device, precision)
            auto = auto_batch_size(net, device, precision)
            for bs in args.batch_size or [8, 32, auto]:
                x = x_all[np.arange(bs) % len(x_all)]
                feats = encode(net, x[:8], device, precision)
                if ref is None:
                    ref = feats
                secs = _time(args.repeats, device, encode, net, x, device, precision)
                rows.append(
                    {"precision": precision, "batch": bs, "auto_batch": auto,
                     "patches_per_s": bs / secs, "min_cosine": float(_cos(ref, feats).min())}
                )  # fmt: skip
                print(rows[-1], flush=True)
            del net
            torch.cuda.empty_cache()
    print()
    print("| precision | layout | malloc reuse | batch | patches/s | min cosine to fp32 |")
    print("| --- | --- | --- | ---: | ---: | ---: |")
    for r in rows:
        reuse = {True: "yes", False: "no"}.get(r.get("malloc_reuse"), "n/a (CUDA)")
        print(
            f"| {r['precision']} | {r.get('layout', 'channels_last_3d')} | {reuse} | "
            f"{r['batch']} | {r['patches_per_s']:.2f} | {r['min_cosine']:.6f} |"
        )
    (workdir / f"encoder_{device.type}.json").write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
