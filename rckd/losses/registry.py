"""Method name -> loss: defaults, parameter checks and the weighted terms of each method.

Every method returns a dict of named scalar terms, already weighted, whose sum is the training
loss, so each term can be logged on its own. Defaults are the published CIFAR-100 settings;
docs/method.md gives the formulas and their sources.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

import torch.nn.functional as F
from torch import Tensor

from rckd.errors import RckdError
from rckd.losses.functional import (
    RELATIONS,
    at_least_float32,
    dkd_divergences,
    kd_pearson,
    kl_divergence,
    pearson,
    relation_cosine,
    softmax_pearson,
    uniform_scaled_probabilities,
    warmup_scale,
)

Epoch = int | float | Tensor
Terms = dict[str, Tensor]
TermsFn = Callable[[dict[str, Any], Tensor, Tensor, Tensor, Epoch], Terms]


def _ce_terms(params: dict[str, Any], logits_s: Tensor, logits_t: Tensor | None, target: Tensor,
              epoch: Epoch) -> Terms:
    return {"ce": F.cross_entropy(logits_s, target)}


def _kd_divergence(logits_s: Tensor, logits_t: Tensor, temperature: float) -> Tensor:
    """Batch mean of T^2 KL(p_t || p_s) on softmax(z / T) (Hinton et al., 2015)."""
    log_p_s = F.log_softmax(logits_s / temperature, -1)
    log_p_t = F.log_softmax(logits_t / temperature, -1)
    return temperature**2 * kl_divergence(log_p_t, log_p_s).mean()


def _kd_terms(params: dict[str, Any], logits_s: Tensor, logits_t: Tensor, target: Tensor,
              epoch: Epoch) -> Terms:
    return {
        "ce": params["ce"] * F.cross_entropy(logits_s, target),
        "kd": params["kd"] * _kd_divergence(logits_s, logits_t, params["T"]),
    }


def _dkd_terms(params: dict[str, Any], logits_s: Tensor, logits_t: Tensor, target: Tensor,
               epoch: Epoch) -> Terms:
    temperature = params["T"]
    tckd, nckd = dkd_divergences(logits_s, logits_t, target, temperature)
    scale = warmup_scale(epoch, params["warmup"]) * temperature**2
    return {
        "ce": params["ce"] * F.cross_entropy(logits_s, target),
        "tckd": scale * params["alpha"] * tckd.mean(),
        "nckd": scale * params["beta"] * nckd.mean(),
    }


def _dist_terms(params: dict[str, Any], logits_s: Tensor, logits_t: Tensor, target: Tensor,
                epoch: Epoch) -> Terms:
    temperature = params["T"]
    # Inter-class: correlation over the classes of each sample; intra-class: over the batch, per class.
    per_class_s = uniform_scaled_probabilities(logits_s, temperature)
    per_class_t = uniform_scaled_probabilities(logits_t, temperature)
    scale = params["kd"] * temperature**2
    return {
        "ce": params["ce"] * F.cross_entropy(logits_s, target),
        "inter": scale * params["beta"] * (1 - softmax_pearson(logits_s, logits_t, temperature)).mean(),
        "intra": scale * params["gamma"] * (1 - pearson(per_class_s, per_class_t, dim=0)).mean(),
    }


def _rckd_terms(params: dict[str, Any], logits_s: Tensor, logits_t: Tensor, target: Tensor,
                epoch: Epoch) -> Terms:
    temperature = params["T"]
    if params["relation"] == "prob_diff":
        # KD and the prob_diff cosine share one tempered softmax of each input.
        kl, cosine = kd_pearson(logits_s, logits_t, temperature)
        kd = temperature**2 * kl.mean()
    else:
        cosine = relation_cosine(logits_s, logits_t, params["relation"], temperature, params["kappa"])
        kd = _kd_divergence(logits_s, logits_t, temperature)
    return {
        "ce": params["ce"] * F.cross_entropy(logits_s, target),
        "kd": params["kd"] * kd,
        "rc": params["rc"] * temperature**2 * (1 - cosine).mean(),
    }


@dataclass(frozen=True)
class _Method:
    defaults: dict[str, Any]
    needs_teacher: bool
    terms: TermsFn


_METHODS: dict[str, _Method] = {
    "ce": _Method({}, False, _ce_terms),
    "kd": _Method({"ce": 0.1, "kd": 0.9, "T": 4.0}, True, _kd_terms),
    "dkd": _Method({"ce": 1.0, "alpha": 1.0, "beta": 8.0, "T": 4.0, "warmup": 20.0}, True, _dkd_terms),
    "dist": _Method({"ce": 1.0, "kd": 2.0, "beta": 1.0, "gamma": 1.0, "T": 4.0}, True, _dist_terms),
    "rckd": _Method({"ce": 0.1, "kd": 0.9, "rc": 1.0, "T": 4.0, "relation": "prob_diff", "kappa": 1.0},
                    True, _rckd_terms),
}

# A parameter name means the same in every method; names not listed here are loss weights.
_MEANINGS = {
    "T": "the softmax temperature",
    "kappa": "the rank relation's tanh scale",
    "warmup": "the DKD warm-up length in epochs, 0 for none",
}
_POSITIVE = {"T", "kappa"}


@dataclass(frozen=True)
class DistillLoss:
    """A configured loss: `loss(logits_s, logits_t, target, epoch)` -> weighted terms.

    The terms sum to the training loss. Logits are computed in float32 (float64 stays
    float64); `epoch` may be a Python number or a 0-dim tensor, as a CUDA-graph step feeds it.
    """

    method: str
    params: dict[str, Any]
    needs_teacher: bool
    temperature: float | None
    _terms: TermsFn = field(repr=False)

    def __call__(self, logits_s: Tensor, logits_t: Tensor | None, target: Tensor,
                 epoch: Epoch) -> Terms:
        if logits_s.ndim != 2 or logits_s.shape[-1] < 2:
            raise RckdError(f"student logits must have shape [batch, classes>=2], got {tuple(logits_s.shape)}")
        if self.needs_teacher:
            if logits_t is None:
                raise RckdError(f"loss {self.method!r} needs teacher logits; pass a teacher or use method 'ce'")
            if logits_t.shape != logits_s.shape:
                raise RckdError(f"teacher logits {tuple(logits_t.shape)} do not match student logits "
                                f"{tuple(logits_s.shape)}; teacher and student need the same classes")
            logits_t = at_least_float32(logits_t.detach())
        return self._terms(self.params, at_least_float32(logits_s), logits_t, target, epoch)


def available() -> list[str]:
    """Every loss method name, sorted."""
    return sorted(_METHODS)


def _method(name: str) -> _Method:
    if name not in _METHODS:
        raise RckdError(f"unknown loss method {name!r}; choose one of: {', '.join(available())}")
    return _METHODS[name]


def defaults(method: str) -> dict[str, Any]:
    """A copy of the method's default parameters (the published CIFAR-100 settings)."""
    return dict(_method(method).defaults)


