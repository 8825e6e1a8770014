"""VGG with BatchNorm for CIFAR (RepDistiller variant): five conv groups, max pool after the first
three, global average pool, one linear layer from 512 features."""

from __future__ import annotations

from torch import nn

from rckd.models.layers import Classifier, conv_bn
from rckd.models.registry import register

_WIDTHS = (64, 128, 256, 512, 512)
POOLED_GROUPS = 3  # 32 -> 4 pixels; a fourth pool would leave 2x2 (and 1x1 at 28x28)


class VGG(Classifier):
    def __init__(self, convs_per_group: int, num_classes: int, in_channels: int) -> None:
        layers: list[nn.Module] = []
        in_ch = in_channels
        for group, width in enumerate(_WIDTHS):
            for _ in range(convs_per_group):
                layers.append(conv_bn(in_ch, width, 3, bias=True))
                in_ch = width
            if group < POOLED_GROUPS:
                layers.append(nn.MaxPool2d(2, 2))
        super().__init__(layers, in_ch, num_classes)


@register
def vgg8(num_classes: int, in_channels: int) -> nn.Module:
    return VGG(1, num_classes, in_channels)


@register
def vgg13(num_classes: int, in_channels: int) -> nn.Module:
    return VGG(2, num_classes, in_channels)
