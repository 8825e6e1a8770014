"""CIFAR ResNets (He et al., 2016): post-activation basic blocks (resnet20...resnet32x4) and the
bottleneck ResNet-50 with a 3x3 stride-1 stem and no max pool, as in the RepDistiller/mdistiller zoo."""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from rckd.models.layers import Classifier, conv_bn
from rckd.models.registry import register


def _shortcut(in_ch: int, out_ch: int, stride: int) -> nn.Module:
    """Identity when the shape is kept, else a strided 1x1 conv + BN projection."""
    if stride == 1 and in_ch == out_ch:
        return nn.Identity()
    return conv_bn(in_ch, out_ch, 1, stride, relu=False)


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN, add the shortcut, ReLU."""

    expansion = 1

    def __init__(self, in_ch: int, width: int, stride: int) -> None:
        super().__init__()
        self.residual = nn.Sequential(
            conv_bn(in_ch, width, 3, stride),
            conv_bn(width, width, 3, relu=False),
        )
        self.shortcut = _shortcut(in_ch, width, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.residual(x) + self.shortcut(x))


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (carries the stride), 1x1 expand by 4; add the shortcut, ReLU."""

    expansion = 4

    def __init__(self, in_ch: int, width: int, stride: int) -> None:
        super().__init__()
        out_ch = width * self.expansion
        self.residual = nn.Sequential(
            conv_bn(in_ch, width, 1),
            conv_bn(width, width, 3, stride),
            conv_bn(width, out_ch, 1, relu=False),
        )
        self.shortcut = _shortcut(in_ch, out_ch, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.residual(x) + self.shortcut(x))


class CifarResNet(Classifier):
    """3x3 stem, then one stage per width (stride 1 for the first stage, 2 after), pool, linear."""

    def __init__(self, block: type[BasicBlock] | type[Bottleneck], stem_width: int, widths: tuple[int, ...],
                 blocks_per_stage: tuple[int, ...], num_classes: int, in_channels: int) -> None:
        layers: list[nn.Module] = [conv_bn(in_channels, stem_width, 3)]
        in_ch = stem_width
        for stage, (width, count) in enumerate(zip(widths, blocks_per_stage)):
            for index in range(count):
                stride = 2 if stage > 0 and index == 0 else 1
                layers.append(block(in_ch, width, stride))
                in_ch = width * block.expansion
        super().__init__(layers, in_ch, num_classes)


def _basic(depth: int, stem_width: int, widths: tuple[int, int, int], num_classes: int,
           in_channels: int) -> CifarResNet:
    """Depth 6n+2: three stages of n basic blocks."""
    n = (depth - 2) // 6
    return CifarResNet(BasicBlock, stem_width, widths, (n, n, n), num_classes, in_channels)


# name: (depth, stem width, stage widths). resnet8 and resnet14 are not in the paper's zoo: they are
# small enough for the CPU demo.
_BASIC_RESNETS = {
    "resnet8": (8, 16, (16, 32, 64)),
    "resnet14": (14, 16, (16, 32, 64)),
    "resnet20": (20, 16, (16, 32, 64)),
    "resnet32": (32, 16, (16, 32, 64)),
    "resnet56": (56, 16, (16, 32, 64)),
    "resnet110": (110, 16, (16, 32, 64)),
    "resnet8x4": (8, 32, (64, 128, 256)),
    "resnet32x4": (32, 32, (64, 128, 256)),
}
for _name, (_depth, _stem, _widths) in _BASIC_RESNETS.items():
    register(partial(_basic, _depth, _stem, _widths), name=_name)


@register
def resnet50(num_classes: int, in_channels: int) -> nn.Module:
    return CifarResNet(Bottleneck, 64, (64, 128, 256, 512), (3, 4, 6, 3), num_classes, in_channels)
