"""Every architecture name, without torch: the workflow's schema lists these (tests/test_models.py checks
that they are exactly the names the family modules register)."""

ARCHS = ("mobilenetv1", "mobilenetv2", "resnet110", "resnet14", "resnet20", "resnet32", "resnet32x4", "resnet50",
         "resnet56", "resnet8", "resnet8x4", "shufflenetv1", "shufflenetv2", "tv_resnet18", "tv_resnet34",
         "tv_resnet50", "vgg13", "vgg8", "wrn_16_2", "wrn_40_1", "wrn_40_2")
