"""GPU slot claims: several training jobs share a machine's GPUs without a scheduler's help.

Snakemake does not set CUDA_VISIBLE_DEVICES, so a job claims a free (gpu, slot) pair itself by taking
an exclusive `flock` on a lock file. The kernel drops the lock when the process exits or crashes, so
a killed job's slot is free again at once; no stale lock files to clean up.
"""

from __future__ import annotations

import fcntl
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO

# Per user: another user's lock directory would not be writable (and their jobs not ours to count).
DEFAULT_LOCK_DIR = Path(os.environ.get("RCKD_GPU_LOCK_DIR", f"/tmp/rckd-gpu-locks-{os.getuid()}"))


@dataclass
class GpuSlot:
    gpu: int
    slot: int
    handle: IO[str]

    def release(self) -> None:
        if not self.handle.closed:
            fcntl.flock(self.handle, fcntl.LOCK_UN)
            self.handle.close()


def try_claim(num_gpus: int, slots_per_gpu: int, lock_dir: Path = DEFAULT_LOCK_DIR) -> GpuSlot | None:
    """Claim the first free slot, filling slot 0 of every GPU before slot 1 so load spreads out."""
    lock_dir.mkdir(parents=True, exist_ok=True)
    for slot in range(slots_per_gpu):
        for gpu in range(num_gpus):
            handle = open(lock_dir / f"gpu{gpu}-slot{slot}.lock", "a+")
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.close()
                continue
            handle.seek(0)
            handle.truncate()
            handle.write(f"{os.getpid()}\n")
            handle.flush()
            return GpuSlot(gpu, slot, handle)
    return None


def claim(
    num_gpus: int,
    slots_per_gpu: int,
    lock_dir: Path = DEFAULT_LOCK_DIR,
    timeout: float | None = None,
    poll: float = 1.0,
) -> GpuSlot:
    """Wait until a slot is free (forever unless `timeout` seconds pass, then TimeoutError)."""
    if num_gpus < 1 or slots_per_gpu < 1:
        raise ValueError(f"need at least one GPU and one slot per GPU, got {num_gpus} and {slots_per_gpu}")
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        slot = try_claim(num_gpus, slots_per_gpu, lock_dir)
        if slot is not None:
            return slot
        if deadline is not None and time.monotonic() >= deadline:
            raise TimeoutError(f"no free GPU slot among {num_gpus} GPUs x {slots_per_gpu} slots in {lock_dir}")
        time.sleep(poll)


def claim_device(name: str, slots_per_gpu: int):
    """(torch device named by a --device value, the GPU slot claimed on it or None). With CUDA and
    slots_per_gpu > 0 the job waits for a free slot and keeps it until the process exits; under SLURM
    the scheduler already gave the job its GPU, and slots are for sharing one machine without one."""
    import torch

    from rckd.device import resolve_device

    device = resolve_device(name)
    if device != torch.device("cuda") or slots_per_gpu < 1 or "SLURM_JOB_ID" in os.environ:
        return device, None
    slot = try_claim(torch.cuda.device_count(), slots_per_gpu)
    if slot is None:
        print(f"waiting for a free GPU slot ({slots_per_gpu} per GPU, locks in {DEFAULT_LOCK_DIR})", flush=True)
        slot = claim(torch.cuda.device_count(), slots_per_gpu)
    print(f"claimed GPU {slot.gpu} slot {slot.slot}", flush=True)
    torch.cuda.set_device(slot.gpu)
    return torch.device(f"cuda:{slot.gpu}"), slot
