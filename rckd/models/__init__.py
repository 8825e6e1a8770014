"""Model zoo: `build(name, num_classes=100, in_channels=3)` and `available()`.

Importing a family module registers its architectures; every model maps images of any size
(32x32 CIFAR, 28x28 Fashion-MNIST, 224x224 ImageNet) to logits only.
"""

from rckd.models import imagenet, mobilenetv2, resnet, shufflenetv1, shufflenetv2, vgg, wrn  # noqa: F401  (registration)
from rckd.models.registry import available, build, register

__all__ = ["available", "build", "register"]
