"""Method name -> loss: the weighted terms of each method of `rckd.losses.catalog`.

Every method returns a dict of named scalar terms, already weighted, whose sum is the training
loss, so each term can be logged on its own. The defaults and parameter checks live in the
torch-free catalog; docs/method.md gives the formulas and their sources.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch.nn.functional as F
from torch import Tensor

from rckd.errors import RckdError
from rckd.losses import catalog
from rckd.losses.functional import (
    at_least_float32,
    dkd_divergences,
    kd_divergence,
    nkd_cross_entropies,
    pearson,
    relation_cosine,
    standardize,
    uniform_scaled_probabilities,
    warmup_scale,
    wttm_divergence,
)

Epoch = int | float | Tensor
Terms = dict[str, Tensor]
TermsFn = Callable[[dict[str, Any], Tensor, Tensor, Tensor, Epoch], Terms]


def _ce_terms(params: dict[str, Any], logits_s: Tensor, logits_t: Tensor | None, target: Tensor,
              epoch: Epoch) -> Terms:
    return {"ce": F.cross_entropy(logits_s, target)}


def _standardized(params: dict[str, Any], logits_s: Tensor, logits_t: Tensor) -> tuple[Tensor, Tensor]:
    """Both logits z-scored when the method's `ls` flag is on (the temperature applies afterwards)."""
    return (standardize(logits_s), standardize(logits_t)) if params["ls"] else (logits_s, logits_t)


def _kd_terms(params: dict[str, Any], logits_s: Tensor, logits_t: Tensor, target: Tensor,
              epoch: Epoch) -> Terms:
    temperature = params["T"]
    soft_s, soft_t = _standardized(params, logits_s, logits_t)
    return {
        "ce": params["ce"] * F.cross_entropy(logits_s, target),
        "kd": params["kd"] * temperature**2 * kd_divergence(soft_s, soft_t, temperature).mean(),
    }


def _dkd_terms(params: dict[str, Any], logits_s: Tensor, logits_t: Tensor, target: Tensor,
               epoch: Epoch) -> Terms:
    temperature = params["T"]
    soft_s, soft_t = _standardized(params, logits_s, logits_t)
    tckd, nckd = dkd_divergences(soft_s, soft_t, target, temperature)
    scale = warmup_scale(epoch, params["warmup"]) * temperature**2
    return {
        "ce": params["ce"] * F.cross_entropy(logits_s, target),
        "tckd": scale * params["alpha"] * tckd.mean(),
        "nckd": scale * params["beta"] * nckd.mean(),
    }


def _nkd_terms(params: dict[str, Any], logits_s: Tensor, logits_t: Tensor, target: Tensor,
               epoch: Epoch) -> Terms:
    temperature = params["T"]
    target_ce, non_target_ce = nkd_cross_entropies(logits_s, logits_t, target, temperature)
    return {
        "ce": params["ce"] * F.cross_entropy(logits_s, target),
        "target": target_ce.mean(),
        "non_target": params["gamma"] * temperature**2 * non_target_ce.mean(),
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
        "inter": scale * params["beta"] * (1 - pearson(per_class_s, per_class_t)).mean(),
        "intra": scale * params["gamma"] * (1 - pearson(per_class_s, per_class_t, dim=0)).mean(),
    }


def _wttm_terms(params: dict[str, Any], logits_s: Tensor, logits_t: Tensor, target: Tensor,
                epoch: Epoch) -> Terms:
    return {
        "ce": params["ce"] * F.cross_entropy(logits_s, target),
        "wttm": params["beta"] * wttm_divergence(logits_s, logits_t, params["power"]).mean(),
    }


def _rckd_terms(params: dict[str, Any], logits_s: Tensor, logits_t: Tensor, target: Tensor,
                epoch: Epoch) -> Terms:
    temperature = params["T"]
    cosine = relation_cosine(logits_s, logits_t, params["relation"], temperature, params["kappa"])
    terms = {
        "ce": params["ce"] * F.cross_entropy(logits_s, target),
        "rc": params["rc"] * temperature**2 * (1 - cosine).mean(),
    }
    if params["kd"] > 0:  # the authors' RCKD has no KL term; kd > 0 is the "RCKD + KL" reading
        terms["kd"] = params["kd"] * temperature**2 * kd_divergence(logits_s, logits_t, temperature).mean()
    return terms


# One terms function per method of the catalog (tests/test_losses.py checks that both list the same).
TERMS: dict[str, TermsFn] = {
    "ce": _ce_terms,
    "kd": _kd_terms,
    "dkd": _dkd_terms,
    "nkd": _nkd_terms,
    "ctkd": _kd_terms,  # KD's terms at the temperature the trainer learns (rckd.ctkd)
    "dist": _dist_terms,
    "wttm": _wttm_terms,
    "rckd": _rckd_terms,
}


@dataclass(frozen=True)
class DistillLoss:
    """A configured loss: `loss(logits_s, logits_t, target, epoch)` -> weighted terms.

    The terms sum to the training loss. Logits are computed in float32 (float64 stays
    float64); `epoch` may be a Python number or a 0-dim tensor, as a CUDA-graph step feeds it.
    A method that learns its temperature (`learns_temperature`, CTKD) takes it as a 0-dim tensor
    in `temperature=` on every call; the gradient reaches it through the terms.
    """

    method: str
    params: dict[str, Any]
    needs_teacher: bool
    temperature: float | None
    learns_temperature: bool
    _terms: TermsFn = field(repr=False)

    def __call__(self, logits_s: Tensor, logits_t: Tensor | None, target: Tensor,
                 epoch: Epoch, temperature: Tensor | None = None) -> Terms:
        if (temperature is None) == self.learns_temperature:
            raise RckdError(f"loss {self.method!r} learns its temperature: pass temperature= (rckd.ctkd)"
                            if self.learns_temperature else
                            f"loss {self.method!r} has a fixed temperature; it takes no temperature=")
        params = self.params if temperature is None else {**self.params, "T": temperature}
        if logits_s.ndim != 2 or logits_s.shape[-1] < 2:
            raise RckdError(f"student logits must have shape [batch, classes>=2], got {tuple(logits_s.shape)}")
        if self.needs_teacher:
            if logits_t is None:
                raise RckdError(f"loss {self.method!r} needs teacher logits; pass a teacher or use method 'ce'")
            if logits_t.shape != logits_s.shape:
                raise RckdError(f"teacher logits {tuple(logits_t.shape)} do not match student logits "
                                f"{tuple(logits_s.shape)}; teacher and student need the same classes")
            logits_t = at_least_float32(logits_t.detach())
        return self._terms(params, at_least_float32(logits_s), logits_t, target, epoch)


def build(method: str, **params: Any) -> DistillLoss:
    """The loss `method` with `params` overriding its defaults; bad names or values raise RckdError."""
    resolved, spec = catalog.resolve(method, params), catalog.method(method)
    return DistillLoss(method, resolved, spec.needs_teacher, resolved.get("T"), spec.learns_temperature,
                       TERMS[method])
