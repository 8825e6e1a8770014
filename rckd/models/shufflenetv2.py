"""ShuffleNet v2 1x (Ma et al., 2018), CIFAR variant of the RepDistiller/mdistiller zoo:
1x1 stem, no max pool, stages of 116/232/464 channels, 1x1 conv to 1024."""

from __future__ import annotations

import torch
from torch import nn

from rckd.models.layers import Classifier, channel_shuffle, conv_bn
from rckd.models.registry import register

_STEM_WIDTH = 24
_STAGE_WIDTHS = (116, 232, 464)
_STAGE_UNITS = (3, 7, 3)  # stride-1 units after each stage's down-sampling unit
_LAST_WIDTH = 1024


def _branch(in_ch: int, out_ch: int, stride: int) -> nn.Sequential:
    """1x1-BN-ReLU, 3x3 depthwise-BN, 1x1-BN-ReLU."""
    return nn.Sequential(
        conv_bn(in_ch, out_ch, 1),
        conv_bn(out_ch, out_ch, 3, stride, groups=out_ch, relu=False),
        conv_bn(out_ch, out_ch, 1),
    )


class SplitUnit(nn.Module):
    """Keep half the channels, transform the other half, concatenate, shuffle."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.branch = _branch(channels // 2, channels // 2, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kept, transformed = x.chunk(2, dim=1)
        return channel_shuffle(torch.cat([kept, self.branch(transformed)], 1), 2)


class DownUnit(nn.Module):
    """Two stride-2 branches over the whole input, each giving half the output channels."""

    def __init__(self, in_ch: int, out_ch: int) -> None:
        super().__init__()
        half = out_ch // 2
        self.left = nn.Sequential(
            conv_bn(in_ch, in_ch, 3, 2, groups=in_ch, relu=False),
            conv_bn(in_ch, half, 1),
        )
        self.right = _branch(in_ch, half, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return channel_shuffle(torch.cat([self.left(x), self.right(x)], 1), 2)


class ShuffleNetV2(Classifier):
    def __init__(self, num_classes: int, in_channels: int) -> None:
        layers: list[nn.Module] = [conv_bn(in_channels, _STEM_WIDTH, 1)]
        in_ch = _STEM_WIDTH
        for width, count in zip(_STAGE_WIDTHS, _STAGE_UNITS):
            layers.append(DownUnit(in_ch, width))
            layers += [SplitUnit(width) for _ in range(count)]
            in_ch = width
        layers.append(conv_bn(in_ch, _LAST_WIDTH, 1))
        super().__init__(layers, _LAST_WIDTH, num_classes)


@register
def shufflenetv2(num_classes: int, in_channels: int) -> nn.Module:
    return ShuffleNetV2(num_classes, in_channels)
