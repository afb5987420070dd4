"""The range of slides a model was trained on, and the warnings for slides outside it.

``DataRange`` is recorded in checkpoints (``data_range``: plain builtins); checkpoints written before
it existed simply have none, and then no range warning is given. :func:`slide_warnings` holds every
rule that flags a prediction as untrustworthy; it takes plain numbers, so training, inference and
the cohort pipeline share it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

#: a slide's microns per pixel may differ from the training range by this factor before a warning
MPP_TOLERANCE = 1.5
#: a slide's level-0 longest side may differ from the training range by this factor
SIDE_TOLERANCE = 2.0


@dataclass(frozen=True)
class DataRange:
    """Training slides: how many, level-0 longest side range (px), and microns-per-pixel range."""

    n_slides: int
    side_px: tuple[int, int]  # (min, max) of the level-0 longest side
    mpp: tuple[float, float] | None = None  # (min, max) um/px; None when no slide recorded it

    @classmethod
    def of(cls, sizes: Iterable[tuple[int, int]], mpps: Iterable[float | None]) -> DataRange | None:
        """The range of slides with level-0 ``sizes`` ``(h, w)`` and ``mpps`` (None = unknown)."""
        sides = [max(int(h), int(w)) for h, w in sizes]
        known = [float(m) for m in mpps if m is not None and m > 0]
        if not sides:
            return None
        mpp = (min(known), max(known)) if known else None
        return cls(len(sides), (min(sides), max(sides)), mpp)

    def to_dict(self) -> dict[str, Any]:
        """Builtins only (safe for ``torch.load(weights_only=True)``)."""
        return {
            "n_slides": self.n_slides,
            "side_px": list(self.side_px),
            "mpp": None if self.mpp is None else list(self.mpp),
        }

    @classmethod
    def from_dict(cls, data: Any) -> DataRange | None:
        """The range stored by :meth:`to_dict`; None when absent or malformed (old checkpoints)."""
        if not isinstance(data, dict):
            return None
        try:
            lo, hi = (int(v) for v in data["side_px"])
            mpp = data.get("mpp")
            mpp_range = None if mpp is None else (float(mpp[0]), float(mpp[1]))
            return cls(int(data.get("n_slides", 0)), (lo, hi), mpp_range)
        except (KeyError, TypeError, ValueError, IndexError):
            return None


def mean_mpp(mpp: tuple[float, float] | None) -> float | None:
    """Mean of ``(x, y)`` microns per pixel; None when unknown."""
    if mpp is None or not all(v and v > 0 for v in mpp):
        return None
    return (float(mpp[0]) + float(mpp[1])) / 2


def slide_warnings(
    level0_size: tuple[int, int],
    mpp: tuple[float, float] | None,
    tile_size_level0: tuple[int, int],
    has_tissue: bool,
    tissue_cells: int,
    n_patches: int,
    data_range: DataRange | None,
) -> list[str]:
    """Why a prediction on this slide may not be trusted (empty when nothing is wrong).

    ``level0_size`` is ``(H, W)`` px, ``mpp`` the slide's ``(x, y)`` um/px, ``tile_size_level0`` a
    tile's ``(w, h)`` in level-0 px, ``tissue_cells`` the attention cells on tissue, ``n_patches``
    the ``N`` tiles per draw, ``data_range`` the model's training range (None: not recorded).
    """
    out: list[str] = []
    h, w = level0_size
    tw, th = tile_size_level0
    if h < th or w < tw:
        out.append(f"slide {w}x{h} px is smaller than one tile ({tw}x{th} px)")
    if not has_tissue:
        out.append("no tissue detected (attention spread over the whole slide)")
    elif tissue_cells < n_patches:
        out.append(f"{tissue_cells} tissue cells < N={n_patches} tiles per draw (tiles repeat)")
    if data_range is None:
        return out
    side = max(h, w)
    lo, hi = data_range.side_px
    if side < lo / SIDE_TOLERANCE or side > hi * SIDE_TOLERANCE:
        out.append(f"size {side} px far from the training range {lo}-{hi} px")
    slide_mpp = mean_mpp(mpp)
    if data_range.mpp is not None and slide_mpp is not None:
        mlo, mhi = data_range.mpp
        if slide_mpp < mlo / MPP_TOLERANCE or slide_mpp > mhi * MPP_TOLERANCE:
            out.append(
                f"resolution {slide_mpp:.3g} um/px far from the training range "
                f"{mlo:.3g}-{mhi:.3g} um/px"
            )
    return out
