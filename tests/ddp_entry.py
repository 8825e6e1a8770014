"""`rckd` with one extra model, for the data-parallel tests: `python tests/ddp_entry.py train ...`
(or under torchrun). `linear_probe` has no BatchNorm, so its gradients do not depend on how a batch is
split among processes, and 2 processes must train it exactly like 1 with the same total batch."""

import sys

from torch import nn

from rckd.cli import main
from rckd.models import register


@register
def linear_probe(num_classes: int, in_channels: int) -> nn.Module:
    return nn.Sequential(nn.AdaptiveAvgPool2d(4), nn.Flatten(1), nn.Linear(16 * in_channels, num_classes))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
