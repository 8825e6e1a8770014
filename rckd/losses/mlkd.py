"""MLKD, multi-level logit distillation (Jin et al., CVPR 2023), as its code computes it.

Source: Jin-Ying/Multi-Level-Logit-Distillation at 5ee473f, mdistiller/distillers/KD_ours.py. The loss
sees a weak and a strong view of every image (rckd.data.strong) and matches, at five temperatures,
the instance level (KD), the batch level (the B x B Gram matrix of the predictions) and the class
level (the C x C one). docs/method.md gives the formula and every quirk of the source kept here: the
teacher-confidence masks scale whole terms, two "strong" KD terms use the weak logits, the strong
view's batch- and class-level terms never reach the loss (so they are not computed), no warm-up.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from rckd.losses.functional import kd_divergence

# The temperatures beside the configured T (default 4), in the source's order.
EXTRA_TEMPERATURES = (3.0, 5.0, 2.0, 6.0)
STRONG_VIEW_TEMPERATURES = 3  # the source's strong KD sum takes the strong logits at the first three only


def instance_distance(logits_s: Tensor, logits_t: Tensor, temperature: float) -> Tensor:
    """T^2 times the batch mean of KL(p_t || p_s) at temperature T (the source's kd_loss)."""
    return temperature**2 * kd_divergence(logits_s, logits_t, temperature).mean()


def _probabilities(logits: Tensor, temperature: float) -> Tensor:
    return torch.softmax(logits / temperature, -1)


def batch_distance(logits_s: Tensor, logits_t: Tensor, temperature: float) -> Tensor:
    """||P_t P_t^T - P_s P_s^T||_F^2 / B for the [B, C] tempered predictions P (the source's bc_loss)."""
    p_s, p_t = _probabilities(logits_s, temperature), _probabilities(logits_t, temperature)
    return (p_t @ p_t.T - p_s @ p_s.T).square().sum() / logits_s.shape[0]


def class_distance(logits_s: Tensor, logits_t: Tensor, temperature: float) -> Tensor:
    """||P_t^T P_t - P_s^T P_s||_F^2 / C (the source's cc_loss)."""
    p_s, p_t = _probabilities(logits_s, temperature), _probabilities(logits_t, temperature)
    return (p_t.T @ p_t - p_s.T @ p_s).square().sum() / logits_s.shape[1]


def share_at_or_below_median(values: Tensor) -> Tensor:
    """The fraction of `values` (1-D) at or below their median, the mean of the source's mask.

    The source takes np.percentile(values, 50) (linear interpolation: the mean of the two middle
    values of an even count, exact in float64) and compares the float32 values with it, which rounds
    the threshold to float32; both are repeated here, on the device.
    """
    count = values.shape[0]
    ordered = values.double().sort().values
    median = (ordered[(count - 1) // 2] + ordered[count // 2]) / 2
    return (values <= median.to(values.dtype)).to(values.dtype).mean()


def mlkd_terms(params: dict[str, Any], logits_s: Tensor, logits_t: Tensor, target: Tensor, epoch: Any,
               strong_s: Tensor, strong_t: Tensor) -> dict[str, Tensor]:
    """The weighted terms ce, kd, cc (class level) and bc (batch level) of the source's forward_train."""
    temperatures = (params["T"], *EXTRA_TEMPERATURES)
    confidence = torch.softmax(logits_t, -1)  # the weak view's teacher at temperature 1
    sample_share = share_at_or_below_median(confidence.amax(-1))
    class_share = share_at_or_below_median(confidence.sum(0))
    kd_weak = sample_share * sum(instance_distance(logits_s, logits_t, t) for t in temperatures)
    kd_strong = sum(instance_distance(strong_s, strong_t, t) if k < STRONG_VIEW_TEMPERATURES
                    else instance_distance(logits_s, logits_t, t) for k, t in enumerate(temperatures))
    return {
        "ce": params["ce"] * (F.cross_entropy(logits_s, target) + F.cross_entropy(strong_s, target)),
        "kd": params["kd"] * (kd_weak + kd_strong),
        "cc": params["kd"] * class_share * sum(class_distance(logits_s, logits_t, t) for t in temperatures),
        "bc": params["kd"] * sample_share * sum(batch_distance(logits_s, logits_t, t) for t in temperatures),
    }
