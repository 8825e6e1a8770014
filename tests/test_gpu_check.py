"""The GPU acceptance command on the CPU: its plan (every part's command exists and parses), and its
budget, order and per-part records, run with stand-in parts."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SPEC = importlib.util.spec_from_file_location("gpu_check", ROOT / "benchmarks" / "gpu_check.py")
gpu_check = sys.modules.setdefault("gpu_check", importlib.util.module_from_spec(SPEC))  # a script, not a package
SPEC.loader.exec_module(gpu_check)


@pytest.mark.slow(15)
def test_the_plan_checks_every_part_and_prints_the_order_and_budgets():
    env = {**os.environ, "PYTHON": sys.executable}
    done = subprocess.run(["bash", str(ROOT / "benchmarks" / "gpu_check.sh"), "--plan"], env=env,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = [line for line in done.stdout.splitlines() if line[:1].isdigit()]
    assert [line.split()[1] for line in lines] == ["warmup", "cuda_tests", "train_speed", "concurrency", "loss_speed",
                                                   "fashion", "imagenet_step"]
    assert all(" ok " in line for line in lines) and "budget 480 s" in done.stdout
    assert sum(part.limit for part in gpu_check.PARTS[:3]) <= gpu_check.BUDGET_SECONDS  # the decisive parts fit


def test_the_plan_names_an_option_a_script_does_not_have(monkeypatch, capsys):
    script = ROOT / "benchmarks" / "gpu_warmup.py"
    monkeypatch.setattr(gpu_check, "PARTS", (gpu_check.Part("warmup", 60, 20, str(script), ("--bogus", "1")),))
    assert gpu_check.plan(480) == 1
    assert "gpu_warmup.py has no option --bogus" in capsys.readouterr().out


def stand_in(tmp_path: Path, name: str, body: str) -> str:
    path = tmp_path / f"{name}.py"
    path.write_text("import json, sys, time\nfrom pathlib import Path\nout = Path(sys.argv[1])\n" + body)
    return str(path)


def test_parts_run_in_order_within_the_budget_and_each_is_recorded_as_it_ends(tmp_path, monkeypatch):
    Part = gpu_check.Part
    earlier = ["warmup", "measured", "tested", "slow", "declined", "broken", "no_tool"]
    reader = ("summary = json.loads((out / 'gpu_check.json').read_text())\n"
              "md = (out / 'gpu_check.md').read_text()\n"
              f"sys.exit(0 if list(summary['parts']) == {earlier!r} and "
              f"all(f'## {{n}}:' in md for n in {earlier!r}) else 4)")
    junit = ('<testsuites><testsuite><testcase name="test_graph"/><testcase name="test_ort">'
             '<skipped message="no CUDA provider"/></testcase></testsuite></testsuites>')
    parts = (
        Part("warmup", 10, 1, stand_in(tmp_path, "warmup", "print('gpu')"), ("{out}",)),
        Part("measured", 10, 1, stand_in(tmp_path, "measured", "(out / 'measured.json').write_text('{\"ms\": 2.5}')"),
             ("{out}",)),
        Part("tested", 10, 1, stand_in(tmp_path, "tested", f"(out / 'tested.xml').write_text({junit!r})"), ("{out}",)),
        Part("slow", 2, 1, stand_in(tmp_path, "slow", "(out / 'slow.json').write_text('{\"rows\": 1}')\n"
                                                     "time.sleep(60)"), ("{out}",)),
        Part("declined", 10, 1, stand_in(tmp_path, "declined", "print('no data files here'); sys.exit(3)"), ("{out}",)),
        Part("broken", 10, 1, stand_in(tmp_path, "broken", "raise SystemExit(1)"), ("{out}",)),
        Part("no_tool", 10, 1, stand_in(tmp_path, "no_tool", ""), ("{out}",), needs=("no_such_module_rckd",)),
        # this part runs only after every earlier one is in gpu_check.json and gpu_check.md
        Part("reader", 10, 1, stand_in(tmp_path, "reader", reader), ("{out}",)),
        Part("too_long", 600, 10**6, stand_in(tmp_path, "too_long", ""), ("{out}",)),
    )
    monkeypatch.setattr(gpu_check, "PARTS", parts)
    began = time.monotonic()
    assert gpu_check.run_all(tmp_path / "out", budget=120) == 1  # "broken" failed
    assert time.monotonic() - began < 40
    summary = json.loads((tmp_path / "out" / "gpu_check.json").read_text())["parts"]
    statuses = {name: part["status"] for name, part in summary.items()}
    assert list(statuses) == [part.name for part in parts]
    assert statuses["warmup"] == statuses["measured"] == statuses["reader"] == "ok"
    assert summary["measured"]["result"] == {"ms": 2.5}
    assert summary["tested"]["tests"] == {"test_graph": "passed", "test_ort": "skipped: no CUDA provider"}
    assert statuses["slow"].startswith("cut short after 2 s") and summary["slow"]["result"] == {"rows": 1}
    assert statuses["declined"] == "not run: no data files here"
    assert statuses["broken"] == "FAILED (exit 1)"
    assert statuses["no_tool"] == "not run: no_such_module_rckd not installed"
    assert statuses["too_long"].startswith("not run: out of budget")
    markdown = (tmp_path / "out" / "gpu_check.md").read_text()
    assert [line.split(":")[0] for line in markdown.splitlines() if line.startswith("## ")] == \
        [f"## {part.name}" for part in parts]
    assert "- test_ort: skipped: no CUDA provider" in markdown


def test_without_a_gpu_nothing_else_runs_and_the_exit_status_is_2(tmp_path, monkeypatch):
    Part = gpu_check.Part
    monkeypatch.setattr(gpu_check, "PARTS", (
        Part("warmup", 10, 1, stand_in(tmp_path, "warmup", "print('sees no CUDA GPU'); sys.exit(1)"), ("{out}",)),
        Part("measured", 10, 1, stand_in(tmp_path, "measured", ""), ("{out}",)),
    ))
    assert gpu_check.run_all(tmp_path / "out", budget=60) == 2
    assert list(json.loads((tmp_path / "out" / "gpu_check.json").read_text())["parts"]) == ["warmup"]


@pytest.mark.slow(6)
def test_the_whole_command_ends_within_its_budget(tmp_path, monkeypatch):
    """A part whose limit exceeds what is left gets only what is left (the kill grace kept out of it),
    and the parts after it are not started."""
    Part = gpu_check.Part
    monkeypatch.setattr(gpu_check, "PARTS", (
        Part("warmup", 10, 1, stand_in(tmp_path, "warmup", ""), ("{out}",)),
        Part("endless", 600, 1, stand_in(tmp_path, "endless", "time.sleep(600)"), ("{out}",)),
        Part("after", 600, 1, stand_in(tmp_path, "after", ""), ("{out}",)),
    ))
    began = time.monotonic()
    assert gpu_check.run_all(tmp_path / "out", budget=gpu_check.KILL_GRACE_SECONDS + 6) == 0
    assert time.monotonic() - began <= gpu_check.KILL_GRACE_SECONDS + 6
    parts = json.loads((tmp_path / "out" / "gpu_check.json").read_text())["parts"]
    assert parts["endless"]["status"].startswith("cut short") and parts["after"]["status"].startswith("not run: out")


def test_fashion_check_without_its_files_declines_with_the_reason(tmp_path, monkeypatch):
    from rckd.data import datasets

    fashion_spec = importlib.util.spec_from_file_location("fashion_check", ROOT / "benchmarks" / "fashion_check.py")
    fashion_check = importlib.util.module_from_spec(fashion_spec)
    fashion_spec.loader.exec_module(fashion_check)
    monkeypatch.setattr(datasets, "DEBIAN_FASHION_MNIST", tmp_path / "absent")
    assert fashion_check.main(["--data-root", str(tmp_path / "data"), "--out", str(tmp_path / "f.json")]) == \
        gpu_check.NOT_RUN_STATUS
    assert not (tmp_path / "f.json").exists()
