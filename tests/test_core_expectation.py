"""Statistical tests: ``expectation`` is unbiased in value and in its gradients.

Each test batches B independent draws in one call (one row per draw, each with its own copy
of the parameters so that per-draw gradients come out of a single backward) and compares
the means with the exact quantities within 4 standard errors.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import Tensor

from wsi_ats.core import draw, estimate, expectation, exploration_proposal, sample

K, D, P = 6, 3, 4
DRAWS = 20_000
Z_MAX = 4.0

Estimator = Callable[[Tensor, Tensor, bool], Tensor]


def _problem() -> dict[str, Tensor]:
    g = torch.Generator().manual_seed(0)
    kw: dict[str, Any] = {"generator": g, "dtype": torch.float64}
    return {
        "theta": torch.randn(K, **kw),  # attention logits
        "x": torch.randn(K, P, **kw),  # fixed per-cell inputs of the feature net
        "weight": torch.randn(D, P, **kw),  # tiny linear feature net f_k = W x_k + b
        "bias": torch.randn(D, **kw),
        "w_out": torch.randn(D, **kw),  # loss = w_out . estimate (fixed upstream gradient)
    }


def _exact(pb: dict[str, Tensor]) -> dict[str, Tensor]:
    theta, weight, bias = (pb[k].clone().requires_grad_() for k in ("theta", "weight", "bias"))
    a = torch.softmax(theta, 0)
    value = a @ (pb["x"] @ weight.T + bias)  # sum_k a_k f_k, [D]
    (value @ pb["w_out"]).backward()
    return {"value": value.detach(), "theta": theta.grad, "weight": weight.grad, "bias": bias.grad}


def _per_draw(pb: dict[str, Tensor], n: int, replace: bool, estimator: Estimator, seed: int):
    def rows(t: Tensor) -> Tensor:
        return t.expand(DRAWS, *t.shape).clone().requires_grad_()

    theta, weight, bias = rows(pb["theta"]), rows(pb["weight"]), rows(pb["bias"])
    a = torch.softmax(theta, 1)
    indices, sampled = sample(a, n, replace, generator=torch.Generator().manual_seed(seed))
    features = torch.einsum("bdp,bnp->bnd", weight, pb["x"][indices]) + bias[:, None, :]
    value = estimator(sampled, features, replace)
    (value @ pb["w_out"]).sum().backward()
    return {"value": value.detach(), "theta": theta.grad, "weight": weight.grad, "bias": bias.grad}


def _z_scores(per_draw: dict[str, Tensor], exact: dict[str, Tensor]) -> dict[str, Tensor]:
    """|mean - exact| / SE per scalar; deterministic quantities (SE ~ 0) must match to 1e-9."""
    out = {}
    for name, draws in per_draw.items():
        mean, se = draws.mean(0), draws.std(0) / DRAWS**0.5
        err = (mean - exact[name]).abs()
        out[name] = err / (se + 1e-9 * (1 + exact[name].abs()))
    return out


@pytest.mark.parametrize(
    ("replace", "n"),
    [(True, 1), (True, 3), (True, 8), (False, 1), (False, 2), (False, 4), (False, K)],
)
def test_value_and_gradients_are_unbiased(replace: bool, n: int) -> None:
    pb = _problem()
    z = _z_scores(_per_draw(pb, n, replace, expectation, seed=100 + n), _exact(pb))
    for name, scores in z.items():
        assert scores.max() < Z_MAX, f"{name}: z-scores {scores.flatten().tolist()}"


class _KerasWithoutReplacement(torch.autograd.Function):
    """The original Keras library's estimator: same value and feature gradient, but its
    attention gradient ``w g.(F_i / (a_i / (1 - S_{i-1})) + sum_{j<i} f_j - i f_i)`` is biased."""

    @staticmethod
    def forward(ctx: Any, a: Tensor, f: Tensor) -> Tensor:
        ctx.save_for_backward(a, f)
        return expectation(a, f, False)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, Tensor]:
        a, f = ctx.saved_tensors
        n = a.shape[1]
        pm = 1 - (a.cumsum(1) - a)
        f_est = (a[..., None] * f).cumsum(1) - a[..., None] * f + pm[..., None] * f
        position = torch.arange(n, dtype=f.dtype)[None, :, None]
        ga = f_est / (a / pm)[..., None] + (f.cumsum(1) - f) - position * f
        later = torch.arange(n - 1, -1, -1, dtype=f.dtype)
        gf = (pm + later * a)[..., None] / n * grad[:, None, :]
        return (grad[:, None, :] * ga).sum(-1) / n, gf


class _NoEarlierTerm(torch.autograd.Function):
    """A deliberately wrong gradient: drops the exact gradient of the earlier draws."""

    @staticmethod
    def forward(ctx: Any, a: Tensor, f: Tensor) -> Tensor:
        ctx.save_for_backward(a, f)
        return expectation(a, f, False)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, Tensor]:
        a, f = ctx.saved_tensors
        n = a.shape[1]
        pm = 1 - (a.cumsum(1) - a)
        g_f = torch.einsum("bd,bnd->bn", grad, f)
        later = torch.arange(n - 1, -1, -1, dtype=f.dtype)
        gf = (pm + later * a)[..., None] / n * grad[:, None, :]
        return g_f * pm / a / n, gf


@pytest.mark.parametrize(
    ("function", "n"),
    [(_KerasWithoutReplacement, 2), (_KerasWithoutReplacement, K), (_NoEarlierTerm, 3)],
)
def test_check_rejects_biased_attention_gradients(function: type, n: int) -> None:
    """The same check has the power to reject the Keras gradient and a wrong one."""
    pb = _problem()

    def biased(a: Tensor, f: Tensor, replace: bool) -> Tensor:
        return function.apply(a, f)

    z = _z_scores(_per_draw(pb, n, False, biased, seed=200 + n), _exact(pb))
    assert z["theta"].max() > 2 * Z_MAX
    # Value and feature gradients are shared with the correct estimator: they still pass.
    for name in ("value", "weight", "bias"):
        assert z[name].max() < Z_MAX


def test_with_replacement_closed_form() -> None:
    a = torch.tensor([[0.25, 0.5, 0.25]], requires_grad=True)
    f = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]], requires_grad=True)
    out = expectation(a, f, True)
    assert torch.allclose(out, f.mean(1))
    out.sum().backward()
    assert torch.allclose(a.grad, f.sum(-1) / (3 * a.detach()))
    assert torch.allclose(f.grad, torch.full_like(f, 1 / 3))


def test_without_replacement_all_cells_gives_exact_sum() -> None:
    a = torch.tensor([[0.1, 0.6, 0.3]], dtype=torch.float64)
    f = torch.randn(1, 3, 2, dtype=torch.float64)
    # The last term of the estimator with N = K is exact; check the whole formula by hand.
    s = torch.cat([torch.zeros(1, 1, dtype=torch.float64), a.cumsum(1)[:, :-1]], 1)
    terms = [(a[:, :i, None] * f[:, :i]).sum(1) + (1 - s[:, i, None]) * f[:, i] for i in range(3)]
    assert torch.allclose(expectation(a, f, False), sum(terms) / 3)
    assert torch.allclose(terms[-1], (a[..., None] * f).sum(1))


def test_rejects_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match=r"\[B, N\]"):
        expectation(torch.rand(2, 3), torch.rand(2, 4, 5), True)
    with pytest.raises(ValueError):
        expectation(torch.rand(2, 3, 1), torch.rand(2, 3, 5), False)


# --- proposals (exploration) and control variates ------------------------------------------------


def _per_draw_proposal(
    pb: dict[str, Tensor],
    n: int,
    replace: bool,
    explore: float,
    control_variate: str,
    baseline: Tensor | None,
    seed: int,
    offset: float = 0.0,
) -> dict[str, Tensor]:
    """Like ``_per_draw`` but through ``draw``/``estimate`` (the path training takes)."""

    def rows(t: Tensor) -> Tensor:
        return t.expand(DRAWS, *t.shape).clone().requires_grad_()

    theta, weight, bias = rows(pb["theta"]), rows(pb["weight"]), rows(pb["bias"])
    a = torch.softmax(theta, 1)
    drawn = draw(a, n, replace, torch.Generator().manual_seed(seed), explore=explore)
    features = torch.einsum("bdp,bnp->bnd", weight, pb["x"][drawn.indices]) + bias[:, None, :]
    features = features + offset  # a common offset: what a baseline is for
    value = estimate(a, drawn, features, control_variate, baseline)
    (value @ pb["w_out"]).sum().backward()
    return {"value": value.detach(), "theta": theta.grad, "weight": weight.grad, "bias": bias.grad}


def _exact_offset(pb: dict[str, Tensor], offset: float) -> dict[str, Tensor]:
    shifted = dict(pb)
    shifted["bias"] = pb["bias"] + offset
    exact = _exact(shifted)
    exact["bias"] = exact["bias"]  # d/d bias does not depend on the offset
    return exact


@pytest.mark.parametrize(
    ("replace", "n", "explore", "control_variate", "with_baseline"),
    [
        (True, 1, 0.0, "loo", True),  # N = 1: the external baseline is all there is
        (True, 4, 0.0, "loo", False),
        (True, 4, 0.3, "loo", False),
        (True, 3, 0.3, "none", True),  # a running-mean style baseline everywhere
        (True, 3, 0.5, "none", False),  # importance weights alone
        (False, 1, 0.0, "loo", True),
        (False, 3, 0.0, "loo", False),
        (False, 3, 0.0, "loo", True),
        (False, 4, 0.3, "loo", True),
        (False, K, 0.3, "none", False),
        (False, 2, 0.5, "none", True),
    ],
)
def test_proposals_and_control_variates_stay_unbiased(
    replace: bool, n: int, explore: float, control_variate: str, with_baseline: bool
) -> None:
    pb = _problem()
    baseline = torch.randn(D, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    seed = 300 + 10 * n + int(10 * explore)
    per_draw = _per_draw_proposal(
        pb, n, replace, explore, control_variate, baseline if with_baseline else None, seed, 3.0
    )
    z = _z_scores(per_draw, _exact_offset(pb, 3.0))
    for name, scores in z.items():
        assert scores.max() < Z_MAX, f"{name}: z-scores {scores.flatten().tolist()}"


@pytest.mark.parametrize("replace", [True, False])
def test_leave_one_out_baseline_reduces_the_attention_gradient_variance(replace: bool) -> None:
    """Features with a large common part (as random features have): the baseline removes it.
    Without replacement the first draw has no earlier one: it leans on an external baseline (a
    running mean of pooled features in training; here the common part, roughly)."""
    pb = _problem()
    baseline = None if replace else torch.full((D,), 5.0, dtype=torch.float64)
    plain = _per_draw_proposal(pb, 4, replace, 0.0, "none", None, 11, offset=5.0)
    loo = _per_draw_proposal(pb, 4, replace, 0.0, "loo", baseline, 11, offset=5.0)
    ratio = (loo["theta"].var(0).sum() / plain["theta"].var(0).sum()).item()
    assert ratio < 0.2, ratio  # measured: 0.06 with replacement, 0.07 without
    assert torch.equal(loo["value"], plain["value"])  # the value never changes
    assert torch.equal(loo["weight"], plain["weight"])


def test_check_rejects_a_baseline_that_uses_the_current_draw() -> None:
    """Power: a baseline that includes each draw's own value (mean over all draws) is biased."""

    class _OwnDrawBaseline(torch.autograd.Function):
        @staticmethod
        def forward(ctx: Any, a: Tensor, f: Tensor) -> Tensor:
            ctx.save_for_backward(a, f)
            return expectation(a, f, True)

        @staticmethod
        def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, Tensor]:
            a, f = ctx.saved_tensors
            n = a.shape[1]
            g_f = torch.einsum("bd,bnd->bn", grad, f)
            c = g_f.mean(1, keepdim=True)  # includes draw i itself
            return (g_f - c) / (n * a), grad[:, None, :].expand_as(f) / n

    pb = _problem()

    def biased(a: Tensor, f: Tensor, replace: bool) -> Tensor:
        return _OwnDrawBaseline.apply(a, f)

    z = _z_scores(_per_draw(pb, 2, True, biased, seed=400), _exact(pb))
    assert z["theta"].max() > 2 * Z_MAX


def test_exploration_proposal_mixes_uniform_over_the_support() -> None:
    a = torch.tensor([[0.0, 0.7, 0.3, 0.0]])
    q = exploration_proposal(a, 0.2)
    torch.testing.assert_close(q, torch.tensor([[0.0, 0.66, 0.34, 0.0]]))
    support = torch.tensor([[True, True, True, False]])
    q = exploration_proposal(a, 0.3, support)
    torch.testing.assert_close(q, torch.tensor([[0.1, 0.59, 0.31, 0.0]]))
    assert torch.equal(exploration_proposal(a, 0.0), a)
    with pytest.raises(ValueError, match="explore"):
        exploration_proposal(a, 1.5)
