"""The ``Slide`` interface shared by the OpenSlide and OME-Zarr backends.

Coordinates follow OpenSlide: ``location=(x, y)`` in level-0 pixels, ``size=(w, h)`` in pixels of the
requested level. Pixels come back as RGB ``uint8`` composited on white; areas outside the slide are white.
"""

from __future__ import annotations

import abc
import math
import threading
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import numpy as np

from .errors import SlideReadError

WHITE = 255
READ_THREADS = 8  # default threads of a slide's batched reads

T = TypeVar("T")
R = TypeVar("R")


class Slide(abc.ABC):
    """A multi-resolution slide; level 0 is the largest."""

    path: str

    @property
    @abc.abstractmethod
    def level_dimensions(self) -> tuple[tuple[int, int], ...]:
        """``(w, h)`` of every level, level 0 first."""

    @property
    @abc.abstractmethod
    def level_downsamples(self) -> tuple[float, ...]:
        """Level-0 pixels per pixel of each level (1.0 for level 0)."""

    @property
    @abc.abstractmethod
    def mpp(self) -> tuple[float, float] | None:
        """Microns per level-0 pixel ``(x, y)``, or ``None`` when the slide does not say."""

    @abc.abstractmethod
    def read_region(
        self, location: tuple[int, int], level: int, size: tuple[int, int]
    ) -> np.ndarray:
        """``uint8[h, w, 3]`` RGB of the ``size=(w, h)`` region of ``level`` whose top-left is the
        level-0 pixel ``location=(x, y)``."""

    def read_regions(
        self, locations: Sequence[tuple[int, int]] | np.ndarray, level: int, size: tuple[int, int]
    ) -> np.ndarray:
        """``uint8[n, h, w, 3]``: ``read_region`` for each of ``n`` level-0 ``(x, y)`` locations."""
        locs = _as_locations(locations)
        w, h = _as_size(size)
        out = np.empty((len(locs), h, w, 3), dtype=np.uint8)
        for i, (x, y) in enumerate(locs):
            out[i] = self.read_region((int(x), int(y)), level, (w, h))
        return out

    @property
    def dimensions(self) -> tuple[int, int]:
        """``(w, h)`` of level 0."""
        return self.level_dimensions[0]

    @property
    def level_count(self) -> int:
        """Number of pyramid levels."""
        return len(self.level_dimensions)

    def get_best_level_for_downsample(self, downsample: float) -> int:
        """The largest level whose downsample is at most ``downsample`` (as OpenSlide does)."""
        best = 0
        for i, ds in enumerate(self.level_downsamples):
            if ds <= downsample * (1 + 1e-9):
                best = i
        return best

    @abc.abstractmethod
    def close(self) -> None:
        """Release the backend's resources (idempotent)."""

    def __enter__(self) -> Slide:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.path!r}, dimensions={self.dimensions})"


class PooledSlide(Slide):
    """A backend whose batched reads run on a per-slide thread pool, started on first use.

    Subclasses set ``path`` and call :meth:`_init_reads`; ``read_threads`` (default
    ``READ_THREADS``) is the pool's size, 1 reads serially. :meth:`close` shuts the pool down once
    and then calls :meth:`_close_backend`.
    """

    read_threads: int

    def _init_reads(self, thread_name: str) -> None:
        self._pool: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()
        self._closed = False
        self._thread_name = thread_name
        self.read_threads = READ_THREADS

    def _map(self, fn: Callable[[T], R], items: Sequence[T]) -> Iterable[R]:
        """``fn`` over ``items`` on the pool (serially for one item or ``read_threads <= 1``)."""
        if len(items) <= 1 or self.read_threads <= 1:
            return [fn(item) for item in items]
        with self._lock:
            if self._closed:  # never start a pool that close() would no longer shut down
                raise SlideReadError(self.path, "slide is closed")
            if self._pool is None:
                self._pool = ThreadPoolExecutor(
                    self.read_threads, thread_name_prefix=self._thread_name
                )
            pool = self._pool
        return list(pool.map(fn, items))

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            if self._pool is not None:
                self._pool.shutdown(wait=True)
                self._pool = None
        self._close_backend()

    def _close_backend(self) -> None:
        """Release what the backend holds besides the pool (nothing by default)."""


def _as_locations(locations: Sequence[tuple[int, int]] | np.ndarray) -> np.ndarray:
    """``int64[n, 2]`` of ``(x, y)``."""
    locs = np.asarray(locations, dtype=np.int64)
    if locs.size == 0:
        return locs.reshape(0, 2)
    if locs.ndim != 2 or locs.shape[1] != 2:
        raise ValueError(f"locations must have shape [n, 2] of (x, y), got {locs.shape}")
    return locs


def _as_size(size: tuple[int, int]) -> tuple[int, int]:
    w, h = (int(v) for v in size)
    if w <= 0 or h <= 0:
        raise ValueError(f"size must be positive (w, h), got {size}")
    return w, h


def _check_level(slide: Slide, level: int) -> None:
    if not 0 <= level < slide.level_count:
        raise ValueError(f"level {level} out of range: {slide.path} has {slide.level_count} levels")


def level_origin(location: tuple[int, int], downsample: tuple[float, float]) -> tuple[int, int]:
    """Top-left ``(x, y)`` in pixels of a level with ``downsample (dx, dy)`` of a level-0 location."""
    x, y = location
    dx, dy = downsample
    return math.floor(x / dx + 1e-9), math.floor(y / dy + 1e-9)
