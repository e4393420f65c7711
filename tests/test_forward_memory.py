"""Faster and lower-memory forward passes on the CPU compute each patch as the plain pass does."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from skfmcib import runtime
from skfmcib.encoder import Conv3d, EncoderConfig, ResNet3D, build_encoder

CPU = torch.device("cpu")


def _small_encoder(seed=0) -> ResNet3D:
    torch.manual_seed(seed)
    net = build_encoder(EncoderConfig(arch="resnet18", widen_factor=0.5))
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm3d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return net


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("groups", [2, 3, 7])
def test_output_groups_compute_the_same_channels(bias, groups):
    torch.manual_seed(0)
    conv = Conv3d(8, 80, 3, stride=2, padding=1, bias=bias)
    x = torch.randn(3, 8, 9, 9, 9, requires_grad=True)
    whole = conv(x)
    conv.out_groups = groups
    sliced = conv(x)
    assert sliced.shape == whole.shape
    torch.testing.assert_close(sliced, whole, rtol=1e-5, atol=1e-6)
    # Gradients flow through the slices as through the whole weight.
    (g_sliced,) = torch.autograd.grad(sliced.square().sum(), conv.weight)
    conv.out_groups = 1
    (g_whole,) = torch.autograd.grad(conv(x).square().sum(), conv.weight)
    torch.testing.assert_close(g_sliced, g_whole, rtol=1e-4, atol=1e-5)
    assert list(conv.state_dict()) == (["weight", "bias"] if bias else ["weight"])


def test_early_batch_applies_in_eval_mode_only():
    net = _small_encoder()
    x = torch.randn(5, 1, 50, 50, 50)
    with torch.no_grad():
        net.eval()
        plain = net(x)
        net.early_batch = 2
        chunked = net(x)
        torch.testing.assert_close(chunked, plain, rtol=1e-5, atol=1e-6)
        # In training mode batch normalisation uses the whole batch's statistics:
        # the batch is not cut there (cutting it would change every output).
        net.train()
        with_attr = net(x)
        net.early_batch = None
        assert torch.equal(with_attr, net(x))


def test_prepare_encoder_limits_fp32_cpu_forward_memory(monkeypatch):
    reference = _small_encoder().eval()
    net = copy.deepcopy(reference)
    # The small encoder's largest convolution weights are 0.5 MB; slice them.
    monkeypatch.setattr(runtime, "_WEIGHT_SLICE_BYTES", 200_000)
    prepared = runtime.prepare_encoder(net, CPU, "fp32")
    assert prepared.early_batch == runtime._EARLY_BATCH
    groups = {name: m.out_groups for name, m in prepared.named_modules() if isinstance(m, Conv3d)}
    assert groups["layer4.0.conv2"] >= 2 and groups["conv1"] == 1
    patches = np.random.default_rng(0).random((6, 1, 50, 50, 50), dtype=np.float32)
    got = runtime.encode(prepared, patches, CPU, "fp32")
    with torch.no_grad():
        want = reference(torch.from_numpy(patches)).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6 * np.abs(want).max())


def test_reduced_precision_is_left_as_it_was(monkeypatch):
    monkeypatch.setattr(runtime, "_WEIGHT_SLICE_BYTES", 200_000)
    prepared = runtime.prepare_encoder(_small_encoder(), CPU, "bf16")
    assert prepared.early_batch is None
    assert all(m.out_groups == 1 for m in prepared.modules() if isinstance(m, Conv3d))


def test_max_pooling_in_channels_last_gives_the_plain_result():
    net = _small_encoder().eval()
    torch.manual_seed(1)
    # After the ReLU many values are 0: windows with ties are common.
    x = torch.relu(torch.randn(3, 32, 25, 25, 25))
    with torch.no_grad():
        pooled = net._pool(x)
    assert torch.equal(pooled, net.maxpool(x))
    assert pooled.is_contiguous()  # as the next convolution got it before
    # With gradients the plain layout is kept, and gradients are those of MaxPool3d.
    x.requires_grad_(True)
    (grad,) = torch.autograd.grad(net._pool(x).sum(), x)
    (want,) = torch.autograd.grad(net.maxpool(x).sum(), x)
    assert torch.equal(grad, want)


def test_whole_encoder_features_do_not_depend_on_the_pooling_layout():
    net = _small_encoder().eval()
    x = torch.randn(2, 1, 50, 50, 50)
    with torch.no_grad():
        fast = net(x)
        # The same network written out with the plain pooling layer.
        h = net.maxpool(net.act(net.bn1(net.conv1(x))))
        h = net.layer4(net.layer3(net.layer2(net.layer1(h))))
        plain = torch.flatten(net.avgpool(h), 1)
    assert torch.equal(fast, plain)
