"""Compare the jobs each shipped config plans with lists recorded before a change (issue 19).

    python benchmarks/plan_equivalence.py BASELINE_DIR [--checkout-then /work/main]

BASELINE_DIR holds, per config/<name>.yaml, `<name>.txt` (`snakemake -n --summary`: output file <TAB>
rule) and `<name>.shell.txt` (every job's shell command of `snakemake -n -p`). This script makes the same
lists from this checkout, each in an empty work directory, and prints the differences: none means the
same jobs with the same output files and the same commands. Like the recorded lists, it passes no
--cores: a dry run then plans with one core, which caps the threads in the commands. Two known
differences are normalised away: the checkout's path in commands (the published.yaml input) and the
train rule's `--tensorboard on|off`, which issue 19 added. Exit status 1 when any list differs.
"""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ("config", "quick", "fashion", "imagenet")


def snakemake(config: str, *args: str) -> str:
    with tempfile.TemporaryDirectory() as workdir:
        result = subprocess.run([sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile"), "-d", workdir,
                                 "-n", "--configfile", str(ROOT / "config" / f"{config}.yaml"), *args],
                                capture_output=True, text=True, check=True)
    return result.stdout


def outputs(text: str) -> set[str]:
    """The (output file, rule) rows of --summary (its columns: output_file, date, rule, ...)."""
    rows = [line.split("\t") for line in text.splitlines() if "\t" in line]
    return {f"{row[0]}\t{row[2]}" for row in rows} - {"output_file\trule"}


def commands(text: str, then: str) -> list[str]:
    found = [line.removeprefix("Shell command: ") for line in text.splitlines() if line.startswith("Shell command: ")]
    return sorted(re.sub(r" --tensorboard (on|off)", "", line).replace(str(ROOT), then) for line in found)


def recorded(path: Path, rows: bool) -> set[str] | list[str]:
    """A recorded list: (output file, rule) rows (already cut to those two columns), or commands."""
    lines = [line for line in path.read_text().splitlines() if line]
    return {line for line in lines if "\t" in line} - {"output_file\trule"} if rows else sorted(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("baseline", type=Path)
    parser.add_argument("--checkout-then", default="/work/main", help="the checkout's path when the lists were made")
    args = parser.parse_args()
    differ = False
    for config in CONFIGS:
        now_outputs = outputs(snakemake(config, "--summary"))
        now_commands = commands(snakemake(config, "-p"), args.checkout_then)
        then_outputs = recorded(args.baseline / f"{config}.txt", rows=True)
        then_commands = recorded(args.baseline / f"{config}.shell.txt", rows=False)
        missing, extra = sorted(then_outputs - now_outputs), sorted(now_outputs - then_outputs)
        changed = [line for line in then_commands if line not in now_commands] + \
                  [line for line in now_commands if line not in then_commands]
        same = not missing and not extra and now_commands == then_commands
        differ |= not same
        print(f"{config}: {len(now_outputs)} outputs, {len(now_commands)} commands: "
              f"{'identical' if same else 'DIFFERENT'}")
        for line in missing[:5] + extra[:5] + changed[:6]:
            print(f"  {line[:300]}")
    return int(differ)


if __name__ == "__main__":
    sys.exit(main())
