"""MobileNetV2 (Sandler et al., 2018) at width 0.5, the CIFAR variant of the RepDistiller/mdistiller zoo.

As there, every block keeps its 1x1 expansion conv (also when t=1) and the stem has stride 2,
so a 32x32 input leaves 2x2 maps before the global average pool.
"""

from __future__ import annotations

import torch
from torch import nn

from rckd.models.layers import Classifier, conv_bn
from rckd.models.registry import register

# (expansion t, output channels c at width 1, blocks n, stride s of the first block)
_SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
             (6, 160, 3, 2), (6, 320, 1, 1))
_STEM_WIDTH = 32
_LAST_WIDTH = 1280  # not scaled for width multipliers <= 1


class InvertedResidual(nn.Module):
    """1x1 expand-BN-ReLU, 3x3 depthwise-BN-ReLU, 1x1 linear projection-BN; residual when shapes match."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, expansion: int) -> None:
        super().__init__()
        hidden = in_ch * expansion
        self.body = nn.Sequential(
            conv_bn(in_ch, hidden, 1),
            conv_bn(hidden, hidden, 3, stride, groups=hidden),
            conv_bn(hidden, out_ch, 1, relu=False),
        )
        self.residual = stride == 1 and in_ch == out_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.body(x)
        return x + out if self.residual else out


class MobileNetV2(Classifier):
    def __init__(self, width_mult: float, num_classes: int, in_channels: int) -> None:
        in_ch = int(_STEM_WIDTH * width_mult)
        layers: list[nn.Module] = [conv_bn(in_channels, in_ch, 3, stride=2)]
        for expansion, channels, count, first_stride in _SETTINGS:
            out_ch = int(channels * width_mult)
            for index in range(count):
                layers.append(InvertedResidual(in_ch, out_ch, first_stride if index == 0 else 1, expansion))
                in_ch = out_ch
        layers.append(conv_bn(in_ch, _LAST_WIDTH, 1))
        super().__init__(layers, _LAST_WIDTH, num_classes)


@register
def mobilenetv2(num_classes: int, in_channels: int) -> nn.Module:
    return MobileNetV2(0.5, num_classes, in_channels)
