"""rckd.metrics against independent computations: scipy's Kendall tau-b, numpy ECE, NLL and KL."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import kendalltau

from rckd import metrics


def reference_tau(a: torch.Tensor, b: torch.Tensor, exclude: torch.Tensor | None = None) -> np.ndarray:
    """scipy's tau-b row by row, dropping column exclude[i] from row i."""
    values = []
    for row in range(len(a)):
        keep = np.ones(a.shape[1], dtype=bool)
        if exclude is not None:
            keep[int(exclude[row])] = False
        values.append(kendalltau(a[row].double().numpy()[keep], b[row].double().numpy()[keep], variant="b").statistic)
    return np.array(values)


def softmax(x: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    z = x / temperature
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def reference_ece(probs: np.ndarray, target: np.ndarray, bins: int) -> float:
    """Guo et al. (2017): bins (m-1)/M < confidence <= m/M, weighted |accuracy - confidence|."""
    confidence, prediction = probs.max(axis=1), probs.argmax(axis=1)
    total = 0.0
    for m in range(bins):
        inside = (confidence > m / bins) & (confidence <= (m + 1) / bins)
        if inside.any():
            total += inside.mean() * abs((prediction[inside] == target[inside]).mean() - confidence[inside].mean())
    return total


@pytest.fixture
def generator() -> torch.Generator:
    return torch.Generator().manual_seed(0)


def test_topk_accuracy_counts_the_target_among_the_k_highest():
    logits = torch.tensor([[0.1, 0.9, 0.5, 0.0], [0.8, 0.1, 0.3, 0.2], [0.1, 0.2, 0.3, 0.4]])
    target = torch.tensor([1, 2, 0])  # rank 1, rank 2, rank 4
    accuracy = metrics.topk_accuracy(logits, target, ks=(1, 2, 3, 5))
    assert accuracy["top1"].item() == pytest.approx(100 / 3)
    assert accuracy["top2"].item() == pytest.approx(200 / 3)
    assert accuracy["top3"].item() == pytest.approx(200 / 3)
    assert accuracy["top5"].item() == pytest.approx(100.0)  # k beyond the 4 classes: every sample is a hit


def test_nll_matches_numpy(generator):
    logits = torch.randn(50, 7, generator=generator) * 3
    target = torch.randint(0, 7, (50,), generator=generator)
    probs = softmax(logits.double().numpy())
    expected = -np.log(probs[np.arange(50), target.numpy()]).mean()
    assert metrics.nll(logits, target).item() == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize("bins", [15, 10, 1])
def test_ece_matches_the_standard_definition(generator, bins):
    logits = torch.randn(400, 10, generator=generator) * 2.5
    target = torch.randint(0, 10, (400,), generator=generator)
    target[:200] = logits[:200].argmax(1)  # half correct, so accuracy and confidence differ per bin
    expected = reference_ece(softmax(logits.double().numpy()), target.numpy(), bins)
    assert metrics.expected_calibration_error(logits, target, bins=bins).item() == pytest.approx(expected, abs=1e-6)


def test_ece_from_probabilities_by_hand():
    probs = torch.tensor([[0.9, 0.1], [0.9, 0.1], [0.3, 0.7], [0.45, 0.55]])
    target = torch.tensor([0, 1, 1, 1])
    # bins of 0.5: (0.5, 1] holds all four: accuracy 3/4, mean confidence (0.9+0.9+0.7+0.55)/4
    expected = abs(0.75 - (0.9 + 0.9 + 0.7 + 0.55) / 4)
    ece = metrics.expected_calibration_error(probs, target, bins=2, from_logits=False)
    assert ece.item() == pytest.approx(expected)
    # ten bins: 0.9 -> (0.8, 0.9], 0.7 -> (0.6, 0.7], 0.55 -> (0.5, 0.6]
    expected_ten = (2 / 4) * abs(0.5 - 0.9) + (1 / 4) * abs(1 - 0.7) + (1 / 4) * abs(1 - 0.55)
    assert metrics.expected_calibration_error(probs, target, bins=10, from_logits=False).item() == pytest.approx(
        expected_ten)


@pytest.mark.parametrize("temperature", [1.0, 4.0])
def test_kl_divergence_matches_numpy(generator, temperature):
    logits_p = torch.randn(30, 9, generator=generator) * 3
    logits_q = torch.randn(30, 9, generator=generator) * 3
    p = softmax(logits_p.double().numpy(), temperature)
    q = softmax(logits_q.double().numpy(), temperature)
    expected = (p * (np.log(p) - np.log(q))).sum(axis=1).mean()
    assert metrics.kl_divergence(logits_p, logits_q, temperature).item() == pytest.approx(expected, rel=1e-4)
    assert metrics.kl_divergence(logits_p, logits_p, temperature).item() == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_kendall_tau_equals_scipy_tau_b_with_ties(generator, dtype):
    # Values from {0, 1, 2, 3} over 8 columns: many ties in both rankings.
    a = torch.randint(0, 4, (80, 8), generator=generator).to(dtype)
    b = torch.randint(0, 4, (80, 8), generator=generator).to(dtype)
    exclude = torch.randint(0, 8, (80,), generator=generator)
    tau = metrics.kendall_tau(a, b)
    assert tau.dtype == torch.float64 and tau.shape == (80,)
    np.testing.assert_allclose(tau.numpy(), reference_tau(a, b), atol=1e-12)
    np.testing.assert_allclose(metrics.kendall_tau(a, b, exclude=exclude).numpy(), reference_tau(a, b, exclude),
                               atol=1e-12)


def test_kendall_tau_equals_scipy_on_continuous_logits_in_any_chunking(generator):
    a, b = torch.randn(37, 100, generator=generator), torch.randn(37, 100, generator=generator)
    b[:10] = a[:10] + 0.3 * b[:10]  # correlated rows too
    exclude = torch.randint(0, 100, (37,), generator=generator)
    expected = reference_tau(a, b, exclude)
    for chunk_size in (None, 1, 5, 37, 1000):
        np.testing.assert_allclose(metrics.kendall_tau(a, b, exclude, chunk_size=chunk_size).numpy(), expected,
                                   atol=1e-12)


def test_kendall_tau_is_nan_where_undefined_like_scipy():
    a = torch.tensor([[1.0, 1.0, 1.0], [1.0, 2.0, 3.0], [1.0, 2.0, 3.0]])
    b = torch.tensor([[1.0, 2.0, 3.0], [5.0, 5.0, 5.0], [3.0, 2.0, 2.0]])
    tau = metrics.kendall_tau(a, b)
    assert np.isnan(reference_tau(a, b)[:2]).all()
    assert torch.isnan(tau[:2]).all()
    assert tau[2].item() == pytest.approx(reference_tau(a, b)[2])
    # two columns, one excluded: a single class cannot be ranked
    pair = torch.tensor([[0.3, 0.7]])
    assert torch.isnan(metrics.kendall_tau(pair, pair, exclude=torch.tensor([0]))).all()


def test_kendall_tau_identities(generator):
    a = torch.randn(5, 20, generator=generator)
    assert torch.equal(metrics.kendall_tau(a, a), torch.ones(5, dtype=torch.float64))
    assert torch.equal(metrics.kendall_tau(a, -a), -torch.ones(5, dtype=torch.float64))
    assert torch.equal(metrics.kendall_tau(a, a * 7 + 3), torch.ones(5, dtype=torch.float64))  # rank-only
    assert metrics.kendall_tau(a[:0], a[:0]).shape == (0,)


def test_kendall_tau_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="one shape"):
        metrics.kendall_tau(torch.zeros(3, 4), torch.zeros(3, 5))
    with pytest.raises(ValueError, match="exclude"):
        metrics.kendall_tau(torch.zeros(3, 4), torch.zeros(3, 4), exclude=torch.zeros(2, dtype=torch.long))


