"""The ImageNet pairs of the distillation papers: torchvision's ResNet-18/34/50 (`tv_resnet*`, the
exact modules and state-dict keys of torchvision, so its IMAGENET1K_V1 weights load as they are) and
MobileNet-V1 1.0x (Howard et al., 2017: 4.2M parameters at 1000 classes, as published)."""

from __future__ import annotations

from torch import nn

from rckd.models.layers import Classifier, conv_bn
from rckd.models.registry import register

# (output channels, stride) of the 13 depthwise-separable blocks after the stride-2 32-channel stem
_MOBILENET_V1 = ((64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2), *[(512, 1)] * 5, (1024, 2), (1024, 1))


def _torchvision_resnet(name: str, num_classes: int, in_channels: int) -> nn.Module:
    from torchvision import models as tv_models

    model = getattr(tv_models, name)(weights=None, num_classes=num_classes)
    if in_channels != 3:
        model.conv1 = nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
    return model


@register
def tv_resnet18(num_classes: int, in_channels: int) -> nn.Module:
    return _torchvision_resnet("resnet18", num_classes, in_channels)


@register
def tv_resnet34(num_classes: int, in_channels: int) -> nn.Module:
    return _torchvision_resnet("resnet34", num_classes, in_channels)


@register
def tv_resnet50(num_classes: int, in_channels: int) -> nn.Module:
    return _torchvision_resnet("resnet50", num_classes, in_channels)


@register
def mobilenetv1(num_classes: int, in_channels: int) -> nn.Module:
    """Stem conv3x3/2 (32), then per block a 3x3 depthwise conv and a 1x1 pointwise conv, each BN-ReLU."""
    layers: list[nn.Module] = [conv_bn(in_channels, 32, 3, 2)]
    width = 32
    for out_ch, stride in _MOBILENET_V1:
        layers += [conv_bn(width, width, 3, stride, groups=width), conv_bn(width, out_ch, 1)]
        width = out_ch
    return Classifier(layers, width, num_classes)
