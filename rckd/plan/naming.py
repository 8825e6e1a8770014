"""Run names: the one place that turns parameters into a run directory's tag, and back.

A run's directory `<arch>/<teacher or none>/<loss>/<tag>/seed<k>` is its identity: the tag holds the
loss parameters that differ from the catalogue's defaults and the schedule values that differ from the
global train section, so two runs that compute differently never share a directory.
"""

from __future__ import annotations

from typing import Any

DEFAULT_TAG = "default"  # the tag of a run with nothing changed


def format_value(value: Any) -> str:
    """A parameter value in canonical text: 4.0 -> '4', 0.5 -> '0.5', True -> 'true', [1, 2] -> '1/2'."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, (list, tuple)):
        return "/".join(format_value(item) for item in value)
    return str(value)


def format_params(params: dict[str, Any]) -> str:
    """Canonical parameter string with sorted keys, e.g. {'beta': 8, 'T': 4.0} -> 'T=4,beta=8'."""
    return ",".join(f"{key}={format_value(params[key])}" for key in sorted(params))


def parse_params(text: str) -> dict[str, str]:
    """Inverse of format_params, with the values kept as text."""
    return dict(item.partition("=")[::2] for item in text.split(",")) if text else {}


def run_name(arch: str, teacher: str | None, method: str, tag: str, seed: int) -> str:
    """The run's path under `<results>/runs/`."""
    return f"{arch}/{teacher or 'none'}/{method}/{tag}/seed{seed}"
