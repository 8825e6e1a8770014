"""Wide ResNets (Zagoruyko & Komodakis, 2016) for CIFAR: WRN-d-k, pre-activation blocks, no dropout."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from rckd.models.layers import Classifier
from rckd.models.registry import register


class PreActBlock(nn.Module):
    """BN-ReLU-conv3x3-BN-ReLU-conv3x3 plus a shortcut.

    When the width changes, the 1x1 projection reads the pre-activated input (as in the WRN
    reference code); otherwise the raw input is added unchanged.
    """

    def __init__(self, in_ch: int, out_ch: int, stride: int) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, 1, 1, bias=False)
        self.projection = (
            nn.Conv2d(in_ch, out_ch, 1, stride, bias=False) if in_ch != out_ch else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        activated = F.relu(self.bn1(x))
        residual = self.conv2(F.relu(self.bn2(self.conv1(activated))))
        shortcut = x if self.projection is None else self.projection(activated)
        return residual + shortcut


class WideResNet(Classifier):
    """3x3 stem to 16 channels, three stages of width 16k/32k/64k, final BN-ReLU, pool, linear."""

    def __init__(self, depth: int, widen: int, num_classes: int, in_channels: int) -> None:
        if (depth - 4) % 6:
            raise ValueError(f"WRN depth must be 6n+4, got {depth}")
        n = (depth - 4) // 6
        layers: list[nn.Module] = [nn.Conv2d(in_channels, 16, 3, 1, 1, bias=False)]
        in_ch = 16
        for stage, width in enumerate((16 * widen, 32 * widen, 64 * widen)):
            for index in range(n):
                layers.append(PreActBlock(in_ch, width, 2 if stage > 0 and index == 0 else 1))
                in_ch = width
        layers += [nn.BatchNorm2d(in_ch), nn.ReLU(inplace=True)]
        super().__init__(layers, in_ch, num_classes)


@register
def wrn_16_2(num_classes: int, in_channels: int) -> nn.Module:
    return WideResNet(16, 2, num_classes, in_channels)


@register
def wrn_40_1(num_classes: int, in_channels: int) -> nn.Module:
    return WideResNet(40, 1, num_classes, in_channels)


@register
def wrn_40_2(num_classes: int, in_channels: int) -> nn.Module:
    return WideResNet(40, 2, num_classes, in_channels)
