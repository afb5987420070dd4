"""A bounded set of open slides shared by threads: least recently used ones are closed.

Training reads tiles of every slide of a cohort, epoch after epoch. Keeping every slide open costs a
file handle and, once it has served a batched read, a reading thread pool per slide: thousands of
idle threads for a cohort of thousands. :class:`SlideCache` keeps at most ``max_open`` slides open
(more only while more than that are being read at once) and closes the least recently used one that
no thread is reading.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from .base import Slide
from .open import open_slide


class SlideCache:
    """Open slides by path, at most ``max_open`` at a time; use them through :meth:`lease`."""

    def __init__(self, max_open: int = 16, opener: Callable[[str], Slide] = open_slide) -> None:
        if max_open < 1:
            raise ValueError(f"max_open must be >= 1, got {max_open}")
        self.max_open = max_open
        self._opener = opener
        self._lock = threading.Lock()
        self._open: OrderedDict[str, Slide] = OrderedDict()  # least recently used first
        self._users: dict[str, int] = {}
        self.opened = 0  # slides opened so far (a slide evicted and used again counts twice)

    @contextmanager
    def lease(self, path: str) -> Iterator[Slide]:
        """The open slide at ``path``, kept open until the ``with`` block ends."""
        slide = self._acquire(path)
        try:
            yield slide
        finally:
            self._release(path)

    def __len__(self) -> int:
        with self._lock:
            return len(self._open)

    def _acquire(self, path: str) -> Slide:
        with self._lock:
            slide = self._open.get(path)
            if slide is not None:
                self._open.move_to_end(path)
                self._users[path] = self._users.get(path, 0) + 1
                return slide
        slide = self._opener(path)  # outside the lock: opening may be slow (or remote)
        with self._lock:
            present = self._open.get(path)
            if present is not None:  # another thread opened it meanwhile: keep one handle
                extra, slide = slide, present
                self._open.move_to_end(path)
            else:
                extra = None
                self._open[path] = slide
                self.opened += 1
            self._users[path] = self._users.get(path, 0) + 1
            evicted = self._evict()
        for s in [extra, *evicted]:
            if s is not None:
                s.close()
        return slide

    def _release(self, path: str) -> None:
        with self._lock:
            self._users[path] -= 1
            if self._users[path] == 0:
                del self._users[path]
            evicted = self._evict()
        for s in evicted:
            s.close()

    def _evict(self) -> list[Slide]:
        """Under the lock: remove least recently used slides nobody reads, down to ``max_open``."""
        out = []
        for path in list(self._open):
            if len(self._open) <= self.max_open:
                break
            if path not in self._users:
                out.append(self._open.pop(path))
        return out

    def close(self) -> None:
        """Close every open slide (call when no lease is active)."""
        with self._lock:
            slides = list(self._open.values())
            self._open.clear()
            self._users.clear()
        for s in slides:
            s.close()
