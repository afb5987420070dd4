"""Instance-level losses on the sampled tiles (``wsi_ats.core.instance``) against hand computations:
top-k MIL, the tiles' evidence, attention distillation and the evidence likelihood."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

from wsi_ats.core import (
    attention_distillation_loss,
    evidence_likelihood_loss,
    instance_evidence,
    topk_instance_loss,
)


def _bce(logit: float, target: float) -> float:
    """``BCE(sigmoid(logit), target)`` by hand."""
    p = 1.0 / (1.0 + math.exp(-logit))
    return -(target * math.log(p) + (1 - target) * math.log(1 - p))


LOGITS = [[0.5, -1.0, 2.0, 0.0], [1.5, -0.5, 0.25, -2.0], [-1.0, 3.0, 0.0, 1.0]]
LABELS = [1, 0, 1]


def _inputs() -> tuple[Tensor, Tensor]:
    return torch.tensor(LOGITS, dtype=torch.float64), torch.tensor(LABELS)


# --- topk_instance_loss -------------------------------------------------------------------------


def test_topk_k0_trains_every_tile_towards_its_bag_label() -> None:
    logits, labels = _inputs()
    expected = sum(
        sum(_bce(x, float(y)) for x in row) / len(row)
        for row, y in zip(LOGITS, LABELS, strict=True)
    ) / len(LOGITS)
    assert topk_instance_loss(logits, labels, k=0).item() == pytest.approx(expected, rel=1e-12)
    # the same as plain BCE of every tile against its bag's label
    plain = torch.nn.functional.binary_cross_entropy_with_logits(
        logits, labels[:, None].double().expand_as(logits)
    )
    assert topk_instance_loss(logits, labels, k=0).item() == pytest.approx(plain.item())


@pytest.mark.parametrize("k", [1, 2, 3])
def test_topk_trains_only_the_top_k_of_positive_bags(k: int) -> None:
    logits, labels = _inputs()
    per_bag = []
    for row, y in zip(LOGITS, LABELS, strict=True):
        if y == 1:  # the k highest logits, towards 1
            top = sorted(row, reverse=True)[:k]
            per_bag.append(sum(_bce(x, 1.0) for x in top) / k)
        else:  # negatives="all": every tile towards 0
            per_bag.append(sum(_bce(x, 0.0) for x in row) / len(row))
    expected = sum(per_bag) / len(per_bag)
    assert topk_instance_loss(logits, labels, k=k).item() == pytest.approx(expected, rel=1e-12)


def test_topk_gradient_reaches_only_the_chosen_tiles_of_positive_bags() -> None:
    logits, labels = _inputs()
    logits.requires_grad_()
    topk_instance_loss(logits, labels, k=1).backward()
    g = logits.grad
    # positive bags: only the argmax gets a gradient, and it pushes the logit up (negative grad)
    for b in (0, 2):
        top = int(torch.tensor(LOGITS[b]).argmax())
        assert g[b, top] < 0
        assert torch.count_nonzero(g[b]) == 1
    # the negative bag: every tile gets a gradient pushing it down
    assert bool((g[1] > 0).all())


def test_topk_negatives_topk_only_trains_the_top_of_negative_bags() -> None:
    logits, labels = _inputs()
    expected_neg = _bce(max(LOGITS[1]), 0.0)
    expected_pos = [_bce(max(LOGITS[b]), 1.0) for b in (0, 2)]
    expected = (expected_pos[0] + expected_neg + expected_pos[1]) / 3
    got = topk_instance_loss(logits, labels, k=1, negatives="topk").item()
    assert got == pytest.approx(expected, rel=1e-12)


def test_topk_negatives_both_averages_every_tile_and_the_top() -> None:
    logits, labels = _inputs()
    every = sum(_bce(v, 0.0) for v in LOGITS[1]) / len(LOGITS[1])
    expected_neg = (every + _bce(max(LOGITS[1]), 0.0)) / 2
    expected_pos = [_bce(max(LOGITS[b]), 1.0) for b in (0, 2)]
    expected = (expected_pos[0] + expected_neg + expected_pos[1]) / 3
    got = topk_instance_loss(logits, labels, k=1, negatives="both").item()
    assert got == pytest.approx(expected, rel=1e-12)


def test_topk_k_larger_than_bag_uses_every_tile() -> None:
    logits, labels = _inputs()
    torch.testing.assert_close(
        topk_instance_loss(logits, labels, k=99), topk_instance_loss(logits, labels, k=0)
    )


def test_topk_multiclass_cross_entropy_on_the_top_k_for_the_bag_class() -> None:
    logits = torch.tensor(
        [
            [[2.0, 0.0, -1.0], [0.0, 1.0, 0.5], [0.5, 0.2, 3.0]],
            [[0.1, 0.3, 0.2], [1.0, -1.0, 0.0], [0.0, 2.0, 0.0]],
        ],
        dtype=torch.float64,
    )
    labels = torch.tensor([2, 1])
    # bag 0, class 2: logits for class 2 are [-1, 0.5, 3] -> top-2 are tiles 2 and 1
    # bag 1, class 1: logits for class 1 are [0.3, -1, 2] -> top-2 are tiles 2 and 0
    chosen = [(0, 2, 2), (0, 1, 2), (1, 2, 1), (1, 0, 1)]
    terms = [-torch.log_softmax(logits[b, i], 0)[c].item() for b, i, c in chosen]
    expected = sum(terms) / len(terms)
    assert topk_instance_loss(logits, labels, k=2).item() == pytest.approx(expected, rel=1e-12)


def test_topk_rejects_bad_arguments() -> None:
    logits, labels = _inputs()
    with pytest.raises(ValueError, match="negatives"):
        topk_instance_loss(logits, labels, negatives="some")
    with pytest.raises(ValueError, match="k must be"):
        topk_instance_loss(logits, labels, k=-1)
    with pytest.raises(ValueError, match=r"\[B, N\]"):
        topk_instance_loss(logits, labels[:2])
    with pytest.raises(ValueError, match=r"\[B, N\]"):
        topk_instance_loss(logits[0], labels[:1])


# --- instance_evidence --------------------------------------------------------------------------


def test_evidence_is_zero_at_or_below_the_prior_odds_and_rises_to_one() -> None:
    x = torch.tensor([[-5.0, -0.1, 0.0, math.log(4.0), 3.0, 30.0]], dtype=torch.float64)
    e = instance_evidence(x)
    # prior 1/2: the density ratio is the odds e^x; evidence 1 - 1/r above 1, else 0
    expected = torch.tensor([[0.0, 0.0, 0.0, 0.75, 1 - math.exp(-3.0), 1.0]], dtype=torch.float64)
    torch.testing.assert_close(e, expected)
    assert bool((e >= 0).all() and (e <= 1).all())
    grid = torch.linspace(-4, 8, 50, dtype=torch.float64)[None]
    assert bool((instance_evidence(grid).diff(dim=1) >= 0).all())  # non-decreasing in the score


def test_evidence_divides_by_the_given_prior_odds() -> None:
    # prior 0.2: prior odds 1/4. A tile with p = 0.5 (odds 1) has r = 4 -> evidence 0.75;
    # a tile at the prior (p = 0.2) has none.
    x = torch.tensor([[0.0, math.log(0.25), math.log(0.1)]], dtype=torch.float64)
    e = instance_evidence(x, prior=0.2)
    torch.testing.assert_close(e, torch.tensor([[0.75, 0.0, 0.0]], dtype=torch.float64))


def test_evidence_multiclass_uses_the_bag_class_odds() -> None:
    # one bag, class 1 of 3; prior 1/3 -> prior odds 1/2
    probs = torch.tensor([[[0.2, 0.6, 0.2], [0.5, 1 / 3, 1 / 6], [0.7, 0.2, 0.1]]])
    e = instance_evidence(probs.log().double(), torch.tensor([1]))
    # odds of class 1: 0.6/0.4 = 1.5 -> r = 3 -> 2/3; 1/3 -> odds 1/2 -> r = 1 -> 0; 0.2 -> 0
    torch.testing.assert_close(e, torch.tensor([[2 / 3, 0.0, 0.0]], dtype=torch.float64))
    with pytest.raises(ValueError, match="labels"):
        instance_evidence(probs.log())


def test_evidence_carries_no_gradient() -> None:
    x = torch.randn(2, 5, requires_grad=True)
    e = instance_evidence(x)
    assert not e.requires_grad and e.grad_fn is None
    assert e.shape == x.shape and e.dtype == x.dtype


# --- attention_distillation_loss ----------------------------------------------------------------


def test_distillation_is_bce_towards_the_evidence() -> None:
    logits = torch.tensor([[0.3, -1.2, 2.0], [0.0, 1.0, -0.5]], dtype=torch.float64)
    evidence = torch.tensor([[0.0, 0.5, 1.0], [0.9, 0.2, 0.0]], dtype=torch.float64)
    expected = (
        sum(
            _bce(x, t)
            for row, trow in zip(logits.tolist(), evidence.tolist(), strict=True)
            for x, t in zip(row, trow, strict=True)
        )
        / 6
    )
    assert attention_distillation_loss(logits, evidence).item() == pytest.approx(expected)


def test_distillation_weights_are_normalised_per_bag() -> None:
    logits = torch.tensor([[0.3, -1.2, 2.0], [0.0, 1.0, -0.5]], dtype=torch.float64)
    evidence = torch.tensor([[0.0, 0.5, 1.0], [0.9, 0.2, 0.0]], dtype=torch.float64)
    weights = torch.tensor([[1.0, 3.0, 0.0], [2.0, 2.0, 4.0]], dtype=torch.float64)
    per_bag = []
    for row, trow, wrow in zip(logits.tolist(), evidence.tolist(), weights.tolist(), strict=True):
        total = sum(wrow)
        per_bag.append(sum(w / total * _bce(x, t) for x, t, w in zip(row, trow, wrow, strict=True)))
    expected = sum(per_bag) / 2
    got = attention_distillation_loss(logits, evidence, weights)
    assert got.item() == pytest.approx(expected)
    # only the relative weights within a bag matter
    scaled = weights * torch.tensor([[7.0], [0.01]], dtype=torch.float64)
    torch.testing.assert_close(attention_distillation_loss(logits, evidence, scaled), got)
    # uniform weights are the plain mean
    torch.testing.assert_close(
        attention_distillation_loss(logits, evidence, torch.ones_like(logits)),
        attention_distillation_loss(logits, evidence),
    )


def test_distillation_gradient_reaches_the_logits_only() -> None:
    logits = torch.tensor([[0.3, -1.2, 2.0]], dtype=torch.float64, requires_grad=True)
    evidence = torch.tensor([[0.0, 0.5, 1.0]], dtype=torch.float64, requires_grad=True)
    weights = torch.tensor([[1.0, 3.0, 4.0]], dtype=torch.float64, requires_grad=True)
    attention_distillation_loss(logits, evidence, weights).backward()
    assert evidence.grad is None and weights.grad is None
    w = weights.detach() / 8
    torch.testing.assert_close(
        logits.grad, w * (torch.sigmoid(logits.detach()) - evidence.detach())
    )


def test_distillation_fits_the_log_odds_of_the_evidence() -> None:
    """At the optimum ``sigmoid(logit) = evidence``: the logit is the evidence's log-odds."""
    evidence = torch.tensor([[0.1, 0.5, 0.8]], dtype=torch.float64)
    logits = torch.zeros(1, 3, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([logits], max_iter=100, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        opt.zero_grad()
        loss = attention_distillation_loss(logits, evidence)
        loss.backward()
        return loss

    opt.step(closure)
    torch.testing.assert_close(logits.detach(), torch.logit(evidence), atol=1e-5, rtol=1e-5)


def test_distillation_rejects_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match="differ"):
        attention_distillation_loss(torch.zeros(2, 3), torch.zeros(2, 4))
    with pytest.raises(ValueError, match="weights"):
        attention_distillation_loss(torch.zeros(2, 3), torch.zeros(2, 3), torch.ones(2, 2))


# --- evidence_likelihood_loss -------------------------------------------------------------------


def test_evidence_likelihood_by_hand() -> None:
    log_a = torch.log(torch.tensor([[0.1, 0.2, 0.05], [0.3, 0.01, 0.4]], dtype=torch.float64))
    evidence = torch.tensor([[1.0, 0.0, 0.5], [0.0, 0.0, 0.0]], dtype=torch.float64)
    weights = torch.tensor([[2.0, 1.0, 4.0], [1.0, 1.0, 1.0]], dtype=torch.float64)
    # bag 0: -(1/3)(2 * 1 * log 0.1 + 4 * 0.5 * log 0.05); bag 1 has no evidence: 0
    bag0 = -(2 * math.log(0.1) + 2 * math.log(0.05)) / 3
    got = evidence_likelihood_loss(log_a, evidence, weights)
    assert got.item() == pytest.approx(bag0 / 2)
    unweighted = -(math.log(0.1) + 0.5 * math.log(0.05)) / 3 / 2
    assert evidence_likelihood_loss(log_a, evidence).item() == pytest.approx(unweighted)
    # the weights are importance weights, not normalised: scaling them scales the loss
    torch.testing.assert_close(evidence_likelihood_loss(log_a, evidence, 3 * weights), 3 * got)


def test_evidence_likelihood_gradient_reaches_the_attention_only() -> None:
    log_a = torch.log(torch.tensor([[0.1, 0.2, 0.05]], dtype=torch.float64)).requires_grad_()
    evidence = torch.tensor([[1.0, 0.0, 0.5]], dtype=torch.float64, requires_grad=True)
    weights = torch.tensor([[2.0, 1.0, 4.0]], dtype=torch.float64, requires_grad=True)
    evidence_likelihood_loss(log_a, evidence, weights).backward()
    assert evidence.grad is None and weights.grad is None
    torch.testing.assert_close(log_a.grad, -(weights * evidence).detach() / 3)


def test_evidence_likelihood_optimum_is_attention_proportional_to_evidence() -> None:
    """Every cell drawn once under the uniform measure (weights 1): the softmax that minimises the
    loss puts mass ``e_k / sum e``, and 0 where there is no evidence."""
    evidence = torch.tensor([[0.6, 0.3, 0.1, 0.0]], dtype=torch.float64)
    theta = torch.zeros(1, 4, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.Adam([theta], lr=0.1)
    for _ in range(1500):
        opt.zero_grad()
        evidence_likelihood_loss(torch.log_softmax(theta, 1), evidence).backward()
        opt.step()
    a = torch.softmax(theta.detach(), 1)
    torch.testing.assert_close(a[:, :3], evidence[:, :3] / evidence.sum(), atol=1e-2, rtol=0)
    assert a[0, 3] < 1e-2


def test_evidence_likelihood_rejects_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match="differ"):
        evidence_likelihood_loss(torch.zeros(2, 3), torch.zeros(3, 2))
