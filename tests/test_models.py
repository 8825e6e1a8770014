"""The model zoo (CIFAR and ImageNet families): registry, parameter counts, shapes, compile-ability
and ONNX parity."""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch
from torch import nn

from rckd import models
from rckd.errors import RckdError

# Parameters at num_classes=100, in_channels=3, as published for the RepDistiller/mdistiller zoo.
EXPECTED_PARAMS_M = {
    "resnet20": 0.28, "resnet32": 0.47, "resnet56": 0.86, "resnet110": 1.74,
    "resnet8x4": 1.23, "resnet32x4": 7.43,
    "wrn_16_2": 0.70, "wrn_40_1": 0.57, "wrn_40_2": 2.26,
    "vgg8": 3.97, "vgg13": 9.46,
    "mobilenetv2": 0.81, "shufflenetv1": 0.95, "shufflenetv2": 1.36, "resnet50": 23.71,
}
# At num_classes=1000: torchvision's documented counts (11.7M, 21.8M, 25.6M) and MobileNet-V1 1.0x's
# 4.2M (Howard et al., 2017, Table 4).
IMAGENET_PARAMS_M = {"tv_resnet18": 11.69, "tv_resnet34": 21.80, "tv_resnet50": 25.56, "mobilenetv1": 4.23}
# Not in the paper's zoo: the CPU demo's small CIFAR ResNets (depth 6n+2, n=1 and 2).
DEMO_MODELS = ["resnet8", "resnet14"]
# Families whose forward has static flags or shape ops (the others are plain sequential + add).
BRANCHING_FAMILIES = ["wrn_16_2", "mobilenetv2", "shufflenetv1", "shufflenetv2"]


def _calibrated(name: str) -> nn.Module:
    """An eval-mode model whose BatchNorm statistics come from one random batch.

    Fresh running statistics (mean 0, var 1) let deep post-activation ResNets reach logits of
    1e8 in eval mode, where float32 rounding alone exceeds any absolute tolerance.
    """
    torch.manual_seed(0)
    model = models.build(name)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.momentum = None  # cumulative average: after one batch, exactly its statistics
    with torch.no_grad():
        model.train()(torch.randn(8, 3, 32, 32))
    return model.eval()


def test_available_lists_the_zoo_and_the_demo_models_sorted():
    assert models.available() == sorted([*EXPECTED_PARAMS_M, *IMAGENET_PARAMS_M, *DEMO_MODELS])


def basic_resnet_params(n: int, stem: int, widths: tuple[int, int, int], classes: int) -> int:
    """Closed form for a CIFAR ResNet of basic blocks: convs without bias, BN (2 per channel), FC."""
    conv_bn = lambda cin, cout, k: cin * cout * k * k + 2 * cout  # noqa: E731
    total, cin = conv_bn(3, stem, 3), stem
    for stage, width in enumerate(widths):
        for block in range(n):
            total += conv_bn(cin, width, 3) + conv_bn(width, width, 3)
            if cin != width or (stage > 0 and block == 0):
                total += conv_bn(cin, width, 1)
            cin = width
    return total + cin * classes + classes


@pytest.mark.parametrize("name, n, stem, widths", [
    ("resnet8", 1, 16, (16, 32, 64)), ("resnet14", 2, 16, (16, 32, 64)), ("resnet20", 3, 16, (16, 32, 64)),
    ("resnet8x4", 1, 32, (64, 128, 256)),
])
def test_basic_resnet_parameter_count_has_the_closed_form(name, n, stem, widths):
    count = sum(p.numel() for p in models.build(name, num_classes=100).parameters())
    assert count == basic_resnet_params(n, stem, widths, 100)


@pytest.mark.parametrize("name", sorted(EXPECTED_PARAMS_M))
def test_parameter_count_matches_the_reference_zoo(name):
    count = sum(p.numel() for p in models.build(name, num_classes=100, in_channels=3).parameters())
    expected = EXPECTED_PARAMS_M[name] * 1e6
    assert abs(count - expected) / expected < 0.01, f"{name}: {count} parameters, expected ~{expected:.0f}"


@pytest.mark.parametrize("name", sorted(IMAGENET_PARAMS_M))
def test_imagenet_parameter_count_matches_the_published_one(name):
    count = sum(p.numel() for p in models.build(name, num_classes=1000).parameters())
    expected = IMAGENET_PARAMS_M[name] * 1e6
    assert abs(count - expected) / expected < 0.005, f"{name}: {count} parameters, expected ~{expected:.0f}"


