"""Tile augmentation of the replayed minibatches (``train.augment``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from wsi_ats.training.augment import BRIGHTNESS, COLOUR, augment_tiles


def _dihedral(t: torch.Tensor, k: int) -> torch.Tensor:
    r = torch.rot90(t, k % 4, dims=(1, 2))
    return r.flip(2) if k >= 4 else r


def test_each_tile_is_a_symmetry_of_the_square_times_bounded_gains() -> None:
    """Every output tile is one of the 8 rotations/reflections of its input times one gain per
    channel within the stated bounds; over 4,000 tiles each of the 8 occurs within 5 standard
    errors of 1/8."""
    gen = torch.Generator().manual_seed(0)
    n = 4000
    tiles = 0.2 + 0.6 * torch.rand(n, 3, 6, 6, generator=torch.Generator().manual_seed(1))
    out = augment_tiles(tiles, gen)
    low, high = (1 - BRIGHTNESS) * (1 - COLOUR), (1 + BRIGHTNESS) * (1 + COLOUR)
    found = []
    for i in range(n):
        matches = []
        for k in range(8):
            ratio = out[i] / _dihedral(tiles[i], k)  # [3, 6, 6]
            per_channel = ratio.flatten(1)
            if torch.allclose(per_channel, per_channel[:, :1].expand_as(per_channel), atol=1e-5):
                matches.append(k)
                gains = per_channel[:, 0]
                assert bool(((gains >= low - 1e-6) & (gains <= high + 1e-6)).all())
        assert len(matches) == 1
        found.append(matches[0])
    counts = np.bincount(found, minlength=8)
    p = 1 / 8
    assert np.abs(counts - n * p).max() < 5 * np.sqrt(n * p * (1 - p)), counts


def test_augment_keeps_values_in_range_and_refuses_non_square_tiles() -> None:
    gen = torch.Generator().manual_seed(0)
    out = augment_tiles(torch.ones(16, 3, 4, 4), gen)
    assert float(out.max()) <= 1.0 and float(out.min()) >= 1 - BRIGHTNESS - COLOUR - 0.01
    with pytest.raises(ValueError, match="square"):
        augment_tiles(torch.ones(2, 3, 4, 5), gen)
