"""Model zoo: `build(name, num_classes=100, in_channels=3)` and `available()`.

Importing a family module registers its architectures; every model maps images of any size
(32x32 CIFAR, 28x28 Fashion-MNIST, 224x224 ImageNet) to logits only. The names (`ARCHS`,
rckd.models.names) import no torch, so the workflow plans with them; the rest loads torch on first use.
"""

from rckd.models.names import ARCHS

__all__ = ["ARCHS", "available", "build", "register"]

_FAMILIES = ("imagenet", "mobilenetv2", "resnet", "shufflenetv1", "shufflenetv2", "vgg", "wrn")


def __getattr__(name: str):
    if name in ("available", "build", "register"):
        import importlib

        for family in _FAMILIES:  # registration
            importlib.import_module(f"rckd.models.{family}")
        return getattr(importlib.import_module("rckd.models.registry"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
