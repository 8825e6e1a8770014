"""mdistiller / RepDistiller CIFAR-100 checkpoints -> rckd model files, mapped key by key by name.

Their files are `{"model": state_dict, "epoch": int, "accuracy": tensor, "optimizer": ...}` dicts whose
state-dict names follow mdistiller's `mdistiller/models/cifar/{resnet,resnetv2,wrn,vgg}.py`. Our zoo
holds the same tensors in the same order, under other names; the rules below translate each of their
names from the public layout, so a missing, extra or mis-shaped tensor is an error naming the key.
The file is read with `torch.load(weights_only=True)`: tensors, containers and the numpy scalars their
optimizer state holds, nothing that can run code.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import re
import tarfile
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch

from rckd import models
from rckd.data.datasets import CIFAR100_CLASSES, CIFAR100_MEAN, CIFAR100_STD
from rckd.errors import RckdError
from rckd.records import Origin
from rckd.teachers import MDISTILLER_ARCHIVE_URL, SOURCES
from rckd.teachers.output import save_teacher

# Their optimizer state holds numpy float64 learning rates; numpy 1.x pickles name the scalar
# constructor numpy.core.multiarray.scalar, numpy 2 numpy._core.multiarray.scalar.
_NUMPY_GLOBALS = [np._core.multiarray.scalar, (np._core.multiarray.scalar, "numpy.core.multiarray.scalar"),
                  np.dtype, np.dtypes.Float64DType, np.dtypes.Int64DType, np.dtypes.Float32DType]
_SUFFIX = r"(weight|bias|running_mean|running_var|num_batches_tracked)"


def read_file(archive: Path | None, checkpoint: Path | None, arch: str) -> tuple[bytes, str]:
    """(bytes of the checkpoint, where it came from): one .pth file, or arch's member of the archive."""
    if checkpoint is not None:
        if not checkpoint.is_file():
            raise RckdError(f"checkpoint {checkpoint} not found")
        return checkpoint.read_bytes(), str(checkpoint)
    if archive is None or not archive.is_file():
        raise RckdError(f"teacher archive {archive} not found; download it (no other step needs the network):\n"
                        f"  curl -L -o {archive} {MDISTILLER_ARCHIVE_URL}")
    member = SOURCES["mdistiller"].get(arch)
    if member is None:
        raise RckdError(f"mdistiller's archive has no {arch} teacher; it has: {', '.join(SOURCES['mdistiller'])}")
    try:
        with tarfile.open(archive) as tar:
            handle = tar.extractfile(member)
            if handle is None:
                raise KeyError(member)
            return handle.read(), f"{archive}:{member}"
    except KeyError:
        raise RckdError(f"{archive} has no member {member}; is it mdistiller's cifar_teachers.tar?") from None
    except (tarfile.TarError, OSError) as err:
        raise RckdError(f"{archive} is not a readable tar archive ({err}); download it again") from None


def load_state_dict(raw: bytes, where: str) -> dict[str, torch.Tensor]:
    """The state dict of a checkpoint, loaded without running any pickled code."""
    try:
        with torch.serialization.safe_globals(_NUMPY_GLOBALS):
            payload = torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
    except Exception as err:  # UnpicklingError for a forbidden global; others for corrupt files
        first_line = str(err).strip().splitlines()[0][:300] if str(err).strip() else type(err).__name__
        raise RckdError(f"{where} cannot be loaded safely ({type(err).__name__}: {first_line}); rckd loads "
                        f"weights only and never runs code from a checkpoint") from None
    state = payload.get("model", payload) if isinstance(payload, dict) else None
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise RckdError(f"{where} holds no state dict (a dict of tensors, or one under 'model')")
    return {key.removeprefix("module."): value for key, value in state.items()}


def _blocks_per_stage(names: list[str], pattern: str) -> dict[int, int]:
    """{stage: number of blocks} read off their names, e.g. `layer2.4.conv1.weight` -> stage 2 has >= 5."""
    counts: dict[int, int] = {}
    for name in names:
        match = re.match(pattern, name)
        if match:
            stage, block = int(match[1]), int(match[2])
            counts[stage] = max(counts.get(stage, 0), block + 1)
    return counts


