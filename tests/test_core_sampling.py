"""Statistical and contract tests for ``wsi_ats.core.sample`` and ``multinomial_entropy``."""

from __future__ import annotations

import math

import pytest
import torch
from scipy import stats

from wsi_ats.core import multinomial_entropy, sample

P_MIN = 1e-3


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _attention(k: int, seed: int = 0) -> torch.Tensor:
    logits = torch.randn(k, generator=_gen(seed), dtype=torch.float64)
    return torch.softmax(logits, 0)


def test_with_replacement_frequencies_match_attention() -> None:
    a = _attention(6, seed=1)
    indices, _ = sample(a.expand(4, 6), 20_000, replace=True, generator=_gen(2))
    counts = torch.bincount(indices.flatten(), minlength=6).double()
    result = stats.chisquare(counts.numpy(), (a * counts.sum()).numpy())
    assert result.pvalue > P_MIN


def test_without_replacement_first_draw_frequencies_match_attention() -> None:
    a = _attention(7, seed=3)
    indices, _ = sample(a.expand(30_000, 7), 3, replace=False, generator=_gen(4))
    counts = torch.bincount(indices[:, 0], minlength=7).double()
    result = stats.chisquare(counts.numpy(), (a * counts.sum()).numpy())
    assert result.pvalue > P_MIN


def test_without_replacement_ordered_pairs_follow_sequential_sampling() -> None:
    k = 4
    a = _attention(k, seed=5)
    indices, _ = sample(a.expand(40_000, k), 2, replace=False, generator=_gen(6))
    pair_codes = indices[:, 0] * k + indices[:, 1]
    counts = torch.bincount(pair_codes, minlength=k * k).double().view(k, k)
    expected = a[:, None] * a[None, :] / (1 - a[:, None])  # P(q1=i) P(q2=j | q1=i)
    off_diagonal = ~torch.eye(k, dtype=torch.bool)
    assert counts.diagonal().sum() == 0
    assert torch.isclose(expected[off_diagonal].sum(), torch.tensor(1.0, dtype=torch.float64))
    result = stats.chisquare(
        counts[off_diagonal].numpy(), (expected[off_diagonal] * counts.sum()).numpy()
    )
    assert result.pvalue > P_MIN


def test_without_replacement_never_repeats() -> None:
    a = _attention(10, seed=7)
    for n in (5, 10):
        indices, _ = sample(a.expand(2_000, 10), n, replace=False, generator=_gen(8))
        assert indices.shape == (2_000, n)
        assert (indices.sort(dim=1).values.diff(dim=1) > 0).all()
    full, _ = sample(a.expand(100, 10), 10, replace=False, generator=_gen(9))
    assert torch.equal(full.sort(dim=1).values, torch.arange(10).expand(100, 10))


def test_refuses_more_draws_than_nonzero_cells() -> None:
    a = torch.tensor([[0.5, 0.0, 0.25, 0.25, 0.0], [0.2, 0.2, 0.2, 0.2, 0.2]])
    assert sample(a, 3, replace=False)[0].shape == (2, 3)
    with pytest.raises(ValueError, match="nonzero"):
        sample(a, 4, replace=False)
    with pytest.raises(ValueError):
        sample(a, 0, replace=True)
    # With replacement any n is fine.
    assert sample(a, 50, replace=True)[0].shape == (2, 50)


@pytest.mark.parametrize("replace", [True, False])
def test_zero_attention_cells_never_sampled(replace: bool) -> None:
    a = torch.tensor([0.0, 0.3, 0.0, 1e-6, 0.2, 0.0, 0.5 - 1e-6, 0.0])
    indices, sampled = sample(a.expand(5_000, 8), 4, replace=replace, generator=_gen(10))
    zero_cells = torch.tensor([0, 2, 5, 7])
    assert not torch.isin(indices, zero_cells).any()
    assert (sampled > 0).all()


@pytest.mark.parametrize("replace", [True, False])
def test_generator_determinism(replace: bool) -> None:
    a = _attention(50, seed=11).float().expand(3, 50)
    first = sample(a, 8, replace=replace, generator=_gen(12))[0]
    again = sample(a, 8, replace=replace, generator=_gen(12))[0]
    other = sample(a, 8, replace=replace, generator=_gen(13))[0]
    assert torch.equal(first, again)
    assert not torch.equal(first, other)


@pytest.mark.parametrize("replace", [True, False])
def test_grid_is_flattened_row_major_and_gradients_flow(replace: bool) -> None:
    logits = torch.randn(2, 3, 4, generator=_gen(14), requires_grad=True)
    attention = torch.softmax(logits.flatten(1), 1).view(2, 3, 4)
    indices, sampled = sample(attention, 5, replace=replace, generator=_gen(15))
    assert indices.dtype == torch.long and indices.shape == (2, 5)
    assert int(indices.max()) < 12
    rows, cols = indices // 4, indices % 4
    batch = torch.arange(2)[:, None]
    assert torch.equal(sampled, attention[batch, rows, cols])
    sampled.sum().backward()
    assert logits.grad is not None and logits.grad.abs().sum() > 0


def test_multinomial_entropy_values_and_safe_gradient() -> None:
    uniform = torch.full((2, 4, 4), 1 / 16)
    assert torch.allclose(multinomial_entropy(uniform), torch.full((2,), math.log(16)))
    one_hot = torch.zeros(1, 5)
    one_hot[0, 2] = 1
    assert multinomial_entropy(one_hot).item() == 0.0
    logits = torch.tensor([[0.3, float("-inf"), -0.2, float("-inf")]], requires_grad=True)
    a = torch.softmax(logits, 1)
    ent = multinomial_entropy(a)
    p = torch.tensor([0.3, -0.2]).softmax(0)
    assert torch.allclose(ent, -(p * p.log()).sum().view(1))
    ent.sum().backward()
    assert torch.isfinite(logits.grad).all()
    assert logits.grad[0, 1] == 0 and logits.grad[0, 3] == 0


def test_inverse_cdf_path_for_huge_grids(monkeypatch: pytest.MonkeyPatch) -> None:
    """Grids beyond torch.multinomial's category limit use an inverse-CDF draw; same law."""
    from wsi_ats.core import sampling

    monkeypatch.setattr(sampling, "MULTINOMIAL_MAX_CATEGORIES", 4)
    a = torch.tensor([0.0, 0.1, 0.0, 0.25, 0.4, 0.25, 0.0])
    indices, sampled = sample(a.expand(3, 7), 20_000, replace=True, generator=_gen(16))
    assert torch.equal(sampled, a[indices])
    counts = torch.bincount(indices.flatten(), minlength=7).double()
    assert counts[a == 0].sum() == 0
    nonzero = a > 0
    result = stats.chisquare(counts[nonzero].numpy(), (a[nonzero] * counts.sum()).double().numpy())
    assert result.pvalue > P_MIN
    again, _ = sample(a.expand(3, 7), 20_000, replace=True, generator=_gen(16))
    assert torch.equal(indices, again)


@pytest.mark.parametrize("bad", [[0.5, -0.1, 0.6], [0.5, float("nan"), 0.5], [0.0, 0.0, 0.0]])
def test_rejects_invalid_attention(bad: list[float]) -> None:
    with pytest.raises(ValueError, match="non-negative"):
        sample(torch.tensor([bad]), 1, replace=True)
