"""The GPU acceptance command: the decisive GPU numbers in one call of at most 8 minutes on one GPU.

    python benchmarks/gpu_check.py [--out DIR] [--budget 480]    (or: make gpu-check, bash benchmarks/gpu_check.sh)
    python benchmarks/gpu_check.py --plan                         (no GPU: check every part's command, print the plan)

The parts run in order of value, each a subprocess with its own time limit, all within one budget
(default 480 s, from the start of this command): a part gets min(its limit, what is left) and is
skipped ("not run: out of budget") when less than its minimum is left. As each part ends, its JSON
and its lines of gpu_check.md are in the output folder (--out, else $OUT, else
benchmarks/out/gpu_check/), and gpu_check.json is rewritten, so a slot cut short keeps everything
finished before the cut. A part whose tool or data is missing (pytest, the Fashion-MNIST files) is one
"not run: why" line. Exit status: 0, or 1 when a part failed (a test failed, a script raised), or 2
when torch sees no CUDA GPU. The orchestrator itself needs only the standard library.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import time
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BUDGET_SECONDS = 480  # 8 minutes of a ~15-minute device slot, start-up of the machine not included
NOT_RUN_STATUS = 3  # a part script's exit status for "not run: <its last line>" (e.g. no data files)
TAIL_LINES = 40  # lines of each part's log that go into gpu_check.md
KILL_GRACE_SECONDS = 10  # from a part's SIGTERM to its SIGKILL; kept out of its time so the budget holds


@dataclass(frozen=True)
class Part:
    name: str
    limit: int  # seconds this part may run at most
    minimum: int  # seconds below which starting it is pointless
    script: str  # path under the checkout; its arguments follow in `args`
    args: tuple[str, ...]
    needs: tuple[str, ...] = ()  # Python modules without which the part is not run
    what: str = ""

    @property
    def tests(self) -> bool:
        """A pytest file rather than a script."""
        return Path(self.script).name.startswith("test_")


TRAINER = ("numpy", "tqdm")  # what rckd.train imports besides torch
# Ordered by value: the CUDA tests and the step benchmark first, the ImageNet step last.
PARTS = (
    Part("warmup", 60, 20, "benchmarks/gpu_warmup.py", ("--out", "{out}/warmup.json"), needs=("torch",),
         what="CUDA present; device, torch version; first CUDA context and a compiled step (inductor's workers)"),
    # tests/conftest.py imports onnx only inside export_tiny, so the CUDA tests need no onnx
    Part("cuda_tests", 200, 60, "tests/test_cuda.py",
         ("-q", "-rs", "-p", "no:cacheprovider", "--junitxml={out}/cuda_tests.xml"),
         needs=("pytest", *TRAINER),
         what="no skipped CUDA graph; bf16 compiled steps track fp32 eager; bank on CUDA; ORT CUDA provider"),
    Part("train_speed", 170, 60, "benchmarks/train_speed.py",
         ("--device", "cuda", "--part", "steps", "--steps", "300", "--out", "{out}/train_speed.json"),
         needs=(*TRAINER, "PIL", "torchvision"),
         what="ms/step: classic loop vs trainer vanilla / live / bank, kd and rckd, resnet32x4 -> resnet8x4, batch 64"),
    Part("concurrency", 100, 40, "benchmarks/train_speed.py",
         ("--device", "cuda", "--part", "concurrency", "--steps-json", "{out}/train_speed.json",
          "--out", "{out}/concurrency.json"), needs=(*TRAINER, "PIL", "torchvision"),
         what="aggregate steps/s of 1, 2, 4 concurrent trainer runs on the one GPU"),
    Part("loss_speed", 45, 20, "benchmarks/loss_speed.py",
         ("--device", "cuda", "--repeats", "100", "--sweeps", "2", "--out", "{out}/loss_speed.json"),
         what="forward + backward of every loss on CUDA, as a ratio to KD"),
    Part("fashion", 90, 45, "benchmarks/fashion_check.py", ("--out", "{out}/fashion.json"),
         needs=(*TRAINER, "torchvision"),
         what="2 epochs on Fashion-MNIST: bf16 + CUDA graphs vs fp32 eager top-1"),
    Part("imagenet_step", 120, 60, "benchmarks/imagenet_step.py",
         ("--device", "cuda", "--out", "{out}/imagenet_step.json"), needs=TRAINER,
         what="ms/step of ResNet-34 -> ResNet-18, batch 256, 224x224 (vanilla, KD, RCKD)"),
)


def command(part: Part, out: Path) -> list[str]:
    args = [arg.format(out=out) for arg in part.args]
    if part.tests:
        return [sys.executable, "-m", "pytest", part.script, *args]
    return [sys.executable, part.script, *args]


def missing_modules(part: Part) -> list[str]:
    return [name for name in part.needs if importlib.util.find_spec(name) is None]


def run_part(part: Part, out: Path, seconds: float) -> tuple[str, float]:
    """(status line, seconds taken); the part's output goes to <name>.log. A part over its limit gets
    SIGTERM (the trainer saves and exits), then SIGKILL KILL_GRACE_SECONDS later, with its whole
    process group."""
    began = time.monotonic()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, (str(ROOT), os.environ.get("PYTHONPATH"))))}
    with open(out / f"{part.name}.log", "w") as log:
        process = subprocess.Popen(command(part, out), cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                   start_new_session=True)
        try:
            code = process.wait(timeout=seconds)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=KILL_GRACE_SECONDS)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
            return f"cut short after {seconds:.0f} s, its limit or the budget left (partial results are kept)", \
                time.monotonic() - began
    taken = time.monotonic() - began
    if code == 0:
        return "ok", taken
    if code == NOT_RUN_STATUS:
        lines = (out / f"{part.name}.log").read_text().strip().splitlines()
        return f"not run: {lines[-1] if lines else 'no reason given'}", taken
    return f"FAILED (exit {code})", taken


def test_results(xml_path: Path) -> dict:
    """pytest's JUnit XML as {test: outcome or 'skipped: reason' / 'failed: message'}."""
    results = {}
    for case in ElementTree.parse(xml_path).getroot().iter("testcase"):
        outcome = "passed"
        for kind in ("skipped", "failure", "error"):
            element = case.find(kind)
            if element is not None:
                outcome = f"{kind}: {element.get('message', '')}"
        results[case.get("name")] = outcome
    return results


