"""`rckd bench`: a CSV row per engine, precision and batch size with consistent statistics, a chart,
and the timing helpers it is built on."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from conftest import export_tiny, toy_meta
from PIL import Image

from rckd.bench import latency_stats, time_interleaved
from rckd.cli import main as cli
from rckd.deploy import CPU, open_session, read_info


@pytest.fixture(scope="module")
def student(tmp_path_factory) -> Path:
    """resnet20 (random weights, settled BatchNorm) exported as model.onnx + model.int8.onnx."""
    meta = toy_meta("resnet20", list("abcde"), method="dkd", params={}, teacher_arch="resnet56")
    return export_tiny(tmp_path_factory.mktemp("student") / "model.onnx", meta, int8=True)[1]


def test_latency_stats_of_known_times():
    seconds = np.arange(1, 101) / 1000  # 1 ms .. 100 ms
    stats = latency_stats(seconds, batch_size=4)
    assert stats["p50_ms"] == pytest.approx(50.5)
    assert stats["p90_ms"] == pytest.approx(90.1)
    assert stats["p99_ms"] == pytest.approx(99.01)
    assert stats["mean_ms"] == pytest.approx(50.5)
    assert stats["throughput_ips"] == pytest.approx(4 * 100 / 5.05)


def test_time_interleaved_runs_every_call_enough():
    counts = [0, 0]

    def count(i):
        counts[i] += 1

    times = time_interleaved([lambda: count(0), lambda: count(1)], warmup=3, min_iters=7, min_seconds=0.0)
    assert all(len(t) >= 7 for t in times)
    assert counts == [len(times[0]) + 3, len(times[1]) + 3]  # warm-up calls are not timed
    times = time_interleaved([lambda: None], warmup=0, min_iters=1, min_seconds=0.02)
    assert times[0].sum() >= 0.02


def test_cli_writes_a_row_per_engine_and_batch_size(student, tmp_path, capsys):
    out, chart = tmp_path / "deploy" / "latency.csv", tmp_path / "deploy" / "latency.png"
    status = cli(["bench", "--models", str(student), "--out", str(out), "--plot", str(chart), "--batch-sizes", "1",
                  "4", "--threads", "1", "--warmup", "2", "--min-iters", "5", "--min-seconds", "0"])
    assert status == 0
    with open(out, newline="") as handle:
        rows = list(csv.DictReader(handle))
    keys = {(row["engine"], row["precision"], int(row["batch_size"])) for row in rows}
    # CPU engines always; GPU ones join them on a machine with a GPU.
    assert {(engine, precision, batch) for engine, precision in
            [("torch-cpu", "fp32"), ("ort-cpu", "fp32"), ("ort-cpu", "int8")] for batch in (1, 4)} <= keys
    assert len(keys) == len(rows)
    fp32 = read_info(open_session(student, [CPU]), "fp32")
    int8 = read_info(open_session(student.with_name("model.int8.onnx"), [CPU]), "int8")
    expected_top1 = {"torch-cpu": fp32.torch_top1, "fp32": fp32.top1, "int8": int8.top1}
    for row in rows:
        p50, p90, p99, mean = (float(row[key]) for key in ("p50_ms", "p90_ms", "p99_ms", "mean_ms"))
        assert 0 < p50 <= p90 <= p99
        assert int(row["iterations"]) >= 5 and row["threads"] == "1"
        assert float(row["throughput_ips"]) == pytest.approx(int(row["batch_size"]) * 1000 / mean, rel=1e-4)
        assert row["student"] == "resnet20 dkd<-resnet56" and row["model"] == str(student)
        if row["engine"] == "torch-cpu":
            assert float(row["speedup_vs_torch"]) == 1.0
            assert float(row["top1"]) == pytest.approx(expected_top1["torch-cpu"], abs=1e-3)
        else:
            assert float(row["top1"]) == pytest.approx(expected_top1[row["precision"]], abs=1e-3)
        assert row["cpu"] and row["cores"] and CPU in row["providers"]
    with Image.open(chart) as image:
        assert image.format == "PNG" and image.width > 600
    assert len(capsys.readouterr().out.splitlines()) == len(rows)


def test_cli_refuses_an_int8_file_as_a_student(student, tmp_path, capsys):
    status = cli(["bench", "--models", str(student.with_name("model.int8.onnx")), "--out", str(tmp_path / "l.csv")])
    assert status == 2
    assert "pass fp32 files" in capsys.readouterr().err
    assert not (tmp_path / "l.csv").exists()
