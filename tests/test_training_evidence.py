"""The reference a sampled tile's instance score must beat to count as evidence for distillation."""

from __future__ import annotations

import math

import torch

from wsi_ats.training.step import NegativeScores, tile_evidence


def test_no_evidence_until_negatives_were_seen_then_only_above_their_quantile() -> None:
    negatives = NegativeScores(size=256)
    tiles = torch.tensor([[-1.0, 0.5, 2.5, 4.0]])
    assert torch.equal(tile_evidence(tiles, 0.95, negatives), torch.zeros_like(tiles))
    gen = torch.Generator().manual_seed(0)
    negatives.update(torch.randn(1, 300, generator=gen))  # keeps the last 256
    assert negatives.values.numel() == 256
    # the smallest stored logit with 95% of them at or below it
    ref = float(negatives.values.sort().values[math.ceil(0.95 * 256) - 1])
    ev = tile_evidence(tiles, 0.95, negatives)
    expected = 1 - torch.exp(-(tiles - ref).clamp_min(0))
    torch.testing.assert_close(ev, expected)
    assert ev[0, 0] == 0 and ev[0, 1] == 0 and 0 < ev[0, 2] < ev[0, 3] < 1


def test_a_biased_instance_head_makes_every_tile_evidence_only_under_the_prior_rule() -> None:
    """An untrained head whose bias is +0.3 scores every tile alike: against the prior odds 1/2 all
    of them are evidence; against what negative slides show, none is."""
    gen = torch.Generator().manual_seed(1)
    untrained = 0.3 + 0.01 * torch.randn(1, 128, generator=gen)
    negatives = NegativeScores()
    negatives.update(0.3 + 0.01 * torch.randn(1, 512, generator=gen))
    assert bool((tile_evidence(untrained, 0.0, negatives) > 0.2).all())
    assert float((tile_evidence(untrained, 0.95, negatives) > 0).float().mean()) < 0.15
    assert float(tile_evidence(untrained, 0.95, negatives).max()) < 0.05


def test_negative_scores_round_trip_their_state() -> None:
    negatives = NegativeScores(size=8)
    negatives.update(torch.arange(10.0)[None], torch.arange(1.0, 11.0)[None])
    again = NegativeScores(size=8)
    again.load(negatives.state())
    assert torch.equal(again.values, torch.arange(2.0, 10.0))
    assert torch.equal(again.weights, torch.arange(3.0, 11.0))
    assert again.reference(0.5, minimum=4) == negatives.reference(0.5, minimum=4)
    # equal weights: the plain quantile (the smallest value with half the tiles at or below it)
    legacy = NegativeScores(size=8)
    legacy.load(torch.arange(2.0, 10.0))  # the state of runs from before the weights
    assert torch.equal(legacy.weights, torch.ones(8))
    assert legacy.reference(0.5, minimum=4) == 5.0
    assert NegativeScores().reference(0.9) is None


def test_the_reference_is_what_a_uniform_look_at_negative_slides_shows() -> None:
    """Tiles drawn half from a look-alike structure covering 1% of the tissue (as an attention that
    found the lesions' look-alikes draws them) and half uniformly: with importance weights u / q the
    reference estimates the quantile of all tissue, within 4 standard errors; unweighted it is the
    quantile of the draws, far below."""
    gen = torch.Generator().manual_seed(0)
    n, share, q = 4096, 0.01, 0.9
    from_lookalike = torch.rand(n, generator=gen) < 0.5
    logits = torch.where(
        from_lookalike, -2 + 0.5 * torch.randn(n, generator=gen), torch.randn(n, generator=gen)
    )
    # per cell: u = 1 / K; q = 0.5 / (share K) on look-alikes, 0.5 / ((1 - share) K) elsewhere
    weights = torch.where(from_lookalike, torch.tensor(2 * share), torch.tensor(2 * (1 - share)))
    negatives = NegativeScores(size=n)
    negatives.update(logits, weights)
    population = torch.cat(
        [-2 + 0.5 * torch.randn(10_000, generator=gen), torch.randn(990_000, generator=gen)]
    )
    truth = float(torch.quantile(population[torch.randperm(1_000_000, generator=gen)[:200_000]], q))
    normal = torch.distributions.Normal(0.0, 1.0)
    density = (1 - share) * float(normal.log_prob(torch.tensor(truth)).exp())
    n_eff = float(weights.sum() ** 2 / (weights**2).sum())
    se = (q * (1 - q) / n_eff) ** 0.5 / density
    assert abs(negatives.reference(q) - truth) < 4 * se
    unweighted = NegativeScores(size=n)
    unweighted.update(logits)
    assert truth - unweighted.reference(q) > 10 * se
