"""Encoder arithmetic: bf16 autocast stays faithful to fp32; fp32 layouts are exact."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
import torch
from conftest import shared_data_dir, write_image

from skfmcib import load_patches
from skfmcib.encoder import build_encoder
from skfmcib.runtime import auto_batch_size, encode, prepare_encoder

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def ct_patches(tmp_path_factory):
    """Patches of real CT lesions when the shared data are there, else of a generated CT."""
    data = shared_data_dir()
    if data is not None:
        table = pd.read_csv(data / "ct" / "seeds.csv")
        table["image_path"] = [str(data / "ct" / p) for p in table["image_path"]]
        return load_patches(table)
    rng = np.random.default_rng(0)
    z, y, x = np.mgrid[:60, :90, :90]
    body = ((x - 45) ** 2 + (y - 45) ** 2 < 40**2) * 1000 - 1000
    hu = (body + 60 * np.sin(x / 4.0) * np.cos(z / 3.0) + rng.normal(0, 25, z.shape)).astype(
        np.int16
    )
    path = write_image(tmp_path_factory.mktemp("ct") / "ct.nii.gz", hu)
    seeds = rng.uniform([30, 30, 25], [60, 60, 35], size=(8, 3))
    table = pd.DataFrame(seeds, columns=["coordX", "coordY", "coordZ"])
    table.insert(0, "image_path", str(path))
    return load_patches(table)


def _cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, 1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


@pytest.mark.parametrize(
    "arch",
    [{"arch": "resnet10", "widen_factor": 0.25}, {"arch": "resnet50", "widen_factor": 0.25}],
    ids=["resnet10", "resnet50-bottleneck"],
)
def test_bf16_features_have_cosine_0999_to_fp32_on_every_lesion(ct_patches, arch):
    torch.manual_seed(0)
    net = build_encoder(arch)
    fp32 = encode(prepare_encoder(net, CPU, "fp32"), ct_patches, CPU, "fp32")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # autocast notes on some CPUs
        bf16 = encode(prepare_encoder(net, CPU, "bf16"), ct_patches, CPU, "bf16")
    assert bf16.dtype == np.float32 and bf16.shape == fp32.shape
    cos = _cosine(fp32, bf16)
    assert cos.min() >= 0.999, cos
    assert not np.array_equal(fp32, bf16)  # really computed in reduced precision


def test_bf16_runs_channels_last_in_bfloat16_and_fp32_runs_in_float32(ct_patches):
    seen = {}

    def record(name):
        def hook(module, args, output):
            # The input has one channel (both layouts at once); its output shows the layout.
            layout = output.is_contiguous(memory_format=torch.channels_last_3d)
            seen[name] = (args[0].dtype, layout, output.dtype)

        return hook

    for precision in ("fp32", "bf16"):
        net = prepare_encoder(
            build_encoder({"arch": "resnet10", "widen_factor": 0.25}), CPU, precision
        )
        handle = net.conv1.register_forward_hook(record(precision))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            encode(net, ct_patches[:2], CPU, precision)
        handle.remove()
    assert seen["bf16"][0] == torch.float32 and seen["bf16"][1]
    assert seen["bf16"][2] == torch.bfloat16
    assert seen["fp32"] == (torch.float32, False, torch.float32)


def test_fp32_is_exact_in_either_layout(ct_patches):
    torch.manual_seed(1)
    net = build_encoder({"arch": "resnet18", "widen_factor": 0.25}).eval()
    x = torch.from_numpy(ct_patches[:4])
    with torch.inference_mode():
        contiguous = net(x)
        channels_last = net.to(memory_format=torch.channels_last_3d)(
            x.to(memory_format=torch.channels_last_3d)
        )
    torch.testing.assert_close(contiguous, channels_last, rtol=1e-5, atol=1e-6)


def test_precision_names_are_checked_alike_with_and_without_torch():
    import skfmcib.runtime as runtime
    from skfmcib import FMCIBTransformer
    from skfmcib._precision import PRECISIONS

    assert tuple(runtime.PRECISIONS) == PRECISIONS
    assert runtime.check_precision("fp32") is None
    assert runtime.check_precision("bf16") is torch.bfloat16
    message = r"precision must be one of \['bf16', 'fp16', 'fp32'\], got 'fp64'"
    with pytest.raises(ValueError, match=message):
        runtime.check_precision("fp64")
    with pytest.raises(ValueError, match=message):
        FMCIBTransformer(precision="fp64").fit()


def test_auto_batch_size_on_cpu_is_eight():
    net = prepare_encoder(build_encoder({"arch": "resnet10", "widen_factor": 0.25}), CPU, "fp32")
    assert auto_batch_size(net, CPU) == 8


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_cuda_encoding_matches_cpu(ct_patches, precision):
    cuda = torch.device("cuda")
    torch.manual_seed(0)
    net = build_encoder({"arch": "resnet18", "widen_factor": 0.5})
    cpu = encode(prepare_encoder(net, CPU, "fp32"), ct_patches, CPU, "fp32")
    gpu_net = prepare_encoder(
        build_encoder({"arch": "resnet18", "widen_factor": 0.5}), cuda, precision
    )
    gpu_net.load_state_dict(net.state_dict())
    gpu = encode(gpu_net, ct_patches, cuda, precision)
    assert _cosine(cpu, gpu).min() >= (0.99999 if precision == "fp32" else 0.999)
    assert 1 <= auto_batch_size(gpu_net, cuda, precision) <= 256


def test_stored_bf16_weights_give_exactly_the_features_of_plain_autocast(ct_patches):
    torch.manual_seed(2)
    net = build_encoder({"arch": "resnet50", "widen_factor": 0.25}).eval()
    x = torch.from_numpy(ct_patches[:3]).to(memory_format=torch.channels_last_3d)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        plain = net.to(memory_format=torch.channels_last_3d)(x).float().numpy()
    prepared = prepare_encoder(net, CPU, "bf16")
    assert prepared.conv1.weight.dtype == torch.bfloat16
    assert prepared.bn1.weight.dtype == torch.float32
    np.testing.assert_array_equal(encode(prepared, ct_patches[:3], CPU, "bf16"), plain)
