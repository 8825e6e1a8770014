"""Importing mdistiller's published CIFAR-100 teachers: key layout, parity, safe loading, errors."""

from __future__ import annotations

import argparse
import io
import json
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from rckd import models
from rckd.checkpoint import load_model
from rckd.cli import main as cli
from rckd.data.datasets import CIFAR100_CLASSES
from rckd.errors import RckdError
from rckd.teachers import SOURCES, mdistiller


# Their state-dict names, enumerated from mdistiller/models/cifar/{resnet,resnetv2,wrn,vgg}.py (not from
# our mapping): BN tensors are weight, bias, running_mean, running_var, num_batches_tracked.
def _bn(name: str) -> list[str]:
    return [f"{name}.{suffix}" for suffix in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")]


def _cifar_resnet_names(blocks: int, widths: tuple[int, ...], stem: int) -> list[str]:
    names, in_ch = ["conv1.weight", *_bn("bn1")], stem
    for stage, width in enumerate(widths, 1):
        for block in range(blocks):
            prefix = f"layer{stage}.{block}"
            names += [f"{prefix}.conv1.weight", *_bn(f"{prefix}.bn1"), f"{prefix}.conv2.weight", *_bn(f"{prefix}.bn2")]
            stride = 2 if stage > 1 and block == 0 else 1
            if stride != 1 or in_ch != width:
                names += [f"{prefix}.downsample.0.weight", *_bn(f"{prefix}.downsample.1")]
            in_ch = width
    return names + ["fc.weight", "fc.bias"]


def _resnet50_names() -> list[str]:
    names = ["conv1.weight", *_bn("bn1")]
    for stage, count in enumerate((3, 4, 6, 3), 1):
        for block in range(count):
            prefix = f"layer{stage}.{block}"
            for j in (1, 2, 3):
                names += [f"{prefix}.conv{j}.weight", *_bn(f"{prefix}.bn{j}")]
            if block == 0:  # stride 2 or 4x wider output
                names += [f"{prefix}.shortcut.0.weight", *_bn(f"{prefix}.shortcut.1")]
    return names + ["linear.weight", "linear.bias"]


def _wrn_names(depth: int, widen: int) -> list[str]:
    n, names, in_ch = (depth - 4) // 6, ["conv1.weight"], 16
    for stage, width in enumerate((16 * widen, 32 * widen, 64 * widen), 1):
        for block in range(n):
            prefix = f"block{stage}.layer.{block}"
            names += [*_bn(f"{prefix}.bn1"), f"{prefix}.conv1.weight", *_bn(f"{prefix}.bn2"), f"{prefix}.conv2.weight"]
            if in_ch != width:
                names.append(f"{prefix}.convShortcut.weight")
            in_ch = width
    return names + _bn("bn1") + ["fc.weight", "fc.bias"]


def _vgg13_names() -> list[str]:
    names = []
    for group in range(5):
        for index in (0, 3):  # [conv, bn, relu, conv, bn]: convs at 0 and 3, their BNs at 1 and 4
            names += [f"block{group}.{index}.weight", f"block{group}.{index}.bias", *_bn(f"block{group}.{index + 1}")]
    return names + ["classifier.weight", "classifier.bias"]


THEIR_NAMES = {
    "resnet56": lambda: _cifar_resnet_names(9, (16, 32, 64), 16),
    "resnet110": lambda: _cifar_resnet_names(18, (16, 32, 64), 16),
    "resnet32x4": lambda: _cifar_resnet_names(5, (64, 128, 256), 32),
    "resnet50": _resnet50_names,
    "wrn_40_2": lambda: _wrn_names(40, 2),
    "vgg13": _vgg13_names,
}
TENSOR_COUNTS = {"resnet56": 344, "resnet110": 668, "resnet32x4": 206, "resnet50": 320, "wrn_40_2": 227, "vgg13": 72}


def their_checkpoint(arch: str, seed: int = 0) -> tuple[dict, torch.nn.Module]:
    """A checkpoint as RepDistiller's train_teacher.py saves it, with random weights in mdistiller's names,
    and our model holding the same weights (the layouts match tensor for tensor, in order)."""
    torch.manual_seed(seed)
    ours = models.build(arch, num_classes=100, in_channels=3)
    for module in ours.modules():  # non-trivial BN statistics, so a misplaced buffer changes the logits
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.normal_(0, 0.1)
            module.running_var.uniform_(0.5, 1.5)
            module.weight.data.uniform_(0.2, 0.5)
    ours.eval()
    names = THEIR_NAMES[arch]()
    tensors = list(ours.state_dict().values())
    assert len(names) == len(tensors) == TENSOR_COUNTS[arch]
    state = {name: tensor.clone() for name, tensor in zip(names, tensors)}
    optimizer = {"state": {}, "param_groups": [{"lr": np.float64(0.05) * 0.1**3, "momentum": 0.9, "params": [0]}]}
    return {"epoch": 240, "model": state, "accuracy": torch.tensor(74.31), "optimizer": optimizer}, ours


@pytest.mark.parametrize("arch", sorted(SOURCES["mdistiller"]))
def test_every_published_teacher_imports_to_the_same_logits(arch, tmp_path):
    checkpoint, ours = their_checkpoint(arch)
    path = tmp_path / "ckpt_epoch_240.pth"
    torch.save(checkpoint, path)
    out = tmp_path / "model.pt"
    assert cli(["import-teacher", "--source", "mdistiller", "--arch", arch, "--checkpoint", str(path),
                "--out", str(out)]) == 0
    model, meta = load_model(out)
    images = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(images), ours(images), rtol=1e-5, atol=1e-5)
    assert meta.dataset == "cifar100" and meta.classes == list(CIFAR100_CLASSES)
    assert meta.input_size == [3, 32, 32] and meta.source == "mdistiller" and meta.data_options == {}


