"""The reference a sampled tile's instance score must beat to count as evidence for distillation."""

from __future__ import annotations

import math

import torch

from wsi_ats.training.step import TileScores, tile_evidence


def test_no_evidence_until_negatives_were_seen_then_only_above_their_quantile() -> None:
    negatives = TileScores(size=256)
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
    negatives = TileScores()
    negatives.update(0.3 + 0.01 * torch.randn(1, 512, generator=gen))
    assert bool((tile_evidence(untrained, 0.0, negatives) > 0.2).all())
    assert float((tile_evidence(untrained, 0.95, negatives) > 0).float().mean()) < 0.15
    assert float(tile_evidence(untrained, 0.95, negatives).max()) < 0.05


def test_negative_scores_round_trip_their_state() -> None:
    negatives = TileScores(size=8)
    negatives.update(torch.arange(10.0)[None], torch.arange(1.0, 11.0)[None])
    again = TileScores(size=8)
    again.load(negatives.state())
    assert torch.equal(again.values, torch.arange(2.0, 10.0))
    assert torch.equal(again.weights, torch.arange(3.0, 11.0))
    assert again.reference(0.5, minimum=4) == negatives.reference(0.5, minimum=4)
    # equal weights: the plain quantile (the smallest value with half the tiles at or below it)
    legacy = TileScores(size=8)
    legacy.load(torch.arange(2.0, 10.0))  # the state of runs from before the weights
    assert torch.equal(legacy.weights, torch.ones(8))
    assert legacy.reference(0.5, minimum=4) == 5.0
    assert TileScores().reference(0.9) is None


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
    negatives = TileScores(size=n)
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
    unweighted = TileScores(size=n)
    unweighted.update(logits)
    assert truth - unweighted.reference(q) > 10 * se


def test_tail_share_is_the_weighted_share_at_or_above_each_logit() -> None:
    gen = torch.Generator().manual_seed(3)
    scores = TileScores(size=500)
    values, weights = torch.randn(500, generator=gen), torch.rand(500, generator=gen) + 0.1
    scores.update(values, weights)
    queries = torch.cat([values[:20], torch.tensor([-10.0, 10.0])])[None]
    brute = torch.stack(
        [(weights * (values >= q)).sum() / weights.sum() for q in queries[0]]
    ).float()[None]
    torch.testing.assert_close(scores.tail_share(queries), brute)
    assert TileScores().tail_share(queries) is None  # nothing held yet


def test_tails_evidence_estimates_the_share_only_positive_slides_show() -> None:
    """Negative slides' scores ~ N(0, 1); positive slides' are the same but for 2% of findings
    ~ N(4, 0.5). Over 40 independent reference pairs of 4,000 tiles, the mean evidence at each
    score is within 4 standard errors of ``1 - T_neg(s) / T_pos(s)``, plus 0.01: a ratio of
    estimates clamped at 0 is consistent, not unbiased (its bias here is under 0.007). The same
    holds whatever the head's bias (every score shifted by +1.5)."""
    normal = torch.distributions.Normal(0.0, 1.0)
    s = torch.tensor([[0.0, 1.0, 2.5, 3.5, 4.5]])
    t_neg = 1 - normal.cdf(s)
    t_pos = 0.98 * t_neg + 0.02 * (1 - normal.cdf((s - 4.0) / 0.5))
    expected = 1 - t_neg / t_pos
    for bias in (0.0, 1.5):
        gen = torch.Generator().manual_seed(4)
        draws = []
        for _ in range(40):
            negatives, positives = TileScores(size=4000), TileScores(size=4000)
            negatives.update(torch.randn(4000, generator=gen) + bias)
            finding = torch.rand(4000, generator=gen) < 0.02
            pos = torch.where(
                finding,
                4.0 + 0.5 * torch.randn(4000, generator=gen),
                torch.randn(4000, generator=gen),
            )
            positives.update(pos + bias)
            draws.append(tile_evidence(s + bias, 0.999, negatives, positives))
        ev = torch.cat(draws)
        se = ev.std(0) / math.sqrt(ev.shape[0])
        assert bool(((ev.mean(0) - expected[0]).abs() <= 4 * se + 0.01).all()), (
            ev.mean(0),
            expected,
        )
    assert float(expected[0, 0]) < 0.03 and float(expected[0, -1]) > 0.99
