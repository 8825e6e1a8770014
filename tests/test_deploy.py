"""The onnxruntime-only consumer: predictions equal the PyTorch model's on real image files,
inputs of other modes and sizes are converted, bad inputs fail one by one with clear messages,
`rckd predict` prints lines or JSON with the right exit codes, and nothing imports torch."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from conftest import SIZE, export_tiny, normalized, toy_meta
from PIL import Image
from torch import nn

from rckd import deploy
from rckd.cli import main as cli
from rckd.deploy import CPU, Failure, OnnxClassifier, Prediction, preprocess
from rckd.errors import RckdError
from rckd.export import torch_logits

ROOT = Path(__file__).resolve().parents[1]
CLASSES = ["apple", "bear", "castle", "dolphin", "elephant", "forest"]


def exported(channels: int, out: Path) -> tuple[nn.Module, Path]:
    """A random resnet20 with settled BatchNorm statistics, exported with rckd metadata."""
    return export_tiny(out, toy_meta("resnet20", CLASSES, channels, method="kd", params={"T": 4}, teacher=None,
                                     teacher_arch=None))


@pytest.fixture(scope="module")
def rgb(tmp_path_factory) -> tuple[nn.Module, Path]:
    return exported(3, tmp_path_factory.mktemp("rgb") / "model.onnx")


@pytest.fixture(scope="module")
def gray(tmp_path_factory) -> tuple[nn.Module, Path]:
    return exported(1, tmp_path_factory.mktemp("gray") / "model.onnx")


def pixels(seed: int, shape=(SIZE, SIZE, 3)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def reference(model: nn.Module, images_hwc: list[np.ndarray]) -> np.ndarray:
    """PyTorch probabilities of HWC uint8 images normalised the way the trainer does it."""
    batch = torch.from_numpy(np.stack(images_hwc)).permute(0, 3, 1, 2)
    logits = torch_logits(model, normalized(batch))
    return torch.softmax(torch.from_numpy(logits), dim=1).numpy()


def full_probabilities(result: Prediction) -> np.ndarray:
    row = np.zeros(len(CLASSES))
    row[result.indices] = result.probabilities
    return row


def test_preprocessing_equals_the_trainers_normalisation(rgb):
    _, path = rgb
    image = pixels(0)
    ours = preprocess(Image.fromarray(image), OnnxClassifier(path).info)
    theirs = normalized(torch.from_numpy(image).permute(2, 0, 1)[None])[0].numpy()
    np.testing.assert_array_equal(ours, theirs)


def test_predictions_on_png_and_jpeg_files_match_pytorch(rgb, tmp_path):
    model, path = rgb
    png, jpeg = tmp_path / "a.png", tmp_path / "b.jpg"
    Image.fromarray(pixels(1)).save(png)
    Image.fromarray(pixels(2)).save(jpeg, quality=90)
    decoded = [np.asarray(Image.open(png)), np.asarray(Image.open(jpeg))]  # JPEG is lossy: compare decoded pixels

    results = OnnxClassifier(path).predict([png, str(jpeg)], top_k=len(CLASSES))
    expected = reference(model, decoded)
    for result, row, source in zip(results, expected, (png, jpeg)):
        assert isinstance(result, Prediction) and result.source == str(source)
        np.testing.assert_allclose(full_probabilities(result), row, atol=1e-5)
        assert result.indices == list(np.argsort(-row, kind="stable"))
        assert result.labels == [CLASSES[i] for i in result.indices]
        assert result.probabilities == sorted(result.probabilities, reverse=True)
        assert sum(result.probabilities) == pytest.approx(1.0, abs=1e-5)

    top2 = OnnxClassifier(path).predict(png, top_k=2)
    assert len(top2) == 1 and top2[0].indices == results[0].indices[:2]
    assert len(OnnxClassifier(path).predict(png, top_k=100)[0].indices) == len(CLASSES)  # capped at K


def test_other_modes_sizes_and_array_layouts_are_converted(rgb, gray):
    model, path = rgb
    classifier = OnnxClassifier(path)
    image = pixels(3)
    expected = reference(model, [image])[0]
    big = Image.fromarray(pixels(4, (48, 40, 3)))
    gray_pixels = pixels(5, (SIZE, SIZE))
    inputs = [
        image,  # HWC array
        Image.fromarray(np.dstack([image, pixels(6, (SIZE, SIZE))])),  # RGBA: alpha dropped
        Image.fromarray(image).convert("P", palette=Image.Palette.ADAPTIVE, colors=256),
        big,  # resized to 16x16
        gray_pixels,  # HW array: L -> RGB repeats the channel
        gray_pixels[:, :, None],  # HW1 array
    ]
    results = classifier.predict(inputs, top_k=len(CLASSES))
    assert all(isinstance(r, Prediction) for r in results), results
    np.testing.assert_allclose(full_probabilities(results[0]), expected, atol=1e-5)
    np.testing.assert_allclose(full_probabilities(results[1]), expected, atol=1e-5)
    palette_pixels = np.asarray(Image.fromarray(image).convert("P", palette=Image.Palette.ADAPTIVE).convert("RGB"))
    np.testing.assert_allclose(full_probabilities(results[2]), reference(model, [palette_pixels])[0], atol=1e-5)
    resized = np.asarray(big.resize((SIZE, SIZE), Image.Resampling.BILINEAR))
    np.testing.assert_allclose(full_probabilities(results[3]), reference(model, [resized])[0], atol=1e-5)
    as_rgb = np.repeat(gray_pixels[:, :, None], 3, axis=2)
    for result in results[4:]:
        np.testing.assert_allclose(full_probabilities(result), reference(model, [as_rgb])[0], atol=1e-5)
    assert [r.source for r in results] == [f"<image {i}>" for i in range(len(inputs))]

    # A 4-D array is a batch; batches larger than batch_size are split and keep their order.
    batch = np.stack([pixels(seed) for seed in range(5)])
    split = classifier.predict(batch, top_k=1, batch_size=2)
    assert [r.indices[0] for r in split] == list(reference(model, list(batch)).argmax(1))

    # The grayscale model converts RGB input to L.
    gray_model, gray_path = gray
    results = OnnxClassifier(gray_path).predict([Image.fromarray(image)], top_k=len(CLASSES))
    luminance = np.asarray(Image.fromarray(image).convert("L"))[:, :, None]
    np.testing.assert_allclose(full_probabilities(results[0]), reference(gray_model, [luminance])[0], atol=1e-5)


def test_bad_images_fail_one_by_one(rgb, tmp_path):
    _, path = rgb
    good = tmp_path / "good.png"
    Image.fromarray(pixels(7)).save(good)
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    truncated = tmp_path / "truncated.png"
    big = tmp_path / "big.png"
    Image.fromarray(pixels(8, (64, 64, 3))).save(big)
    truncated.write_bytes(big.read_bytes()[:400])
    sixteen_bit = tmp_path / "deep.png"
    Image.fromarray(np.full((SIZE, SIZE), 40000, dtype=np.uint16)).save(sixteen_bit)

    inputs = [tmp_path / "missing.png", text, good, truncated, tmp_path, sixteen_bit,
              pixels(9).astype(np.float32), pixels(10, (SIZE, SIZE, 2)), 42]
    results = OnnxClassifier(path).predict(inputs)
    assert isinstance(results[2], Prediction) and results[2].source == str(good)
    failures = [r for r in results if isinstance(r, Failure)]
    assert len(failures) == len(inputs) - 1
    messages = [r.error for r in results if isinstance(r, Failure)]
    expected = ["file not found", "not an image file", "corrupt or truncated image", "is a directory",
                "mode 'I;16'", "dtype float32", "shape (16, 16, 2)", "unsupported input type int"]
    for message, fragment in zip(messages, expected):
        assert fragment in message
    assert results[0].source == str(tmp_path / "missing.png") and results[6].source == "<image 6>"


def test_bad_model_files_raise_clear_errors(rgb, tmp_path):
    _, path = rgb
    with pytest.raises(RckdError, match="ONNX model not found"):
        OnnxClassifier(tmp_path / "absent.onnx")
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(RckdError, match="corrupt, truncated or not an ONNX model"):
        OnnxClassifier(truncated)
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"\x00\x01 definitely not protobuf" * 10)
    with pytest.raises(RckdError, match="corrupt, truncated or not an ONNX model"):
        OnnxClassifier(garbage)

    proto = onnx.load(path)
    del proto.metadata_props[:]
    onnx.save(proto, tmp_path / "plain.onnx")
    with pytest.raises(RckdError, match="has no rckd metadata.*rckd export"):
        OnnxClassifier(tmp_path / "plain.onnx")
    proto = onnx.load(path)
    kept = [p for p in proto.metadata_props if p.key != "rckd.classes"]
    del proto.metadata_props[:]
    proto.metadata_props.extend(kept)
    onnx.save(proto, tmp_path / "partial.onnx")
    with pytest.raises(RckdError, match=r"partial.onnx: rckd metadata with key 'classes' missing"):
        OnnxClassifier(tmp_path / "partial.onnx")
    with pytest.raises(RckdError, match="top_k must be at least 1"):
        OnnxClassifier(path).predict(pixels(0), top_k=0)


def test_metadata_of_the_wrong_type_is_refused_by_name():
    valid = deploy.ModelInfo(
        arch="resnet20", dataset="synthetic", num_classes=2, classes=["a", "b"], input_shape=[3, SIZE, SIZE],
        mean=[0.5] * 3, std=[0.2] * 3, method="kd", params={"T": 4}, teacher=None, teacher_arch=None,
        precision="fp32", top1=50.0, fp32_top1=50.0, torch_top1=50.0, rckd_version="0.1.0").to_metadata()
    assert deploy.ModelInfo.from_metadata(valid, "m.onnx").classes == ["a", "b"]
    for key, value, expected in (("input_shape", '"3x16x16"', "a list of integers"),
                                 ("classes", '"a,b"', "a list of strings"), ("num_classes", "2.5", "an integer"),
                                 ("top1", '"50"', "a number"), ("params", "[]", "an object")):
        with pytest.raises(RckdError) as failure:
            deploy.ModelInfo.from_metadata({**valid, f"rckd.{key}": value}, "m.onnx")
        assert str(failure.value) == (f"m.onnx: rckd metadata of the wrong type: {key} is {value} (expected "
                                      f"{expected}); re-export it with `rckd export`")


def test_cli_prints_lines_or_json_with_exit_codes(rgb, tmp_path, capsys):
    _, path = rgb
    first, second = tmp_path / "first.png", tmp_path / "second.jpg"
    Image.fromarray(pixels(11)).save(first)
    Image.fromarray(pixels(12)).save(second)
    expected = OnnxClassifier(path).predict([first, second], top_k=3)

    assert cli(["predict", str(path), str(first), str(second), "--top-k", "3"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2
    for line, result in zip(lines, expected):
        assert line.startswith(f"{result.source}: {result.labels[0]} ")
        assert line.count("(class ") == 3
        assert f"{100 * result.probabilities[0]:.2f}% (class {result.indices[0]})" in line

    missing = tmp_path / "missing.png"
    assert cli(["predict", str(path), str(first), str(missing), "--json"]) == 1
    document = json.loads(capsys.readouterr().out)
    assert document["arch"] == "resnet20" and document["precision"] == "fp32"
    assert document["providers"] == [CPU]
    ok, failed = document["results"]
    assert ok["ok"] and ok["source"] == str(first) and len(ok["top"]) == 5
    assert [entry["index"] for entry in ok["top"][:3]] == expected[0].indices
    assert ok["top"][0]["label"] == expected[0].labels[0]
    assert failed == {"source": str(missing), "ok": False, "error": "file not found"}

    assert cli(["predict", str(path), str(missing)]) == 1
    assert capsys.readouterr().out.strip() == f"{missing}: error: file not found"

    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes(path.read_bytes()[:1000])
    assert cli(["predict", str(corrupt), str(first)]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("rckd predict: error: ") and "corrupt, truncated" in captured.err


BLOCK_TORCH = textwrap.dedent("""
    import sys
    for name in ("torch", "torchvision", "onnx", "onnxscript", "matplotlib", "scipy"):
        sys.modules[name] = None  # `import name` now raises ImportError
