"""The reference a sampled tile's instance score must beat to count as evidence for distillation."""

from __future__ import annotations

import torch

from wsi_ats.training.step import NegativeScores, tile_evidence


def test_no_evidence_until_negatives_were_seen_then_only_above_their_quantile() -> None:
    negatives = NegativeScores(size=256)
    tiles = torch.tensor([[-1.0, 0.5, 2.5, 4.0]])
    assert torch.equal(tile_evidence(tiles, 0.95, negatives), torch.zeros_like(tiles))
    gen = torch.Generator().manual_seed(0)
    negatives.update(torch.randn(1, 300, generator=gen))  # keeps the last 256
    assert negatives.values.numel() == 256
    ref = float(torch.quantile(negatives.values, 0.95))
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
    negatives.update(torch.arange(10.0)[None])
    again = NegativeScores(size=8)
    again.load(negatives.state())
    assert torch.equal(again.values, torch.arange(2.0, 10.0))
    assert again.reference(0.5, minimum=4) == float(torch.quantile(torch.arange(2.0, 10.0), 0.5))
    assert NegativeScores().reference(0.9) is None
