"""GPU slot claims (rckd.gpu): exclusive across processes, freed when the holder dies."""

import multiprocessing as mp
import os
import signal
import subprocess
import sys
import time

import pytest

from rckd.gpu import claim, try_claim


def _hold_slot(lock_dir: str, num_gpus: int, slots: int, queue, hold_seconds: float) -> None:
    slot = claim(num_gpus, slots, lock_dir=__import__("pathlib").Path(lock_dir), timeout=30, poll=0.01)
    queue.put((os.getpid(), slot.gpu, slot.slot, time.monotonic()))
    time.sleep(hold_seconds)
    queue.put((os.getpid(), "released", None, time.monotonic()))


def test_concurrent_claims_never_share_a_slot(tmp_path):
    ctx = mp.get_context("spawn")
    queue = ctx.Queue()
    workers = [ctx.Process(target=_hold_slot, args=(str(tmp_path), 2, 1, queue, 0.5)) for _ in range(4)]
    for worker in workers:
        worker.start()
    events = [queue.get(timeout=60) for _ in range(8)]
    for worker in workers:
        worker.join(timeout=60)
        assert worker.exitcode == 0
    # Replay claims and releases in time order: a (gpu, slot) is never held by two processes at once.
    holders: dict[tuple, int] = {}
    by_pid = {}
    for pid, gpu, slot, when in sorted(events, key=lambda event: event[3]):
        if gpu == "released":
            del holders[by_pid[pid]]
        else:
            assert (gpu, slot) not in holders, f"{(gpu, slot)} claimed by {pid} while {holders} hold it"
            holders[(gpu, slot)] = pid
            by_pid[pid] = (gpu, slot)
    claimed = [event for event in events if event[1] != "released"]
    assert {event[1] for event in claimed} == {0, 1}  # both GPUs were used


def test_slots_fill_every_gpu_before_doubling_up(tmp_path):
    first = try_claim(2, 2, tmp_path)
    second = try_claim(2, 2, tmp_path)
    third = try_claim(2, 2, tmp_path)
    fourth = try_claim(2, 2, tmp_path)
    assert [(s.gpu, s.slot) for s in (first, second, third, fourth)] == [(0, 0), (1, 0), (0, 1), (1, 1)]
    assert try_claim(2, 2, tmp_path) is None
    second.release()
    again = try_claim(2, 2, tmp_path)
    assert (again.gpu, again.slot) == (1, 0)


def test_a_killed_holders_slot_is_reclaimed(tmp_path):
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import pathlib, sys, time; from rckd.gpu import claim; "
         f"s = claim(1, 1, pathlib.Path({str(tmp_path)!r})); print('held', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True,
    )
    assert holder.stdout.readline().strip() == "held"
    assert try_claim(1, 1, tmp_path) is None
    holder.send_signal(signal.SIGKILL)
    holder.wait(timeout=10)
    slot = claim(1, 1, tmp_path, timeout=5, poll=0.05)
    assert (slot.gpu, slot.slot) == (0, 0)


def test_claim_times_out_with_a_clear_message(tmp_path):
    held = try_claim(1, 1, tmp_path)
    assert held is not None
    with pytest.raises(TimeoutError, match="no free GPU slot"):
        claim(1, 1, tmp_path, timeout=0.2, poll=0.05)