def _block_offsets(counts: dict[int, int]) -> dict[int, int]:
    """Index in our flat `features` of each stage's first block (features.0 is the stem)."""
    offsets, index = {}, 1
    for stage in sorted(counts):
        offsets[stage], index = index, index + counts[stage]
    return offsets


Rules = list[tuple[str, Callable[[re.Match], str | None]]]  # (their name's pattern, our name of a match)


def _resnet_rules(names: list[str]) -> Rules:
    """resnet.py (resnet20...resnet32x4) and resnetv2.py (ResNet50): conv1/bn1 stem, layer{s}.{b} blocks
    of conv{j}/bn{j} and a downsample (resnet.py) or shortcut (resnetv2.py) projection, fc or linear."""
    offsets = _block_offsets(_blocks_per_stage(names, r"layer(\d+)\.(\d+)\."))
    block = lambda m: offsets[int(m[1])] + int(m[2])  # noqa: E731
    return [
        (rf"(conv|bn)1\.{_SUFFIX}", lambda m: f"features.0.{0 if m[1] == 'conv' else 1}.{m[2]}"),
        (rf"layer(\d+)\.(\d+)\.(conv|bn)(\d)\.{_SUFFIX}",
         lambda m: f"features.{block(m)}.residual.{int(m[4]) - 1}.{0 if m[3] == 'conv' else 1}.{m[5]}"),
        (rf"layer(\d+)\.(\d+)\.(?:downsample|shortcut)\.([01])\.{_SUFFIX}",
         lambda m: f"features.{block(m)}.shortcut.{m[3]}.{m[4]}"),
        (rf"(?:fc|linear)\.{_SUFFIX}", lambda m: f"head.2.{m[1]}"),
    ]


def _wrn_rules(names: list[str]) -> Rules:
    """wrn.py: conv1 stem, block{s}.layer.{b} pre-activation blocks (convShortcut projection), final bn1, fc."""
    counts = _blocks_per_stage(names, r"block(\d+)\.layer\.(\d+)\.")
    offsets = _block_offsets(counts)
    final_bn = 1 + sum(counts.values())
    return [
        (r"conv1\.weight", lambda m: "features.0.weight"),
        (rf"block(\d+)\.layer\.(\d+)\.(bn1|conv1|bn2|conv2|convShortcut)\.{_SUFFIX}",
         lambda m: f"features.{offsets[int(m[1])] + int(m[2])}."
                   f"{'projection' if m[3] == 'convShortcut' else m[3]}.{m[4]}"),
        (rf"bn1\.{_SUFFIX}", lambda m: f"features.{final_bn}.{m[1]}"),
        (rf"fc\.{_SUFFIX}", lambda m: f"head.2.{m[1]}"),
    ]


def _vgg_rules(names: list[str]) -> Rules:
    """vgg.py: block{g} = [conv, bn, relu] * n without the last relu (conv at 3i, bn at 3i+1), classifier.
    Ours has a max pool after each of the first POOLED_GROUPS groups, so group g starts further on."""
    from rckd.models.vgg import POOLED_GROUPS

    convs = _blocks_per_stage(names, r"block(\d+)\.(\d+)\.")  # highest index + 1 = 3 n - 1
    starts, index = {}, 0
    for group in sorted(convs):
        starts[group] = index
        index += (convs[group] + 1) // 3 + (1 if group < POOLED_GROUPS else 0)

    def layer(m: re.Match) -> str | None:
        conv, part = divmod(int(m[2]), 3)
        return f"features.{starts[int(m[1])] + conv}.{part}.{m[3]}" if part < 2 else None

    return [(rf"block(\d+)\.(\d+)\.{_SUFFIX}", layer), (rf"classifier\.{_SUFFIX}", lambda m: f"head.2.{m[1]}")]


def _rename(rules: Rules, name: str) -> str | None:
    for pattern, target in rules:
        if match := re.fullmatch(pattern, name):
            return target(match)
    return None


_FAMILIES = {"resnet": _resnet_rules, "wrn": _wrn_rules, "vgg": _vgg_rules}
_GROUP = re.compile(r"\((?:\?:)?([^()]*)\)")


