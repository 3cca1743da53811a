"""Convolution building blocks shared by the vision models (ResNet, EfficientNet, CRNN).

Each keeps the submodule names (``conv``, ``bn``, ``act``) that checkpoints and
key maps refer to, so moving a model onto these pieces changes no state-dict key.
"""

from __future__ import annotations

import math
import numbers

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError


def conv3x3(in_channels: int, out_channels: int, stride: int = 1, groups: int = 1, *, bias: bool = False) -> nn.Conv2d:
    """3x3 convolution padded by 1 (same size at stride 1); no bias by default, as a BatchNorm usually follows."""
    return nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=stride, padding=1, groups=groups, bias=bias)


def conv1x1(in_channels: int, out_channels: int, stride: int = 1, *, bias: bool = False) -> nn.Conv2d:
    """1x1 convolution (a per-pixel linear map of the channels); no bias by default."""
    return nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=stride, bias=bias)


class Conv2dSame(nn.Conv2d):
    """A convolution padded like TensorFlow's "same": output size ceil(input / stride), extra pixel bottom/right."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, stride: int = 1, groups: int = 1):
        # With stride 1 and an odd kernel "same" is symmetric and fixed; otherwise it depends on the input size.
        if not isinstance(kernel, numbers.Integral) or isinstance(kernel, bool) or kernel < 1:
            raise ConfigError(f"Conv2dSame's kernel must be a positive integer, got {kernel!r}")
        kernel = int(kernel)
        fixed = stride == 1 and kernel % 2 == 1
        super().__init__(in_channels, out_channels, kernel, stride, padding=(kernel - 1) // 2 if fixed else 0, groups=groups, bias=False)

    def __setstate__(self, state) -> None:
        super().__setstate__(state)
        if self._dynamic():
            self.padding = (0, 0)  # pickled when an even kernel at stride 1 was padded by (k - 1) // 2 here

    def _dynamic(self) -> bool:
        return self.stride != (1, 1) or self.kernel_size[0] % 2 == 0 or self.kernel_size[1] % 2 == 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._dynamic():
            pads = []
            for size, kernel, stride in zip(reversed(x.shape[-2:]), reversed(self.kernel_size), reversed(self.stride)):
                total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
                pads += [total // 2, total - total // 2]  # (left, right) then (top, bottom)
            x = F.pad(x, pads)
        return super().forward(x)


class ConvBNAct(nn.Module):
    """"same"-padded conv -> BatchNorm -> ReLU6 (``act=False``: no activation, as after a block's projection)."""

    conv_bn_pairs = (("conv", "bn"),)  # minipt.nn.fuse: the BatchNorm folded into the conv

    def __init__(self, in_channels: int, out_channels: int, kernel: int, stride: int = 1, *, groups: int = 1, act: bool = True, eps: float = 1e-5, momentum: float = 0.1):
        super().__init__()
        self.conv = Conv2dSame(in_channels, out_channels, kernel, stride, groups)
        self.bn = nn.BatchNorm2d(out_channels, eps=eps, momentum=momentum)
        self.act = nn.ReLU6(inplace=True) if act else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


def drop_path(x: torch.Tensor, rate: float, training: bool) -> torch.Tensor:
    """Stochastic depth ("drop connect"): in training, zero a sample's whole branch with probability ``rate``."""
    if not training or rate == 0.0:
        return x
    keep = torch.empty(x.shape[0], 1, 1, 1, dtype=x.dtype, device=x.device).bernoulli_(1 - rate)  # (B, 1, 1, 1)
    return x * keep / (1 - rate) if rate < 1 else x * keep  # rate 1: every branch dropped (zeros, not 0/0)
