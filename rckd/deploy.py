"""Classify images with an exported model using only onnxruntime, numpy and pillow (`rckd predict`).

Everything the consumer needs (class names, input shape, normalisation) is read from the ONNX file's
`rckd.*` metadata, written by `rckd export`. This module must never import torch or onnx: it is the
whole runtime of the deployment environment (envs/deploy.yaml).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import functools
import glob
import json
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

import numpy as np
import onnxruntime as ort
from PIL import Image, UnidentifiedImageError

from rckd.errors import RckdError
from rckd.records import ModelInfo

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"
TENSORRT = "TensorrtExecutionProvider"

# Modes whose conversion to RGB or L keeps the picture; 16-bit and float modes would be clipped to 255.
CONVERTIBLE_MODES = frozenset({"1", "L", "LA", "P", "PA", "RGB", "RGBA", "RGBX", "CMYK", "YCbCr"})

ImageLike = Union[str, os.PathLike, Image.Image, np.ndarray]


@dataclass(frozen=True)
class Prediction:
    """The top-k classes of one image, most probable first."""

    source: str
    indices: list[int]
    labels: list[str]
    probabilities: list[float]
    ok = True


@dataclass(frozen=True)
class Failure:
    """An image that could not be classified, and why."""

    source: str
    error: str
    ok = False


class ImageError(ValueError):
    """One input image cannot be used; the message says why."""


def gpu_visible() -> bool:
    """True when a CUDA device is exposed to this process and the driver library loads.

    onnxruntime-gpu lists the CUDA provider as available on any machine, and asking for it without a
    GPU prints provider errors, so the device files and the driver are checked instead.
    """
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None and visible.strip() in ("", "-1"):
        return False
    if not (visible or glob.glob("/dev/nvidia[0-9]*")):
        return False
    return _library_loads("libcuda.so.1")


def _library_loads(name: str) -> bool:
    try:
        ctypes.CDLL(name)
    except OSError:
        return False
    return True


def usable_providers() -> list[str]:
    """onnxruntime providers that can run here, fastest first; CPU always, GPU ones only with a GPU."""
    available = ort.get_available_providers()
    gpu = gpu_visible()
    usable = []
    if gpu and TENSORRT in available and _library_loads("libnvinfer.so.10"):
        usable.append(TENSORRT)
    if gpu and CUDA in available:
        _preload_cuda_libraries()
        usable.append(CUDA)
    return usable + [CPU]


@functools.cache
def _preload_cuda_libraries() -> None:
    """Load CUDA and cuDNN from pip packages (onnxruntime-gpu[cuda,cudnn]) where no torch has loaded them;
    onnxruntime prints what it cannot find, which goes to stderr to keep `--json` output clean."""
    with contextlib.redirect_stdout(sys.stderr):
        ort.preload_dlls()


def open_session(path: str | os.PathLike | bytes, providers: Sequence[str | tuple[str, dict[str, str]]],
                 threads: int | None = None, spinning: bool = True) -> ort.InferenceSession:
    """An onnxruntime session (providers as onnxruntime takes them); a missing, corrupt or non-ONNX
    file raises RckdError. `spinning=False` makes idle worker threads sleep instead of busy-waiting."""
    options = ort.SessionOptions()
    options.log_severity_level = 3  # errors only: no per-node provider-placement warnings
    if threads is not None:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    source = path if isinstance(path, bytes) else str(path)
    if not isinstance(path, bytes) and not Path(path).is_file():
        raise RckdError(f"ONNX model not found: {path} (export one with `rckd export`)")
    try:
        return ort.InferenceSession(source, options, providers=list(providers))
    except Exception as err:  # onnxruntime raises its own types for unreadable or invalid graphs
        what = "the ONNX model" if isinstance(path, bytes) else str(path)
        first_line = (str(err).strip().splitlines() or [type(err).__name__])[0][:300]
        raise RckdError(
            f"onnxruntime cannot load {what} ({first_line}): it is corrupt, truncated or not an ONNX model; "
            "re-export it with `rckd export`"
        ) from None


def read_info(session: ort.InferenceSession, source: str) -> ModelInfo:
    """The rckd metadata of an open session; RckdError when it is absent or inconsistent."""
    return ModelInfo.from_metadata(session.get_modelmeta().custom_metadata_map, source)


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=1, keepdims=True)


def to_pil(item: ImageLike) -> Image.Image:
    """Open a file path or wrap an array; ImageError says why an item is not an image."""
    if isinstance(item, Image.Image):
        return item
    if isinstance(item, np.ndarray):
        if item.dtype != np.uint8:
            raise ImageError(f"array has dtype {item.dtype}; expected uint8 pixels (0-255)")
        if item.ndim == 3 and item.shape[2] == 1:
            item = item[:, :, 0]
        if not (item.ndim == 2 or (item.ndim == 3 and item.shape[2] in (3, 4))):
            raise ImageError(f"array has shape {item.shape}; expected HxW, HxWx1, HxWx3 or HxWx4")
        return Image.fromarray(item)
    if isinstance(item, (str, os.PathLike)):
        try:
            image = Image.open(item)
            image.load()  # decodes now, so truncated files fail here rather than later
        except FileNotFoundError:
            raise ImageError("file not found") from None
        except IsADirectoryError:
            raise ImageError("is a directory, not an image file") from None
        except UnidentifiedImageError:
            raise ImageError("not an image file pillow can read (PNG, JPEG, BMP, ...)") from None
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:  # truncated, corrupt, huge
            raise ImageError(f"corrupt or truncated image ({err})") from None
        return image
    raise ImageError(f"unsupported input type {type(item).__name__}; pass a path, a PIL image or a uint8 array")


def preprocess(image: Image.Image, info: ModelInfo) -> np.ndarray:
    """One image -> float32 [C, H, W], converted, resized and normalised as the model was trained."""
    channels, height, width = info.input_shape
    if image.mode not in CONVERTIBLE_MODES:
        raise ImageError(
            f"image mode {image.mode!r} (16-bit, float or exotic pixels) cannot be converted safely; "
            "save it as 8-bit RGB or grayscale"
        )
    image = image.convert("RGB" if channels == 3 else "L")
    if image.size != (width, height):
        image = image.resize((width, height), Image.Resampling.BILINEAR)
    pixels = np.asarray(image, dtype=np.float32).reshape(height, width, channels) / 255.0
    mean = np.asarray(info.mean, dtype=np.float32)
    std = np.asarray(info.std, dtype=np.float32)
    return ((pixels - mean) / std).transpose(2, 0, 1)


def _describe(item: Any, position: int) -> str:
    return os.fspath(item) if isinstance(item, (str, os.PathLike)) else f"<image {position}>"


class OnnxClassifier:
    """An exported rckd classifier: `OnnxClassifier("model.onnx").predict(["a.png", pil_image])`."""

    def __init__(self, path: str | os.PathLike, providers: Sequence[str] | None = None):
        chosen = [p for p in usable_providers() if p != TENSORRT] if providers is None else list(providers)
        self.path = Path(path)
        self.session = open_session(path, chosen)
        self.info = read_info(self.session, str(path))
        self.input_name = self.session.get_inputs()[0].name

    def predict(self, images: ImageLike | Sequence[ImageLike], top_k: int = 5,
                batch_size: int = 64) -> list[Prediction | Failure]:
        """One result per image, in order; an unusable image yields a Failure and the others still run.

        A 4-D uint8 array is read as a batch of HWC images.
        """
        if top_k < 1:
            raise RckdError(f"top_k must be at least 1, got {top_k}")
        if isinstance(images, np.ndarray) and images.ndim == 4:
            images = list(images)
        elif isinstance(images, (str, os.PathLike, Image.Image, np.ndarray)):
            images = [images]
        results: list[Prediction | Failure | None] = [None] * len(images)
        ready: list[tuple[int, np.ndarray]] = []
        for position, item in enumerate(images):
            try:
                ready.append((position, preprocess(to_pil(item), self.info)))
            except ImageError as err:
                results[position] = Failure(_describe(item, position), str(err))
        k = min(top_k, self.info.num_classes)
        for start in range(0, len(ready), batch_size):
            chunk = ready[start:start + batch_size]
            batch = np.stack([pixels for _, pixels in chunk])
            probabilities = softmax(self.session.run(None, {self.input_name: batch})[0])
            best = np.argsort(-probabilities, axis=1, kind="stable")[:, :k]
            for (position, _), row, top in zip(chunk, probabilities, best):
                results[position] = Prediction(
                    source=_describe(images[position], position),
                    indices=[int(i) for i in top],
                    labels=[self.info.classes[i] for i in top],
                    probabilities=[float(row[i]) for i in top],
                )
        return results


def format_human(result: Prediction | Failure) -> str:
    if isinstance(result, Failure):
        return f"{result.source}: error: {result.error}"
    ranked = ", ".join(
        f"{label} {100 * probability:.2f}% (class {index})"
        for label, probability, index in zip(result.labels, result.probabilities, result.indices)
    )
    return f"{result.source}: {ranked}"


def to_json_document(classifier: OnnxClassifier, results: list[Prediction | Failure]) -> dict[str, Any]:
    entries = []
    for result in results:
        if isinstance(result, Failure):
            entries.append({"source": result.source, "ok": False, "error": result.error})
        else:
            ranked = [
                {"label": label, "index": index, "probability": probability}
                for label, index, probability in zip(result.labels, result.indices, result.probabilities)
            ]
            entries.append({"source": result.source, "ok": True, "top": ranked})
    info = classifier.info
    return {
        "model": str(classifier.path), "arch": info.arch, "dataset": info.dataset,
        "precision": info.precision, "providers": classifier.session.get_providers(), "results": entries,
    }


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="an ONNX file written by `rckd export` (fp32 or int8)")
    parser.add_argument("images", nargs="+", help="image files (PNG, JPEG, ...), any size and mode")
    parser.add_argument("--top-k", type=int, default=5, help="classes to print per image (default 5)")
    parser.add_argument("--json", action="store_true", help="print one JSON document instead of lines")
    parser.add_argument("--providers", nargs="+", metavar="PROVIDER",
                        help="onnxruntime providers in order of preference (default: CUDA when a GPU is "
                             "visible, then CPU)")


def run(args: argparse.Namespace) -> int:
    classifier = OnnxClassifier(args.model, providers=args.providers)
    results = classifier.predict(args.images, top_k=args.top_k)
    if args.json:
        json.dump(to_json_document(classifier, results), sys.stdout, indent=2)
        sys.stdout.write("\n")
    else:
        for result in results:
            print(format_human(result))
    return 0 if all(result.ok for result in results) else 1
