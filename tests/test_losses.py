"""rckd.losses: identities, invariances, direct formulas, numerics and the registry (CPU, small sizes)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import stats

import rckd.losses as losses
from rckd import ctkd
from rckd.errors import RckdError
from rckd.losses import catalog, functional, registry

RELATIONS = catalog.RELATIONS
METHOD_CASES = [("ce", {}), ("kd", {}), ("kd", {"ls": True}), ("dkd", {}), ("dkd", {"ls": True}), ("dist", {}),
                ("wttm", {}), ("nkd", {}), ("nkd", {"T": 1.0, "gamma": 1.5})] + [("rckd", {"relation": relation}) for relation in RELATIONS] + [
                ("rckd", {"relation": "prob_diff", "kd": 0.9})]


def _logits(batch: int, classes: int, scale: float = 1.0, seed: int = 0,
            dtype: torch.dtype = torch.float32) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return (scale * torch.randn(batch, classes, generator=generator, dtype=torch.float64)).to(dtype)


def _targets(batch: int, classes: int, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, classes, (batch,), generator=torch.Generator().manual_seed(seed))


def _total(terms: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.stack(list(terms.values())).sum()


# --- numpy reference formulas (a second route to every loss) ---------------------------------

def _np_log_softmax(z: np.ndarray) -> np.ndarray:
    shifted = z - z.max(1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(1, keepdims=True))


def _np_cross_entropy(z: np.ndarray, y: np.ndarray) -> float:
    return float(-_np_log_softmax(z)[np.arange(len(y)), y].mean())


def _np_kl_rows(p: np.ndarray, q: np.ndarray) -> np.ndarray:
    return (p * (np.log(p) - np.log(q))).sum(1)


def _np_cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.reshape(len(a), -1), b.reshape(len(b), -1)
    return (a * b).sum(1) / np.sqrt((a * a).sum(1) * (b * b).sum(1))


def _np_relation(z: np.ndarray, relation: str, temperature: float, kappa: float) -> np.ndarray:
    values = {"log_ratio": _np_log_softmax(z / temperature), "prob_diff": np.exp(_np_log_softmax(z / temperature)),
              "rank": z}[relation]
    differences = values[:, :, None] - values[:, None, :]
    return np.tanh(differences / kappa) if relation == "rank" else differences


def _np_standardize(z: np.ndarray) -> np.ndarray:
    """Sun et al.'s logit standardization: unbiased std, 1e-7 added to it."""
    return (z - z.mean(1, keepdims=True)) / (1e-7 + z.std(1, ddof=1, keepdims=True))


def _np_loss(method: str, params: dict, zs: np.ndarray, zt: np.ndarray, y: np.ndarray) -> float:
    ce = _np_cross_entropy(zs, y)
    if method == "ce":
        return ce
    if method == "wttm":
        q = np.exp(_np_log_softmax(zt)) ** params["power"]
        weight = q.sum(1)
        kl = _np_kl_rows(q / weight[:, None], np.exp(_np_log_softmax(zs)))
        return params["ce"] * ce + params["beta"] * (weight * kl).mean()
    if method == "nkd":
        return params["ce"] * ce + _np_nkd(zs, zt, y, params["T"], params["gamma"])
    T = params["T"]
    soft_s, soft_t = (_np_standardize(zs), _np_standardize(zt)) if params.get("ls") else (zs, zt)
    p_s, p_t = np.exp(_np_log_softmax(soft_s / T)), np.exp(_np_log_softmax(soft_t / T))
    kd = T**2 * _np_kl_rows(p_t, p_s).mean()
    if method == "kd":
        return params["ce"] * ce + params["kd"] * kd
    if method == "dkd":  # called after the warm-up
        is_target = np.zeros_like(p_s, dtype=bool)
        is_target[np.arange(len(y)), y] = True

        def binary(p):
            b = p[is_target]
            return np.stack([b, 1 - b], 1)

        def others(p):
            q = np.where(is_target, 0.0, p)
            return (q / q.sum(1, keepdims=True))[~is_target].reshape(len(p), -1)

        tckd = _np_kl_rows(binary(p_t), binary(p_s)).mean()
        nckd = _np_kl_rows(others(p_t), others(p_s)).mean()
        return params["ce"] * ce + T**2 * (params["alpha"] * tckd + params["beta"] * nckd)
    if method == "dist":
        inter = np.mean([1 - np.corrcoef(p_s[i], p_t[i])[0, 1] for i in range(len(p_s))])
        intra = np.mean([1 - np.corrcoef(p_s[:, j], p_t[:, j])[0, 1] for j in range(p_s.shape[1])])
        return params["ce"] * ce + params["kd"] * T**2 * (params["beta"] * inter + params["gamma"] * intra)
    cosine = _np_cosine_rows(_np_relation(zs, params["relation"], T, params["kappa"]),
                             _np_relation(zt, params["relation"], T, params["kappa"]))
    return params["ce"] * ce + params["kd"] * kd + params["rc"] * T**2 * (1 - cosine).mean()


def _np_nkd(zs: np.ndarray, zt: np.ndarray, y: np.ndarray, T: float, gamma: float) -> float:
    """yzd-v/cls_KD (branch 1.0, 1e5d48f) mmcls/models/dis_losses/nkd.py as written there: the target
    column cut out of the logits (the mask of commit 9466b3f), a soft cross-entropy of the rest."""
    rows = np.arange(len(y))
    target = -(np.exp(_np_log_softmax(zt))[rows, y] * _np_log_softmax(zs)[rows, y]).mean()
    keep = np.ones_like(zs, dtype=bool)
    keep[rows, y] = False
    cut_s, cut_t = zs[keep].reshape(len(y), -1), zt[keep].reshape(len(y), -1)
    non_target = (np.exp(_np_log_softmax(cut_t / T)) * _np_log_softmax(cut_s / T)).sum(1).mean()
    return float(target - gamma * T**2 * non_target)


# --- RCKD: the relation cosine ----------------------------------------------------------------