def _group_values(body: str, numbers: range) -> list[str]:
    """What one group of a rule's pattern matches: numbers, one digit, 0 or 1, or its alternatives."""
    fixed = {r"\d+": [str(n) for n in numbers], r"\d": [str(n) for n in range(10)], "[01]": ["0", "1"]}
    return fixed.get(body, body.split("|"))


def _pattern_names(pattern: str, numbers: range) -> Iterator[str]:
    """Every name a rule's pattern matches with numbers from `numbers`: the rules read backwards, so an
    error can name a tensor the checkpoint lacks as the checkpoint would (`fc.weight`), not only as we do."""
    choices: list[list[str]] = []
    start = 0
    for group in _GROUP.finditer(pattern):
        choices.append([pattern[start:group.start()].replace("\\.", ".")])
        choices.append(_group_values(group[1], numbers))
        start = group.end()
    choices.append([pattern[start:].replace("\\.", ".")])
    return ("".join(parts) for parts in itertools.product(*choices))


def _checkpoint_names(rules: Rules, ours: str, names: list[str]) -> list[str]:
    """The names in the checkpoint's layout that the rules map to our tensor `ours` (numbers up to one
    past the largest in the checkpoint's names)."""
    numbers = range(2 + max((int(n) for name in names for n in re.findall(r"\d+", name)), default=0))
    found = []
    for pattern, _ in rules:
        for name in _pattern_names(pattern, numbers):
            try:
                if _rename(rules, name) == ours:
                    found.append(name)
            except (KeyError, IndexError):  # a stage the checkpoint does not have
                continue
    return found


def translate(arch: str, state: dict[str, torch.Tensor], model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Their state dict under our names, checked against `model` tensor by tensor."""
    family = next((rules for prefix, rules in _FAMILIES.items() if arch.startswith(prefix)), None)
    if family is None:
        raise RckdError(f"no mdistiller key layout is known for {arch}; importable families: resnet*, wrn_*, vgg*")
    rules = family(list(state))
    ours = model.state_dict()
    translated: dict[str, torch.Tensor] = {}
    for name, tensor in state.items():
        target = _rename(rules, name)
        if target is None or target not in ours:
            raise RckdError(f"checkpoint tensor {name!r} has no place in our {arch} (mapped to {target!r}); "
                            f"is the checkpoint a {arch}?")
        if tensor.shape != ours[target].shape:
            raise RckdError(f"checkpoint tensor {name!r} has shape {tuple(tensor.shape)}, our {arch} needs "
                            f"{tuple(ours[target].shape)} at {target}; is the checkpoint a {arch}?")
        translated[target] = tensor.to(ours[target].dtype)
    missing = [name for name in ours if name not in translated]
    if missing:
        theirs = " or ".join(repr(name) for name in _checkpoint_names(rules, missing[0], list(state)))
        example = f"{theirs} (our {missing[0]!r})" if theirs else f"our {missing[0]!r}"
        raise RckdError(f"the checkpoint lacks {len(missing)} tensor(s) our {arch} needs, e.g. {example}; "
                        f"is it a complete {arch} checkpoint?")
    return translated


def import_teacher(arch: str, out: Path, *, archive: Path | None = None, checkpoint: Path | None = None,
                   metrics_path: Path | None = None) -> Origin:
    """Write `out` (an rckd model.pt for CIFAR-100) from mdistiller's checkpoint of `arch`."""
    if arch not in models.available():
        raise RckdError(f"unknown arch {arch!r}; available: {', '.join(models.available())}")
    raw, where = read_file(archive, checkpoint, arch)
    state = load_state_dict(raw, where)
    model = models.build(arch, num_classes=len(CIFAR100_CLASSES), in_channels=3)
    model.load_state_dict(translate(arch, state, model))
    origin = Origin(source="mdistiller", source_file=where, source_sha256=hashlib.sha256(raw).hexdigest(),
                    num_tensors=len(state))
    data = {"dataset": "cifar100", "data_options": {}, "input_size": [3, 32, 32], "mean": CIFAR100_MEAN,
            "std": CIFAR100_STD, "classes": CIFAR100_CLASSES}
    save_teacher(out, model, arch, data, origin, metrics_path, epochs=240)
    return origin