def _checked(method: str, name: str, value: Any) -> Any:
    if name == "relation":
        if value not in RELATIONS:
            raise RckdError(f"{method}: relation must be one of {', '.join(RELATIONS)}, got {value!r}")
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise RckdError(f"{method}: parameter {name!r} must be a finite number, got {value!r}")
    meaning = _MEANINGS.get(name, "a loss weight")
    if name in _POSITIVE and value <= 0:
        raise RckdError(f"{method}: {name} ({meaning}) must be > 0, got {value!r}")
    if value < 0:
        raise RckdError(f"{method}: {name} ({meaning}) must be >= 0, got {value!r}")
    return float(value)


def build(method: str, **params: Any) -> DistillLoss:
    """The loss `method` with `params` overriding its defaults; bad names or values raise RckdError."""
    spec = _method(method)
    unknown = sorted(set(params) - set(spec.defaults))
    if unknown:
        allowed = ", ".join(spec.defaults) or "none"
        raise RckdError(f"unknown parameter(s) {', '.join(unknown)} for loss {method!r}; allowed: {allowed}")
    resolved = {name: _checked(method, name, value) for name, value in {**spec.defaults, **params}.items()}
    return DistillLoss(method, resolved, spec.needs_teacher, resolved.get("T"), spec.terms)
