"""The conda environments pin exactly what pyproject.toml pins, so --use-conda builds the same stack."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def requirement_key(requirement: str) -> tuple[str, str]:
    """'Name==1.0; marker' -> ('name', 'marker'), normalised for comparison."""
    spec, _, marker = requirement.partition(";")
    name = re.split(r"[=<>!~\[ ]", spec.strip(), maxsplit=1)[0]
    return name.lower().replace("_", "-"), " ".join(marker.split())


def pins(requirements: list[str]) -> dict[tuple[str, str], str]:
    result = {}
    for requirement in requirements:
        spec = requirement.partition(";")[0].strip()
        assert "==" in spec, f"{requirement!r} is not an exact pin"
        result[requirement_key(requirement)] = spec.split("==", 1)[1].strip()
    return result


def pip_section(env_file: Path) -> list[str]:
    environment = yaml.safe_load(env_file.read_text())
    sections = [item["pip"] for item in environment["dependencies"] if isinstance(item, dict) and "pip" in item]
    assert len(sections) == 1, f"{env_file.name}: expected one pip section"
    return sections[0]


def test_rckd_env_pins_exactly_the_project_dependencies():
    assert pins(pip_section(ROOT / "envs" / "rckd.yaml")) == pins(PROJECT["dependencies"])


@pytest.mark.parametrize("env_file", sorted((ROOT / "envs").glob("*.yaml")), ids=lambda path: path.name)
def test_every_env_pin_agrees_with_pyproject(env_file):
    project = pins(PROJECT["dependencies"] + [req for extra in PROJECT["optional-dependencies"].values()
                                              for req in extra])
    env = pins([req for req in pip_section(env_file) if not req.startswith(("-", "."))])
    assert env, f"{env_file.name} pins nothing"
    wrong = {key: (version, project.get(key)) for key, version in env.items() if project.get(key) != version}
    assert not wrong, f"{env_file.name} disagrees with pyproject.toml (env, project): {wrong}"
    python = [dep for dep in yaml.safe_load(env_file.read_text())["dependencies"]
              if isinstance(dep, str) and dep.startswith("python")]
    minimum = tuple(int(part) for part in PROJECT["requires-python"].removeprefix(">=").split("."))
    assert python and version_tuple(python[0].split("=")[1]) >= minimum


def version_tuple(text: str) -> tuple[int, ...]:
    """'3.11' -> (3, 11): versions compare as numbers ('3.9' < '3.10'), not as strings."""
    return tuple(int(part) for part in text.split("."))


def test_versions_compare_as_numbers():
    assert version_tuple("3.9") < version_tuple("3.10") < version_tuple("3.11.2")


def test_onnxruntime_gpu_and_cpu_builds_never_meet():
    markers = {requirement_key(req)[0]: requirement_key(req)[1] for req in PROJECT["dependencies"]
               if requirement_key(req)[0].startswith("onnxruntime")}
    assert markers == {
        "onnxruntime-gpu": "sys_platform == 'linux' and platform_machine == 'x86_64'",
        "onnxruntime": "sys_platform != 'linux' or platform_machine != 'x86_64'",
    }


@pytest.mark.slow(5)
def test_the_post_deploy_script_installs_the_checkout_into_a_fresh_environment(tmp_path):
    """envs/rckd.post-deploy.sh, run as snakemake runs it after creating the conda env (the env's python
    first on PATH, RCKD_WORKFLOW set by common.smk): afterwards that python imports this checkout's rckd.
    (A venv stands in for the conda env: no conda channel is reachable here.)"""
    env_dir = tmp_path / "env"
    subprocess.run([sys.executable, "-m", "venv", str(env_dir)], check=True)
    requirements = [dep for dep in yaml.safe_load((ROOT / "envs" / "rckd.yaml").read_text())["dependencies"]
                    if isinstance(dep, str) and dep.startswith("setuptools")]  # the conda env's build backend
    subprocess.run([str(env_dir / "bin" / "python"), "-m", "pip", "install", "--quiet", *requirements], check=True)
    path = {**os.environ, "PATH": f"{env_dir / 'bin'}:{os.environ['PATH']}"}
    path.pop("PYTHONPATH", None)
    script = ROOT / "envs" / "rckd.post-deploy.sh"
    unset = subprocess.run(["bash", str(script)], env={k: v for k, v in path.items() if k != "RCKD_WORKFLOW"},
                           capture_output=True, text=True)
    assert unset.returncode != 0 and "RCKD_WORKFLOW: not set" in unset.stderr
    done = subprocess.run(["bash", str(script)], env={**path, "RCKD_WORKFLOW": str(ROOT)}, capture_output=True,
                          text=True, cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    located = subprocess.run([str(env_dir / "bin" / "python"), "-c", "import rckd; print(rckd.__file__)"],
                             capture_output=True, text=True, cwd=tmp_path, env=path)
    assert located.stdout.strip() == str(ROOT / "rckd" / "__init__.py")


def test_a_job_refuses_an_rckd_that_is_not_the_workflows(tmp_path):
    """Rules export RCKD_WORKFLOW; `python -m rckd` of another checkout (or env) stops with the fix."""
    command = [sys.executable, "-m", "rckd", "summarize", "--experiment", "x", "--runs", str(tmp_path),
               "--roles", "vanilla", "--out", str(tmp_path / "summary.csv")]
    other = subprocess.run(command, env={**os.environ, "RCKD_WORKFLOW": str(tmp_path)}, capture_output=True,
                           text=True, cwd=tmp_path)
    assert other.returncode == 2
    assert f"not the workflow's {tmp_path}/rckd" in other.stderr and "pip install --no-deps -e" in other.stderr
    ours = subprocess.run(command, env={**os.environ, "RCKD_WORKFLOW": str(ROOT)}, capture_output=True, text=True,
                          cwd=tmp_path)
    assert ours.returncode == 2 and "has no metrics.json" in ours.stderr  # past the check, to the command's own error
