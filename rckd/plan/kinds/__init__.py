"""Experiment kinds: the only list of them. A kind is one module here plus one line in KINDS.

Each kind module defines `KIND = Kind(...)` (rckd.plan.kinds.base): the JSON schema of its experiment
keys, the runs it needs (`runs(planner, name, spec) -> [(method label, Run)]`), its figure's name and the
table and figure builders of `rckd table` and `rckd plot` (named "module:function", imported only by
those commands, so planning loads neither scipy nor matplotlib).
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

from rckd.errors import RckdError
from rckd.plan.kinds.base import Kind

KINDS: dict[str, Kind] = {name: importlib.import_module(f"rckd.plan.kinds.{name}").KIND
                          for name in ("main", "capacity", "sweep")}


def kind(name: str) -> Kind:
    if name not in KINDS:
        raise RckdError(f"unknown experiment kind {name!r}; choose one of: {', '.join(KINDS)}")
    return KINDS[name]


def by_figure(figure: str) -> Kind:
    """The kind whose figure is `figure` (what `rckd plot --kind` names)."""
    for candidate in KINDS.values():
        if candidate.figure == figure:
            return candidate
    raise RckdError(f"unknown figure {figure!r}; choose one of: {', '.join(figures())}")


def figures() -> list[str]:
    return [candidate.figure for candidate in KINDS.values()]


def builder(reference: str) -> Callable[..., Any]:
    """The function a "module:function" reference names."""
    module, _, name = reference.partition(":")
    return getattr(importlib.import_module(module), name)
