"""Pure tensor functions behind every distillation loss.

Logits are `[B, C]`; every function returns per-sample (or per-class) values so that callers
choose the reduction and tests can check identities sample by sample. Nothing here reads a
tensor value on the host, so all of it traces under `torch.compile` and CUDA graphs.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

# Added to the mean inner product and to both mean squares of a cosine, which makes it the exact
# cosine of the two vectors each extended by one constant entry sqrt(n * COSINE_EPS) (n entries).
# It stays in [-1, 1], equals 1 for identical inputs (constant ones included) and has finite
# gradients everywhere; it moves a cosine by about COSINE_EPS / (mean square of the inputs).
COSINE_EPS = 1e-10

# The rank relation materialises [rows, C, C] blocks; this caps one block at 32 MiB in float32,
# so forward + backward of B=256, C=1000 stays a few hundred MiB above the inputs.
RANK_BLOCK_ELEMENTS = 1 << 23


def at_least_float32(tensor: Tensor) -> Tensor:
    """`tensor` in at least float32: bf16/fp16 logits are upcast, float64 stays float64."""
    return tensor.to(torch.promote_types(tensor.dtype, torch.float32))


def standardize(logits: Tensor) -> Tensor:
    """Logit standardization of Sun et al. (2024): each row z-scored, (z - mean) / (1e-7 + std).

    std is the unbiased (N - 1) one and the 1e-7 is added to it, as in their public code.
    """
    return (logits - logits.mean(-1, keepdim=True)) / (1e-7 + logits.std(-1, keepdim=True))


def kl_divergence(log_p: Tensor, log_q: Tensor) -> Tensor:
    """KL(p || q) over the last axis, from log-probabilities; one value per row.

    An entry whose log-probability is very negative contributes exp(log_p) * (...) = 0 without
    ever forming 0 * inf, because both arguments stay finite.
    """
    return (log_p.exp() * (log_p - log_q)).sum(-1)


def kd_divergence(logits_s: Tensor, logits_t: Tensor, temperature: float) -> Tensor:
    """Per-sample KL(p_t || p_s) of the tempered softmaxes p = softmax(z / T), without T^2."""
    return kl_divergence(F.log_softmax(logits_t / temperature, -1), F.log_softmax(logits_s / temperature, -1))


def wttm_divergence(logits_s: Tensor, logits_t: Tensor, power: float) -> Tensor:
    """Per-sample weighted transformed-teacher KL of Zheng and Yang (2024), WTTM.

    The teacher's distribution is power-transformed, p_t^gamma / sum(p_t^gamma) = softmax(gamma z_t),
    and matched by the untempered student, KL(softmax(gamma z_t) || softmax(z_s)); each sample is
    weighted by sum(p_t^gamma), which is larger for flatter teachers.
    """
    log_p_t = F.log_softmax(logits_t, -1)
    weight = torch.logsumexp(power * log_p_t, -1).exp()
    return weight * kl_divergence(F.log_softmax(power * logits_t, -1), F.log_softmax(logits_s, -1))


def dkd_divergences(logits_s: Tensor, logits_t: Tensor, target: Tensor,
                    temperature: float) -> tuple[Tensor, Tensor]:
    """Per-sample TCKD and NCKD of Zhao et al. (2022), without the T^2 factor.

    TCKD is the KL divergence between the binary (target, not target) distributions, NCKD
    the one between the distributions renormalised over the non-target classes; with
    b = p_target of the teacher, KL(p_t || p_s) = TCKD + (1 - b) * NCKD exactly.
    """
    is_target = F.one_hot(target, logits_s.shape[-1]).bool()

    def split(logits: Tensor) -> tuple[Tensor, Tensor]:
        z = logits / temperature
        log_total = torch.logsumexp(z, -1)
        log_others = torch.logsumexp(z.masked_fill(is_target, float("-inf")), -1)
        z_target = z.gather(-1, target[:, None]).squeeze(-1)
        log_binary = torch.stack((z_target - log_total, log_others - log_total), -1)
        # Zero log-probability for the target class in both distributions makes its KL entry
        # exactly 0 and keeps everything finite (an -inf there would give 0 * inf = nan).
        log_non_target = (z - log_others[:, None]).masked_fill(is_target, 0.0)
        return log_binary, log_non_target

    binary_s, non_target_s = split(logits_s)
    binary_t, non_target_t = split(logits_t)
    return kl_divergence(binary_t, binary_s), kl_divergence(non_target_t, non_target_s)


def nkd_cross_entropies(logits_s: Tensor, logits_t: Tensor, target: Tensor,
                        temperature: float) -> tuple[Tensor, Tensor]:
    """Per-sample target and non-target cross-entropies of NKD (Yang et al., ICCV 2023).

    target: -p_t[y] log p_s[y] at temperature 1. non-target: -sum_{j != y} q_t,j log q_s,j with q the
    softmax(z / T) of the logits with the target column removed; a cross-entropy, not a KL (it keeps
    the teacher's entropy). The column is removed by masking it to -inf, which gives the same
    distributions as dropping it without a data-dependent shape.
    """
    is_target = F.one_hot(target, logits_s.shape[-1]).bool()
    log_p_s = F.log_softmax(logits_s, -1).gather(-1, target[:, None]).squeeze(-1)
    p_t = F.softmax(logits_t, -1).gather(-1, target[:, None]).squeeze(-1)
    log_q_s = F.log_softmax(logits_s.masked_fill(is_target, float("-inf")) / temperature, -1)
    q_t = F.softmax(logits_t.masked_fill(is_target, float("-inf")) / temperature, -1)
    # q_t is exactly 0 at the target; a 0 log-probability there avoids 0 * -inf = nan.
    return -p_t * log_p_s, -(q_t * log_q_s.masked_fill(is_target, 0.0)).sum(-1)


def _cosine_from_moments(inner: Tensor, square_x: Tensor, square_y: Tensor) -> Tensor:
    """Cosine from mean(x*y), mean(x^2), mean(y^2), regularised as described at COSINE_EPS."""
    return (inner + COSINE_EPS) * torch.rsqrt((square_x + COSINE_EPS) * (square_y + COSINE_EPS))


def cosine(x: Tensor, y: Tensor, dim: int = -1, norm_eps: float | None = None) -> Tensor:
    """Cosine of `x` and `y` along `dim`. Where the regulariser goes: with `norm_eps` None, COSINE_EPS
    into the moments (see there); with a number, that number added to the product of the two norms,
    <x, y> / (|x| |y| + norm_eps), the form of DIST's code (finite at a zero vector: y / norm_eps)."""
    if norm_eps is None:
        return _cosine_from_moments((x * y).mean(dim), x.square().mean(dim), y.square().mean(dim))
    norms = torch.linalg.vector_norm(x, dim=dim) * torch.linalg.vector_norm(y, dim=dim)
    return (x * y).sum(dim) / (norms + norm_eps)


def pearson(x: Tensor, y: Tensor, dim: int = -1, norm_eps: float | None = None) -> Tensor:
    """Pearson correlation of `x` and `y` along `dim`: the `cosine` of the centred vectors."""
    return cosine(x - x.mean(dim, keepdim=True), y - y.mean(dim, keepdim=True), dim, norm_eps)


def uniform_scaled_probabilities(logits: Tensor, temperature: float) -> Tensor:
    """C * softmax(z / T): the uniform distribution becomes all ones.

    Correlations are scale-free; the scaling only gives COSINE_EPS the same meaning for every
    number of classes (raw probabilities of 1000 classes vary by ~1e-5 around 1e-3).
    """
    return logits.shape[-1] * torch.softmax(logits / temperature, -1)


def relative_confidence(values: Tensor) -> Tensor:
    """The explicit relation matrix R_ij = v_i - v_j, `[B, C] -> [B, C, C]` (reference only)."""
    return values[:, :, None] - values[:, None, :]


def relation_matrix(logits: Tensor, relation: str, temperature: float, kappa: float) -> Tensor:
    """The explicit `[B, C, C]` matrix of each relation; the O(B*C^2) definition for tests and docs."""
    if relation == "log_ratio":
        return relative_confidence(torch.log_softmax(logits / temperature, -1))
    if relation == "prob_diff":
        return relative_confidence(torch.softmax(logits / temperature, -1))
    return torch.tanh(relative_confidence(logits) / kappa)


def relation_cosine(logits_s: Tensor, logits_t: Tensor, relation: str, temperature: float,
                    kappa: float) -> Tensor:
    """Per-sample cos(vec R_s, vec R_t) without building R for the two difference relations.

    <R(a), R(b)>_F = 2C * sum_i (a_i - mean a)(b_i - mean b), so for a difference relation the cosine
    is the Pearson correlation of the underlying vectors: O(B*C). log_ratio's vectors are
    log_softmax(z / T) = z / T - const, whose correlation is that of the raw logits. The rank
    relation is not a difference of per-class values: its O(B*C^2) sums run in bounded-memory blocks.
    """
    if relation == "log_ratio":
        return pearson(logits_s, logits_t)
    if relation == "prob_diff":
        return pearson(uniform_scaled_probabilities(logits_s, temperature),
                       uniform_scaled_probabilities(logits_t, temperature))
    moments = _TanhRelationMoments.apply(logits_s, logits_t, kappa)
    return _cosine_from_moments(moments[:, 0], moments[:, 1], moments[:, 2])


def _tanh_relations(scaled_logits: Tensor) -> Tensor:
    """tanh(s_i - s_j) for logits already divided by kappa, built in place: one block allocated."""
    return relative_confidence(scaled_logits).tanh_()


def _sample_dot(x: Tensor, y: Tensor) -> Tensor:
    """sum(x * y) over the last two axes of [rows, C, C] blocks without allocating their product.

    Batched dots of single matrix rows, then a tree sum over rows: one dot over all C^2 entries
    loses ~1e-5 relative accuracy in float32.
    """
    rows, classes, _ = x.shape
    return torch.bmm(x.reshape(-1, 1, classes), y.reshape(-1, classes, 1)).view(rows, classes).sum(1)


def _row_blocks(logits: Tensor) -> list[slice]:
    """Slices of the batch whose [rows, C, C] blocks hold at most RANK_BLOCK_ELEMENTS entries."""
    batch, classes = logits.shape
    rows = max(1, RANK_BLOCK_ELEMENTS // classes**2)
    return [slice(start, start + rows) for start in range(0, batch, rows)]


class _TanhRelationMoments(torch.autograd.Function):
    """Per sample [mean(A*B), mean(A^2), mean(B^2)] of A = tanh((z_i - z_j)/kappa) and B likewise.

    Blocks of rows keep memory bounded in both passes (forward: 2 blocks, backward: 4), and the
    backward recomputes the tanh matrices instead of storing them. With A' = 1 - A^2
    (symmetric) and A, B antisymmetric:
        d sum(A*B) / dz_k = (2/kappa) sum_j B_kj A'_kj,   d sum(A^2) / dz_k = (4/kappa) sum_j A_kj A'_kj.
    """

    @staticmethod
    def forward(ctx, logits_s: Tensor, logits_t: Tensor, kappa: float) -> Tensor:
        ctx.save_for_backward(logits_s, logits_t)
        ctx.kappa = kappa
        scaled_s, scaled_t = logits_s / kappa, logits_t / kappa
        blocks = []
        for rows in _row_blocks(logits_s):
            a, b = _tanh_relations(scaled_s[rows]), _tanh_relations(scaled_t[rows])
            blocks.append(torch.stack((_sample_dot(a, b), _sample_dot(a, a), _sample_dot(b, b)), -1))
        return torch.cat(blocks) / logits_s.shape[-1] ** 2

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, Tensor | None, None]:
        logits_s, logits_t = ctx.saved_tensors
        kappa = ctx.kappa
        scaled_s, scaled_t = logits_s / kappa, logits_t / kappa
        # 2/kappa from the derivative, 1/C^2 from the means.
        grad = grad * (2.0 / (kappa * logits_s.shape[-1] ** 2))
        grads_s, grads_t = [], []
        for rows in _row_blocks(logits_s):
            a, b = _tanh_relations(scaled_s[rows]), _tanh_relations(scaled_t[rows])
            g_ab, g_aa, g_bb = (grad[rows, k, None, None] for k in range(3))
            if ctx.needs_input_grad[0]:
                weight = (a * (2 * g_aa)).addcmul_(b, g_ab)
                grads_s.append(a.square().neg_().add_(1).mul_(weight).sum(-1))
            if ctx.needs_input_grad[1]:
                weight = (b * (2 * g_bb)).addcmul_(a, g_ab)
                grads_t.append(b.square().neg_().add_(1).mul_(weight).sum(-1))
        return (torch.cat(grads_s) if grads_s else None,
                torch.cat(grads_t) if grads_t else None, None)


def warmup_scale(epoch: int | float | Tensor, warmup: float) -> float | Tensor:
    """min(epoch / warmup, 1) for a Python number or a 0-dim tensor (no host sync); 1 if warmup is 0."""
    if warmup == 0:
        return 1.0
    if isinstance(epoch, Tensor):
        return (epoch.to(torch.float32) / warmup).clamp(max=1.0)
    return min(epoch / warmup, 1.0)


def gradient_reversal(x: Tensor, scale: Tensor | float) -> Tensor:
    """`x` in the forward pass; the gradient reaching `x` is multiplied by `scale` (a negative scale
    reverses it: Ganin and Lempitsky's gradient-reversal layer, as CTKD uses it). x - x.detach() is
    exactly 0, so the value is `x` bit for bit, and no custom autograd function is needed."""
    return x.detach() + scale * (x - x.detach())


def ctkd_lambda(epoch: int | float | Tensor, epochs: float) -> float | Tensor:
    """CTKD's curriculum: the gradient-reversal scale of (1-based) `epoch`, from 0 down to -1 along a
    half cosine over the first `epochs` epochs, then -1: (cos(pi * min(epoch, epochs) / epochs) - 1) / 2.

    This is zhengli97/CTKD's CosineDecay(max_value=0, min_value=-1, num_loops=epochs).get_value(epoch)
    (train_student.py, commit 7d52522; `--decay_max 0 --decay_min -1 --decay_loops 10` for CIFAR, 5 for
    ImageNet), called once per epoch with epochs counted from 1.
    """
    if isinstance(epoch, Tensor):
        progress = epoch.to(torch.float32).clamp(0.0, epochs) / epochs
        return (torch.cos(math.pi * progress) - 1) / 2
    return (math.cos(math.pi * min(max(epoch, 0), epochs) / epochs) - 1) / 2


# CTKD's temperature range: T = CTKD_T_START + CTKD_T_SPAN * sigmoid(theta) lies in (1, 21)
# (zhengli97/CTKD helper/loops.py, `opt.t_start + opt.t_end * torch.sigmoid(temp)`, defaults 1 and 20).
CTKD_T_START, CTKD_T_SPAN = 1.0, 20.0


def ctkd_temperature(theta: Tensor) -> Tensor:
    """CTKD's global temperature from its unconstrained parameter: 1 + 20 sigmoid(theta)."""
    return CTKD_T_START + CTKD_T_SPAN * torch.sigmoid(theta)