def test_top5_overlap_by_hand():
    logits_s = torch.tensor([[9.0, 8, 7, 6, 5, 4, 3], [9.0, 8, 7, 6, 5, 4, 3]])
    logits_t = torch.tensor([[9.0, 8, 7, 6, 5, 4, 3], [0.0, 1, 2, 3, 4, 5, 6]])
    # row 1: identical top-5; row 2: teacher's top-5 is columns 2..6, the student's 0..4: 3 shared
    assert metrics.top5_overlap(logits_s, logits_t).item() == pytest.approx((5 / 5 + 3 / 5) / 2)


def test_fidelity_matches_independent_computations(generator):
    logits_t = torch.randn(60, 12, generator=generator) * 2
    logits_s = logits_t + torch.randn(60, 12, generator=generator) * 1.5
    target = torch.randint(0, 12, (60,), generator=generator)
    result = metrics.fidelity(logits_s, logits_t, target, temperature=4.0)
    s, t = logits_s.double().numpy(), logits_t.double().numpy()
    assert set(result) == {"agreement", "kl_t1", "kl_tm", "tau_all", "tau_nt", "top5_overlap"}
    assert result["agreement"].item() == pytest.approx((s.argmax(1) == t.argmax(1)).mean() * 100)
    for key, temperature in (("kl_t1", 1.0), ("kl_tm", 4.0)):
        p_t, p_s = softmax(t, temperature), softmax(s, temperature)
        assert result[key].item() == pytest.approx((p_t * np.log(p_t / p_s)).sum(1).mean(), rel=1e-4)
    assert result["tau_all"].item() == pytest.approx(reference_tau(logits_s, logits_t).mean(), abs=1e-12)
    assert result["tau_nt"].item() == pytest.approx(reference_tau(logits_s, logits_t, target).mean(), abs=1e-12)
    shared = [len(set(np.argsort(-s[i])[:5]) & set(np.argsort(-t[i])[:5])) / 5 for i in range(60)]
    assert result["top5_overlap"].item() == pytest.approx(np.mean(shared))


def test_kendall_tau_stays_exact_under_autocast(generator):
    a, b = torch.randn(20, 50, generator=generator), torch.randn(20, 50, generator=generator)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        tau = metrics.kendall_tau(a, b)
    np.testing.assert_allclose(tau.numpy(), reference_tau(a, b), atol=1e-12)
