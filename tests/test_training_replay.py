"""The tile memory of the instance loss (``train.instance_memory``): bounded, mixed, uniform."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from wsi_ats.training.replay import TileMemory


def _tiles(values: range, size: int = 4) -> np.ndarray:
    """uint8 tiles ``[n, size, size, 3]``, tile ``i`` filled with ``values[i]``."""
    return np.stack([np.full((size, size, 3), v, np.uint8) for v in values])


def test_memory_keeps_the_last_tiles_of_each_label_within_its_capacity() -> None:
    memory = TileMemory(capacity=10)  # 5 per label
    memory.add(_tiles(range(0, 3)), 0)
    memory.add(_tiles(range(3, 9)), 0)  # 9 negative tiles seen, the last 5 kept
    assert len(memory) == 5
    assert memory.sample(4, torch.Generator().manual_seed(0)) is None  # no positive tile yet
    memory.add(_tiles(range(100, 102)), 1)
    assert len(memory) == 7
    tiles, labels = memory.sample(2000, torch.Generator().manual_seed(0))
    values = tiles[:, 0, 0, 0]
    assert set(values[labels == 0]) == set(range(4, 9))
    assert set(values[labels == 1]) == {100, 101}
    assert (labels == 0).sum() == (labels == 1).sum() == 1000


def test_memory_draws_its_tiles_uniformly() -> None:
    """Each held tile of a label is drawn with probability 1/k: every count within 5 standard
    errors of its binomial mean over 20,000 draws."""
    memory = TileMemory(capacity=40)
    memory.add(_tiles(range(20)), 0)
    memory.add(_tiles(range(50, 70)), 1)
    tiles, labels = memory.sample(40_000, torch.Generator().manual_seed(1))
    for label, offset in ((0, 0), (1, 50)):
        counts = np.bincount(tiles[labels == label, 0, 0, 0] - offset, minlength=20)
        n, p = 20_000, 1 / 20
        assert np.abs(counts - n * p).max() < 5 * np.sqrt(n * p * (1 - p))


def test_memory_refuses_tiles_of_another_size_or_label() -> None:
    memory = TileMemory(capacity=8)
    memory.add(_tiles(range(2)), 1)
    with pytest.raises(ValueError, match="cannot join"):
        memory.add(_tiles(range(2), size=8), 1)
    with pytest.raises(ValueError, match="label"):
        memory.add(_tiles(range(2)), 2)