@pytest.mark.parametrize("relation", RELATIONS)
@pytest.mark.parametrize("classes", [2, 3, 10, 100, 1000])
@pytest.mark.parametrize("scale", [0.1, 1.0, 10.0, 50.0])
def test_fast_cosine_equals_explicit_matrix_cosine(relation, classes, scale):
    batch = 3
    zs, zt = _logits(batch, classes, scale, seed=1), _logits(batch, classes, scale, seed=2)
    fast = functional.relation_cosine(zs, zt, relation, 4.0, 1.0)
    matrix_s = functional.relation_matrix(zs.double(), relation, 4.0, 1.0)
    matrix_t = functional.relation_matrix(zt.double(), relation, 4.0, 1.0)
    explicit = F.cosine_similarity(matrix_s.flatten(1), matrix_t.flatten(1), dim=1, eps=1e-300)
    assert fast.dtype == torch.float32
    torch.testing.assert_close(fast.double(), explicit, atol=1e-5, rtol=0)


def test_frobenius_inner_product_is_2c_times_centred_dot():
    a, b = _logits(4, 7, seed=3).double(), _logits(4, 7, seed=4).double()
    frobenius = (functional.relative_confidence(a) * functional.relative_confidence(b)).sum((1, 2))
    centred = ((a - a.mean(1, keepdim=True)) * (b - b.mean(1, keepdim=True))).sum(1)
    torch.testing.assert_close(frobenius, 2 * 7 * centred, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("relation", RELATIONS)
def test_identical_logits_give_zero_rc(relation):
    rckd = losses.build("rckd", relation=relation)
    z = _logits(6, 20, 3.0, seed=5)
    y = _targets(6, 20)
    assert float(rckd(z, z.clone(), y, 1)["rc"]) == pytest.approx(0.0, abs=1e-5)
    constant = torch.full((6, 20), 2.5, requires_grad=True)
    terms = rckd(constant, constant.detach().clone(), y, 1)
    _total(terms).backward()
    assert float(terms["rc"].detach()) == pytest.approx(0.0, abs=1e-6)
    assert torch.isfinite(constant.grad).all()


@pytest.mark.parametrize("relation", RELATIONS)
def test_rc_is_invariant_to_a_logit_shift(relation):
    zs, zt = _logits(5, 30, 2.0, seed=6), _logits(5, 30, 2.0, seed=7)
    shift = torch.linspace(-40.0, 25.0, 5)[:, None]
    base = functional.relation_cosine(zs, zt, relation, 4.0, 1.5)
    torch.testing.assert_close(functional.relation_cosine(zs + shift, zt, relation, 4.0, 1.5), base,
                               atol=1e-5, rtol=0)
    torch.testing.assert_close(functional.relation_cosine(zs, zt - shift, relation, 4.0, 1.5), base,
                               atol=1e-5, rtol=0)


@pytest.mark.parametrize("factor", [0.05, 0.7, 3.0, 40.0])
def test_log_ratio_is_invariant_to_positive_logit_scaling(factor):
    zs, zt = _logits(5, 30, 2.0, seed=8), _logits(5, 30, 2.0, seed=9)
    base = functional.relation_cosine(zs, zt, "log_ratio", 4.0, 1.0)
    torch.testing.assert_close(functional.relation_cosine(factor * zs, zt, "log_ratio", 4.0, 1.0), base,
                               atol=1e-5, rtol=0)
    # ...which prob_diff is not: the temperature sees the scale.
    other = functional.relation_cosine(factor * zs, zt, "prob_diff", 4.0, 1.0)
    assert (other - functional.relation_cosine(zs, zt, "prob_diff", 4.0, 1.0)).abs().max() > 1e-3


def test_cosine_is_invariant_to_positive_rescaling_and_offsets():
    x, y = _logits(4, 12, seed=10), _logits(4, 12, seed=11)
    torch.testing.assert_close(functional.pearson(7.5 * x + 3.0, 0.2 * y - 1.0), functional.pearson(x, y),
                               atol=1e-6, rtol=0)
    torch.testing.assert_close(functional.pearson(-x, y), -functional.pearson(x, y), atol=1e-6, rtol=0)


@pytest.mark.parametrize("relation", RELATIONS)
def test_relation_cosine_gradcheck_float64(relation, monkeypatch):
    # One row per rank block, so the gradient of the blocked path is what gets checked.
    monkeypatch.setattr(functional, "RANK_BLOCK_ELEMENTS", 36)
    zs = _logits(3, 6, 2.0, seed=12, dtype=torch.float64).requires_grad_()
    zt = _logits(3, 6, 2.0, seed=13, dtype=torch.float64).requires_grad_()
    assert torch.autograd.gradcheck(
        lambda a, b: functional.relation_cosine(a, b, relation, 2.0, 0.7), (zs, zt))


@pytest.mark.parametrize(("method", "params"), METHOD_CASES)
def test_loss_gradcheck_float64(method, params):
    loss = losses.build(method, **params)
    zs = _logits(4, 5, 2.0, seed=14, dtype=torch.float64).requires_grad_()
    zt = _logits(4, 5, 2.0, seed=15, dtype=torch.float64)
    y = _targets(4, 5)
    assert torch.autograd.gradcheck(lambda z: _total(loss(z, zt, y, 30)), (zs,))


def test_rank_relation_interpolates_kendall_tau_and_log_ratio():
    zs, zt = _logits(4, 12, 2.0, seed=41).double(), _logits(4, 12, 2.0, seed=42).double()
    sharp = functional.relation_cosine(zs, zt, "rank", 1.0, 1e-6)
    kendall = [stats.kendalltau(a, b).statistic for a, b in zip(zs.numpy(), zt.numpy())]
    torch.testing.assert_close(sharp, torch.tensor(kendall, dtype=torch.float64), atol=1e-9, rtol=0)
    # tanh(x / kappa) ~ x / kappa: the cubic term and COSINE_EPS both leave ~1e-5 at kappa = 1000.
    linear = functional.relation_cosine(zs, zt, "rank", 1.0, 1e3)
    torch.testing.assert_close(linear, functional.relation_cosine(zs, zt, "log_ratio", 1.0, 1.0),
                               atol=1e-4, rtol=0)
    assert (functional.relation_cosine(zs, zt, "rank", 1.0, 1.0) - linear).abs().max() > 1e-2


def test_rank_blocks_equal_the_unblocked_explicit_computation(monkeypatch):
    zs = _logits(7, 9, 3.0, seed=16, dtype=torch.float64).requires_grad_()
    zt = _logits(7, 9, 3.0, seed=17, dtype=torch.float64)
    explicit = F.cosine_similarity(functional.relation_matrix(zs, "rank", 1.0, 0.8).flatten(1),
                                   functional.relation_matrix(zt, "rank", 1.0, 0.8).flatten(1), dim=1)
    (explicit_grad,) = torch.autograd.grad(explicit.square().sum(), zs)
    for block_elements in (81, 2 * 81, 10**6):  # 1 row, 2 rows (uneven split), all rows per block
        monkeypatch.setattr(functional, "RANK_BLOCK_ELEMENTS", block_elements)
        blocked = functional.relation_cosine(zs, zt, "rank", 1.0, 0.8)
        (blocked_grad,) = torch.autograd.grad(blocked.square().sum(), zs)
        torch.testing.assert_close(blocked, explicit, atol=1e-9, rtol=0)
        torch.testing.assert_close(blocked_grad, explicit_grad, atol=1e-9, rtol=0)


@pytest.mark.slow(6)
def test_rank_relation_b256_c1000_fits_in_1gib():
    """Forward + backward at B=256, C=1000 in a fresh process; its peak RSS growth must stay < 1 GiB.

    A fixed glibc mmap threshold makes every large tensor its own mapping, returned on free, so
    the peak RSS measures live memory rather than allocator slack. An explicit [B, C, C] float32
    matrix alone would be 977 MiB per side.
    """
    script = textwrap.dedent("""
        import resource, torch
        from rckd.losses.functional import relation_cosine
        zs = torch.randn(256, 1000, requires_grad=True)
        zt = torch.randn(256, 1000)
        relation_cosine(zs[:2, :10], zt[:2, :10], "rank", 1.0, 1.0).sum().backward()  # warm-up
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        cosine = relation_cosine(zs, zt, "rank", 1.0, 1.0)
        (1 - cosine).mean().backward()
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        assert bool(torch.isfinite(zs.grad).all()) and zs.grad.abs().sum() > 0
        print((after - before) / 1024)
    """)
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": str(1 << 20)}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env,
                            check=True)
    extra_mib = float(result.stdout.strip().splitlines()[-1])
    assert extra_mib < 1024, f"rank relation used {extra_mib:.0f} MiB above its inputs"


