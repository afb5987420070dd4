"""Low-resolution view of a slide: the pyramid level nearest a target, or one computed by streaming.

When the nearest level is much larger than the target (a slide may have no pyramid at all), that level is
read tile by tile and each tile is area-averaged by an integer factor, so memory stays bounded by one tile.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .base import WHITE, Slide

STREAM_TILE = 2048  # pixels of the source level per streamed tile side (rounded to the factor)
MAX_VIEW_PIXELS = 2**26  # 8192 x 8192 (192 MiB of RGB): larger "low-res" views are refused


@dataclass(frozen=True)
class LowResView:
    """``image`` ``uint8[h, w, 3]``; ``scale`` ``(sy, sx)`` level-0 pixels per view pixel; ``level`` the
    pyramid level it is (``None`` when computed by streaming a finer level)."""

    image: np.ndarray
    scale: tuple[float, float]
    level: int | None


def low_res_view(
    slide: Slide,
    target_size: int = 1024,
    target_mpp: float | None = None,
    max_oversize: float = 2.0,
    max_pixels: int = MAX_VIEW_PIXELS,
) -> LowResView:
    """The view whose longest side is nearest ``target_size`` pixels (or whose pixel size is nearest
    ``target_mpp`` microns, when given and the slide knows its mpp).

    The nearest pyramid level is used as is unless it is more than ``max_oversize`` times finer than
    the target; then it is streamed and reduced by ``round(target_downsample / level_downsample)``.
    A view of more than ``max_pixels`` pixels (a target near full resolution) raises ``ValueError``
    before anything is read: a whole high-resolution level is never loaded.
    """
    w0, h0 = slide.dimensions
    if target_mpp is not None and slide.mpp is not None:
        target_ds = target_mpp / (sum(slide.mpp) / 2)
    else:
        if target_size <= 0:
            raise ValueError(f"target_size must be positive, got {target_size}")
        target_ds = max(w0, h0) / target_size
    target_ds = max(target_ds, 1.0)
    downsamples = slide.level_downsamples
    level = min(range(slide.level_count), key=lambda i: abs(math.log(downsamples[i] / target_ds)))
    factor = target_ds / downsamples[level]
    wl, hl = slide.level_dimensions[level]
    k = 1 if factor <= max_oversize else max(2, round(factor))
    vw, vh = math.ceil(wl / k), math.ceil(hl / k)
    if vw * vh > max_pixels:
        raise ValueError(
            f"{slide.path}: the low-resolution view would be {vw} x {vh} px (level {level}), more "
            f"than max_pixels={max_pixels}; ask for a coarser target_size or target_mpp"
        )
    if k == 1:
        image = slide.read_region((0, 0), level, (wl, hl))
        return LowResView(image=image, scale=(h0 / hl, w0 / wl), level=level)
    image = stream_reduce(slide, level, k)
    return LowResView(image=image, scale=(h0 / hl * k, w0 / wl * k), level=None)


def stream_reduce(slide: Slide, level: int, factor: int) -> np.ndarray:
    """``uint8[ceil(h/factor), ceil(w/factor), 3]``: ``level`` area-averaged by ``factor``, read in tiles
    of about ``STREAM_TILE`` pixels (edge cells average only the pixels inside the level)."""
    wl, hl = slide.level_dimensions[level]
    ds = slide.level_downsamples[level]
    step = max(factor, (STREAM_TILE // factor) * factor)
    out = np.empty((math.ceil(hl / factor), math.ceil(wl / factor), 3), dtype=np.uint8)
    for y in range(0, hl, step):
        th = min(step, hl - y)
        for x in range(0, wl, step):
            tw = min(step, wl - x)
            # ceil: the level-0 pixel whose floor(loc / ds) is (x, y) (round can land a pixel early)
            loc = (math.ceil(x * ds - 1e-6), math.ceil(y * ds - 1e-6))
            tile = slide.read_region(loc, level, (tw, th))
            oy, ox = y // factor, x // factor
            block = area_reduce(tile, factor)
            out[oy : oy + block.shape[0], ox : ox + block.shape[1]] = block
    return out


def area_reduce(image: np.ndarray, factor: int) -> np.ndarray:
    """``uint8[ceil(h/f), ceil(w/f), C]`` block means of ``uint8[h, w, C]`` (rounded half up; partial
    edge blocks average their own pixels only)."""
    h, w, c = image.shape
    oh, ow = math.ceil(h / factor), math.ceil(w / factor)
    if factor == 2 and h % 2 == 0 and w % 2 == 0:  # fast path of pyramids: no partial blocks
        x = image.astype(np.uint16)
        s = x[0::2, 0::2] + x[1::2, 0::2] + x[0::2, 1::2] + x[1::2, 1::2]
        return ((s + 2) >> 2).astype(np.uint8)
    padded = np.zeros((oh * factor, ow * factor, c), dtype=np.uint32)
    padded[:h, :w] = image
    sums = padded.reshape(oh, factor, ow, factor, c).sum(axis=(1, 3))
    rows = np.minimum(factor, h - np.arange(oh) * factor)
    cols = np.minimum(factor, w - np.arange(ow) * factor)
    counts = (rows[:, None] * cols[None, :])[..., None].astype(np.uint32)
    return ((sums + counts // 2) // counts).astype(np.uint8)


def view_at_downsample(
    slide: Slide,
    downsample: float,
    shape: tuple[int, int],
    max_pixels: int = MAX_VIEW_PIXELS,
) -> LowResView:
    """The ``shape = (h, w)`` view whose pixel ``(i, j)`` covers level-0 pixels ``[i, i+1) x [j, j+1)``
    times ``downsample`` (exactly: ``scale == (downsample, downsample)``); where it overhangs the
    slide it is white.

    It comes from the nearest level at or above that resolution (the coarsest level whose downsample
    is at most ``downsample``), area-reduced by the integer factor below the ratio while streamed
    tile by tile (memory bounded by a few views, never a whole fine level), then resized to the
    exact grid (less than 2x, area-weighted). ``ValueError`` for a view over ``max_pixels``.
    """
    from PIL import Image

    vh, vw = (int(v) for v in shape)
    if vh < 1 or vw < 1 or downsample <= 0:
        raise ValueError(f"need a positive shape and downsample, got {shape}, {downsample}")
    if vh * vw > max_pixels:
        raise ValueError(
            f"{slide.path}: the low-resolution view would be {vw} x {vh} px, more than "
            f"max_pixels={max_pixels}; ask for coarser cells (slide.lowres_mpp or tile geometry)"
        )
    level = slide.get_best_level_for_downsample(downsample)
    lds = float(slide.level_downsamples[level])
    k = max(1, math.floor(downsample / lds + 1e-9))
    src = stream_reduce(slide, level, k)  # pixel i covers level-0 [i, i+1) * src_ds
    src_ds = lds * k
    bw, bh = vw * downsample / src_ds, vh * downsample / src_ds  # the view's extent, src pixels
    ph, pw = max(src.shape[0], math.ceil(bh)), max(src.shape[1], math.ceil(bw))
    if (ph, pw) != src.shape[:2]:  # the view overhangs the slide: white there
        padded = np.full((ph, pw, 3), WHITE, dtype=np.uint8)
        padded[: src.shape[0], : src.shape[1]] = src
        src = padded
    if (bh, bw) == (vh, vw) and src.shape[:2] == (vh, vw):
        image, exact = src, k == 1
    else:
        resized = Image.fromarray(src).resize((vw, vh), Image.Resampling.BOX, box=(0, 0, bw, bh))
        image, exact = np.array(resized, dtype=np.uint8), False  # writable
    return LowResView(
        image=np.ascontiguousarray(image),
        scale=(float(downsample), float(downsample)),
        level=level if exact else None,
    )
