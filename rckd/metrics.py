"""Classification and teacher-fidelity metrics: pure functions of logits, on CPU or GPU.

Every function returns tensors on the input's device and never synchronises with the host, so
the trainer can call them each epoch inside a CUDA loop; callers take `.item()` when they need
numbers. Accuracies and agreement are percentages (0-100); ECE and top-5 overlap are fractions
(0-1); NLL and KL are in nats.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from rckd.losses.functional import kl_divergence as log_kl_divergence

# Rows x ordered column pairs per chunk in `kendall_tau` (each temporary holds this many floats).
_TAU_CHUNK_ELEMENTS_CPU = 1 << 21
_TAU_CHUNK_ELEMENTS_CUDA = 1 << 24


def topk_accuracy(logits: torch.Tensor, target: torch.Tensor, ks: Sequence[int] = (1, 5)) -> dict[str, torch.Tensor]:
    """{"top1": %, "top5": %, ...}: how often the target is among the k highest logits.

    With k >= the number of classes every sample counts as a hit (100%).
    """
    num_classes = logits.shape[1]
    ranked = logits.topk(min(max(ks), num_classes), dim=1).indices
    hits = ranked == target.unsqueeze(1)
    return {f"top{k}": hits[:, :k].any(dim=1).float().mean() * 100 for k in ks}


def nll(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean negative log-likelihood of the targets (cross-entropy, nats)."""
    return F.cross_entropy(logits.float(), target)


def expected_calibration_error(scores: torch.Tensor, target: torch.Tensor, bins: int = 15, *,
                               from_logits: bool = True) -> torch.Tensor:
    """ECE with `bins` equal-width confidence bins ((0, 1/bins], ..., ((bins-1)/bins, 1]) as a fraction.

    ECE = sum over bins of |bin| / N * |accuracy(bin) - mean confidence(bin)|, where confidence is
    the top predicted probability. `scores` are logits, or probabilities with from_logits=False.
    """
    probs = scores.float().softmax(dim=1) if from_logits else scores.float()
    confidence, prediction = probs.max(dim=1)
    correct = (prediction == target).double()
    # ceil maps a confidence on a bin's upper edge into that bin, as the half-open (lo, hi] bins require.
    bin_index = (confidence * bins).ceil().long().clamp(1, bins) - 1
    per_bin = torch.zeros(2, bins, dtype=torch.float64, device=scores.device)
    per_bin[0].index_add_(0, bin_index, correct)
    per_bin[1].index_add_(0, bin_index, confidence.double())
    # sum_b |B_b|/N * |acc_b - conf_b| = sum_b |sum_correct_b - sum_conf_b| / N
    return (per_bin[0] - per_bin[1]).abs().sum() / len(target)


