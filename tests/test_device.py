"""`--device` values (rckd.device): auto follows the hardware, bad or unavailable devices are RckdErrors."""

import pytest
import torch

from rckd.device import resolve_device
from rckd.errors import RckdError


@pytest.fixture
def gpus(monkeypatch):
    """Pretend torch sees `count` GPUs: gpus(0) is a CPU-only machine."""

    def pretend(count: int) -> None:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: count > 0)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: count)

    return pretend


def test_auto_picks_cuda_only_when_present(gpus):
    gpus(0)
    assert resolve_device("auto") == torch.device("cpu")
    gpus(2)
    assert resolve_device("auto") == torch.device("cuda")
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    assert resolve_device("cpu") == torch.device("cpu")


@pytest.mark.parametrize("name", ["gpu", "cuda:x", "CPU", "mps", "cuda:0:1", ""])
def test_unknown_names_list_the_allowed_values(gpus, name):
    gpus(1)
    with pytest.raises(RckdError, match=r"unknown device .*auto .*cpu, cuda, cuda:N"):
        resolve_device(name)


def test_cuda_without_a_gpu_suggests_the_cpu(gpus):
    gpus(0)
    for name in ("cuda", "cuda:0"):
        with pytest.raises(RckdError, match="sees no GPU here; use --device cpu"):
            resolve_device(name)
    gpus(2)
    with pytest.raises(RckdError, match="sees 2 GPU"):
        resolve_device("cuda:2")
