"""A DeepZoom-style tile pyramid over any :class:`~wsi_ats.slides.Slide`, and the overlay images.

Zoom ``z`` has downsample ``d = 2**z`` (level-0 pixels per tile pixel), from 0 (full resolution)
to :attr:`TileGrid.max_zoom` (the whole slide in one tile). Tile ``(col, row)`` of zoom ``z``
covers the level-0 box ``x0 = col * 256 * d``, ``y0 = row * 256 * d``, ``256 * d`` on a side cut
at the slide's edge, so edge tiles are smaller (as in DeepZoom) and no tile holds padding. A tile
is read from the pyramid level whose downsample is ``d`` when there is one (then its pixels are
``read_region`` of that level, exactly), else from the next finer level and area-averaged, in
blocks whose reads are at most :data:`MAX_READ` pixels a side (a slide without a pyramid costs
time at coarse zooms, never unbounded memory).
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

import numpy as np
from PIL import Image

from wsi_ats.inference.heatmap import colorize
from wsi_ats.slides import Slide

TILE = 256  # tile side in pixels of its zoom
FORMATS = {"jpg": ("JPEG", "image/jpeg"), "png": ("PNG", "image/png")}
JPEG_QUALITY = 90
DECADES = 3.0  # the attention overlay's log scale spans the peak and this many decades below
MAX_READ = 2048  # the largest side of one read for a zoom without a pyramid level


class TileOutOfRange(ValueError):
    """A tile address outside the slide's pyramid (zoom, column or row)."""


@dataclass(frozen=True)
class TileGrid:
    """The tile pyramid of a level-0 ``width x height`` slide with ``tile``-pixel tiles."""

    width: int
    height: int
    tile: int = TILE

    @property
    def max_zoom(self) -> int:
        """The coarsest zoom: the smallest ``z`` with the whole slide in one tile."""
        return max(0, math.ceil(math.log2(max(self.width, self.height) / self.tile)))

    def grid(self, z: int) -> tuple[int, int]:
        """``(cols, rows)`` of zoom ``z``."""
        span = self.tile * 2**z
        return math.ceil(self.width / span), math.ceil(self.height / span)

    def box(self, z: int, col: int, row: int) -> tuple[int, int, int, int]:
        """Level-0 ``(x0, y0, w0, h0)`` of tile ``(col, row)`` of zoom ``z``; raises
        :class:`TileOutOfRange` for an address outside the pyramid."""
        if not 0 <= z <= self.max_zoom:
            raise TileOutOfRange(f"zoom {z} outside 0..{self.max_zoom}")
        cols, rows = self.grid(z)
        if not (0 <= col < cols and 0 <= row < rows):
            raise TileOutOfRange(
                f"tile ({col}, {row}) outside the {cols} x {rows} tiles of zoom {z}"
            )
        span = self.tile * 2**z
        x0, y0 = col * span, row * span
        return x0, y0, min(span, self.width - x0), min(span, self.height - y0)

    def tile_size(self, z: int, col: int, row: int) -> tuple[int, int]:
        """``(w, h)`` pixels of the tile (smaller than ``tile`` at the right and bottom edges)."""
        _, _, w0, h0 = self.box(z, col, row)
        d = 2**z
        return math.ceil(w0 / d), math.ceil(h0 / d)


def read_tile(slide: Slide, grid: TileGrid, z: int, col: int, row: int) -> np.ndarray:
    """``uint8[h, w, 3]`` RGB of tile ``(col, row)`` of zoom ``z`` (see the module docstring)."""
    x0, y0, w0, h0 = grid.box(z, col, row)
    w, h = grid.tile_size(z, col, row)
    d = float(2**z)
    level = slide.get_best_level_for_downsample(d)
    ds = float(slide.level_downsamples[level])
    if math.isclose(ds, d, rel_tol=1e-6):
        return slide.read_region((x0, y0), level, (w, h))
    # no level at this downsample: area-average the finer level's pixels, in blocks of output
    # pixels whose reads stay within MAX_READ a side (a slide without a pyramid stays in memory)
    block = max(1, int(MAX_READ * ds / d))
    out = np.empty((h, w, 3), np.uint8)
    for by in range(0, h, block):
        for bx in range(0, w, block):
            bw, bh = min(block, w - bx), min(block, h - by)
            # level-0 box of these output pixels, cut at the slide's edge
            lx, ly = x0 + int(bx * d), y0 + int(by * d)
            l0w, l0h = min(int(bw * d), x0 + w0 - lx), min(int(bh * d), y0 + h0 - ly)
            size = (max(1, math.ceil(l0w / ds)), max(1, math.ceil(l0h / ds)))
            pixels = slide.read_region((lx, ly), level, size)
            small = Image.fromarray(pixels).resize((bw, bh), Image.Resampling.BOX)
            out[by : by + bh, bx : bx + bw] = np.asarray(small)
    return out


def encode(pixels: np.ndarray, fmt: str = "jpg") -> bytes:
    """``pixels`` (``uint8[h, w, 3 or 4]``) as JPEG (quality 90) or PNG (lossless) bytes."""
    kind, _ = FORMATS[fmt]
    buf = io.BytesIO()
    img = Image.fromarray(np.ascontiguousarray(pixels))
    if kind == "JPEG":
        img.save(buf, format="JPEG", quality=JPEG_QUALITY)
    else:
        img.save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


def attention_rgba(attention: np.ndarray, decades: float = DECADES) -> np.ndarray:
    """``uint8[mh, mw, 4]``: each cell coloured on the heatmap's ramp on a log scale (the peak is
    1, ``decades`` decades below it 0), its opacity growing with that value; zero attention is
    transparent."""
    att = np.asarray(attention, dtype=np.float32)
    peak = float(att.max()) if att.size else 0.0
    if peak <= 0:
        return np.zeros((*att.shape, 4), np.uint8)
    with np.errstate(divide="ignore"):
        norm = np.clip(1.0 + np.log10(att / peak) / decades, 0.0, 1.0)
    alpha = np.where(att > 0, 32 + norm * 208, 0).astype(np.uint8)
    return np.concatenate([colorize(norm), alpha[..., None]], axis=-1)


def tissue_rgba(mask: np.ndarray) -> np.ndarray:
    """``uint8[h, w, 4]``: tissue (``mask`` > 0) tinted green, glass transparent."""
    on = np.asarray(mask) > 0
    out = np.zeros((*on.shape, 4), np.uint8)
    out[on] = (40, 200, 90, 110)
    return out


def ramp(n: int = 9) -> list[list[int]]:
    """``n`` colours ``[[r, g, b], ...]`` of the attention ramp, low to high, for the colour bar."""
    return colorize(np.linspace(0.0, 1.0, n)).astype(int).tolist()


def attention_rect(
    low_size: tuple[int, int], scale: tuple[float, float], receptive_field: int = 0
) -> list[float]:
    """Level-0 ``[x0, y0, x1, y1]`` covered by the attention map's cells (the rule of
    :func:`wsi_ats.core.offsets.cell_boxes`: the low-res view less half the receptive field on
    each side); ``low_size`` = (h, w) low-res pixels, ``scale`` = (sy, sx)."""
    (h, w), (sy, sx), r = low_size, scale, receptive_field / 2
    return [r * sx, r * sy, (w - r) * sx, (h - r) * sy]
