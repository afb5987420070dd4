"""OpenSlide backend: any format OpenSlide reads, RGB composited on white, a shared tile cache."""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping, Sequence

import numpy as np
import openslide

from .base import PooledSlide, _as_locations, _as_size, _check_level
from .errors import SlideOpenError, SlideReadError, describe

#: Size of the process-wide OpenSlide tile cache; ``WSI_ATS_OPENSLIDE_CACHE_MB`` overrides it.
#: Attention sampling reads each tile of a slide about once, so a large cache buys little and costs
#: resident memory in every worker process.
CACHE_BYTES = int(float(os.environ.get("WSI_ATS_OPENSLIDE_CACHE_MB", "64")) * 2**20)

_cache: openslide.OpenSlideCache | None = None
_cache_lock = threading.Lock()


def shared_cache() -> openslide.OpenSlideCache:
    """The process-wide OpenSlide tile cache (``CACHE_BYTES``), shared by every open slide."""
    global _cache
    with _cache_lock:
        if _cache is None:
            _cache = openslide.OpenSlideCache(CACHE_BYTES)
        return _cache


def rgba_to_rgb(rgba: np.ndarray) -> np.ndarray:
    """``uint8[..., 4]`` straight-alpha RGBA (as openslide-python returns) -> ``uint8[..., 3]`` on white.

    Transparent pixels (outside the slide, or missing tiles) become white.
    """
    rgb = rgba[..., :3]
    alpha = rgba[..., 3:4]
    if alpha.min() == 255:
        return np.ascontiguousarray(rgb)
    a = alpha.astype(np.uint16)
    out = (rgb.astype(np.uint16) * a + 255 * (255 - a) + 127) // 255
    return out.astype(np.uint8)


class OpenSlideSlide(PooledSlide):
    """A slide read through OpenSlide. Reads are safe from several threads at once."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = str(path)
        try:
            self._osr = openslide.OpenSlide(self.path)
        except (openslide.OpenSlideError, OSError, ValueError) as exc:
            raise SlideOpenError(self.path, f"OpenSlide cannot open it ({describe(exc)})") from exc
        try:
            self._osr.set_cache(shared_cache())
            self._dims = tuple((int(w), int(h)) for w, h in self._osr.level_dimensions)
            self._downsamples = tuple(float(d) for d in self._osr.level_downsamples)
            self._mpp = _mpp(self._osr.properties)
        except (openslide.OpenSlideError, OSError, ValueError) as exc:
            self._osr.close()
            raise SlideOpenError(self.path, f"unreadable metadata ({describe(exc)})") from exc
        self._init_reads("wsi-ats-openslide")

    @property
    def level_dimensions(self) -> tuple[tuple[int, int], ...]:
        return self._dims

    @property
    def level_downsamples(self) -> tuple[float, ...]:
        return self._downsamples

    @property
    def mpp(self) -> tuple[float, float] | None:
        return self._mpp

    @property
    def properties(self) -> dict[str, str]:
        """OpenSlide's property map (vendor metadata)."""
        return dict(self._osr.properties)

    def read_region(
        self, location: tuple[int, int], level: int, size: tuple[int, int]
    ) -> np.ndarray:
        _check_level(self, level)
        w, h = _as_size(size)
        x, y = int(location[0]), int(location[1])
        if self._closed:
            raise SlideReadError(self.path, "slide is closed")
        try:
            region = self._osr.read_region((x, y), level, (w, h))
        except (openslide.OpenSlideError, OSError, ValueError) as exc:
            raise SlideReadError(
                self.path,
                f"cannot read level {level} at (x={x}, y={y}) size {w}x{h} ({describe(exc)})",
            ) from exc
        return rgba_to_rgb(np.asarray(region))

    def read_regions(
        self, locations: Sequence[tuple[int, int]] | np.ndarray, level: int, size: tuple[int, int]
    ) -> np.ndarray:
        """``uint8[n, h, w, 3]``, read concurrently by a small per-slide thread pool."""
        _check_level(self, level)
        locs = _as_locations(locations)
        w, h = _as_size(size)
        out = np.empty((len(locs), h, w, 3), dtype=np.uint8)

        def one(i: int) -> None:
            out[i] = self.read_region((int(locs[i, 0]), int(locs[i, 1])), level, (w, h))

        self._map(one, range(len(locs)))
        return out

    def _close_backend(self) -> None:
        self._osr.close()


def _mpp(props: Mapping[str, str]) -> tuple[float, float] | None:
    try:
        mx = float(props[openslide.PROPERTY_NAME_MPP_X])
        my = float(props[openslide.PROPERTY_NAME_MPP_Y])
    except (KeyError, ValueError):
        return None
    if mx > 0 and my > 0:
        return (mx, my)
    return None
