"""The loss methods as plain data: defaults, parameter meanings and checks. No torch.

The workflow plans its runs from this module alone (run names hold the parameters that differ from
these defaults), and `rckd.losses.build` resolves the same parameters before it builds a loss, so the
DAG and the jobs cannot disagree. A new logit loss adds one entry here and its terms function in
`rckd.losses.registry`. Defaults are the published CIFAR-100 settings; docs/method.md gives each source.
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from typing import Any

from rckd.errors import RckdError

# Relations of RCKD's relative confidence matrix R_ij (docs/method.md).
RELATIONS = ("log_ratio", "prob_diff", "rank")


@dataclass(frozen=True)
class Parameter:
    """What a parameter name means in every method that takes it, and which values it takes."""

    meaning: str
    kind: str = "weight"  # weight (>= 0) | positive (> 0) | flag (true/false) | choice (of `choices`)
    choices: tuple[str, ...] = ()


PARAMETERS: dict[str, Parameter] = {
    "ce": Parameter("the cross-entropy weight"),
    "kd": Parameter("the KL-divergence (KD) weight"),
    "rc": Parameter("the relative-confidence (cosine) weight"),
    "alpha": Parameter("the DKD target-class (TCKD) weight"),
    "beta": Parameter("the DKD non-target (NCKD), DIST inter-class or WTTM weight"),
    "gamma": Parameter("the DIST intra-class or NKD non-target weight"),
    "T": Parameter("the softmax temperature", "positive"),
    "kappa": Parameter("the rank relation's tanh scale", "positive"),
    "power": Parameter("the WTTM teacher power transform gamma (1/T of its paper)", "positive"),
    "curriculum": Parameter("CTKD's curriculum length in epochs: its gradient reversal grows from 0 to -1",
                            "positive"),
    "warmup": Parameter("the warm-up length in epochs of the distillation terms, 0 for none"),
    "ls": Parameter("logit standardization (Sun et al., 2024) of both logits before the temperature", "flag"),
    "relation": Parameter("the relative confidence relation", "choice", RELATIONS),
}


@dataclass(frozen=True)
class Method:
    defaults: dict[str, Any]
    needs_teacher: bool
    summary: str
    views: int = 1  # 2: the loss also sees a second, strongly augmented view of each batch (rckd.data.strong)
    # The trainer learns the temperature (CTKD, rckd.ctkd) and passes it to every call of the loss.
    learns_temperature: bool = False


METHODS: dict[str, Method] = {
    "ce": Method({}, False, "cross-entropy only: teachers and vanilla students"),
    "kd": Method({"ce": 0.1, "kd": 0.9, "T": 4.0, "ls": False}, True,
                 "Hinton et al. (2015): T^2 KL of tempered softmaxes; ls=true gives KD+LS"),
    "dkd": Method({"ce": 1.0, "alpha": 1.0, "beta": 8.0, "T": 4.0, "warmup": 20.0, "ls": False}, True,
                  "Zhao et al. (2022): decoupled target / non-target KL; ls=true gives DKD+LS"),
    "dist": Method({"ce": 1.0, "kd": 2.0, "beta": 1.0, "gamma": 1.0, "T": 4.0}, True,
                   "Huang et al. (2022): inter- and intra-class Pearson correlation of probabilities"),
    "wttm": Method({"ce": 1.0, "beta": 4.0, "power": 0.2}, True,
                   "Zheng and Yang (2024): sample-weighted KL to the power-transformed teacher"),
    "nkd": Method({"ce": 1.0, "T": 3.0, "gamma": 3.5}, True,
                  "Yang et al. (2023): teacher-weighted target CE + gamma T^2 non-target soft CE"),
    "ctkd": Method({"ce": 0.1, "kd": 0.9, "curriculum": 10.0, "ls": False}, True,
                   "Li et al. (2023): KD with a global temperature learned adversarially (KD+CTKD)",
                   learns_temperature=True),
    "rckd": Method({"ce": 1.0, "kd": 0.0, "rc": 5.0, "T": 4.0, "relation": "log_ratio", "kappa": 1.0,
                    "warmup": 0.0}, True,
                   "the authors' RCKD: T^2 (1 - cosine) of relative confidence matrices; kd>0 adds KL"),
    "mlkd": Method({"ce": 0.1, "kd": 0.9, "T": 4.0}, True,
                   "Jin et al. (2023): KD and batch- and class-level Gram alignment at five temperatures, "
                   "on a weak and a strong view", views=2),
}


def available() -> list[str]:
    """Every loss method name, sorted."""
    return sorted(METHODS)


def method(name: str) -> Method:
    if name not in METHODS:
        raise RckdError(f"unknown loss method {name!r}; choose one of: {', '.join(available())}")
    return METHODS[name]


def needs_live_teacher(name: str) -> bool:
    """Whether the method's teacher must run on every batch: a second view made by random ops (MLKD's
    strong view) has no finite set of views that a teacher bank (rckd.bank) could hold."""
    return method(name).views > 1


def defaults(name: str) -> dict[str, Any]:
    """A copy of the method's default parameters (the published CIFAR-100 settings)."""
    return dict(method(name).defaults)


