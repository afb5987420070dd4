"""Tile augmentation for the tile classifier's replayed minibatches (``train.augment``).

The naive-MIL tile classifier sees every tile of a positive training slide labelled 1. Whatever
tells a few dozen training slides apart (a slide's overall brightness or tint) then separates the
labels on the training slides as well as a lesion does, and is easier to learn. Random dihedral
transforms and per-tile brightness and colour gains hide those cues, and leave what a finding
looks like (texture, shape) intact. This is the usual stain and brightness jitter of pathology
training pipelines, applied only where the tile classifier trains, never to the slide estimate.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["augment_tiles"]

BRIGHTNESS = 0.1  # each tile's intensities times U(1 - b, 1 + b)
COLOUR = 0.05  # and each channel's times U(1 - c, 1 + c)


def augment_tiles(tiles: Tensor, generator: torch.Generator) -> Tensor:
    """Tiles ``[n, C, h, w]`` in ``[0, 1]`` (square), each under one of the 8 rotations and
    reflections of the square and random brightness and per-channel gains, clamped to
    ``[0, 1]``."""
    if tiles.dim() != 4 or tiles.shape[-1] != tiles.shape[-2]:
        raise ValueError(f"expected square tiles [n, C, h, h], got {tuple(tiles.shape)}")
    n, c = tiles.shape[:2]
    kind = torch.randint(8, (n,), generator=generator).to(tiles.device)
    out = tiles.clone()
    for k in range(8):
        pick = kind == k
        if bool(pick.any()):
            t = torch.rot90(tiles[pick], k % 4, dims=(2, 3))
            out[pick] = t.flip(3) if k >= 4 else t
    u = torch.rand(n, 1 + c, generator=generator).to(tiles)
    gain = (1 + BRIGHTNESS * (2 * u[:, :1] - 1)) * (1 + COLOUR * (2 * u[:, 1:] - 1))
    return (out * gain[:, :, None, None]).clamp(0, 1)
