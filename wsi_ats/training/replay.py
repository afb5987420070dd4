"""A bounded memory of recently read tiles, so the instance loss sees many slides per step.

The training step reads ``N`` tiles of one slide at a time. Trained on those alone, the instance
classifier meets each step the tiles of one positive and one negative slide: whatever tells those
two slides apart (stain, tissue type, scanner) dominates its gradient, and the one or two lesion
tiles among hundreds are drowned. ``benchmarks/instance_batches.py`` measures it at a 1.1% witness
rate (``results/instance_batches_one_slide.txt``): after 400 steps, lesion tiles score 0.38 and
0.42 above negative slides' tiles when each step's tiles are pooled over many slides, 0.22 and
0.10 when they come from one slide per label (seeds 0 and 1).

:class:`TileMemory` keeps the last ``capacity`` tiles of each label (uint8, on the host) and hands
out mixed minibatches drawn across every slide it holds, half of each label: the step's instance
loss (``train.instance_memory``) is naive multiple-instance learning on those, every tile carrying
its slide's label. Memory is bounded by ``capacity`` x the tile size, whatever the slides' size or
the cohort's. Its :meth:`~TileMemory.state` goes into ``last.pt``, so a resumed run replays the
tiles an uninterrupted one would (4096 tiles of 64 px add 50 MB to the file, of 256 px 805 MB).
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["TileMemory"]


class TileMemory:
    """Ring buffers of the last ``capacity // classes`` tiles of each label (``classes = 2``:
    negative and positive slides; more for a multi-class bag label)."""

    def __init__(self, capacity: int, classes: int = 2) -> None:
        if classes < 2:
            raise ValueError(f"classes must be >= 2, got {classes}")
        if capacity < classes:
            raise ValueError(f"capacity must be >= {classes} tiles (one per label), got {capacity}")
        self.classes = classes
        self.per_label = capacity // classes
        self._tiles: dict[int, np.ndarray | None] = dict.fromkeys(range(classes))
        # tiles ever added of each label (the ring position is count % per_label)
        self._count = dict.fromkeys(range(classes), 0)

    def __len__(self) -> int:
        return sum(min(c, self.per_label) for c in self._count.values())

    def _name(self, label: int) -> str:
        """The key of ``label``'s tiles in :meth:`state`."""
        if self.classes == 2:
            return ("negative_tiles", "positive_tiles")[label]
        return f"label{label}_tiles"

    def add(self, tiles: np.ndarray, label: int) -> None:
        """Keep ``tiles`` (uint8 ``[n, h, w, c]``) of a bag of ``label`` (``0 .. classes - 1``),
        the oldest of that label dropped beyond the capacity."""
        if label not in self._count:
            raise ValueError(f"label must be in 0..{self.classes - 1}, got {label}")
        buf = self._tiles[label]
        if buf is None:
            buf = self._tiles[label] = np.empty((self.per_label, *tiles.shape[1:]), np.uint8)
        elif buf.shape[1:] != tiles.shape[1:]:
            raise ValueError(
                f"tiles of shape {tiles.shape[1:]} cannot join a memory of {buf.shape[1:]} tiles"
            )
        kept = tiles[-self.per_label :]
        buf[(self._count[label] + np.arange(len(kept))) % self.per_label] = kept
        self._count[label] += len(kept)

    def sample(self, n: int, generator: torch.Generator) -> tuple[np.ndarray, np.ndarray] | None:
        """``n`` tiles drawn uniformly with replacement, ``n // classes`` from each label (the
        remainder from the last labels), and their labels (float32 ``[n]``); ``None`` until every
        label has tiles."""
        held = {label: min(c, self.per_label) for label, c in self._count.items()}
        if min(held.values()) == 0:
            return None
        base, extra = divmod(n, self.classes)
        tiles, labels = [], []
        for label in range(self.classes):
            k = base + (label >= self.classes - extra)
            idx = torch.randint(held[label], (k,), generator=generator, device=generator.device)
            idx = idx.cpu().numpy()
            tiles.append(self._tiles[label][idx])
            labels.append(np.full(k, label, np.float32))
        return np.concatenate(tiles), np.concatenate(labels)

    def state(self) -> dict[str, torch.Tensor]:
        """The held tiles of each label (uint8, in ring-slot order) and the counts of tiles ever
        added: what :meth:`load` restores. The tiles are views of the memory's buffers, not
        copies (805 MB at 4096 tiles of 256 px): save them before the memory changes."""
        counts = [self._count[label] for label in range(self.classes)]
        out = {"counts": torch.tensor(counts, dtype=torch.int64)}
        for label in range(self.classes):
            buf = self._tiles[label]
            held = min(self._count[label], self.per_label)
            if buf is not None:
                out[self._name(label)] = torch.from_numpy(buf[:held])
        return out

    def load(self, state: dict[str, torch.Tensor]) -> None:
        """Restore :meth:`state` (of a memory of the same capacity and classes); ``ValueError``
        saying what does not fit otherwise."""
        counts = state["counts"].tolist()
        if len(counts) != self.classes or min(counts) < 0:
            raise ValueError(f"tile memory counts {counts} are not {self.classes} counts")
        tiles: dict[int, np.ndarray | None] = dict.fromkeys(range(self.classes))
        for label in range(self.classes):
            name = self._name(label)
            held = min(counts[label], self.per_label)
            saved = state.get(name)
            n = 0 if saved is None else int(saved.shape[0])
            if n != held or (saved is not None and saved.dtype != torch.uint8):
                raise ValueError(
                    f"the tile memory's {name} hold {n} tiles, expected {held} uint8 tiles "
                    f"(capacity {self.classes * self.per_label})"
                )
            if saved is not None:
                tiles[label] = np.empty((self.per_label, *saved.shape[1:]), np.uint8)
                tiles[label][:held] = saved.numpy()
        shapes = {t.shape[1:] for t in tiles.values() if t is not None}
        if len(shapes) > 1:
            raise ValueError(f"the tile memory's labels hold tiles of different shapes {shapes}")
        self._tiles, self._count = tiles, dict(enumerate(counts))
