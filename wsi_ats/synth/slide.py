"""One synthetic slide: layout -> tiles -> pyramidal TIFF, plus its ground truth."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits  # a dependency of scikit-learn

from wsi_ats.synth.atlas import build_atlases
from wsi_ats.synth.layout import Layout, Spot, SynthError, make_layout, truth_dict
from wsi_ats.synth.render import BACKGROUND, iter_level_tiles, level_shapes
from wsi_ats.synth.tiff_writer import write_pyramid

logger = logging.getLogger(__name__)

DEFAULT_MPP = 0.5  # um per level-0 pixel (a 20x scan)


@dataclass(frozen=True)
class SlideTruth:
    """Ground truth of one synthetic slide; coordinates in level-0 pixels."""

    path: Path
    width: int
    height: int
    label: int
    seed: int
    mpp: float
    tissue_fraction: float  # of the slide area
    lesion_fraction: float  # candidate spots (benign + malignant) / tissue area
    malignant_fraction: float  # malignant spots / tissue area
    spots: tuple[Spot, ...]  # candidate spots, then distractors (kind "distractor") if any
    variant: str = "standard"
    distractor_fraction: float = 0.0  # distractors / tissue area

    def to_dict(self) -> dict:
        """Plain JSON-able ground truth (spot boxes ``x, y, w, h`` in level-0 px)."""
        return truth_dict(
            self.width,
            self.height,
            self.label,
            self.tissue_fraction,
            self.spots,
            variant=self.variant,
            seed=self.seed,
            mpp=self.mpp,
        )


def _size(size: int | tuple[int, int]) -> tuple[int, int]:
    """``(width, height)`` from an int (square) or a pair."""
    w, h = (size, size) if isinstance(size, int | np.integer) else size
    if int(w) < 256 or int(h) < 256:
        raise ValueError(f"slide size must be at least 256 x 256 px, got {w} x {h}")
    return int(w), int(h)


def slide_layout(
    size: int | tuple[int, int],
    seed: int,
    label: int,
    spot_diameter: float | None = None,
    variant: str = "standard",
) -> Layout:
    """The layout ``write_synthetic_slide`` renders (cheap: no pixels)."""
    w, h = _size(size)
    return make_layout(w, h, seed, label, spot_diameter, variant)


def make_truth(path: str | os.PathLike, layout: Layout, seed: int, mpp: float) -> SlideTruth:
    """The ``SlideTruth`` of a layout."""
    return SlideTruth(
        path=Path(path),
        width=layout.width,
        height=layout.height,
        label=layout.label,
        seed=seed,
        mpp=mpp,
        tissue_fraction=layout.tissue_fraction,
        lesion_fraction=layout.lesion_fraction,
        malignant_fraction=layout.malignant_fraction,
        spots=layout.spots,
        variant=layout.variant,
        distractor_fraction=layout.distractor_fraction,
    )


def write_synthetic_slide(
    path: str | os.PathLike,
    size: int | tuple[int, int],
    seed: int,
    label: int,
    *,
    spot_diameter: float | None = None,
    mpp: float = DEFAULT_MPP,
    compression: str = "jpeg",
    quality: int = 90,
    texture_seed: int = 0,
    variant: str = "standard",
    tile_callback: Callable[[int], None] | None = None,
) -> SlideTruth:
    """Write a tiled pyramidal TIFF of ``size`` (int or ``(width, height)``, level-0 px).

    ``seed`` fixes tissue and spot positions, ``label`` (0/1) whether 1-2 spots are malignant,
    ``texture_seed`` the cohort's textures. ``spot_diameter`` is in level-0 px (default 1.5% of the
    shorter side). ``variant``: ``"standard"`` (dark candidate spots) or ``"distractors"`` (pale
    candidate spots plus 4-10 dark benign distractors; see :mod:`wsi_ats.synth`).
    ``tile_callback(n)``, if given, is called with ``n`` tiles just rendered (for progress bars;
    every 64 tiles and at the end of each level). Memory is bounded by a tile and the texture
    atlases, whatever the size.
    """
    try:
        layout = slide_layout(size, seed, label, spot_diameter, variant)
    except SynthError as exc:
        raise SynthError(f"{path}: {exc}") from exc
    atlases = build_atlases(texture_seed)
    shapes = level_shapes(layout.width, layout.height)

    def tiles(level: int) -> Iterator[np.ndarray | None]:
        if max(layout.width, layout.height) >= 32768:
            logger.info("%s: level %d (%d x %d px)", path, level, *shapes[level][::-1])
        last = len(range(0, shapes[level][0], 256)) * len(range(0, shapes[level][1], 256)) - 1
        for i, t in enumerate(iter_level_tiles(layout, atlases, level)):
            if tile_callback is not None and (i % 64 == 63 or i == last):
                tile_callback(i % 64 + 1)
            yield t

    # the per-tile products are tiny: BLAS threads only contend (a cohort uses processes instead)
    with threadpool_limits(1):
        write_pyramid(
            path,
            shapes,
            tiles,
            mpp=mpp,
            blank=tuple(int(c) for c in BACKGROUND),
            compression=compression,
            quality=quality,
        )
    return make_truth(path, layout, seed, mpp)
