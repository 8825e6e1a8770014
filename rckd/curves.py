"""A training run's curves for TensorBoard: one event file per session of the run, in the run directory.

`tensorboard --logdir results/<dataset>/runs` then names every run by its directory. Each epoch logs
every numeric value of its history.csv row (the same dict, so the two cannot disagree) at step =
epoch; the resolved spec is the text `spec` at step 0. The writer is torch's
(`torch.utils.tensorboard`, from the `tensorboard` package: its flush waits until every queued
event is in the file, and its file names hold the process id, so two sessions never share a file).
It is given host floats once per epoch and adds no synchronisation to the steps.

Resume: a session that continues a run at epoch E (the last one in resume.pt) starts its file with
TensorBoard's restart marker at step E + 1, so a reader drops what an earlier session logged after
its last checkpoint and before it was killed; each epoch's events are flushed before resume.pt
records that epoch, so none that resume.pt holds can be lost. A fresh start deletes the event files
of earlier sessions.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from rckd.errors import RckdError

EVENT_FILES = "events.out.tfevents.*"  # what TensorBoard's writers name their files
SPEC_TAG = "spec"


def check_available() -> None:
    """Fail before training when the writer's package is missing."""
    if importlib.util.find_spec("tensorboard") is None:
        raise RckdError("training curves need the tensorboard package (pip install tensorboard, pinned in "
                        "pyproject.toml); or pass --tensorboard off (config train.tensorboard: false)")


def tag(column: str) -> str:
    """A history.csv column's TensorBoard tag: loss terms share one group (loss/<term>)."""
    return f"loss/{column.removeprefix('loss_')}" if column.startswith("loss_") else column


@contextlib.contextmanager
def writer(run_dir: Path, first_epoch: int, spec: dict[str, Any], *, on: bool, main: bool) -> Iterator[Callable]:
    """Yields `log(row)`, which logs one history row; a no-op when not `on` and in every process but
    the `main` one, which alone owns the run directory's files. `first_epoch` is the number of whole
    epochs the run already holds (0: a fresh start)."""
    if main and first_epoch == 0:
        for stale in Path(run_dir).glob(EVENT_FILES):
            stale.unlink()
    if not (on and main):
        yield lambda row: None
        return
    from torch.utils.tensorboard import SummaryWriter

    board = SummaryWriter(str(run_dir), purge_step=first_epoch + 1 if first_epoch else None)
    if first_epoch == 0:
        text = json.dumps(spec, indent=2, sort_keys=True)
        board.add_text(SPEC_TAG, "\n".join(f"    {line}" for line in text.splitlines()), 0)  # markdown code

    def log(row: dict[str, Any]) -> None:
        for column, value in row.items():
            if column != "epoch" and isinstance(value, int | float) and not isinstance(value, bool):
                board.add_scalar(tag(column), value, row["epoch"])
        board.flush()  # before resume.pt records this epoch

    try:
        yield log
    finally:
        board.close()
