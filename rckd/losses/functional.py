"""Pure tensor functions behind every distillation loss.

Logits are `[B, C]`; every function returns per-sample (or per-class) values so that callers
choose the reduction and tests can check identities sample by sample. Nothing here reads a
tensor value on the host, so all of it traces under `torch.compile` and CUDA graphs.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

RELATIONS = ("prob_diff", "logit_diff", "rank")

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


def kl_divergence(log_p: Tensor, log_q: Tensor) -> Tensor:
    """KL(p || q) over the last axis, from log-probabilities; one value per row.

    An entry whose log-probability is very negative contributes exp(log_p) * (...) = 0 without
    ever forming 0 * inf, because both arguments stay finite.
    """
    return (log_p.exp() * (log_p - log_q)).sum(-1)


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


def _cosine_from_moments(inner: Tensor, square_x: Tensor, square_y: Tensor) -> Tensor:
    """Cosine from mean(x*y), mean(x^2), mean(y^2), regularised as described at COSINE_EPS."""
    return (inner + COSINE_EPS) * torch.rsqrt((square_x + COSINE_EPS) * (square_y + COSINE_EPS))


def pearson(x: Tensor, y: Tensor, dim: int = -1) -> Tensor:
    """Pearson correlation of `x` and `y` along `dim` (the cosine of the centred vectors)."""
    x = x - x.mean(dim, keepdim=True)
    y = y - y.mean(dim, keepdim=True)
    return _cosine_from_moments((x * y).mean(dim), x.square().mean(dim), y.square().mean(dim))


def uniform_scaled_probabilities(logits: Tensor, temperature: float) -> Tensor:
    """C * softmax(z / T): the uniform distribution becomes all ones.

    Correlations are scale-free; the scaling only gives COSINE_EPS the same meaning for every
    number of classes (raw probabilities of 1000 classes vary by ~1e-5 around 1e-3).
    """
    return logits.shape[-1] * torch.softmax(logits / temperature, -1)


def softmax_pearson(logits_s: Tensor, logits_t: Tensor, temperature: float) -> Tensor:
    """Per-row Pearson correlation of softmax(z_s / T) and softmax(z_t / T).

    Equal to `pearson(uniform_scaled_probabilities(...), ...)` (same COSINE_EPS convention), but
    with a hand-written backward: this is the prob_diff relation cosine and DIST's inter-class
    term, and autograd through the generic version allocates several times more [B, C] buffers.
    The RCKD loss gets the same cosine together with KD from `kd_pearson`.
    """
    return _SoftmaxPearson.apply(logits_s, logits_t, temperature)


class _SoftmaxPearson(torch.autograd.Function):
    """Rows of probabilities have mean exactly 1/C, so x = p - 1/C is centred with no reduction,
    and mean((C p_s - 1)(C p_t - 1)) = C * sum(x_s * x_t) gives the moments of pearson().

    With cos = (M_st + e) / sqrt((M_ss + e)(M_tt + e)) and M_ab = C * sum(x_a * x_b):
        d cos / d x_s = a * x_t - b * x_s,   a = C / sqrt((M_ss + e)(M_tt + e)),  b = C cos / (M_ss + e),
    and the softmax Jacobian turns g into p * (g - sum(p * g)) / T, where
    sum(p_s * (a x_t - b x_s)) = (a M_st - b M_ss) / C because sum(x) = 0. On the CPU the cost
    of such element-wise passes is mostly first touches of fresh [B, C] buffers, so passes reuse
    them: 4 fresh buffers in the forward and 1 per input gradient.
    """

    @staticmethod
    def forward(ctx, logits_s: Tensor, logits_t: Tensor, temperature: float) -> Tensor:
        classes = logits_s.shape[-1]
        scaled_s, scaled_t = logits_s / temperature, logits_t / temperature
        p_s, p_t = torch.softmax(scaled_s, -1), torch.softmax(scaled_t, -1)
        x_s = torch.sub(p_s, 1 / classes, out=scaled_s)
        x_t = torch.sub(p_t, 1 / classes, out=scaled_t)
        square_s = classes * torch.linalg.vector_norm(x_s, dim=-1).square()
        square_t = classes * torch.linalg.vector_norm(x_t, dim=-1).square()
        inner = classes * x_s.mul_(x_t).sum(-1)
        cosine = _cosine_from_moments(inner, square_s, square_t)
        ctx.save_for_backward(p_s, p_t, cosine, inner, square_s, square_t)
        ctx.temperature = temperature
        return cosine

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, Tensor | None, None]:
        p_s, p_t, cosine, inner, square_s, square_t = ctx.saved_tensors
        classes = p_s.shape[-1]
        grad = grad / ctx.temperature
        norm = torch.rsqrt((square_s + COSINE_EPS) * (square_t + COSINE_EPS))

        def logit_grad(p_self: Tensor, p_other: Tensor, square_self: Tensor) -> Tensor:
            a = grad * classes * norm
            b = grad * classes * cosine / (square_self + COSINE_EPS)
            # a x_other - b x_self - sum(p_self * g), written with p = x + 1/C.
            offset = (a * inner - b * square_self + a - b) / classes
            return (torch.addcmul(-offset[:, None], p_other, a[:, None])
                    .addcmul_(p_self, b[:, None], value=-1).mul_(p_self))

        return (logit_grad(p_s, p_t, square_s) if ctx.needs_input_grad[0] else None,
                logit_grad(p_t, p_s, square_t) if ctx.needs_input_grad[1] else None, None)


def kd_pearson(logits_s: Tensor, logits_t: Tensor, temperature: float) -> tuple[Tensor, Tensor]:
    """Per-row KL(p_t || p_s) and Pearson correlation of p_s, p_t = softmax(z / T), fused.

    The values of `kl_divergence` on the two tempered log-softmaxes and of `softmax_pearson`, to
    float rounding, for RCKD's default prob_diff relation, whose loss needs both: the two terms
    share the tempered (log-)softmaxes and one hand-written backward returns their summed gradient.
    Inputs are float32 or float64 (`at_least_float32`).
    """
    return _KdPearson.apply(logits_s, logits_t, temperature)


class _KdPearson(torch.autograd.Function):
    """KL and the `_SoftmaxPearson` cosine from one stacked [2, B, C] tempering of student and teacher.

    Stacking halves the operator calls, which is most of the cost at CIFAR sizes. KL uses the
    operations of `kl_divergence` on the log-softmax; the cosine uses the softmax itself, which is
    cheaper than exp(log_softmax) and keeps its rounding (x = p - 1/C is tiny for flat rows). The
    three moments come from one batched Gram matrix of x.

    Backward, with every coefficient already divided by T: the student gradient of
    KL(p_t || p_s) is k (p_s - p_t), k = grad_kl / T, and that of the cosine is
    p_s * (a p_t - b p_s - offset) as in `_SoftmaxPearson`, where (inner + e) a = (M_ss + e) b
    makes its offset (a - b)(1 - e) / C. So
        grad_s = p_s * (a p_t - b p_s + k - offset) - k p_t:
    4 passes and 1 fresh [B, C] buffer; the forward allocates 3 [2, B, C] buffers. The teacher
    gradient of KL, k p_t (log p_t - log p_s - KL), recomputes the log-softmaxes and is only
    formed when the teacher needs a gradient (never in training, where it is detached).
    """

    @staticmethod
    def forward(ctx, logits_s: Tensor, logits_t: Tensor, temperature: float) -> tuple[Tensor, Tensor]:
        classes = logits_s.shape[-1]
        scaled = torch.stack((logits_s, logits_t)).div_(temperature)
        log_p, p = torch.log_softmax(scaled, -1), torch.softmax(scaled, -1)
        kl = log_p[1].sub_(log_p[0]).mul_(p[1]).sum(-1)
        centred = torch.sub(p, 1 / classes, out=scaled).transpose(0, 1)
        # moments[:, i, j] = C * sum(x_i * x_j) + COSINE_EPS, as in _cosine_from_moments.
        moments = torch.bmm(centred, centred.transpose(1, 2)).mul_(classes).add_(COSINE_EPS)
        norm = moments.diagonal(dim1=1, dim2=2).prod(-1).rsqrt_()
        cosine = moments[:, 0, 1] * norm
        ctx.save_for_backward(p, kl, cosine, norm, moments, logits_s, logits_t)
        ctx.temperature = temperature
        return kl, cosine

    @staticmethod
    def backward(ctx, grad_kl: Tensor, grad_cosine: Tensor) -> tuple[Tensor | None, Tensor | None, None]:
        p, kl, cosine, norm, moments, logits_s, logits_t = ctx.saved_tensors
        temperature, classes = ctx.temperature, p.shape[-1]
        k = (grad_kl / temperature)[:, None]
        scaled_grad = grad_cosine * (classes / temperature)
        a = (scaled_grad * norm)[:, None]

        def coefficients(index: int) -> tuple[Tensor, Tensor]:
            """b and offset of the cosine gradient for input `index` (0: student, 1: teacher)."""
            b = (scaled_grad * cosine / moments[:, index, index])[:, None]
            return b, (a - b).mul_((1 - COSINE_EPS) / classes)

        grad_s = grad_t = None
        if ctx.needs_input_grad[0]:
            b, offset = coefficients(0)
            grad_s = (torch.addcmul(k - offset, p[1], a).addcmul_(p[0], b, value=-1).mul_(p[0])
                      .addcmul_(p[1], k, value=-1))
        if ctx.needs_input_grad[1]:
            b, offset = coefficients(1)
            log_ratio = (torch.log_softmax(logits_t / temperature, -1)
                         - torch.log_softmax(logits_s / temperature, -1))
            grad_t = (log_ratio.sub_(kl[:, None]).mul_(k).sub_(offset)
                      .addcmul_(p[0], a).addcmul_(p[1], b, value=-1).mul_(p[1]))
        return grad_s, grad_t, None


def relative_confidence(values: Tensor) -> Tensor:
    """The explicit relation matrix R_ij = v_i - v_j, `[B, C] -> [B, C, C]` (reference only)."""
    return values[:, :, None] - values[:, None, :]


def relation_matrix(logits: Tensor, relation: str, temperature: float, kappa: float) -> Tensor:
    """The explicit `[B, C, C]` matrix of each relation; the O(B*C^2) definition for tests and docs."""
    if relation == "prob_diff":
        return relative_confidence(torch.softmax(logits / temperature, -1))
    if relation == "logit_diff":
        return relative_confidence(logits)
    return torch.tanh(relative_confidence(logits) / kappa)


def relation_cosine(logits_s: Tensor, logits_t: Tensor, relation: str, temperature: float,
                    kappa: float) -> Tensor:
    """Per-sample cos(vec R_s, vec R_t) without building R for the two difference relations.

    <R(a), R(b)>_F = 2C * sum_i (a_i - mean a)(b_i - mean b), so for prob_diff and logit_diff the
    cosine is the Pearson correlation of the underlying vectors: O(B*C). The rank relation is
    not a difference of per-class values, so its O(B*C^2) sums run in bounded-memory blocks.
    """
    if relation == "prob_diff":
        return softmax_pearson(logits_s, logits_t, temperature)
    if relation == "logit_diff":
        return pearson(logits_s, logits_t)
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
