"""`python -m rckd <command>`: one subcommand per pipeline step.

Each command lives in its own module exposing `add_arguments(parser)` and `run(args) -> int`.
Only the chosen command's module is imported, so `rckd predict` runs without torch installed.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from pathlib import Path

from rckd.errors import RckdError

COMMANDS: dict[str, tuple[str, str]] = {
    "prepare": ("rckd.data.prepare", "write a data set once to a checksummed cache file"),
    "bank": ("rckd.bank", "a teacher's logits under every augmentation view, for its students"),
    "train": ("rckd.train", "train a teacher, a vanilla student or a distilled student"),
    "import-teacher": ("rckd.teachers", "a published teacher checkpoint -> an rckd model.pt (offline)"),
    "evaluate": ("rckd.evaluate", "test-set metrics and fidelity to the teacher -> eval.json"),
    "summarize": ("rckd.report.summary", "collect an experiment's runs into summary.csv"),
    "table": ("rckd.report.tables", "paper-style results tables (markdown + csv)"),
    "plot": ("rckd.report.plots", "training curves, capacity and ablation plots"),
    "export": ("rckd.export", "export a trained model to ONNX with a parity gate (+ int8)"),
    "bench": ("rckd.bench", "deployment latency of exported students"),
    "predict": ("rckd.deploy", "classify image files with an exported ONNX model (no torch)"),
    "schema": ("rckd.plan.schema", "write the workflow's config schema from the Python that owns each value"),
}


def _top_level_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rckd",
        description="Relative Confidence Knowledge Distillation pipeline.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="commands:\n" + "\n".join(f"  {name:<10} {doc}" for name, (_, doc) in COMMANDS.items()),
    )
    parser.add_argument("command", choices=sorted(COMMANDS), metavar="command")
    parser.add_argument("--version", action="version", version=_version())
    return parser


def _version() -> str:
    from rckd import __version__

    return f"rckd {__version__}"


def check_workflow_checkout() -> None:
    """Under the workflow, whose rules set RCKD_WORKFLOW to its checkout, the rckd running must be that
    checkout's: a venv holding another copy, or a conda env made for another checkout (a shared
    --conda-prefix), would otherwise run other code without a word."""
    workflow = os.environ.get("RCKD_WORKFLOW")
    package = Path(__file__).resolve().parent
    if workflow and package != (Path(workflow) / "rckd").resolve():
        raise RckdError(f"this environment's rckd is {package}, not the workflow's {workflow}/rckd: install the "
                        f"checkout there (pip install --no-deps -e {workflow}); under --use-conda, delete the "
                        f"env in .snakemake/conda and rerun, and snakemake recreates it with the checkout's rckd")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in COMMANDS:
        _top_level_parser().parse_args(argv[:1] or ["--help"])
        return 2
    name, rest = argv[0], argv[1:]
    module_name, doc = COMMANDS[name]
    try:
        check_workflow_checkout()
        module = importlib.import_module(module_name)
        parser = argparse.ArgumentParser(prog=f"rckd {name}", description=doc)
        module.add_arguments(parser)
        return int(module.run(parser.parse_args(rest)) or 0)
    except RckdError as err:
        print(f"rckd {name}: error: {err}", file=sys.stderr)
        return 2
