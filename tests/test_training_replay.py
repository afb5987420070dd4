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


def test_memory_state_restores_what_it_holds_and_where_it_writes_next() -> None:
    """A memory loaded from another's state (through a weights-only ``torch.save``) draws the
    same minibatches and overwrites the same oldest tiles; a state of another capacity is refused."""
    import io

    memory = TileMemory(capacity=10)
    memory.add(_tiles(range(0, 7)), 0)  # wrapped round: the ring's next slot is not 0
    memory.add(_tiles(range(100, 102)), 1)
    buffer = io.BytesIO()
    torch.save(memory.state(), buffer)
    buffer.seek(0)
    restored = TileMemory(capacity=10)
    restored.load(torch.load(buffer, weights_only=True))
    for m in (memory, restored):
        m.add(_tiles(range(7, 9)), 0)
    assert len(restored) == len(memory) == 7
    for seed in range(3):
        a = memory.sample(64, torch.Generator().manual_seed(seed))
        b = restored.sample(64, torch.Generator().manual_seed(seed))
        assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert set(restored.sample(500, torch.Generator().manual_seed(0))[0][:, 0, 0, 0]) == {
        4, 5, 6, 7, 8, 100, 101,
    }  # fmt: skip
    empty = TileMemory(capacity=10)
    empty.load(TileMemory(capacity=10).state())
    assert len(empty) == 0 and empty.sample(4, torch.Generator()) is None
    with pytest.raises(ValueError, match="capacity 8"):
        TileMemory(capacity=8).load(memory.state())


def test_memory_of_several_classes_draws_each_label_alike_and_restores() -> None:
    """A multi-class bag label (Megapixel MNIST's ten digits): ``capacity // classes`` tiles kept
    per label, each minibatch ``n // classes`` per label (the remainder from the last labels), none
    until every label has tiles, and a state that only a memory of as many classes loads."""
    memory = TileMemory(capacity=30, classes=3)  # 10 per label
    assert memory.per_label == 10
    memory.add(_tiles(range(0, 12)), 0)
    memory.add(_tiles(range(50, 53)), 1)
    assert memory.sample(9, torch.Generator().manual_seed(0)) is None  # label 2 has none yet
    memory.add(_tiles(range(100, 104)), 2)
    assert len(memory) == 10 + 3 + 4
    tiles, labels = memory.sample(11, torch.Generator().manual_seed(0))
    assert np.bincount(labels.astype(int), minlength=3).tolist() == [3, 4, 4]
    values = tiles[:, 0, 0, 0]
    assert set(values[labels == 0]) <= set(range(2, 12))  # the two oldest were overwritten
    assert set(values[labels == 1]) <= {50, 51, 52} and set(values[labels == 2]) <= set(
        range(100, 104)
    )
    with pytest.raises(ValueError, match="label must be in 0..2"):
        memory.add(_tiles(range(2)), 3)
    restored = TileMemory(capacity=30, classes=3)
    restored.load(memory.state())
    a = memory.sample(60, torch.Generator().manual_seed(4))
    b = restored.sample(60, torch.Generator().manual_seed(4))
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    with pytest.raises(ValueError, match="not 2 counts"):
        TileMemory(capacity=30).load(memory.state())
    with pytest.raises(ValueError, match="classes must be >= 2"):
        TileMemory(capacity=30, classes=1)