def test_the_archive_member_and_metrics_are_what_the_workflow_reads(tmp_path):
    checkpoint, ours = their_checkpoint("resnet32x4", seed=1)
    buffer = io.BytesIO()
    torch.save(checkpoint, buffer, _use_new_zipfile_serialization=False)  # their 2019 files: legacy format
    archive = tmp_path / "cifar_teachers.tar"
    with tarfile.open(archive, "w") as tar:
        info = tarfile.TarInfo("cifar_teachers/resnet32x4_vanilla/ckpt_epoch_240.pth")
        info.size = len(buffer.getvalue())
        tar.addfile(info, io.BytesIO(buffer.getvalue()))
    out, metrics = tmp_path / "run" / "model.pt", tmp_path / "run" / "metrics.json"
    assert cli(["import-teacher", "--source", "mdistiller", "--arch", "resnet32x4", "--archive", str(archive),
                "--out", str(out), "--metrics", str(metrics)]) == 0
    record = json.loads(metrics.read_text())
    assert record["source_file"].endswith(":cifar_teachers/resnet32x4_vanilla/ckpt_epoch_240.pth")
    assert record["num_params"] == sum(p.numel() for p in ours.parameters()) and record["best_top1"] is None
    assert sorted(path.name for path in out.parent.iterdir()) == ["metrics.json", "model.pt"]  # no curves: not trained
    with pytest.raises(RckdError, match="has no vgg13 teacher|no member cifar_teachers/vgg13"):
        mdistiller.import_teacher("vgg13", tmp_path / "x.pt", archive=archive)


def test_a_missing_archive_says_where_to_get_it(tmp_path):
    with pytest.raises(RckdError, match=r"(?s)not found; download it.*curl -L -o .*cifar_teachers.tar"):
        mdistiller.import_teacher("resnet56", tmp_path / "x.pt", archive=tmp_path / "cifar_teachers.tar")


def _saved(tmp_path: Path, checkpoint: dict) -> Path:
    path = tmp_path / "ckpt.pth"
    torch.save(checkpoint, path)
    return path


def test_missing_extra_and_misshaped_tensors_name_the_key(tmp_path):
    checkpoint, _ = their_checkpoint("resnet56")
    state = checkpoint["model"]
    cases = [
        ({k: v for k, v in state.items() if k != "layer2.3.bn1.running_var"},
         r"lacks 1 tensor.*e\.g\. 'layer2\.3\.bn1\.running_var' \(our 'features\.\d+\.residual\.0\.1\.running_var'\)"),
        # the whole classifier gone: named in the checkpoint's layout (either name mdistiller uses) and ours
        ({k: v for k, v in state.items() if not k.startswith("fc.")},
         r"lacks 2 tensor\(s\) our resnet56 needs, e\.g\. 'fc\.weight' or 'linear\.weight' \(our 'head\.2\.weight'\)"),
        ({**state, "layer4.0.conv1.weight": torch.zeros(1)}, "'layer4.0.conv1.weight' has no place"),
        ({**state, "fc.weight": torch.zeros(10, 64)}, r"'fc.weight' has shape \(10, 64\).*\(100, 64\)"),
    ]
    for broken, message in cases:
        with pytest.raises(RckdError, match=message):
            mdistiller.import_teacher("resnet56", tmp_path / "x.pt", checkpoint=_saved(tmp_path, {"model": broken}))
    with pytest.raises(RckdError, match="is the checkpoint a resnet110"):
        mdistiller.import_teacher("resnet110", tmp_path / "x.pt", checkpoint=_saved(tmp_path, checkpoint))


