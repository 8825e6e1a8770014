"""ShuffleNet v1 (Zhang et al., 2018), groups=3, CIFAR variant of the RepDistiller/mdistiller zoo:
1x1 stem, no max pool, stages of 240/480/960 channels with 4/8/4 units."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from rckd.models.layers import Classifier, channel_shuffle, conv_bn
from rckd.models.registry import register

_STEM_WIDTH = 24
_STAGE_WIDTHS = (240, 480, 960)
_STAGE_UNITS = (4, 8, 4)


class ShuffleUnit(nn.Module):
    """1x1 group conv-BN-ReLU, channel shuffle, 3x3 depthwise conv-BN-ReLU, 1x1 group conv-BN.

    The ReLU after the depthwise conv follows the RepDistiller/mdistiller zoo (the ShuffleNet paper
    has none there); the papers' numbers for this student come from that code.

    A stride-2 unit concatenates a 3x3 average-pooled copy of its input (so its branch produces
    out_ch - in_ch channels); a stride-1 unit adds its input. ReLU after the merge.
    """

    def __init__(self, in_ch: int, out_ch: int, stride: int, groups: int, first_groups: int) -> None:
        super().__init__()
        branch_out = out_ch - in_ch if stride == 2 else out_ch
        bottleneck = branch_out // 4
        self.shuffle_groups = first_groups
        self.reduce = conv_bn(in_ch, bottleneck, 1, groups=first_groups)
        self.spatial = nn.Sequential(
            conv_bn(bottleneck, bottleneck, 3, stride, groups=bottleneck),
            conv_bn(bottleneck, branch_out, 1, groups=groups, relu=False),
        )
        self.pool = nn.AvgPool2d(3, 2, 1) if stride == 2 else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.spatial(channel_shuffle(self.reduce(x), self.shuffle_groups))
        merged = out + x if self.pool is None else torch.cat([out, self.pool(x)], 1)
        return F.relu(merged)


class ShuffleNetV1(Classifier):
    def __init__(self, groups: int, num_classes: int, in_channels: int) -> None:
        layers: list[nn.Module] = [conv_bn(in_channels, _STEM_WIDTH, 1)]
        in_ch = _STEM_WIDTH
        for width, count in zip(_STAGE_WIDTHS, _STAGE_UNITS):
            for index in range(count):
                # The stem has too few channels to split into groups for the very first 1x1 conv.
                first_groups = 1 if in_ch == _STEM_WIDTH else groups
                layers.append(ShuffleUnit(in_ch, width, 2 if index == 0 else 1, groups, first_groups))
                in_ch = width
        super().__init__(layers, in_ch, num_classes)


@register
def shufflenetv1(num_classes: int, in_channels: int) -> nn.Module:
    return ShuffleNetV1(3, num_classes, in_channels)
