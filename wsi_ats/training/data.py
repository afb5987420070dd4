"""Training data: labelled slides from a manifest, their low-res views cached in memory, and a pool
of threads that reads tiles (and views) in the background.

Only the low-res view and tissue mask of each slide stay in memory (a few hundred KB each); high-res
tiles are read on demand, ``N`` per slide and step, from slide handles kept open for the run.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from wsi_ats.cohort.manifest import load_manifest
from wsi_ats.core import AppearanceStrata, fit_appearance_strata
from wsi_ats.models import PipelineConfig
from wsi_ats.models.data_range import DataRange, mean_mpp
from wsi_ats.slides import SlideCache
from wsi_ats.stages import (
    SlideView,
    appearance_exploration,
    read_tiles,
    view_descriptors,
    view_of,
)


@dataclass(frozen=True)
class LabelledSlide:
    """One slide of the cohort: id, absolute path (or URL), label 0/1, split name."""

    slide_id: str
    path: str
    label: int
    split: str
    mpp: float | None = None  # um/px of level 0 from the manifest (overrides the slide's)


def read_cohort(manifest: str | Path) -> list[LabelledSlide]:
    """Labelled slides of ``manifest`` (validated; every row needs a label and a readable path)."""
    parsed = load_manifest(manifest, require_label=True, on_missing="fail")
    return [
        LabelledSlide(e.slide_id, e.path, int(e.label), (e.split or "train").strip().lower(), e.mpp)
        for e in parsed
    ]


def split_cohort(
    slides: list[LabelledSlide], val_fraction: float, seed: int
) -> tuple[list[LabelledSlide], list[LabelledSlide]]:
    """``(train, val)``: the manifest's ``train`` and ``val`` rows; without ``val`` rows, a seeded,
    label-stratified ``val_fraction`` of the train rows (the train rows themselves when it is 0).
    Rows of any other split (``test``...) are never used for training."""
    train = [s for s in slides if s.split == "train"]
    val = [s for s in slides if s.split in ("val", "valid", "validation")]
    if not train:
        raise ValueError("the manifest has no rows with split 'train' (or an empty split)")
    if val:
        return train, val
    if val_fraction <= 0:
        return train, list(train)
    rng = np.random.default_rng(seed)
    held: set[str] = set()
    for label in (0, 1):
        ids = [s.slide_id for s in train if s.label == label]
        k = int(round(len(ids) * val_fraction))
        if len(ids) > 1 and k >= 1:
            held.update(rng.choice(ids, size=min(k, len(ids) - 1), replace=False).tolist())
    return [s for s in train if s.slide_id not in held], [s for s in train if s.slide_id in held]


#: slides a :class:`SlideStore` keeps open at most (least recently used ones are closed)
MAX_OPEN_SLIDES = 16


class SlideStore:
    """Open slide handles and cached low-res views of a run, plus the background reader pool.

    ``view(slide)`` computes a :class:`SlideView` once and keeps it; ``prefetch_views`` computes the
    views of upcoming slides in the pool; ``submit_tiles`` reads tiles in the pool and returns a
    ``Future`` of ``uint8[n, h, w, 3]``. Backends are safe for concurrent reads. At most
    ``max_open`` slides are open at once (:class:`~wsi_ats.slides.SlideCache`), whatever the cohort's
    size, so open files and reading threads stay bounded.
    """

    def __init__(
        self, config: PipelineConfig, workers: int, max_open: int = MAX_OPEN_SLIDES
    ) -> None:
        self.config = config
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="wsi-ats-read")
        self._lock = threading.Lock()
        self.slides = SlideCache(max(max_open, workers))
        self._views: dict[str, Future[SlideView]] = {}
        self._exploration: dict[tuple[str, tuple[int, int]], np.ndarray] = {}
        self._cell_strata: dict[str, torch.Tensor | None] = {}
        self.strata: AppearanceStrata | None = None

    def _compute_view(self, slide: LabelledSlide) -> SlideView:
        with self.slides.lease(slide.path) as handle:
            return view_of(handle, self.config, slide.slide_id, slide.mpp)

    def _view_future(self, slide: LabelledSlide) -> Future[SlideView]:
        with self._lock:
            fut = self._views.get(slide.slide_id)
            if fut is None:
                fut = self._views[slide.slide_id] = self.pool.submit(self._compute_view, slide)
            return fut

    def prefetch_views(self, slides: list[LabelledSlide]) -> None:
        """Start computing the views of ``slides`` in the background (no-op for cached ones)."""
        for s in slides:
            self._view_future(s)

    def view(self, slide: LabelledSlide) -> SlideView:
        """The slide's cached :class:`SlideView` (computed now if not prefetched)."""
        return self._view_future(slide).result()

    def fit_strata(
        self, slides: list[LabelledSlide], map_size: Callable[[SlideView], tuple[int, int]]
    ) -> AppearanceStrata:
        """Fit the appearance strata of exploration on the tissue cells of ``slides`` (the training
        slides; ``map_size(view)`` is the attention map's size for a view)."""
        desc = self.cohort_descriptors(slides, map_size)
        tc = self.config.train
        return self.set_strata(
            fit_appearance_strata(
                desc, tc.explore_strata, seed=tc.seed, restarts=tc.explore_restarts
            )
        )

    def cohort_descriptors(
        self, slides: list[LabelledSlide], map_size: Callable[[SlideView], tuple[int, int]]
    ) -> torch.Tensor:
        """The appearance descriptors ``[M, d]`` of the tissue cells of ``slides``, pooled."""
        self.prefetch_views(slides)
        parts = []
        for s in slides:
            view = self.view(s)
            desc, support = view_descriptors(
                view, map_size(view), self.config.train.explore_context
            )
            parts.append(desc[support])
        return torch.cat(parts)

    def set_strata(self, strata: AppearanceStrata) -> AppearanceStrata:
        """Explore over ``strata`` from now on (the slides' cached measures are dropped)."""
        self.strata = strata
        with self._lock:
            self._exploration.clear()
            self._cell_strata.clear()
        return strata

    def cell_strata(
        self, slide: LabelledSlide, compute: Callable[[], torch.Tensor | None]
    ) -> torch.Tensor | None:
        """The stratum of each attention cell of ``slide``: ``compute()`` (the model's
        :meth:`~wsi_ats.models.SlideClassifier.cell_strata` of its view) the first time, then kept
        until :meth:`set_strata` (the model's strata are set with the store's, once a run)."""
        with self._lock:
            if slide.slide_id in self._cell_strata:
                return self._cell_strata[slide.slide_id]
        strata = compute()
        with self._lock:
            self._cell_strata[slide.slide_id] = strata
        return strata

    def data_range(self, slides: list[LabelledSlide]) -> DataRange | None:
        """Level-0 size and resolution range of ``slides`` (their views, computed if needed)."""
        views = [self.view(s) for s in slides]
        return DataRange.of([v.level0_size for v in views], [mean_mpp(v.mpp) for v in views])

    def exploration(self, slide: LabelledSlide, map_size: tuple[int, int]) -> np.ndarray:
        """The slide's appearance-stratified exploration ``[mh * mw]`` (computed once, kept): over
        the strata of :meth:`fit_strata` when fitted, else over the slide's own clusters."""
        key = (slide.slide_id, tuple(map_size))
        with self._lock:
            cached = self._exploration.get(key)
        if cached is None:
            tc = self.config.train
            cached = appearance_exploration(
                self.view(slide), map_size, self.strata, tc.explore_strata, tc.explore_rarity,
                tc.seed, tc.explore_context,
            )  # fmt: skip
            with self._lock:
                self._exploration[key] = cached
        return cached

    def submit_tiles(
        self,
        path: str,
        locations: np.ndarray,
        level: int,
        size: tuple[int, int],
        out_size: tuple[int, int] | None = None,
    ) -> Future[np.ndarray]:
        """Read tiles at level-0 ``locations`` ``[n, 2]`` (x, y) in the background (resized to
        ``out_size`` when given)."""
        return self.pool.submit(self._read_tiles, path, locations, level, size, out_size)

    def _read_tiles(
        self,
        path: str,
        locations: np.ndarray,
        level: int,
        size: tuple[int, int],
        out_size: tuple[int, int] | None = None,
    ) -> np.ndarray:
        with self.slides.lease(path) as handle:
            return read_tiles(handle, locations, level, size, out_size)

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)
        self.slides.close()

    def __enter__(self) -> SlideStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