@pytest.mark.parametrize("name", ["tv_resnet18", "tv_resnet34", "tv_resnet50"])
def test_torchvision_resnets_take_torchvision_state_dicts_as_they_are(name):
    """The IMAGENET1K_V1 teachers are torchvision state dicts: every key and shape must match."""
    import torchvision

    torch.manual_seed(0)
    reference = getattr(torchvision.models, name.removeprefix("tv_"))(weights=None).eval()
    ours = models.build(name, num_classes=1000).eval()
    ours.load_state_dict(reference.state_dict(), strict=True)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), reference(x))


@pytest.mark.parametrize("name", models.available())
@pytest.mark.parametrize("in_channels,size", [(3, 32), (1, 28)])
def test_forward_gives_logits_in_both_memory_formats(name, in_channels, size):
    torch.manual_seed(0)
    model = models.build(name, num_classes=10, in_channels=in_channels).eval()
    x = torch.randn(2, in_channels, size, size)
    with torch.no_grad():
        logits = model(x)
        logits_cl = model.to(memory_format=torch.channels_last)(x.to(memory_format=torch.channels_last))
    assert logits.shape == (2, 10)
    assert torch.isfinite(logits).all()
    torch.testing.assert_close(logits_cl, logits, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("name", BRANCHING_FAMILIES)
def test_forward_traces_as_one_graph(name):
    """fullgraph=True fails on any graph break (e.g. data-dependent Python control flow)."""
    model = models.build(name, num_classes=10).to(memory_format=torch.channels_last)
    x = torch.randn(2, 3, 32, 32).to(memory_format=torch.channels_last)
    compiled = torch.compile(model, backend="eager", fullgraph=True)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x))


# dynamo=False: the TorchScript exporter (still working in torch 2.14) warns that it is deprecated.
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize("name", models.available())
def test_onnx_export_has_a_dynamic_batch_and_matches_pytorch(name, tmp_path):
    model = _calibrated(name)
    path = tmp_path / f"{name}.onnx"
    torch.onnx.export(
        model, (torch.randn(2, 3, 32, 32),), str(path), dynamo=False, opset_version=17,
        input_names=["input"], output_names=["logits"],
        dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
    )
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    for batch in (1, 3):
        x = torch.randn(batch, 3, 32, 32)
        with torch.no_grad():
            expected = model(x).numpy()
        (actual,) = session.run(["logits"], {"input": x.numpy()})
        assert actual.shape == (batch, 100)
        # rckd.export's parity tolerance: 1e-4 per unit of the largest logit (fp32 sums in another order)
        assert np.abs(actual - expected).max() < 1e-4 * max(1.0, np.abs(expected).max())


def test_unknown_name_is_an_error_that_lists_the_choices():
    with pytest.raises(RckdError) as err:
        models.build("resnet21")
    message = str(err.value)
    assert "'resnet21'" in message
    assert all(name in message for name in models.available())


@pytest.mark.parametrize("kwargs", [{"num_classes": 0}, {"in_channels": -1}, {"num_classes": 2.5}])
def test_non_positive_sizes_are_rejected(kwargs):
    with pytest.raises(RckdError, match="must be a positive integer"):
        models.build("resnet20", **kwargs)


def test_a_name_cannot_be_registered_twice():
    def resnet20(num_classes: int, in_channels: int) -> nn.Module:
        return nn.Identity()

    with pytest.raises(ValueError, match="registered twice"):
        models.register(resnet20)
    assert type(models.build("resnet20")).__name__ == "CifarResNet"


def test_shufflenetv1_units_apply_relu_after_the_depthwise_conv_as_repdistiller_does():
    # RepDistiller models/ShuffleNetv1.py Bottleneck.forward: out = F.relu(self.bn2(self.conv2(out)))
    model = models.build("shufflenetv1").eval()
    depthwise_outputs = []
    for unit in model.features[1:]:
        depthwise = unit.spatial[0]
        assert depthwise[0].groups == depthwise[0].in_channels  # the 3x3 depthwise conv
        depthwise.register_forward_hook(lambda module, inputs, output: depthwise_outputs.append(output))
    with torch.no_grad():
        model(torch.randn(2, 3, 32, 32))
    assert len(depthwise_outputs) == 16
    assert all(output.min() >= 0 and output.max() > 0 for output in depthwise_outputs)
