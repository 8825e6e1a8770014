"""Config errors of the plan: the key path, what is wrong and how to fix it."""

from __future__ import annotations

from rckd.errors import RckdError


def config_error(key: str, message: str) -> RckdError:
    return RckdError(f"{key}: {message}")