def record(out: Path, summary: dict, part: Part, status: str, seconds: float) -> None:
    """This part's lines of gpu_check.md, and gpu_check.json with its result added."""
    result = {"status": status, "seconds": round(seconds, 1), "what": part.what}
    numbers, tests = out / f"{part.name}.json", out / f"{part.name}.xml"
    try:
        if numbers.exists():
            result["result"] = json.loads(numbers.read_text())
        if tests.exists():
            result["tests"] = test_results(tests)
    except (ValueError, ElementTree.ParseError) as error:
        result["unreadable"] = str(error)
    summary["parts"][part.name] = result
    (out / "gpu_check.json").write_text(json.dumps(summary, indent=2) + "\n")
    lines = [f"## {part.name}: {status} ({seconds:.0f} s)", "", part.what, ""]
    if "tests" in result:
        lines += [f"- {test}: {outcome}" for test, outcome in result["tests"].items()] + [""]
    log = out / f"{part.name}.log"
    if log.exists() and not status.startswith("not run"):
        lines += ["```", *log.read_text().splitlines()[-TAIL_LINES:], "```", ""]
    with open(out / "gpu_check.md", "a") as handle:
        handle.write("\n".join(lines) + "\n")
    print(f"{part.name}: {status} ({seconds:.0f} s)", flush=True)


def run_all(out: Path, budget: float) -> int:
    began = time.monotonic()
    out.mkdir(parents=True, exist_ok=True)
    summary = {"budget_seconds": budget, "parts": {}}
    for part in PARTS:  # an earlier check's results in this folder must not pass for this one's
        for suffix in (".json", ".xml", ".log"):
            (out / f"{part.name}{suffix}").unlink(missing_ok=True)
    (out / "gpu_check.md").write_text(f"# GPU check (budget {budget:.0f} s)\n\n")
    failed = False
    for part in PARTS:
        left = budget - (time.monotonic() - began) - KILL_GRACE_SECONDS
        missing = missing_modules(part)
        if missing:
            status, seconds = f"not run: {', '.join(missing)} not installed", 0.0
        elif left < part.minimum:
            status, seconds = f"not run: out of budget ({left:.0f} s left, it needs {part.minimum} s)", 0.0
        else:
            status, seconds = run_part(part, out, min(part.limit, left))
        record(out, summary, part, status, seconds)
        if part.name == "warmup" and status != "ok":
            print("no usable CUDA GPU (see warmup.log): nothing else is run", flush=True)
            return 2
        failed |= status.startswith("FAILED")
    print(f"done in {time.monotonic() - began:.0f} s of {budget:.0f}: {out / 'gpu_check.md'}", flush=True)
    return 1 if failed else 0


