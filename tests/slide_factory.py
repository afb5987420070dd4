"""Small tiled pyramidal TIFFs for tests, written with tifffile (OpenSlide reads them as generic TIFF).

Level ``l + 1`` is the 2 x 2 area mean (rounded half up) of level ``l``, the same rule as
``convert_to_ome_zarr``, so lower levels of a TIFF and of its conversion can be compared exactly.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import tifffile

from wsi_ats.slides.lowres import area_reduce


def pyramid(image: np.ndarray, levels: int) -> list[np.ndarray]:
    """``levels`` arrays ``uint8[h_l, w_l, 3]``, level 0 = ``image``, each the 2x2 mean of the previous."""
    out = [np.ascontiguousarray(image, dtype=np.uint8)]
    for _ in range(levels - 1):
        out.append(area_reduce(out[-1], 2))
    return out


def write_pyramidal_tiff(
    path: str | os.PathLike[str],
    image: np.ndarray,
    tile: int = 256,
    levels: int = 3,
    mpp: float | None = 0.25,
    compression: str | None = "zlib",
) -> Path:
    """Write ``image`` (``uint8[h, w, 3]``) as a tiled TIFF with ``levels`` pages (level 0 first)."""
    path = Path(path)
    with tifffile.TiffWriter(path, bigtiff=False) as tif:
        for i, level in enumerate(pyramid(image, levels)):
            kwargs: dict = {}
            if mpp is not None:
                ppcm = 1e4 / (mpp * 2**i)
                kwargs = {"resolution": (ppcm, ppcm), "resolutionunit": "CENTIMETER"}
            tif.write(
                level,
                tile=(tile, tile),
                photometric="rgb",
                compression=compression,
                subfiletype=1 if i else 0,
                metadata=None,
                **kwargs,
            )
    return path


def test_image(h: int, w: int, seed: int = 0) -> np.ndarray:
    """``uint8[h, w, 3]``: smooth colour gradients plus noise (every pixel differs from its neighbours,
    so off-by-one errors show), with a white margin region at the top-left."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.stack([(yy * 255) // max(h - 1, 1), (xx * 255) // max(w - 1, 1), (yy + xx) % 256], -1)
    img = (img + rng.integers(0, 40, size=img.shape)).clip(0, 255).astype(np.uint8)
    img[: h // 8, : w // 8] = 255
    return img


test_image.__test__ = False  # not a pytest test
