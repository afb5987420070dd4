"""Streaming writer of tiled, pyramidal (BigTIFF) slides that OpenSlide opens as generic-tiff.

Each level is one page (reduced levels have ``subfiletype=1``), tiled 256 x 256, RGB, JPEG (YCbCr
2x2, quality 90) or zlib (lossless), with the resolution in pixels per centimetre so that OpenSlide
reports ``mpp``. Tiles arrive one at a time from an iterator and are encoded immediately: memory is
one tile plus the tile offsets, whatever the slide size. All-background tiles (``None``) are encoded
once and the bytes reused.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

import numpy as np
import tifffile

from wsi_ats.atomic import atomic_path

COMPRESSIONS = ("jpeg", "zlib")
_END = object()


def _encoder(compression: str, quality: int) -> tuple[Callable[[np.ndarray], bytes], dict]:
    """The tile encoder and the matching ``TiffWriter.write`` keyword arguments."""
    if compression == "jpeg":
        args = {"level": quality}
        kwargs = {"compression": "jpeg", "compressionargs": args, "subsampling": (2, 2)}
        codec = tifffile.TIFF.COMPRESSORS[7]
        # the arguments tifffile itself passes for RGB -> YCbCr JPEG tiles
        enc_args = {**args, "subsampling": (2, 2), "colorspace": "RGB", "outcolorspace": "YCBCR"}
    elif compression == "zlib":
        kwargs = {"compression": "zlib", "compressionargs": {"level": 6}}
        codec = tifffile.TIFF.COMPRESSORS[8]
        enc_args = {"level": 6}
    else:
        raise ValueError(f"compression must be one of {COMPRESSIONS}, got {compression!r}")
    return (lambda tile: codec(tile, **enc_args)), kwargs


def write_pyramid(
    path: str | os.PathLike,
    shapes: list[tuple[int, int]],
    tiles: Callable[[int], Iterable[np.ndarray | None]],
    mpp: float,
    blank: tuple[int, int, int] = (255, 255, 255),
    compression: str = "jpeg",
    quality: int = 90,
    tile: int = 256,
) -> None:
    """Write a pyramid to ``path`` (atomically: a temporary file, then ``os.replace``).

    ``shapes[k]`` is ``(height, width)`` of level ``k`` (downsample ``2**k``; ``mpp`` is that of
    level 0, um/px); ``tiles(k)`` yields that level's uint8 ``[tile, tile, 3]`` tiles in row-major
    order, or ``None`` for a tile filled with ``blank``.
    """
    path = Path(path)
    encode, kwargs = _encoder(compression, quality)
    blank_tile = np.empty((tile, tile, 3), dtype=np.uint8)
    blank_tile[:] = blank
    blank_bytes = encode(blank_tile)

    def encoded(level: int) -> Iterator[bytes]:
        # tifffile stops pulling after the last tile: check the count before handing it over
        h, w = shapes[level]
        expected = math.ceil(h / tile) * math.ceil(w / tile)
        source = iter(tiles(level))
        for count in range(1, expected + 1):
            t = next(source, _END)
            if t is _END:
                raise ValueError(f"level {level}: expected {expected} tiles, got {count - 1}")
            if count == expected and next(source, _END) is not _END:
                raise ValueError(f"level {level}: more than {expected} tiles")
            yield blank_bytes if t is None else encode(np.ascontiguousarray(t))

    with atomic_path(path) as tmp, tifffile.TiffWriter(tmp, bigtiff=True) as tif:
        for level, (h, w) in enumerate(shapes):
            ds = 2**level
            res = 1e4 / (mpp * ds)  # pixels per centimetre
            tif.write(
                encoded(level),
                shape=(h, w, 3),
                dtype=np.uint8,
                tile=(tile, tile),
                photometric="rgb",
                subfiletype=1 if level else 0,
                resolution=(res, res),
                resolutionunit="CENTIMETER",
                metadata=None,
                **kwargs,
            )