def test_pickled_code_is_never_run(tmp_path):
    checkpoint, _ = their_checkpoint("vgg13")
    checkpoint["opt"] = argparse.Namespace(lr=0.05)  # any class other than tensors and numpy scalars
    with pytest.raises(RckdError, match="cannot be loaded safely.*never runs code"):
        mdistiller.import_teacher("vgg13", tmp_path / "x.pt", checkpoint=_saved(tmp_path, checkpoint))
    assert not (tmp_path / "x.pt").exists()


def test_an_unknown_family_or_arch_is_refused(tmp_path):
    path = _saved(tmp_path, their_checkpoint("vgg13")[0])
    with pytest.raises(RckdError, match="no mdistiller key layout is known for shufflenetv1"):
        mdistiller.import_teacher("shufflenetv1", tmp_path / "x.pt", checkpoint=path)
    with pytest.raises(RckdError, match="unknown arch 'vgg99'"):
        mdistiller.import_teacher("vgg99", tmp_path / "x.pt", checkpoint=path)


def test_cifar100_class_names_are_the_100_sorted_fine_labels():
    assert len(set(CIFAR100_CLASSES)) == 100 and list(CIFAR100_CLASSES) == sorted(CIFAR100_CLASSES)
    assert CIFAR100_CLASSES[:3] == ("apple", "aquarium_fish", "baby") and CIFAR100_CLASSES[-1] == "worm"


# --- torchvision's ImageNet teachers ------------------------------------------------------------


def _torchvision_checkpoint(path: Path, name: str = "resnet18") -> torch.nn.Module:
    """A torchvision ResNet with random weights (and settled BN statistics), saved as its state dict."""
    import torchvision

    torch.manual_seed(0)
    reference = getattr(torchvision.models, name)(weights=None)
    with torch.no_grad():
        reference.train()(torch.randn(4, 3, 64, 64))
    torch.save(reference.state_dict(), path)
    return reference.eval()


def test_a_torchvision_checkpoint_imports_to_the_same_logits(tmp_path):
    reference = _torchvision_checkpoint(tmp_path / "weights.pth")
    out, metrics = tmp_path / "model.pt", tmp_path / "metrics.json"
    assert cli(["import-teacher", "--source", "torchvision", "--arch", "tv_resnet18", "--checkpoint",
                str(tmp_path / "weights.pth"), "--out", str(out), "--metrics", str(metrics),
                "--data-option", "image_size=64", "--data-option", "resize_size=72"]) == 0
    model, meta = load_model(out)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference(x), rtol=0, atol=1e-5)
    assert meta.dataset == "imagenet" and meta.input_size == [3, 64, 64] and len(meta.classes) == 1000
    assert meta.data_options == {"image_size": 64, "resize_size": 72, "min_scale": 0.08}
    record = json.loads(metrics.read_text())
    assert record["source"] == "torchvision" and record["published_top1"] == 69.758 and record["method"] == "ce"


def test_a_torchvision_file_under_its_published_name_must_match_the_hash_in_the_name(tmp_path):
    folder = tmp_path / "weights"
    folder.mkdir()
    _torchvision_checkpoint(folder / "resnet18-f37072fd.pth")  # random weights: not the published file
    with pytest.raises(RckdError, match="not torchvision's resnet18-f37072fd.pth: its SHA-256 starts"):
        from rckd.teachers import torchvision as tv_source

        tv_source.import_teacher("tv_resnet18", tmp_path / "model.pt", archive=folder)


def test_an_offline_torchvision_download_says_how_to_provide_the_file(tmp_path, monkeypatch):
    from rckd.teachers import torchvision as tv_source

    def offline(url, destination, progress=True):
        raise OSError("Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(RckdError, match=r"downloading https://download.pytorch.org/models/resnet34-b627a593.pth "
                                        r"failed .*put it into .*--checkpoint FILE"):
        tv_source.import_teacher("tv_resnet34", tmp_path / "model.pt", archive=tmp_path / "none")


def test_a_state_dict_of_another_model_is_refused_with_the_key_problem(tmp_path):
    _torchvision_checkpoint(tmp_path / "r34.pth", "resnet34")
    with pytest.raises(RckdError, match="not a torchvision resnet18 state dict"):
        from rckd.teachers import torchvision as tv_source

        tv_source.import_teacher("tv_resnet18", tmp_path / "model.pt", checkpoint=tmp_path / "r34.pth")
