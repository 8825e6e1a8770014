"""MLKD (rckd.losses.mlkd) against an explicit float64 computation of its source's formula, quirks included
(Jin-Ying/Multi-Level-Logit-Distillation 5ee473f, mdistiller/distillers/KD_ours.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import rckd.losses as losses
from rckd.errors import RckdError
from rckd.losses import catalog, mlkd


def _softmax(row: list[float], temperature: float) -> list[float]:
    top = max(row)
    exps = [math.exp((value - top) / temperature) for value in row]
    return [value / sum(exps) for value in exps]


def _kd(zs: np.ndarray, zt: np.ndarray, temperature: float) -> float:
    """T^2 * mean_i sum_j p_t log(p_t / p_s), the source's kd_loss, term by term."""
    total = 0.0
    for row_s, row_t in zip(zs.tolist(), zt.tolist()):
        p_s, p_t = _softmax(row_s, temperature), _softmax(row_t, temperature)
        total += sum(t * (math.log(t) - math.log(s)) for s, t in zip(p_s, p_t) if t > 0)
    return temperature**2 * total / len(zs)


def _gram_distance(zs: np.ndarray, zt: np.ndarray, temperature: float, over_classes: bool) -> float:
    """sum of squared differences of the Gram matrices, / C (class level) or / B (batch level)."""
    p_s = [_softmax(row, temperature) for row in zs.tolist()]
    p_t = [_softmax(row, temperature) for row in zt.tolist()]
    batch, classes = zs.shape
    if over_classes:  # G[j, k] = sum_i p[i][j] p[i][k]
        pairs, inner, divisor = [(j, k) for j in range(classes) for k in range(classes)], range(batch), classes
        gram = lambda p, j, k: sum(p[i][j] * p[i][k] for i in inner)  # noqa: E731
    else:  # G[i, l] = sum_j p[i][j] p[l][j]
        pairs, inner, divisor = [(i, l) for i in range(batch) for l in range(batch)], range(classes), batch
        gram = lambda p, i, l: sum(p[i][j] * p[l][j] for j in inner)  # noqa: E731
    return sum((gram(p_t, a, b) - gram(p_s, a, b)) ** 2 for a, b in pairs) / divisor


def _share(values: np.ndarray) -> float:
    """The mean of the source's mask: values <= np.percentile(values, 50)."""
    return float(np.mean(values <= np.percentile(values, 50)))


def reference(params: dict, zs_w, zt_w, zs_s, zt_s, y) -> dict[str, float]:
    zs_w, zt_w, zs_s, zt_s = (np.asarray(z, dtype=np.float64) for z in (zs_w, zt_w, zs_s, zt_s))
    y = np.asarray(y)
    temperatures = [params["T"], 3.0, 5.0, 2.0, 6.0]
    teacher = np.array([_softmax(row, 1.0) for row in zt_w.tolist()])
    sample_share, class_share = _share(teacher.max(1)), _share(teacher.sum(0))

    def ce(z):
        return float(np.mean([-math.log(_softmax(row, 1.0)[label]) for row, label in zip(z.tolist(), y)]))

    kd_weak = sum(_kd(zs_w, zt_w, t) * sample_share for t in temperatures)
    kd_strong = (sum(_kd(zs_s, zt_s, t) for t in temperatures[:3])  # the source's T, 3, 5 on the strong view,
                 + sum(_kd(zs_w, zt_w, t) for t in temperatures[3:]))  # its 2 and 6 on the weak one
    return {
        "ce": params["ce"] * (ce(zs_w) + ce(zs_s)),
        "kd": params["kd"] * (kd_weak + kd_strong),
        "cc": sum(params["kd"] * class_share * _gram_distance(zs_w, zt_w, t, True) for t in temperatures),
        "bc": sum(params["kd"] * sample_share * _gram_distance(zs_w, zt_w, t, False) for t in temperatures),
    }