# --- numerics ---------------------------------------------------------------------------------

@pytest.mark.parametrize(("method", "params"), METHOD_CASES)
@pytest.mark.parametrize("scale", [1e2, 1e4])
def test_no_nan_or_inf_for_huge_logits(method, params, scale):
    loss = losses.build(method, **params)
    zs = _logits(8, 50, scale, seed=18).clamp(-1e4, 1e4).requires_grad_()
    zt = _logits(8, 50, scale, seed=19).clamp(-1e4, 1e4)
    terms = loss(zs, zt, _targets(8, 50), 30)
    _total(terms).backward()
    assert all(torch.isfinite(value) for value in terms.values())
    assert torch.isfinite(zs.grad).all()


@pytest.mark.parametrize(("method", "params"), METHOD_CASES)
def test_bf16_inputs_are_computed_in_float32(method, params):
    loss = losses.build(method, **params)
    zs32, zt32 = _logits(8, 20, 3.0, seed=20), _logits(8, 20, 3.0, seed=21)
    zs = zs32.bfloat16().requires_grad_()
    y = _targets(8, 20)
    terms = loss(zs, zt32.bfloat16(), y, 30)
    _total(terms).backward()
    assert all(value.dtype == torch.float32 and value.ndim == 0 for value in terms.values())
    assert zs.grad.dtype == torch.bfloat16 and torch.isfinite(zs.grad.float()).all()
    reference = loss(zs32.bfloat16().float(), zt32.bfloat16().float(), y, 30)
    for name, value in terms.items():
        assert float(value.detach()) == float(reference[name])  # the cast happens first, then float32 math


# --- KD, DKD, DIST ----------------------------------------------------------------------------

def test_kd_gradient_sums_to_zero_per_sample():
    """An identity, so in float64: in float32 the rounding of 15 summed gradients (~1e-7) depends on
    the CPU's vector width."""
    zs = _logits(6, 15, 2.0, seed=22).double().requires_grad_()
    zt = _logits(6, 15, 2.0, seed=23).double()
    losses.build("kd", ce=0.0)(zs, zt, _targets(6, 15), 1)["kd"].backward()
    assert zs.grad.abs().max() > 1e-3
    torch.testing.assert_close(zs.grad.sum(1), torch.zeros(6, dtype=torch.float64), atol=1e-12, rtol=0)


def test_kd_matches_the_direct_formula():
    zs, zt = _logits(6, 15, 2.0, seed=24).double(), _logits(6, 15, 2.0, seed=25).double()
    terms = losses.build("kd", T=3.0)(zs, zt, _targets(6, 15), 1)
    p_s, p_t = torch.softmax(zs / 3, 1), torch.softmax(zt / 3, 1)
    direct = 9 * (p_t * torch.log(p_t / p_s)).sum(1).mean()
    torch.testing.assert_close(terms["kd"], 0.9 * direct, rtol=1e-12, atol=0)
    torch.testing.assert_close(terms["ce"], 0.1 * F.cross_entropy(zs, _targets(6, 15)), rtol=1e-12, atol=0)


