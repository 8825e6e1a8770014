"""Building blocks shared by several model families."""

from __future__ import annotations

import torch
from torch import nn


def conv_bn(in_ch: int, out_ch: int, kernel_size: int, stride: int = 1, groups: int = 1,
            relu: bool = True, bias: bool = False) -> nn.Sequential:
    """Conv ("same" padding for odd kernels) + BatchNorm, optionally followed by ReLU."""
    layers: list[nn.Module] = [
        nn.Conv2d(in_ch, out_ch, kernel_size, stride, kernel_size // 2, groups=groups, bias=bias),
        nn.BatchNorm2d(out_ch),
    ]
    if relu:
        layers.append(nn.ReLU(inplace=True))
    return nn.Sequential(*layers)


class Classifier(nn.Module):
    """Every model of the zoo: `features`, then global average pool (any spatial size), flatten and
    a linear layer: logits only. Families build their feature layers and hand them over."""

    def __init__(self, layers: list[nn.Module], feature_channels: int, num_classes: int) -> None:
        super().__init__()
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(1), nn.Linear(feature_channels, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """Interleave the channels of `groups` groups (ShuffleNet).

    Only the channel axis is reshaped, so the batch size stays symbolic in traces and ONNX graphs.
    """
    if groups == 1:
        return x
    return x.unflatten(1, (groups, -1)).transpose(1, 2).flatten(1, 2)


def init_weights(model: nn.Module) -> None:
    """Kaiming-normal convs (fan_out, ReLU gain), unit BatchNorm; linear layers keep PyTorch's default.

    As in the RepDistiller zoo. A tiny classifier init (e.g. std 0.01) gives near-zero initial logits,
    where scale-invariant losses (Pearson/cosine terms of DIST and RCKD) have gradients that grow as
    1 / ||centred logits|| and blow the student up in its first steps.
    """
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
