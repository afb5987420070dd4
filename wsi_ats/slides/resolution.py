"""Physical geometry: a slide's resolution (mpp) and where tiles of a given um/px are read from.

A spec in microns (tiles of ``tile_size`` px at ``tile_mpp`` um/px) becomes, for one slide, a
:class:`TileGeometry`: the pyramid level tiles are read at (the coarsest level at least as fine as
``tile_mpp``), the tile side in that level's pixels (resized to ``tile_size`` when the level's
resolution differs by more than :data:`LEVEL_RTOL`), and the low-res view's downsample and shape,
chosen so that one attention cell spans exactly one tile's footprint (or a whole number of them,
``tiles_per_cell`` per side, or ``lowres_mpp x map_stride`` microns when a spec says so). Pure arithmetic on the slide's metadata; nothing is read here.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from .errors import SlideError

#: level-0 microns per pixel outside this range are not a scan resolution (a 72-dpi TIFF tag is 352.8)
PLAUSIBLE_MPP = (0.05, 20.0)
#: a pyramid level within this relative difference of the tiles' mpp is read as is, not resized
#: (scanners report 0.499 or 0.2527 um/px for 20x and 40x)
LEVEL_RTOL = 0.05


class SlideResolutionError(SlideError):
    """The slide's resolution is unknown or not plausible, and nothing says what to assume."""


@dataclass(frozen=True)
class TileGeometry:
    """Where one slide's tiles and low-res view come from (sizes ``(h, w)``, pixels as named)."""

    mpp: float  # level-0 um/px used (the slide's own, or the assumed one)
    mpp_source: str  # "slide", "manifest" or "assumed" (spec's assume_mpp)
    read_level: int  # pyramid level tiles are read at
    read_downsample: float  # level-0 px per pixel of read_level
    read_size: int  # tile side in pixels of read_level (what is read)
    tile_size: int  # tile side the feature network gets (read_size resized when they differ)
    cell_level0: float  # side of one attention cell in level-0 px
    view_downsample: float  # level-0 px per low-res view pixel (cell_level0 / map_stride)
    view_shape: tuple[int, int]  # (h, w) low-res px: whole cells covering level 0

    @property
    def tile_level0(self) -> float:
        """Side of a tile's footprint in level-0 px."""
        return self.read_size * self.read_downsample

    @property
    def coverage(self) -> float:
        """Share of a cell's area its tile covers (at most 1)."""
        return min(self.tile_level0 / self.cell_level0, 1.0) ** 2


def plausible_mpp(mpp: float | None) -> bool:
    """True when ``mpp`` (um/px) can be a scan resolution (:data:`PLAUSIBLE_MPP`)."""
    lo, hi = PLAUSIBLE_MPP
    return mpp is not None and math.isfinite(mpp) and lo <= mpp <= hi


def resolve_mpp(
    path: str,
    slide_mpp: tuple[float, float] | None,
    manifest_mpp: float | None = None,
    assume_mpp: float | None = None,
) -> tuple[float, str]:
    """``(um/px, source)`` of level 0: the manifest's value when it gives one, else the slide's own
    when plausible, else the spec's ``assume_mpp``; else :class:`SlideResolutionError` naming the
    slide, what it reports and how to state an assumption. Never uses an implausible value."""
    lo, hi = PLAUSIBLE_MPP
    if manifest_mpp is not None and manifest_mpp > 0:
        if not plausible_mpp(manifest_mpp):
            raise SlideResolutionError(
                path, f"the manifest's mpp {manifest_mpp:g} um/px is outside {lo:g}-{hi:g} um/px"
            )
        return float(manifest_mpp), "manifest"
    own = None if slide_mpp is None else (float(slide_mpp[0]) + float(slide_mpp[1])) / 2
    if plausible_mpp(own):
        return float(own), "slide"  # type: ignore[arg-type]
    if assume_mpp is not None and assume_mpp > 0:
        return float(assume_mpp), "assumed"
    if own is None:
        what = "reports no resolution (mpp)"
    else:
        dpi = 25_400 / own
        what = (
            f"reports {own:g} um/px, outside the plausible {lo:g}-{hi:g} um/px of a scan "
            f"(a {dpi:.0f}-dpi TIFF resolution tag, not a scan resolution?)"
        )
    raise SlideResolutionError(
        path,
        f"{what}; tiles are placed in microns (slide.tile_mpp), so say what to assume: an mpp "
        "column in the manifest or slide.assume_mpp in the pipeline spec",
    )


def best_level(level_downsamples: Sequence[float], downsample: float, rtol: float = 0.0) -> int:
    """The coarsest level whose downsample is at most ``downsample * (1 + rtol)``: the nearest level
    at or above the wanted resolution (level 0 when every level is coarser)."""
    best = 0
    for i, ds in enumerate(level_downsamples):
        if ds <= downsample * (1 + rtol) + 1e-9:
            best = i
    return best


def tile_geometry(
    dimensions: tuple[int, int],
    level_downsamples: Sequence[float],
    mpp: float,
    tile_mpp: float,
    tile_size: int,
    map_stride: int,
    lowres_mpp: float = 0.0,
    mpp_source: str = "slide",
    tiles_per_cell: int = 1,
) -> TileGeometry:
    """The :class:`TileGeometry` of a slide of level-0 ``dimensions`` ``(w, h)`` at ``mpp`` um/px.

    Tiles: ``tile_size`` px at ``tile_mpp`` um/px, read at :func:`best_level` and resized when that
    level is not within :data:`LEVEL_RTOL` of ``tile_mpp``. Cells: ``tiles_per_cell`` x
    ``tiles_per_cell`` tile footprints (``lowres_mpp = 0``) or ``lowres_mpp * map_stride`` um. The view has ``map_stride`` px per cell
    and whole cells, so it may overhang level 0 by less than a cell (read as white).
    """
    if mpp <= 0 or tile_mpp <= 0 or tile_size < 1 or map_stride < 1:
        raise ValueError(
            f"need mpp, tile_mpp, tile_size, map_stride > 0, got {mpp}, {tile_mpp}, {tile_size}, "
            f"{map_stride}"
        )
    tile_ds = tile_mpp / mpp  # level-0 px per tile px
    level = best_level(level_downsamples, tile_ds, LEVEL_RTOL)
    read_ds = float(level_downsamples[level])
    if abs(read_ds / tile_ds - 1) <= LEVEL_RTOL:
        read_size = int(tile_size)
    else:
        read_size = max(1, round(tile_size * tile_ds / read_ds))
    if tiles_per_cell < 1:
        raise ValueError(f"tiles_per_cell must be >= 1, got {tiles_per_cell}")
    cell = lowres_mpp * map_stride / mpp if lowres_mpp > 0 else tiles_per_cell * read_size * read_ds
    w0, h0 = dimensions
    mh, mw = max(1, math.ceil(h0 / cell - 1e-9)), max(1, math.ceil(w0 / cell - 1e-9))
    return TileGeometry(
        mpp=float(mpp),
        mpp_source=mpp_source,
        read_level=level,
        read_downsample=read_ds,
        read_size=read_size,
        tile_size=int(tile_size),
        cell_level0=float(cell),
        view_downsample=float(cell / map_stride),
        view_shape=(mh * map_stride, mw * map_stride),
    )