def test_kd_splits_into_tckd_and_weighted_nckd():
    zs, zt = _logits(9, 12, 3.0, seed=26).double(), _logits(9, 12, 3.0, seed=27).double()
    y = _targets(9, 12, seed=3)
    T = 4.0
    tckd, nckd = functional.dkd_divergences(zs, zt, y, T)
    kl = functional.kl_divergence(F.log_softmax(zt / T, 1), F.log_softmax(zs / T, 1))
    teacher_target_prob = torch.softmax(zt / T, 1)[torch.arange(9), y]
    torch.testing.assert_close(kl, tckd + (1 - teacher_target_prob) * nckd, rtol=1e-10, atol=1e-12)
    # The same identity through the built losses (one sample, alpha = beta = 1, after warm-up).
    kd = losses.build("kd", ce=0.0, kd=1.0, T=T)(zs[:1], zt[:1], y[:1], 1)["kd"]
    dkd = losses.build("dkd", alpha=1.0, beta=1.0, T=T)(zs[:1], zt[:1], y[:1], 20)
    torch.testing.assert_close(kd, dkd["tckd"] + (1 - teacher_target_prob[0]) * dkd["nckd"],
                               rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("as_tensor", [False, True])
def test_dkd_warmup_scales_with_int_or_tensor_epoch(as_tensor):
    dkd = losses.build("dkd")
    zs, zt, y = _logits(5, 10, seed=28), _logits(5, 10, seed=29), _targets(5, 10)
    full = dkd(zs, zt, y, 20)
    for epoch, factor in ((0, 0.0), (1, 0.05), (5, 0.25), (19, 0.95), (20, 1.0), (240, 1.0)):
        terms = dkd(zs, zt, y, torch.tensor(epoch) if as_tensor else epoch)
        for name in ("tckd", "nckd"):
            torch.testing.assert_close(terms[name], factor * full[name], rtol=1e-6, atol=0)
        torch.testing.assert_close(terms["ce"], full["ce"], rtol=0, atol=0)
    no_warmup = losses.build("dkd", warmup=0)
    torch.testing.assert_close(no_warmup(zs, zt, y, 0)["nckd"], full["nckd"], rtol=0, atol=0)


def test_dist_terms_equal_one_minus_numpy_corrcoef():
    zs, zt = _logits(16, 10, 2.0, seed=30), _logits(16, 10, 2.0, seed=31)
    terms = losses.build("dist", T=2.0)(zs, zt, _targets(16, 10), 1)
    p_s = np.exp(_np_log_softmax(zs.double().numpy() / 2.0))
    p_t = np.exp(_np_log_softmax(zt.double().numpy() / 2.0))
    inter = np.mean([1 - np.corrcoef(p_s[i], p_t[i])[0, 1] for i in range(16)])
    intra = np.mean([1 - np.corrcoef(p_s[:, j], p_t[:, j])[0, 1] for j in range(10)])
    assert float(terms["inter"]) == pytest.approx(2.0 * 4.0 * inter, rel=1e-5)
    assert float(terms["intra"]) == pytest.approx(2.0 * 4.0 * intra, rel=1e-5)


def test_rckd_prob_diff_rc_equals_the_dist_inter_term():
    """A consequence worth knowing: with prob_diff, RC is DIST's inter-class relation (up to where
    each puts its regulariser)."""
    zs, zt, y = _logits(8, 10, 2.0, seed=32), _logits(8, 10, 2.0, seed=33), _targets(8, 10)
    rc = losses.build("rckd", relation="prob_diff", rc=1.0)(zs, zt, y, 1)["rc"]
    inter = losses.build("dist", kd=1.0)(zs, zt, y, 1)["inter"]
    torch.testing.assert_close(rc, inter, rtol=1e-5, atol=0)


def _np_dist_source(zs: np.ndarray, zt: np.ndarray, tau: float) -> tuple[float, float]:
    """(inter, intra) of hunto/image_classification_sota lib/models/losses/dist_kd.py (commit d9662f7)
    in float64: Pearson correlation as <a, b> / (|a| |b| + 1e-8) of the centred softmax(z / tau),
    per sample (inter) and per class over the batch (intra), each 1 - mean, times tau^2."""
    def relation(a: np.ndarray, b: np.ndarray) -> float:
        a, b = a - a.mean(1, keepdims=True), b - b.mean(1, keepdims=True)
        norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
        return float(1 - ((a * b).sum(1) / (norms + 1e-8)).mean())

    y_s, y_t = np.exp(_np_log_softmax(zs / tau)), np.exp(_np_log_softmax(zt / tau))
    return tau**2 * relation(y_s, y_t), tau**2 * relation(y_s.T, y_t.T)


@pytest.mark.parametrize(("classes", "scale", "tau"), [(10, 1.0, 4.0), (100, 10.0, 4.0), (1000, 10.0, 1.0),
                                                        (1000, 50.0, 1.0)])
def test_dist_is_its_source_formula_in_float64(classes, scale, tau):
    """Sharp logits at tau 1 (the ImageNet setting) are where the epsilon's placement shows."""
    zs, zt = _logits(32, classes, scale, seed=34, dtype=torch.float64), _logits(32, classes, scale, seed=35,
                                                                              dtype=torch.float64)
    terms = losses.build("dist", T=tau, kd=1.0)(zs, zt, _targets(32, classes), 1)
    inter, intra = _np_dist_source(zs.numpy(), zt.numpy(), tau)
    assert float(terms["inter"]) == pytest.approx(inter, rel=1e-12, abs=1e-15)
    assert float(terms["intra"]) == pytest.approx(intra, rel=1e-12, abs=1e-15)
    # Identical logits: every correlation is 1 up to the epsilon, as in the source.
    same = losses.build("dist", T=tau, kd=1.0)(zs, zs.clone(), _targets(32, classes), 1)
    inter, intra = _np_dist_source(zs.numpy(), zs.numpy(), tau)
    assert float(same["intra"]) == pytest.approx(intra, rel=1e-9, abs=1e-15)


# --- RCKD as its authors define it, and logit standardization ---------------------------------

@pytest.mark.parametrize("classes", [2, 10, 100, 1000])
@pytest.mark.parametrize("scale", [0.5, 5.0, 50.0])
def test_rckd_default_is_the_authors_upper_triangle_cosine(classes, scale):
    """saberdante/RCKD, mdistiller/distillers/RCKD.py: R_ij = lp_i - lp_j of lp = log_softmax(z / T), its
    strict upper triangle, per-sample cosine, T^2 (1 - batch mean), 1.0 CE + 5.0 RC, no KL."""
    zs, zt, y = _logits(6, classes, scale, seed=50), _logits(6, classes, scale, seed=51), _targets(6, classes)
    loss = losses.build("rckd")
    assert loss.params == {"ce": 1.0, "kd": 0.0, "rc": 5.0, "T": 4.0, "relation": "log_ratio", "kappa": 1.0,
                           "warmup": 0.0}
    terms = loss(zs, zt, y, 1)
    T = 4.0
    upper = torch.triu(torch.ones(classes, classes, dtype=torch.bool), diagonal=1)

    def upper_triangle(z):
        lp = torch.log_softmax(z.double() / T, 1)
        return (lp[:, :, None] - lp[:, None, :])[:, upper]

    cosine = F.cosine_similarity(upper_triangle(zs), upper_triangle(zt), dim=1)
    assert set(terms) == {"ce", "rc"}  # kd = 0: no KL is computed
    assert float(terms["rc"]) == pytest.approx(5.0 * T**2 * float((1 - cosine).mean()), rel=1e-5, abs=1e-6)
    assert float(terms["ce"]) == pytest.approx(float(F.cross_entropy(zs.double(), y)), rel=1e-6)


def test_rckd_with_kl_adds_kd_to_the_relation_term():
    zs, zt, y = _logits(8, 20, 3.0, seed=52), _logits(8, 20, 3.0, seed=53), _targets(8, 20)
    plain = losses.build("rckd")(zs, zt, y, 1)
    with_kl = losses.build("rckd", kd=0.9)(zs, zt, y, 1)
    kd = 0.9 * 16 * functional.kd_divergence(zs, zt, 4.0).mean()
    torch.testing.assert_close(with_kl["kd"], kd)
    torch.testing.assert_close(with_kl["rc"], plain["rc"])


@pytest.mark.parametrize("as_tensor", [False, True])
def test_rckd_warmup_scales_the_distillation_terms_only(as_tensor):
    """warmup > 0 scales rc and kd by min(epoch / warmup, 1), DKD's warm-up; CE is never scaled and
    after the warm-up the terms are bit-identical to the authors' (warmup 0) at every epoch."""
    zs, zt, y = _logits(8, 20, 3.0, seed=57), _logits(8, 20, 3.0, seed=58), _targets(8, 20)
    authors = losses.build("rckd", kd=0.9)(zs, zt, y, 0)
    warm = losses.build("rckd", kd=0.9, warmup=2)
    for epoch, factor in ((0, 0.0), (1, 0.5), (2, 1.0), (3, 1.0), (240, 1.0)):
        terms = warm(zs, zt, y, torch.tensor(epoch) if as_tensor else epoch)
        torch.testing.assert_close(terms["ce"], authors["ce"], rtol=0, atol=0)
        for name in ("rc", "kd"):
            expected = authors[name] if factor == 1.0 else factor * authors[name]
            torch.testing.assert_close(terms[name], expected, rtol=0 if factor == 1.0 else 1e-6, atol=0)
    assert float(warm(zs, zt, y, 0)["rc"]) == 0.0 and float(authors["rc"]) > 1.0


def test_standardize_is_sun_et_al_z_score():
    z = _logits(5, 9, 4.0, seed=54).double() + 3.0
    expected = _np_standardize(z.numpy())
    np.testing.assert_allclose(functional.standardize(z).numpy(), expected, rtol=1e-12, atol=1e-12)
    standardized = functional.standardize(z)
    torch.testing.assert_close(standardized.mean(1), torch.zeros(5, dtype=torch.float64), atol=1e-12, rtol=0)
    torch.testing.assert_close(standardized.std(1), torch.ones(5, dtype=torch.float64), atol=1e-6, rtol=0)


def test_logit_standardization_is_a_no_op_for_log_ratio():
    """log_ratio's cosine is the Pearson correlation of the logits: invariant to the per-sample shift
    and positive scale that LS applies, so RCKD needs no `ls` flag."""
    zs, zt, y = _logits(8, 30, 6.0, seed=55), _logits(8, 30, 6.0, seed=56), _targets(8, 30)
    rc = losses.build("rckd")(zs, zt, y, 1)["rc"]
    standardized = losses.build("rckd")(functional.standardize(zs), functional.standardize(zt), y, 1)["rc"]
    torch.testing.assert_close(standardized, rc, atol=1e-5, rtol=1e-5)
    # ...whereas for KD it is a different loss.
    kd, kd_ls = losses.build("kd"), losses.build("kd", ls=True)
    assert abs(float(kd(zs, zt, y, 1)["kd"]) - float(kd_ls(zs, zt, y, 1)["kd"])) > 1e-2


def test_ls_variants_equal_kd_and_dkd_of_standardized_logits():
    zs, zt, y = _logits(8, 12, 5.0, seed=57), _logits(8, 12, 5.0, seed=58), _targets(8, 12)
    for method, params in (("kd", {"T": 2.0, "kd": 9.0}), ("dkd", {"T": 2.0, "alpha": 9.0, "beta": 72.0})):
        with_ls = losses.build(method, ls=True, **params)(zs, zt, y, 30)
        by_hand = losses.build(method, **params)(functional.standardize(zs), functional.standardize(zt), y, 30)
        for name, value in with_ls.items():
            if name == "ce":  # cross-entropy sees the raw logits
                torch.testing.assert_close(value, F.cross_entropy(zs, y) * params.get("ce", 0.1 if method == "kd"
                                                                                     else 1.0))
            else:
                torch.testing.assert_close(value, by_hand[name])


def test_wttm_equals_its_definition():
    """Zheng and Yang (2024), zkxufo/TTM distiller_zoo/wttm.py: target p_t^g / sum(p_t^g), untempered
    student, each sample's KL weighted by sum(p_t^g), batch mean."""
    zs, zt, y = _logits(8, 10, 3.0, seed=59).double(), _logits(8, 10, 3.0, seed=60).double(), _targets(8, 10)
    terms = losses.build("wttm", power=0.2, beta=4.0)(zs, zt, y, 1)
    q = torch.softmax(zt, 1) ** 0.2
    weight = q.sum(1)
    target = q / weight[:, None]
    kl = (target * (target.log() - torch.log_softmax(zs, 1))).sum(1)
    torch.testing.assert_close(terms["wttm"], 4.0 * (weight * kl).mean(), rtol=1e-12, atol=0)


# --- NKD -------------------------------------------------------------------------------------

def _nkd_case(kind: str, classes: int, scale: float) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """float64 (student, teacher, labels): random, identical, or a one-hot teacher (a `scale` logit
    at the label, or at another class)."""
    zs, y = _logits(6, classes, scale, seed=70).double(), _targets(6, classes, seed=7)
    if kind == "random":
        return zs, _logits(6, classes, scale, seed=71).double(), y
    if kind == "identical":
        return zs, zs.clone(), y
    peak = y if kind == "one_hot_target" else (y + 1) % classes
    return zs, scale * F.one_hot(peak, classes).double(), y


@pytest.mark.parametrize("kind", ["random", "identical", "one_hot_target", "one_hot_other"])
@pytest.mark.parametrize("classes", [2, 10, 100])
@pytest.mark.parametrize("scale", [1.0, 10.0, 50.0])
@pytest.mark.parametrize(("T", "gamma"), [(3.0, 3.5), (1.0, 1.5)])  # cls_KD's CIFAR-100 and ImageNet configs
def test_nkd_value_and_gradient_equal_the_sources_formula(kind, classes, scale, T, gamma):
    """Value: the source's computation, target column cut out (_np_nkd). Gradient, by hand: CE gives
    p_s - onehot(y); the target term -p_t,y log p_s,y gives p_t,y (p_s - onehot(y)); the non-target
    term gamma T^2 * soft CE at T gives gamma T (q_s - q_t) on the other classes and 0 at the label."""
    zs, zt, y = _nkd_case(kind, classes, scale)
    zs.requires_grad_()
    loss = losses.build("nkd", T=T, gamma=gamma)
    terms = loss(zs, zt, y, 1)
    expected = _np_nkd(zs.detach().numpy(), zt.numpy(), y.numpy(), T, gamma)
    assert float((_total(terms) - terms["ce"]).detach()) == pytest.approx(expected, rel=1e-10, abs=1e-10)
    _total(terms).backward()
    is_target = F.one_hot(y, classes).double()
    p_s, p_t = torch.softmax(zs.detach(), 1), torch.softmax(zt, 1)
    masked = torch.where(is_target.bool(), float("-inf"), 0.0)
    q_s, q_t = torch.softmax(zs.detach() / T + masked, 1), torch.softmax(zt / T + masked, 1)
    teacher_target = (p_t * is_target).sum(1, keepdim=True)
    by_hand = (1 + teacher_target) * (p_s - is_target) + gamma * T * (q_s - q_t)
    torch.testing.assert_close(zs.grad, by_hand / len(y), rtol=1e-9, atol=1e-12)


def test_nkd_non_target_term_ignores_the_label_column():
    """Commit 9466b3f fixed the source's mask (scatter_(1, label, 0), not 1): before it, the 'non-target'
    softmax kept the target class. Here the label's logits do not change the non-target term."""
    zs, zt, y = _logits(5, 12, 3.0, seed=72).double(), _logits(5, 12, 3.0, seed=73).double(), _targets(5, 12)
    base = losses.build("nkd")(zs, zt, y, 1)["non_target"]
    bump = 7.0 * F.one_hot(y, 12).double()
    torch.testing.assert_close(losses.build("nkd")(zs + bump, zt - bump, y, 1)["non_target"], base,
                               rtol=1e-12, atol=0)


# --- CTKD ------------------------------------------------------------------------------------

def _source_cosine_decay(epoch: int, loops: float) -> float:
    """zhengli97/CTKD (7d52522) train_student.py CosineDecay(max_value=0, min_value=-1, num_loops).get_value."""
    i = min(max(epoch, 0), loops)
    value = (math.cos(i * math.pi / loops) + 1.0) * 0.5
    return value * (0 - (-1)) + (-1)


@pytest.mark.parametrize("loops", [10.0, 5.0])  # the CIFAR and ImageNet scripts' --decay_loops
def test_ctkd_curriculum_is_the_sources_cosine_per_epoch(loops):
    epochs = range(0, 241)
    expected = [_source_cosine_decay(epoch, loops) for epoch in epochs]
    assert [functional.ctkd_lambda(epoch, loops) for epoch in epochs] == pytest.approx(expected, abs=1e-15)
    as_tensors = [float(functional.ctkd_lambda(torch.tensor(float(epoch)), loops)) for epoch in epochs]
    assert as_tensors == pytest.approx(expected, abs=1e-6)
    assert functional.ctkd_lambda(0, loops) == 0.0 and functional.ctkd_lambda(loops / 2, loops) == pytest.approx(-0.5)
    assert all(functional.ctkd_lambda(epoch, loops) == -1.0 for epoch in range(int(loops), 241))
    assert all(a > b for a, b in zip(expected[:int(loops) + 1], expected[1:int(loops) + 1]))  # falls until loops


def test_gradient_reversal_keeps_the_value_and_scales_the_gradient():
    x = torch.tensor([0.3, -2.0, 7.5], dtype=torch.float64, requires_grad=True)
    for scale in (0.0, -0.25, -1.0, 2.0):
        y = functional.gradient_reversal(x, scale)
        assert torch.equal(y, x.detach())
        (grad,) = torch.autograd.grad((y * torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64)).sum(), x)
        torch.testing.assert_close(grad, scale * torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64),
                                   rtol=0, atol=0)