def probe(part: Part) -> list[str]:
    """The command that shows whether the part's script imports and knows its options (empty: none)."""
    if missing_modules(part):
        return []  # where it runs, it is reported as not run
    if part.tests:
        return [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", part.script]
    return [sys.executable, part.script, "--help"]


def problems(part: Part, done: subprocess.CompletedProcess | None) -> list[str]:
    """Why the part's command could not run as written (empty: it can): its file exists and compiles,
    and every option it passes is one its --help (or pytest's collection) knows."""
    path = ROOT / part.script
    if not path.exists():
        return [f"{part.script} does not exist"]
    try:
        compile(path.read_text(), str(path), "exec")
    except SyntaxError as error:
        return [f"{part.script} does not compile: {error}"]
    if done is None:
        return []
    if done.returncode != 0:
        return [f"`{' '.join(done.args[1:])}` failed: {(done.stdout + done.stderr).strip().splitlines()[-1:]}"]
    if part.tests:
        return [] if re.search(r"\d+ tests? collected", done.stdout) else [f"no test collected in {part.script}"]
    unknown = [arg for arg in part.args if arg.startswith("--") and not re.search(rf"{arg}\b", done.stdout)]
    return [f"{part.script} has no option {arg}" for arg in unknown]


def run_probes(parts: tuple[Part, ...]) -> list[subprocess.CompletedProcess | None]:
    """Every part's probe, all at once, each distinct command once (each imports torch: seconds apiece)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, (str(ROOT), os.environ.get("PYTHONPATH"))))}
    commands = [tuple(args) if (args := probe(part)) and (ROOT / part.script).exists() else None for part in parts]
    started = {args: subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True) for args in dict.fromkeys(commands) if args}
    done = {}
    for args, process in started.items():
        stdout, stderr = process.communicate(timeout=600)
        done[args] = subprocess.CompletedProcess(list(args), process.returncode, stdout, stderr)
    return [done.get(args) for args in commands]


def plan(budget: float) -> int:
    print(f"budget {budget:.0f} s; parts in order (limit / minimum seconds; skipped when less than the minimum "
          f"is left):")
    found = []
    for index, (part, done) in enumerate(zip(PARTS, run_probes(PARTS)), 1):
        issues = problems(part, done)
        found += [f"{part.name}: {issue}" for issue in issues]
        needs = f" [needs {', '.join(part.needs)}]" if part.needs else ""
        print(f"{index}. {part.name:<14} {part.limit:>4} / {part.minimum:>3} s  {'ok' if not issues else 'BROKEN'}"
              f"  {' '.join(command(part, Path('OUT'))[1:])}{needs}\n   {part.what}")
    wrapper = subprocess.run(["bash", "-n", str(ROOT / "benchmarks" / "gpu_check.sh")], capture_output=True, text=True)
    if wrapper.returncode != 0:
        found.append(f"gpu_check.sh: {wrapper.stderr.strip()}")
    for problem in found:
        print(f"BROKEN {problem}")
    return 1 if found else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, help="output folder (default: $OUT, else benchmarks/out/gpu_check)")
    parser.add_argument("--budget", type=float, default=BUDGET_SECONDS, help="seconds for the whole command")
    parser.add_argument("--plan", action="store_true", help="check every part's command and print the plan")
    args = parser.parse_args(argv)
    if args.plan:
        return plan(args.budget)
    out = args.out or Path(os.environ.get("OUT") or ROOT / "benchmarks" / "out" / "gpu_check")
    return run_all(out.resolve(), args.budget)


if __name__ == "__main__":
    raise SystemExit(main())