""")


def test_consumer_and_cli_run_without_torch(rgb, tmp_path):
    _, path = rgb
    image = tmp_path / "cat.png"
    Image.fromarray(pixels(13)).save(image)
    script = BLOCK_TORCH + textwrap.dedent(f"""
        from rckd.deploy import OnnxClassifier
        result = OnnxClassifier({str(path)!r}).predict([{str(image)!r}], top_k=2)[0]
        print("api", result.labels[0], round(sum(result.probabilities), 6) > 0)
        from rckd.cli import main
        status = main(["predict", {str(path)!r}, {str(image)!r}, "--top-k", "2"])
        print("exit", status, sorted(name for name in sys.modules if name.split(".")[0] in ("torch", "onnx")
                                      and sys.modules[name] is not None))
    """)
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={"PATH": "/usr/bin:/bin", "CUDA_VISIBLE_DEVICES": ""})
    assert done.returncode == 0, done.stderr
    expected = OnnxClassifier(path).predict([image], top_k=2)[0]
    assert done.stdout.splitlines() == [
        f"api {expected.labels[0]} True",
        f"{image}: {expected.labels[0]} {100 * expected.probabilities[0]:.2f}% (class {expected.indices[0]}), "
        f"{expected.labels[1]} {100 * expected.probabilities[1]:.2f}% (class {expected.indices[1]})",
        "exit 0 []",
    ]
    assert done.stderr == ""  # no provider warnings on a CPU-only run


def test_gpu_providers_only_when_a_gpu_is_visible(monkeypatch):
    device_files = ["/dev/nvidia0"]
    monkeypatch.setattr(deploy.glob, "glob", lambda pattern: device_files)
    monkeypatch.setattr(deploy, "_library_loads", lambda name: name == "libcuda.so.1")
    monkeypatch.setattr(deploy.ort, "get_available_providers", lambda: [deploy.TENSORRT, deploy.CUDA, CPU])

    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    assert deploy.gpu_visible() and deploy.usable_providers() == [deploy.CUDA, CPU]  # no TensorRT library
    for hidden in ("", "-1"):
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", hidden)
        assert not deploy.gpu_visible() and deploy.usable_providers() == [CPU]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    device_files.clear()  # e.g. a container exposing the GPU without /dev/nvidia0 in sight
    assert deploy.gpu_visible()
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert not deploy.gpu_visible()  # no device file, nothing requested
    monkeypatch.setattr(deploy, "_library_loads", lambda name: False)
    device_files.append("/dev/nvidia0")
    assert not deploy.gpu_visible()  # device present but no driver
