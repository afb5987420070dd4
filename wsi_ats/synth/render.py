"""Render one tile of one pyramid level straight from the analytic layout.

Level ``k`` has downsample ``2**k`` and size ``ceil(W / 2**k) x ceil(H / 2**k)``. A level-``k`` pixel
``(y_k, x_k)`` is tissue (or spot) when its centre ``((y_k + 0.5) 2**k, (x_k + 0.5) 2**k)`` in level-0
pixels is; its colour is the texture atlas pooled by ``2**k`` at ``(y_k mod A_k, x_k mod A_k)``. No
level is ever read back, so every tile costs the same whatever the slide size. Spots take the
texture of their kind in the layout's variant (:meth:`Atlases.spot`) and are not shaded.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np

from wsi_ats.synth.atlas import Atlases
from wsi_ats.synth.layout import Layout

BACKGROUND = np.array([240, 240, 238], dtype=np.uint8)  # glass, RGB
MIN_LEVEL_SIDE = 512  # the pyramid stops at the first level whose longer side is <= this


def level_shapes(width: int, height: int) -> list[tuple[int, int]]:
    """``(height, width)`` of each pyramid level, downsample ``2**k``, down to <= 512 px a side."""
    shapes = [(height, width)]
    k = 0
    while max(shapes[-1]) > MIN_LEVEL_SIDE:
        k += 1
        shapes.append((math.ceil(height / 2**k), math.ceil(width / 2**k)))
    return shapes


def render_tile(
    layout: Layout, atlases: Atlases, level: int, row: int, col: int, tile: int = 256
) -> np.ndarray | None:
    """Tile ``(row, col)`` of ``level``: uint8 ``[tile, tile, 3]``; ``None`` when it is all
    background (pixels past the level's edge are background too)."""
    ds = 2**level
    y = row * tile + np.arange(tile)
    x = col * tile + np.arange(tile)
    yc = (y + 0.5) * ds  # pixel centres, level-0 px
    xc = (x + 0.5) * ds
    lower, upper = layout.field_bounds(xc[0], xc[-1], yc[0], yc[-1])
    if upper < layout.threshold:
        return None
    if lower >= layout.threshold:  # all tissue
        tissue = np.ones((tile, tile), dtype=bool)
    else:
        tissue = layout.field_1d(xc, yc) >= layout.threshold
    tissue &= (yc < layout.height)[:, None] & (xc < layout.width)[None, :]
    if not tissue.any():
        return None
    shade = layout.shading(xc, yc).astype(np.float32)[..., None]
    stroma = texture(atlases.stroma.level(level), row, col, tile) * shade
    stroma = np.clip(stroma + 0.5, 0, 255).astype(np.uint8)  # round half up
    if tissue.all():
        out = stroma
    else:
        out = np.empty((tile, tile, 3), dtype=np.uint8)
        out[:] = BACKGROUND
        out[tissue] = stroma[tissue]
    x0, x1, y0, y1 = xc[0], xc[-1], yc[0], yc[-1]
    for spot in layout.spots:
        r = spot.radius
        if spot.cx + r < x0 or spot.cx - r > x1 or spot.cy + r < y0 or spot.cy - r > y1:
            continue
        disc = ((xc[None, :] - spot.cx) ** 2 + (yc[:, None] - spot.cy) ** 2) <= r * r
        if disc.any():
            pyramid = atlases.spot(spot.kind, layout.variant)
            out[disc] = texture(pyramid.level(level), row, col, tile)[disc]
    return out


def texture(atlas: np.ndarray, row: int, col: int, tile: int = 256) -> np.ndarray:
    """The ``[tile, tile, 3]`` window of a periodic atlas at tile ``(row, col)`` (wrapping)."""
    side = atlas.shape[0]
    if side % tile == 0:  # a plain slice: tiles start at multiples of ``tile``
        y0, x0 = (row * tile) % side, (col * tile) % side
        return atlas[y0 : y0 + tile, x0 : x0 + tile]
    y = (row * tile + np.arange(tile)) % side
    x = (col * tile + np.arange(tile)) % side
    return atlas[np.ix_(y, x)]


def iter_level_tiles(
    layout: Layout, atlases: Atlases, level: int, tile: int = 256
) -> Iterator[np.ndarray | None]:
    """Tiles of ``level`` in row-major order (``None`` for all-background tiles)."""
    h, w = level_shapes(layout.width, layout.height)[level]
    for row in range(math.ceil(h / tile)):
        for col in range(math.ceil(w / tile)):
            yield render_tile(layout, atlases, level, row, col, tile)
