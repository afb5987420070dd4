"""A bounded set of open slides: least recently used ones close, slides being read never do, and a
500-slide cohort keeps open files and threads bounded during training's reads."""

from __future__ import annotations

import os
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
from tiny_cohort import CONFIG, tissue_slide

from wsi_ats.slides import SlideCache
from wsi_ats.training.data import LabelledSlide, SlideStore


class FakeSlide:
    def __init__(self, path: str, log: list[tuple[str, str]]) -> None:
        self.path, self.log, self.closed = path, log, False
        log.append(("open", path))

    def close(self) -> None:
        assert not self.closed, f"{self.path} closed twice"
        self.closed = True
        self.log.append(("close", self.path))


def test_least_recently_used_slide_closes_first_and_leased_ones_stay_open() -> None:
    log: list[tuple[str, str]] = []
    cache = SlideCache(2, opener=lambda p: FakeSlide(p, log))
    with cache.lease("a") as a:
        pass
    with cache.lease("b"):
        pass
    with cache.lease("a") as again:  # a is now the most recently used
        assert again is a
    with cache.lease("c"):
        pass
    assert ("close", "b") in log and ("close", "a") not in log and len(cache) == 2
    with cache.lease("a") as held:  # held while two others come and go
        with cache.lease("d"), cache.lease("e"):
            assert not held.closed and len(cache) == 3  # over max only while 3 are in use
        assert not held.closed
    assert len(cache) == 2 and cache.opened == 5
    cache.close()
    assert sum(1 for e in log if e[0] == "open") == sum(1 for e in log if e[0] == "close")
    with pytest.raises(ValueError, match="max_open"):
        SlideCache(0)


def test_concurrent_leases_never_read_a_closed_slide() -> None:
    log: list[tuple[str, str]] = []
    cache = SlideCache(3, opener=lambda p: FakeSlide(p, log))
    errors: list[str] = []

    def work(seed: int) -> None:
        rng = np.random.default_rng(seed)
        for _ in range(300):
            path = f"s{rng.integers(12)}"
            with cache.lease(path) as slide:
                if slide.closed:
                    errors.append(path)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and len(cache) <= 3
    cache.close()
    opened = [p for e, p in log if e == "open"]
    assert len(opened) > 12  # slides were evicted and opened again
    assert len(opened) == sum(1 for e, _ in log if e == "close")


def _open_files() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_a_500_slide_cohort_keeps_files_and_threads_bounded(tmp_path: Path) -> None:
    one = tissue_slide(tmp_path / "one.tiff", 1, seed=0, size=256)
    slides = []
    for i in range(500):  # distinct files, so each is opened on its own
        path = tmp_path / f"s{i:03d}.tiff"
        shutil.copyfile(one, path)
        slides.append(LabelledSlide(f"s{i:03d}", str(path), i % 2, "train"))
    files0, threads0 = _open_files(), threading.active_count()
    most_files = most_threads = 0
    locations = np.array([[0, 0], [64, 64], [128, 0], [0, 128]])
    with SlideStore(CONFIG, workers=2, max_open=8) as store:
        for start in range(0, len(slides), 20):
            batch = slides[start : start + 20]
            store.prefetch_views(batch)
            futures = [store.submit_tiles(s.path, locations, 0, (16, 16)) for s in batch]
            for s, fut in zip(batch, futures, strict=True):
                assert store.view(s).slide_id == s.slide_id
                assert fut.result().shape == (4, 16, 16, 3)
            most_files = max(most_files, _open_files() - files0)
            most_threads = max(most_threads, threading.active_count() - threads0)
        assert store.slides.opened >= 500 and len(store.slides) <= 8
    # 8 open slides (a few files each) and 2 readers with 8 slide threads each at most
    assert most_files <= 8 * 4, most_files
    assert most_threads <= 2 + 8 * 8, most_threads
    assert _open_files() <= files0 + 2