def _logits(batch: int, classes: int, scale: float, seed: int) -> torch.Tensor:
    return scale * torch.randn(batch, classes, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _case(kind: str, scale: float, batch: int = 8, classes: int = 7):
    zs_w, zt_w = _logits(batch, classes, scale, 1), _logits(batch, classes, scale, 2)
    zs_s, zt_s = _logits(batch, classes, scale, 3), _logits(batch, classes, scale, 4)
    y = torch.randint(0, classes, (batch,), generator=torch.Generator().manual_seed(5))
    if kind == "identical":
        zs_w, zs_s = zt_w.clone(), zt_s.clone()
    if kind == "one_hot_teacher":  # (+ a small ramp over the classes, so that no two class sums tie: a tie
        # broken by the last bit of a float sum would make the class mask differ between two summation orders)
        ramp = 0.01 * torch.arange(classes, dtype=torch.float64)
        zt_w = scale * torch.nn.functional.one_hot(y, classes).double() + ramp
        zt_s = scale * torch.nn.functional.one_hot(y.roll(1), classes).double() + ramp
    return zs_w, zt_w, zs_s, zt_s, y


@pytest.mark.parametrize("kind", ["random", "identical", "one_hot_teacher"])
@pytest.mark.parametrize("scale", [1.0, 10.0, 50.0])
@pytest.mark.parametrize("params", [{}, {"T": 2.0, "ce": 1.0, "kd": 0.5}])
def test_mlkd_equals_the_explicit_float64_formula(kind, scale, params):
    loss = losses.build("mlkd", **params)
    zs_w, zt_w, zs_s, zt_s, y = _case(kind, scale)
    terms = loss(zs_w, zt_w, y, 1, strong=(zs_s, zt_s))
    expected = reference(loss.params, zs_w, zt_w, zs_s, zt_s, y)
    assert set(terms) == set(expected) == {"ce", "kd", "cc", "bc"}
    for name, value in expected.items():
        assert float(terms[name]) == pytest.approx(value, rel=1e-9, abs=1e-12), name
    if kind == "identical":  # the weak view matches: only the strong view's KD at T, 3, 5 is left
        assert float(terms["cc"]) == float(terms["bc"]) == 0
        strong_kd = sum(mlkd.instance_distance(zs_s, zt_s, t) for t in (loss.params["T"], 3.0, 5.0))
        assert float(terms["kd"]) == pytest.approx(loss.params["kd"] * float(strong_kd), abs=1e-12)


def test_masks_scale_whole_terms_by_the_share_at_or_below_the_median():
    """The source multiplies a batch-mean scalar by the mask and averages: the term times the share of
    samples (classes) whose teacher confidence is at or below the median, about 1/2, not a selection."""
    zs_w, zt_w, zs_s, zt_s, y = _case("random", 3.0, batch=8)
    terms = losses.build("mlkd", T=4.0)(zs_w, zt_w, y, 1, strong=(zs_s, zt_s))
    unmasked_bc = sum(mlkd.batch_distance(zs_w, zt_w, t) for t in (4.0, 3.0, 5.0, 2.0, 6.0))
    assert float(terms["bc"]) == pytest.approx(0.9 * 0.5 * float(unmasked_bc), rel=1e-12)  # 4 of 8 samples
    ties = torch.tensor([0.2, 0.5, 0.5, 0.5, 0.9])
    assert float(mlkd.share_at_or_below_median(ties)) == pytest.approx(0.8)
    assert float(mlkd.share_at_or_below_median(torch.tensor([1.0, 2.0, 3.0, 4.0]))) == 0.5


def test_the_strong_view_reaches_only_ce_and_three_kd_terms():
    zs_w, zt_w, zs_s, zt_s, y = _case("random", 2.0)
    loss = losses.build("mlkd")
    zs_s.requires_grad_()
    terms = loss(zs_w, zt_w, y, 1, strong=(zs_s, zt_s))
    for name in ("cc", "bc"):
        assert not terms[name].requires_grad  # the strong view's batch and class terms never reach the loss
    (grad,) = torch.autograd.grad(terms["kd"], zs_s)
    three = sum(mlkd.instance_distance(zs_s, zt_s, t) for t in (4.0, 3.0, 5.0))
    torch.testing.assert_close(grad, torch.autograd.grad(0.9 * three, zs_s)[0])


def test_no_warmup_the_epoch_does_not_matter():
    zs_w, zt_w, zs_s, zt_s, y = _case("random", 2.0)
    loss = losses.build("mlkd")
    first, last = loss(zs_w, zt_w, y, 1, strong=(zs_s, zt_s)), loss(zs_w, zt_w, y, 240, strong=(zs_s, zt_s))
    assert all(torch.equal(first[name], last[name]) for name in first)


def test_gradcheck_float64_and_one_compiled_graph():
    zs_w, zt_w, zs_s, zt_s, y = _case("random", 2.0, batch=6, classes=5)
    loss = losses.build("mlkd")

    def total(a, b):
        return sum(loss(a, zt_w, y, 1, strong=(b, zt_s)).values())

    assert torch.autograd.gradcheck(total, (zs_w.clone().requires_grad_(), zs_s.clone().requires_grad_()))
    compiled = torch.compile(total, fullgraph=True, backend="aot_eager")
    a, b = zs_w.float().requires_grad_(), zs_s.float()
    torch.testing.assert_close(compiled(a, b), total(a, b))


def test_bf16_student_logits_are_computed_in_float32():
    zs_w, zt_w, zs_s, zt_s, y = (value.float() if value.is_floating_point() else value
                                 for value in _case("random", 3.0))
    terms = losses.build("mlkd")(zs_w.bfloat16(), zt_w, y, 1, strong=(zs_s.bfloat16(), zt_s))
    assert all(value.dtype == torch.float32 and torch.isfinite(value) for value in terms.values())


def test_mlkd_is_a_two_view_method_with_a_live_teacher():
    assert catalog.needs_live_teacher("mlkd") and catalog.method("mlkd").views == 2
    assert not any(catalog.needs_live_teacher(name) for name in catalog.available() if name != "mlkd")
    assert losses.defaults("mlkd") == {"ce": 0.1, "kd": 0.9, "T": 4.0}  # the source's KD defaults
    zs_w, zt_w, zs_s, zt_s, y = _case("random", 1.0)
    with pytest.raises(RckdError, match="needs the logits of a second view"):
        losses.build("mlkd")(zs_w, zt_w, y, 1)
    with pytest.raises(RckdError, match="do not match the weak view"):
        losses.build("mlkd")(zs_w, zt_w, y, 1, strong=(zs_s[:4], zt_s[:4]))
    with pytest.raises(RckdError, match="takes one view"):
        losses.build("kd")(zs_w, zt_w, y, 1, strong=(zs_s, zt_s))
