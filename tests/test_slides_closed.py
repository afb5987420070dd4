"""Slide backends after close: clear errors, no new thread pool."""

from __future__ import annotations

import numpy as np
import pytest
from slide_factory import test_image, write_pyramidal_tiff

from wsi_ats.slides import SlideReadError, open_slide


def test_openslide_batched_read_after_close_raises_and_starts_no_pool(tmp_path) -> None:
    path = write_pyramidal_tiff(tmp_path / "s.tiff", test_image(256, 256), levels=2)
    slide = open_slide(path)
    slide.close()
    with pytest.raises(SlideReadError, match="closed"):
        slide.read_regions(np.array([[0, 0], [64, 64]]), 0, (16, 16))
    assert slide._pool is None  # no thread pool leaked by a read on a closed slide