def kl_divergence(logits_p: torch.Tensor, logits_q: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """KL(p || q) between softmax(logits / T) distributions: summed over classes, mean over samples."""
    log_p = (logits_p.float() / temperature).log_softmax(dim=1)
    log_q = (logits_q.float() / temperature).log_softmax(dim=1)
    return log_kl_divergence(log_p, log_q).mean()


def _signs(left: torch.Tensor, right: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """sign(left - right), broadcast, by comparison: exact for any values, infinities included
    (a float difference could round, overflow or give inf - inf = NaN)."""
    return (left > right).to(dtype) - (left < right).to(dtype)


def _row_dot(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Per-row dot product of [n, K] tensors as one batched matmul, returned in float64. Autocast is
    off: a bf16 result could not hold the exact pair counts."""
    with torch.autocast(u.device.type, enabled=False):
        return torch.bmm(u.unsqueeze(1), v.unsqueeze(2)).flatten().double()


def kendall_tau(a: torch.Tensor, b: torch.Tensor, exclude: torch.Tensor | None = None,
                chunk_size: int | None = None) -> torch.Tensor:
    """Exact Kendall tau-b between the rankings of a[i] and b[i], per row, as float64 [N].

    tau_b = sum(s_a * s_b) / sqrt(sum(s_a^2) * sum(s_b^2)) over the column pairs, with
    s_x = sign(x_j - x_k); this equals scipy.stats.kendalltau(variant="b") including ties.
    `exclude[i]` drops column exclude[i] from row i (the target class, for the non-target tau).
    A row whose tau-b is undefined (one side constant, or fewer than two columns) gives NaN.
    Rows go through in chunks of `chunk_size` rows (default: about 8 MB per temporary on CPU,
    64 MB on CUDA); no step waits for the host.
    """
    if a.dim() != 2 or a.shape != b.shape:
        raise ValueError(f"kendall_tau needs two [N, C] tensors of one shape, got {tuple(a.shape)}, {tuple(b.shape)}")
    if exclude is not None and exclude.shape != a.shape[:1]:
        raise ValueError(f"exclude must have shape [{a.shape[0]}], got {tuple(exclude.shape)}")
    rows, columns = a.shape
    pairs = columns * columns
    # Sums of +-1 over the pairs stay exact in float32 up to 2^24 terms; beyond that use float64.
    dtype = torch.float32 if pairs <= 1 << 24 else torch.float64
    if chunk_size is None:
        budget = _TAU_CHUNK_ELEMENTS_CUDA if a.device.type == "cuda" else _TAU_CHUNK_ELEMENTS_CPU
        chunk_size = max(1, budget // max(1, pairs))
    taus = [torch.empty(0, dtype=torch.float64, device=a.device)]
    for start in range(0, rows, chunk_size):
        chunk_a, chunk_b = a[start:start + chunk_size], b[start:start + chunk_size]
        # All ordered pairs (j, k): each unordered pair counts twice in every sum, so the ratio holds.
        signs_a = _signs(chunk_a.unsqueeze(2), chunk_a.unsqueeze(1), dtype).flatten(1)
        signs_b = _signs(chunk_b.unsqueeze(2), chunk_b.unsqueeze(1), dtype).flatten(1)
        numerator = _row_dot(signs_a, signs_b)
        untied_a, untied_b = _row_dot(signs_a, signs_a), _row_dot(signs_b, signs_b)
        if exclude is not None:
            # Take out the pairs (j, k) and (k, j) of the excluded column j: O(C) per row.
            column = exclude[start:start + chunk_size].unsqueeze(1)
            excluded_a = _signs(chunk_a.gather(1, column), chunk_a, dtype)
            excluded_b = _signs(chunk_b.gather(1, column), chunk_b, dtype)
            numerator = numerator - 2 * _row_dot(excluded_a, excluded_b)
            untied_a = untied_a - 2 * _row_dot(excluded_a, excluded_a)
            untied_b = untied_b - 2 * _row_dot(excluded_b, excluded_b)
        # 0 / 0 -> NaN for undefined rows, without a data-dependent branch.
        taus.append(numerator / (untied_a * untied_b).sqrt())
    return torch.cat(taus)


def top5_overlap(logits_s: torch.Tensor, logits_t: torch.Tensor, k: int = 5) -> torch.Tensor:
    """Mean |top-k(s) ∩ top-k(t)| / k over samples (k capped at the number of classes)."""
    k = min(k, logits_s.shape[1])
    top_s = logits_s.topk(k, dim=1).indices
    top_t = logits_t.topk(k, dim=1).indices
    shared = (top_s.unsqueeze(2) == top_t.unsqueeze(1)).any(dim=2).sum(dim=1)
    return shared.float().mean() / k


def fidelity(logits_s: torch.Tensor, logits_t: torch.Tensor, target: torch.Tensor,
             temperature: float) -> dict[str, torch.Tensor]:
    """How closely a student reproduces its teacher's outputs ("dark knowledge"), over a set of samples.

    agreement: % of samples with the same top-1 class; kl_t1 / kl_tm: KL(p_t || p_s) at T=1 and at
    `temperature` (no T^2 factor); tau_all / tau_nt: mean Kendall tau-b between the logit rankings
    over all classes / over the non-target classes (rows where tau is undefined are left out);
    top5_overlap: mean fraction of shared top-5 classes.
    """
    return {
        "agreement": (logits_s.argmax(dim=1) == logits_t.argmax(dim=1)).float().mean() * 100,
        "kl_t1": kl_divergence(logits_t, logits_s, 1.0),
        "kl_tm": kl_divergence(logits_t, logits_s, temperature),
        "tau_all": kendall_tau(logits_s, logits_t).nanmean(),
        "tau_nt": kendall_tau(logits_s, logits_t, exclude=target).nanmean(),
        "top5_overlap": top5_overlap(logits_s, logits_t),
    }
