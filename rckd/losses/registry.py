"""Method name -> loss: the weighted terms of each method of `rckd.losses.catalog`.

Every method returns a dict of named scalar terms, already weighted, whose sum is the training
loss, so each term can be logged on its own. The defaults and parameter checks live in the
torch-free catalog; docs/method.md gives the formulas and their sources.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch
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
    warmup_scale,
    wttm_divergence,
)
from rckd.losses.mlkd import mlkd_terms

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


# DIST's code adds 1e-8 to the product of the norms of the centred raw probabilities
# (hunto/image_classification_sota, lib/models/losses/dist_kd.py, commit d9662f7): kept, because at tau 1
# and sharp logits (the ImageNet setting) it dominates small columns of the intra-class term (docs/method.md).
DIST_NORM_EPS = 1e-8


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
    probs_s, probs_t = torch.softmax(logits_s / temperature, -1), torch.softmax(logits_t / temperature, -1)
    scale = params["kd"] * temperature**2
    # Inter-class: correlation over the classes of each sample; intra-class: over the batch, per class.
    inter = 1 - pearson(probs_s, probs_t, norm_eps=DIST_NORM_EPS)
    intra = 1 - pearson(probs_s, probs_t, dim=0, norm_eps=DIST_NORM_EPS)
    return {
        "ce": params["ce"] * F.cross_entropy(logits_s, target),
        "inter": scale * params["beta"] * inter.mean(),
        "intra": scale * params["gamma"] * intra.mean(),
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
    # DKD's linear warm-up of the distillation terms; warmup 0 (the authors' setting) gives exactly T^2.
    scale = warmup_scale(epoch, params["warmup"]) * temperature**2
    terms = {
        "ce": params["ce"] * F.cross_entropy(logits_s, target),
        "rc": params["rc"] * scale * (1 - cosine).mean(),
    }
    if params["kd"] > 0:  # the authors' RCKD has no KL term; kd > 0 is the "RCKD + KL" reading
        terms["kd"] = params["kd"] * scale * kd_divergence(logits_s, logits_t, temperature).mean()
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
    "mlkd": mlkd_terms,  # two views: also takes the strong view's student and teacher logits
}


@dataclass(frozen=True)
class DistillLoss:
    """A configured loss: `loss(logits_s, logits_t, target, epoch)` -> weighted terms.

    The terms sum to the training loss. Logits are computed in float32 (float64 stays
    float64); `epoch` may be a Python number or a 0-dim tensor, as a CUDA-graph step feeds it.
    A two-view method (`views == 2`, MLKD) also takes `strong=(student, teacher)`, the logits of
    a second, strongly augmented view of the same images; one-view methods take none.
    A method that learns its temperature (`learns_temperature`, CTKD) takes it as a 0-dim tensor
    in `temperature=` on every call; the gradient reaches it through the terms.
    """

    method: str
    params: dict[str, Any]
    needs_teacher: bool
    temperature: float | None
    _terms: TermsFn = field(repr=False)
    views: int = 1
    learns_temperature: bool = False

    def __call__(self, logits_s: Tensor, logits_t: Tensor | None, target: Tensor,
                 epoch: Epoch, strong: tuple[Tensor, Tensor] | None = None,
                 temperature: Tensor | None = None) -> Terms:
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
        second = self._second_view(logits_s, strong)
        return self._terms(params, at_least_float32(logits_s), logits_t, target, epoch, *second)

    def _second_view(self, logits_s: Tensor, strong: tuple[Tensor, Tensor] | None) -> tuple[Tensor, ...]:
        """() for a one-view method, else the strong view's (student, teacher) logits, checked."""
        if self.views == 1:
            if strong is not None:
                raise RckdError(f"loss {self.method!r} takes one view of the batch, not a second (strong=)")
            return ()
        if strong is None:
            raise RckdError(f"loss {self.method!r} needs the logits of a second view of the batch: "
                            f"strong=(student logits, teacher logits)")
        strong_s, strong_t = strong
        if strong_s.shape != logits_s.shape or strong_t.shape != logits_s.shape:
            raise RckdError(f"strong-view logits {tuple(strong_s.shape)} and {tuple(strong_t.shape)} do not "
                            f"match the weak view's {tuple(logits_s.shape)}")
        return at_least_float32(strong_s), at_least_float32(strong_t.detach())


def build(method: str, **params: Any) -> DistillLoss:
    """The loss `method` with `params` overriding its defaults; bad names or values raise RckdError."""
    resolved, spec = catalog.resolve(method, params), catalog.method(method)
    return DistillLoss(method, resolved, spec.needs_teacher, resolved.get("T"), TERMS[method], spec.views,
                       spec.learns_temperature)
