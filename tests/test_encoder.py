"""The pure-torch encoder is MONAI's ResNet: same keys, shapes and outputs."""

import pytest
import torch

from skfmcib.encoder import ARCHITECTURES, EncoderConfig, ResNet3D, build_encoder

monai_resnet = pytest.importorskip("monai.networks.nets.resnet")

FMCIB_KWARGS = dict(
    pretrained=False,
    n_input_channels=1,
    widen_factor=2,
    conv1_t_stride=2,
    feed_forward=False,
    bias_downsample=True,
)


def _monai(arch: str, **kwargs):
    return getattr(monai_resnet, arch)(**kwargs)


def _copy_and_compare(ours: torch.nn.Module, theirs: torch.nn.Module, shape, seed=0):
    torch.manual_seed(seed)
    with torch.no_grad():
        # Non-trivial batch-norm statistics so that eval mode is really exercised.
        for m in theirs.modules():
            if isinstance(m, torch.nn.BatchNorm3d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.1, 0.1)
    ours.load_state_dict(theirs.state_dict(), strict=True)
    ours.eval()
    theirs.eval()
    x = torch.randn(*shape)
    with torch.no_grad():
        return ours(x), theirs(x)


@pytest.mark.slow
def test_fmcib_resnet50_matches_monai_keys_shapes_and_outputs():
    theirs = _monai("resnet50", **FMCIB_KWARGS)
    ours = build_encoder()
    ours_sd, theirs_sd = ours.state_dict(), theirs.state_dict()
    assert list(ours_sd) == list(theirs_sd)
    assert len(ours_sd) == 322
    assert {k: v.shape for k, v in ours_sd.items()} == {k: v.shape for k, v in theirs_sd.items()}
    n_params = sum(p.numel() for p in ours.parameters())
    assert n_params == 184_477_824
    a, b = _copy_and_compare(ours, theirs, (2, 1, 50, 50, 50))
    assert a.shape == (2, 4096)
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    del theirs


@pytest.mark.parametrize("arch", ["resnet10", "resnet18", "resnet34", "resnet50"])
def test_small_variants_match_monai(arch):
    kwargs = dict(FMCIB_KWARGS, widen_factor=0.25)
    theirs = _monai(arch, **kwargs)
    ours = ResNet3D(EncoderConfig(arch=arch, widen_factor=0.25))
    assert list(ours.state_dict()) == list(theirs.state_dict())
    a, b = _copy_and_compare(ours, theirs, (3, 1, 40, 36, 44))
    assert a.shape[1] == ours.out_features
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_unbiased_shortcuts_and_stride_one_stem_match_monai():
    theirs = _monai(
        "resnet18",
        **dict(FMCIB_KWARGS, widen_factor=0.25, bias_downsample=False, conv1_t_stride=1),
    )
    ours = ResNet3D(EncoderConfig("resnet18", 0.25, conv1_stride=1, bias_downsample=False))
    assert "layer2.0.downsample.0.bias" not in ours.state_dict()
    a, b = _copy_and_compare(ours, theirs, (2, 1, 24, 24, 24))
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_config_round_trip_and_errors():
    cfg = EncoderConfig(arch="resnet10", widen_factor=0.5)
    assert EncoderConfig.from_dict(cfg.to_dict()) == cfg
    assert build_encoder(cfg.to_dict()).config == cfg
    with pytest.raises(ValueError, match="Unknown architecture 'resnet7'"):
        ResNet3D(EncoderConfig(arch="resnet7"))
    with pytest.raises(ValueError, match="Unknown encoder configuration keys"):
        EncoderConfig.from_dict({"arch": "resnet10", "depth": 3})
    assert set(ARCHITECTURES) >= {"resnet10", "resnet50", "resnet200"}