def test_ctkd_temperature_starts_at_1_plus_20_sigmoid_1_and_stays_in_range():
    temperature = ctkd.LearnedTemperature(10.0)
    assert temperature.value() == pytest.approx(1 + 20 / (1 + math.exp(-1)), rel=1e-7)
    for theta, expected in ((-60.0, 1.0), (0.0, 11.0), (60.0, 21.0)):
        assert float(functional.ctkd_temperature(torch.tensor(theta, dtype=torch.float64))) == pytest.approx(expected)


@pytest.mark.parametrize("case", ["random", "identical", "one_hot", "scale_50"])
def test_ctkd_loss_is_kd_at_the_learned_temperature(case):
    """0.1 CE + 0.9 T^2 KL(p_t^T || p_s^T) with T the learned temperature (CTKD distiller_zoo/KD.py:
    KLDivLoss batchmean times T * T), in float64; its value does not depend on the curriculum."""
    scale = 50.0 if case == "scale_50" else 3.0
    zs, y = _logits(6, 10, scale, seed=74).double(), _targets(6, 10, seed=8)
    zt = {"identical": zs.clone(), "one_hot": 30.0 * F.one_hot(y, 10).double()}.get(
        case, _logits(6, 10, scale, seed=75).double())
    loss = losses.build("ctkd")
    for theta in (-1.5, 1.0, 3.0):
        temperature = ctkd.LearnedTemperature(10.0).double()
        temperature.theta.data.fill_(theta)
        T = 1 + 20 / (1 + math.exp(-theta))
        terms = loss(zs, zt, y, 4, temperature=temperature(torch.tensor(4.0)))
        p_s, p_t = torch.softmax(zs / T, 1), torch.softmax(zt / T, 1)
        kl = (p_t * (torch.log_softmax(zt / T, 1) - torch.log_softmax(zs / T, 1))).sum(1).mean()
        torch.testing.assert_close(terms["kd"], 0.9 * T**2 * kl, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(terms["ce"], 0.1 * F.cross_entropy(zs, y), rtol=1e-12, atol=0)
        assert torch.isfinite(p_s).all()
        if case == "identical":
            assert float(terms["kd"].detach()) == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("epoch", [0, 1, 3, 5, 10, 11, 240])
def test_ctkd_temperature_gradient_is_reversed_by_the_curriculum(epoch):
    """theta's gradient is lambda(epoch) times the plain d(loss)/d(theta): from epoch 1 on an SGD step
    on theta moves the temperature so that the KD loss INCREASES (and leaves it at epoch 0)."""
    zs, zt, y = _logits(8, 10, 3.0, seed=76).double(), _logits(8, 10, 3.0, seed=77).double(), _targets(8, 10)
    loss = losses.build("ctkd")
    temperature = ctkd.LearnedTemperature(10.0).double()
    terms = loss(zs, zt, y, epoch, temperature=temperature(torch.tensor(float(epoch))))
    _total(terms).backward()
    theta = temperature.theta.detach().clone().requires_grad_()
    plain_terms = loss(zs, zt, y, epoch, temperature=functional.ctkd_temperature(theta))
    (plain,) = torch.autograd.grad(_total(plain_terms), theta)
    lam = _source_cosine_decay(epoch, 10.0)
    torch.testing.assert_close(temperature.theta.grad, lam * plain, rtol=1e-6, atol=1e-15)
    assert abs(float(plain)) > 1e-4
    before = float(terms["kd"].detach())
    with torch.no_grad():
        temperature.theta -= 0.5 * temperature.theta.grad  # the student's SGD step, without weight decay
        after = float(loss(zs, zt, y, epoch, temperature=temperature(float(epoch)))["kd"])
    assert after > before if epoch > 0 else after == before


def test_ctkd_compiles_as_one_graph_with_the_temperature():
    loss, temperature = losses.build("ctkd"), ctkd.LearnedTemperature(10.0)

    def total(zs, zt, y, epoch):
        return _total(loss(zs, zt, y, epoch, temperature=temperature(epoch)))

    compiled = torch.compile(total, fullgraph=True, backend="aot_eager")
    zs, zt, y = _logits(6, 10, seed=78).requires_grad_(), _logits(6, 10, seed=79), _targets(6, 10)
    for epoch in (torch.tensor(3.0), torch.tensor(30.0)):
        grads = torch.autograd.grad(compiled(zs, zt, y, epoch), (zs, temperature.theta))
        expected = torch.autograd.grad(total(zs, zt, y, epoch), (zs, temperature.theta))
        for grad, reference in zip(grads, expected):
            torch.testing.assert_close(grad, reference)


# --- every method -----------------------------------------------------------------------------

@pytest.mark.parametrize(("method", "params"), METHOD_CASES + [
    ("kd", {"ce": 0.5, "kd": 2.0, "T": 2.0}),
    ("dkd", {"beta": 2.0, "alpha": 0.5, "T": 3.0}),
    ("dist", {"beta": 0.5, "gamma": 3.0}),
    ("rckd", {"relation": "rank", "kappa": 0.3, "rc": 2.5, "T": 2.0}),
])
def test_terms_sum_to_the_directly_computed_loss(method, params):
    loss = losses.build(method, **params)
    zs, zt, y = _logits(12, 8, 3.0, seed=34), _logits(12, 8, 3.0, seed=35), _targets(12, 8, seed=5)
    terms = loss(zs, zt, y, 25)
    expected_names = {"ce": {"ce"}, "kd": {"ce", "kd"}, "dkd": {"ce", "tckd", "nckd"}, "wttm": {"ce", "wttm"},
                      "nkd": {"ce", "target", "non_target"},
                      "dist": {"ce", "inter", "intra"},
                      "rckd": {"ce", "rc"} | ({"kd"} if loss.params.get("kd") else set())}[method]
    assert set(terms) == expected_names
    assert all(value.dtype == torch.float32 and value.ndim == 0 for value in terms.values())
    direct = _np_loss(method, loss.params, zs.double().numpy(), zt.double().numpy(), y.numpy())
    assert float(_total(terms)) == pytest.approx(direct, rel=1e-5)


def test_ce_needs_no_teacher():
    loss = losses.build("ce")
    assert (loss.needs_teacher, loss.temperature, loss.params) == (False, None, {})
    zs, y = _logits(4, 6, seed=36), _targets(4, 6)
    torch.testing.assert_close(loss(zs, None, y, 0)["ce"], F.cross_entropy(zs, y))


@pytest.mark.parametrize(("method", "params"), [("dkd", {}), ("rckd", {"relation": "rank"}), ("dist", {}),
                                               ("rckd", {}), ("dkd", {"ls": True}), ("wttm", {})])
def test_loss_compiles_as_one_graph_with_a_tensor_epoch(method, params):
    loss = losses.build(method, **params)

    def total(zs, zt, y, epoch):
        return _total(loss(zs, zt, y, epoch))

    compiled = torch.compile(total, fullgraph=True, backend="aot_eager")
    zs, zt, y = _logits(6, 10, seed=37).requires_grad_(), _logits(6, 10, seed=38), _targets(6, 10)
    for epoch in (torch.tensor(4), torch.tensor(30)):
        value = compiled(zs, zt, y, epoch)
        (grad,) = torch.autograd.grad(value, zs)
        (expected_grad,) = torch.autograd.grad(total(zs, zt, y, int(epoch)), zs)
        torch.testing.assert_close(value, total(zs, zt, y, int(epoch)))
        torch.testing.assert_close(grad, expected_grad)


# --- registry ---------------------------------------------------------------------------------

def test_available_defaults_and_resolved_params():
    assert losses.available() == ["ce", "ctkd", "dist", "dkd", "kd", "mlkd", "nkd", "rckd", "wttm"]
    assert losses.defaults("kd") == {"ce": 0.1, "kd": 0.9, "T": 4.0, "ls": False}
    assert losses.defaults("dkd") == {"ce": 1.0, "alpha": 1.0, "beta": 8.0, "T": 4.0, "warmup": 20.0, "ls": False}
    assert losses.defaults("dist") == {"ce": 1.0, "kd": 2.0, "beta": 1.0, "gamma": 1.0, "T": 4.0}
    assert losses.defaults("rckd") == {"ce": 1.0, "kd": 0.0, "rc": 5.0, "T": 4.0,
                                       "relation": "log_ratio", "kappa": 1.0, "warmup": 0.0}
    assert losses.defaults("wttm") == {"ce": 1.0, "beta": 4.0, "power": 0.2}
    assert losses.defaults("nkd") == {"ce": 1.0, "T": 3.0, "gamma": 3.5}
    assert losses.defaults("ctkd") == {"ce": 0.1, "kd": 0.9, "curriculum": 10.0, "ls": False}
    losses.defaults("kd")["T"] = 99.0  # a copy: the registry is unchanged
    assert losses.defaults("kd")["T"] == 4.0
    loss = losses.build("dkd", beta=2, T=8)
    assert loss.method == "dkd" and loss.needs_teacher and loss.temperature == 8.0
    assert loss.params == {"ce": 1.0, "alpha": 1.0, "beta": 2.0, "T": 8.0, "warmup": 20.0, "ls": False}
    assert json.loads(json.dumps(loss.params)) == loss.params
    assert all(isinstance(value, float) for key, value in loss.params.items() if key != "ls")


def test_every_catalog_method_has_terms_and_known_parameters():
    assert sorted(registry.TERMS) == catalog.available()
    for method in catalog.available():
        assert set(catalog.defaults(method)) <= set(catalog.PARAMETERS)
        loss = losses.build(method)
        strong = (_logits(4, 6, seed=63), _logits(4, 6, seed=64)) if loss.views == 2 else None
        learned = {"temperature": torch.tensor(4.0)} if loss.learns_temperature else {}
        terms = loss(_logits(4, 6, seed=61), _logits(4, 6, seed=62), _targets(4, 6), 1, strong=strong, **learned)
        assert terms and all(torch.isfinite(value) for value in terms.values())


def test_parse_param_types_values_by_parameter_kind():
    assert catalog.parse_param("ls=true") == ("ls", True)
    assert catalog.parse_param("T=4") == ("T", 4.0)
    assert catalog.parse_param("relation=rank") == ("relation", "rank")
    with pytest.raises(Exception, match="true or false"):
        catalog.parse_param("ls=yes")


@pytest.mark.parametrize(("method", "params", "message"), [
    ("hinton", {}, "unknown loss method 'hinton'; choose one of: ce, ctkd, dist, dkd, kd, mlkd, nkd, rckd, wttm"),
    ("kd", {"ls": 1}, "ls (logit standardization (Sun et al., 2024) of both logits before the temperature) must be "
                      "true or false"),
    ("kd", {"tau": 4}, "unknown parameter(s) tau for loss 'kd'; allowed: ce, kd, T, ls"),
    ("ce", {"T": 4}, "allowed: none"),
    ("kd", {"T": 0}, "T (the softmax temperature) must be > 0"),
    ("rckd", {"T": -1.0}, "must be > 0"),
    ("rckd", {"kappa": 0.0}, "kappa (the rank relation's tanh scale) must be > 0"),
    ("dkd", {"beta": -1}, "beta (the DKD non-target (NCKD), DIST inter-class or WTTM weight) must be >= 0"),
    ("dkd", {"warmup": -5}, "warmup (the warm-up length in epochs of the distillation terms, 0 for none) must be >= 0"),
    ("kd", {"kd": True}, "must be a finite number"),
    ("kd", {"kd": "0.9"}, "must be a finite number"),
    ("kd", {"T": float("nan")}, "must be a finite number"),
    ("rckd", {"relation": "cosine"}, "relation must be one of log_ratio, prob_diff, rank"),
    ("ctkd", {"curriculum": 0}, "curriculum (CTKD's curriculum length in epochs: its gradient reversal grows from 0 "
                               "to -1) must be > 0"),
    ("ctkd", {"T": 4}, "allowed: ce, kd, curriculum, ls"),
])
def test_registry_errors_name_the_allowed_values(method, params, message):
    with pytest.raises(RckdError) as error:
        losses.build(method, **params)
    assert message in str(error.value)


def test_call_errors():
    zs, y = _logits(4, 6, seed=39), _targets(4, 6)
    with pytest.raises(RckdError, match="needs teacher logits"):
        losses.build("kd")(zs, None, y, 1)
    with pytest.raises(RckdError, match="do not match student logits"):
        losses.build("kd")(zs, _logits(4, 7, seed=40), y, 1)
    with pytest.raises(RckdError, match=r"shape \[batch, classes>=2\]"):
        losses.build("ce")(zs[:, :1], None, y, 1)
    with pytest.raises(RckdError, match="unknown loss method"):
        losses.defaults("nope")
    with pytest.raises(RckdError, match="'ctkd' learns its temperature: pass temperature="):
        losses.build("ctkd")(zs, _logits(4, 6, seed=41), y, 1)
    with pytest.raises(RckdError, match="'kd' has a fixed temperature"):
        losses.build("kd")(zs, _logits(4, 6, seed=41), y, 1, temperature=torch.tensor(2.0))