def parse_value(name: str, text: str) -> Any:
    """A parameter value from command-line text (`--param ls=true`, `--param T=4`)."""
    kind = PARAMETERS[name].kind if name in PARAMETERS else "weight"
    if kind == "choice":
        return text
    if kind == "flag":
        lowered = text.lower()
        if lowered not in ("true", "false"):
            raise RckdError(f"parameter {name} takes true or false, got {text!r}")
        return lowered == "true"
    try:
        return float(text)
    except ValueError:
        raise RckdError(f"parameter {name} takes a number, got {text!r}") from None


def parse_param(text: str) -> tuple[str, Any]:
    """'key=value' -> (key, value typed by the parameter's kind): the type of `rckd train --param`."""
    key, separator, value = text.partition("=")
    if not separator or not key:
        raise argparse.ArgumentTypeError(f"expected key=value, got {text!r}")
    try:
        return key, parse_value(key, value)
    except RckdError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _checked(method_name: str, name: str, value: Any) -> Any:
    spec = PARAMETERS[name]
    if spec.kind == "choice":
        if value not in spec.choices:
            raise RckdError(f"{method_name}: {name} must be one of {', '.join(spec.choices)}, got {value!r}")
        return value
    if spec.kind == "flag":
        if not isinstance(value, bool):
            raise RckdError(f"{method_name}: {name} ({spec.meaning}) must be true or false, got {value!r}")
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise RckdError(f"{method_name}: parameter {name!r} must be a finite number, got {value!r}")
    if spec.kind == "positive" and value <= 0:
        raise RckdError(f"{method_name}: {name} ({spec.meaning}) must be > 0, got {value!r}")
    if value < 0:
        raise RckdError(f"{method_name}: {name} ({spec.meaning}) must be >= 0, got {value!r}")
    return float(value)


def resolve(name: str, params: dict[str, Any]) -> dict[str, Any]:
    """Every parameter of method `name`: its defaults overridden by `params`, checked."""
    spec = method(name)
    unknown = sorted(set(params) - set(spec.defaults))
    if unknown:
        allowed = ", ".join(spec.defaults) or "none"
        raise RckdError(f"unknown parameter(s) {', '.join(unknown)} for loss {name!r}; allowed: {allowed}")
    return {key: _checked(name, key, value) for key, value in {**spec.defaults, **params}.items()}


def changed(name: str, params: dict[str, Any]) -> dict[str, Any]:
    """The checked parameters that differ from the defaults: they alone make two runs differ."""
    base = method(name).defaults
    return {key: value for key, value in resolve(name, params).items() if base[key] != value}
