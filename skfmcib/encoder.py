"""The FMCIB encoder: a 3D ResNet in pure torch with MONAI's state-dict layout.

The default configuration is the one the FMCIB weights were trained with: a
ResNet-50 with widen factor 2, a stem of stride 2 on all axes, biased 1x1x1
shortcut convolutions and no classification head, giving 4096 features per
50^3 patch. Parameter names are MONAI's (``conv1.weight``,
``layer1.0.downsample.0.bias``, ...), so checkpoints move between the two
without renaming.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from numbers import Integral, Real

import torch
from torch import nn

__all__ = ["ARCHITECTURES", "Conv3d", "EncoderConfig", "ResNet3D", "build_encoder"]


class Conv3d(nn.Conv3d):
    """``torch.nn.Conv3d`` that can compute its output channels a group at a time.

    With ``out_groups`` above 1, the output channels are computed from consecutive
    slices of the weight (each a contiguous block of the ``(out, in, d, h, w)`` tensor)
    and concatenated. On the CPU, oneDNN copies a convolution's weight into its own
    blocked layout at every call; for the largest convolutions of the FMCIB encoder
    (113 MB each) that copy is the largest allocation of a forward pass, and a slice
    needs a slice of it. Each output channel is computed as before. Parameters and
    state-dict keys are those of ``torch.nn.Conv3d``.

    Attributes
    ----------
    out_groups : int
        Slices of the output channels computed one after another (1: all at once).

    Examples
    --------
    >>> import torch
    >>> from skfmcib.encoder import Conv3d
    >>> conv = Conv3d(4, 64, 3, padding=1).eval()
    >>> x = torch.randn(2, 4, 6, 6, 6)
    >>> whole = conv(x)
    >>> conv.out_groups = 4
    >>> torch.allclose(conv(x), whole, atol=1e-6)
    True
    """

    out_groups: int = 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Convolve ``x`` as ``torch.nn.Conv3d`` does, ``out_groups`` slices at a time."""
        if self.out_groups <= 1:
            return super().forward(x)
        # Slices of a multiple of 16 channels, the width of oneDNN's blocks.
        size = -(-self.out_channels // self.out_groups)
        size = -(-size // 16) * 16
        weights = self.weight.split(size)
        biases = self.bias.split(size) if self.bias is not None else [None] * len(weights)
        return torch.cat(
            [self._conv_forward(x, w, b) for w, b in zip(weights, biases, strict=True)], dim=1
        )


class BasicBlock(nn.Module):
    """Two 3x3x3 convolutions with a residual connection (ResNet-10/18/34)."""

    expansion = 1

    def __init__(
        self, in_planes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None
    ) -> None:
        super().__init__()
        self.conv1 = Conv3d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm3d(planes)
        self.act = nn.ReLU(inplace=True)
        self.conv2 = Conv3d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm3d(planes)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        residual = x if self.downsample is None else self.downsample(x)
        return self.act(out + residual)


class Bottleneck(nn.Module):
    """1x1x1 -> 3x3x3 (strided) -> 1x1x1 convolutions, expansion 4 (ResNet-50 and up)."""

    expansion = 4

    def __init__(
        self, in_planes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None
    ) -> None:
        super().__init__()
        self.conv1 = Conv3d(in_planes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm3d(planes)
        self.conv2 = Conv3d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm3d(planes)
        self.conv3 = Conv3d(planes, planes * self.expansion, 1, bias=False)
        self.bn3 = nn.BatchNorm3d(planes * self.expansion)
        self.act = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act(self.bn1(self.conv1(x)))
        out = self.act(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        residual = x if self.downsample is None else self.downsample(x)
        return self.act(out + residual)


# name -> (block, blocks per stage); the same table as MONAI's resnet factories.
ARCHITECTURES: dict[str, tuple[type[nn.Module], tuple[int, int, int, int]]] = {
    "resnet10": (BasicBlock, (1, 1, 1, 1)),
    "resnet18": (BasicBlock, (2, 2, 2, 2)),
    "resnet34": (BasicBlock, (3, 4, 6, 3)),
    "resnet50": (Bottleneck, (3, 4, 6, 3)),
    "resnet101": (Bottleneck, (3, 4, 23, 3)),
    "resnet152": (Bottleneck, (3, 8, 36, 3)),
    "resnet200": (Bottleneck, (3, 24, 36, 3)),
}


@dataclass(frozen=True)
class EncoderConfig:
    """Architecture of an encoder, as stored beside its weights in checkpoints.

    The defaults are the FMCIB encoder's architecture.

    Parameters
    ----------
    arch : str, default="resnet50"
        One of :data:`ARCHITECTURES` (``"resnet50"`` for FMCIB).
    widen_factor : float, default=2.0
        Multiplier of the stage widths 64/128/256/512 (2 for FMCIB).
    conv1_stride : int, default=2
        Stride of the 7x7x7 stem convolution on every axis (2 for FMCIB).
    bias_downsample : bool, default=True
        Whether the shortcut 1x1x1 convolutions carry a bias (True for FMCIB).

    Raises
    ------
    ValueError
        When ``widen_factor`` gives stages of no channel (below 1/64) or
        ``conv1_stride`` is not a positive integer.

    Examples
    --------
    >>> from skfmcib.encoder import EncoderConfig, build_encoder
    >>> config = EncoderConfig(arch="resnet18", widen_factor=0.5)
    >>> config.to_dict()
    {'arch': 'resnet18', 'widen_factor': 0.5, 'conv1_stride': 2, 'bias_downsample': True}
    >>> EncoderConfig.from_dict(config.to_dict()) == config
    True
    >>> build_encoder(config).out_features
    256
    """

    arch: str = "resnet50"
    widen_factor: float = 2.0
    conv1_stride: int = 2
    bias_downsample: bool = True

    def __post_init__(self) -> None:
        wf = self.widen_factor
        if isinstance(wf, bool) or not isinstance(wf, Real) or not int(64 * wf) >= 1:
            raise ValueError(
                f"widen_factor must be a number of at least 1/64 (stages of 64 x widen_factor "
                f"channels and more), got {wf!r}"
            )
        if isinstance(self.conv1_stride, bool) or not (
            isinstance(self.conv1_stride, Integral) and self.conv1_stride >= 1
        ):
            raise ValueError(f"conv1_stride must be a positive integer, got {self.conv1_stride!r}")

    def to_dict(self) -> dict:
        """Return the configuration as a plain dict (stored in checkpoints).

        Returns
        -------
        dict
            The fields ``arch``, ``widen_factor``, ``conv1_stride`` and
            ``bias_downsample`` with their values.

        Examples
        --------
        >>> from skfmcib.encoder import EncoderConfig
        >>> EncoderConfig().to_dict()
        {'arch': 'resnet50', 'widen_factor': 2.0, 'conv1_stride': 2, 'bias_downsample': True}
        """
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> EncoderConfig:
        """Build a configuration from :meth:`to_dict` output, rejecting unknown keys.

        Parameters
        ----------
        d : dict
            Some or all of the fields (``arch``, ``widen_factor``, ``conv1_stride``,
            ``bias_downsample``); the others keep their defaults.

        Returns
        -------
        EncoderConfig

        Raises
        ------
        ValueError
            For a key that is no field, an unknown architecture, or a value the
            constructor refuses.

        Examples
        --------
        >>> from skfmcib.encoder import EncoderConfig
        >>> EncoderConfig.from_dict({"arch": "resnet10", "widen_factor": 0.25})
        EncoderConfig(arch='resnet10', widen_factor=0.25, conv1_stride=2, bias_downsample=True)
        """
        unknown = set(d) - set(cls.__dataclass_fields__)
        if unknown:
            raise ValueError(f"Unknown encoder configuration keys: {sorted(unknown)}")
        if "arch" in d and d["arch"] not in ARCHITECTURES:
            raise ValueError(
                f"unknown architecture {d['arch']!r} (known: {', '.join(ARCHITECTURES)})"
            )
        return cls(**d)


class ResNet3D(nn.Module):
    """3D ResNet feature extractor with MONAI's parameter names.

    Parameters
    ----------
    config : EncoderConfig, optional
        The architecture; the FMCIB ResNet-50 when omitted.

    Attributes
    ----------
    out_features : int
        Length of the feature vector (4096 for FMCIB).
    early_batch : int or None
        In eval mode, the stem and the first stage (the layers with the largest
        activations) take at most this many patches at a time; the later stages
        take the whole batch. None: the whole batch throughout. Batch statistics are
        not involved in eval mode, so each patch is computed as before.

    Examples
    --------
    >>> import torch
    >>> from skfmcib.encoder import EncoderConfig, ResNet3D
    >>> net = ResNet3D(EncoderConfig(arch="resnet10", widen_factor=0.25)).eval()
    >>> net(torch.zeros(2, 1, 50, 50, 50)).shape
    torch.Size([2, 128])
    """

    def __init__(self, config: EncoderConfig | None = None) -> None:
        super().__init__()
        config = EncoderConfig() if config is None else config
        if config.arch not in ARCHITECTURES:
            raise ValueError(
                f"Unknown architecture {config.arch!r}; choose one of {sorted(ARCHITECTURES)}"
            )
        self.config = config
        block, layers = ARCHITECTURES[config.arch]
        widths = [int(w * config.widen_factor) for w in (64, 128, 256, 512)]
        self._in_planes = widths[0]
        self.conv1 = Conv3d(1, widths[0], 7, stride=config.conv1_stride, padding=3, bias=False)
        self.bn1 = nn.BatchNorm3d(widths[0])
        self.act = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool3d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, widths[0], layers[0], 1, config.bias_downsample)
        self.layer2 = self._make_layer(block, widths[1], layers[1], 2, config.bias_downsample)
        self.layer3 = self._make_layer(block, widths[2], layers[2], 2, config.bias_downsample)
        self.layer4 = self._make_layer(block, widths[3], layers[3], 2, config.bias_downsample)
        self.avgpool = nn.AdaptiveAvgPool3d(1)
        self.out_features = widths[3] * block.expansion
        for m in self.modules():
            if isinstance(m, nn.Conv3d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm3d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def _make_layer(
        self, block: type[nn.Module], planes: int, blocks: int, stride: int, bias: bool
    ) -> nn.Sequential:
        out_planes = planes * block.expansion
        downsample = None
        if stride != 1 or self._in_planes != out_planes:
            downsample = nn.Sequential(
                Conv3d(self._in_planes, out_planes, 1, stride=stride, bias=bias),
                nn.BatchNorm3d(out_planes),
            )
        layers = [block(self._in_planes, planes, stride, downsample)]
        self._in_planes = out_planes
        layers += [block(out_planes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    early_batch: int | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Encode a batch ``(N, 1, D, H, W)`` into features ``(N, out_features)``.

        Parameters
        ----------
        x : Tensor of shape (N, 1, D, H, W)
            Normalised patches (:func:`skfmcib.patches.normalize_hu`), 50^3 for FMCIB.

        Returns
        -------
        Tensor of shape (N, out_features)
            The features: the last stage's output, averaged over space.

        Examples
        --------
        >>> import torch
        >>> from skfmcib.encoder import EncoderConfig, ResNet3D
        >>> net = ResNet3D(EncoderConfig(arch="resnet10", widen_factor=0.125)).eval()
        >>> with torch.no_grad():
        ...     features = net.forward(torch.zeros(3, 1, 50, 50, 50))
        >>> features.shape
        torch.Size([3, 64])
        """
        n = self.early_batch
        if n and not self.training and x.shape[0] > n:
            x = torch.cat([self._early(part) for part in x.split(n)])
        else:
            x = self._early(x)
        x = self.layer4(self.layer3(self.layer2(x)))
        return torch.flatten(self.avgpool(x), 1)

    def _early(self, x: torch.Tensor) -> torch.Tensor:
        return self.layer1(self._pool(self.act(self.bn1(self.conv1(x)))))

    def _pool(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type == "cpu" and x.is_contiguous() and not _needs_grad(x):
            # torch's CPU max pooling is vectorised over channels only in the
            # channels-last layout: about 3x faster here, the two copies included.
            # A maximum is the same in any layout. Passes that need gradients (the
            # backward kernel of that layout is not measured) keep the plain one.
            x = self.maxpool(x.contiguous(memory_format=torch.channels_last_3d))
            return x.contiguous()
        return self.maxpool(x)


def _needs_grad(x: torch.Tensor) -> bool:
    return torch.is_grad_enabled() and x.requires_grad


def build_encoder(config: EncoderConfig | dict | None = None) -> ResNet3D:
    """Build an encoder with freshly initialised weights.

    Parameters
    ----------
    config : EncoderConfig or dict, optional
        Architecture; the FMCIB ResNet-50 (4096 features) when omitted.

    Returns
    -------
    ResNet3D
        The network, in training mode, on the CPU.

    Examples
    --------
    >>> from skfmcib.encoder import build_encoder
    >>> build_encoder({"arch": "resnet18", "widen_factor": 0.5}).out_features
    256
    """
    if isinstance(config, dict):
        config = EncoderConfig.from_dict(config)
    return ResNet3D(config)
