"""The real test slides in ../shared/fixtures open and read (or fail with the typed error).

They live outside the repository (see ../shared/fixtures/PROVENANCE.md); CI has them beside the clone.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from wsi_ats.slides import (
    SlideOpenError,
    convert_to_ome_zarr,
    low_res_view,
    open_slide,
    tissue_mask,
)
from wsi_ats.slides.lowres import area_reduce

FIXTURES = Path(__file__).resolve().parents[2] / "shared" / "fixtures"
if not FIXTURES.is_dir():  # a missing fixture folder fails the run: these tests must not vanish
    pytest.fail(
        f"real test slides not found at {FIXTURES}: put the project's shared/ folder beside the "
        "clone (CI does; see shared/fixtures/PROVENANCE.md)",
        pytrace=False,
    )


def test_cmu_small_region_has_no_pyramid_and_its_view_is_streamed():
    path = FIXTURES / "cmu-1-small-region.svs"
    with open_slide(path) as slide:
        assert slide.dimensions == (2220, 2967) and slide.level_count == 1
        assert slide.mpp == pytest.approx((0.499, 0.499))
        view = low_res_view(slide, target_size=512)
        k = round(2967 / 512)
        assert view.level is None and view.scale == (k, k)
        assert view.image.shape == (math.ceil(2967 / k), math.ceil(2220 / k), 3)
        whole = slide.read_region((0, 0), 0, slide.dimensions)  # 20 MB: fine for a check
        np.testing.assert_array_equal(view.image, area_reduce(whole, k))
        mask = tissue_mask(view.image)
        assert 0.2 < mask.mean() < 0.98  # an H&E crop: mostly tissue, some background
        locs = np.array([[0, 0], [1000, 1500], [2100, 2900], [-100, 50]])
        batch = slide.read_regions(locs, 0, (256, 256))
        for i, (x, y) in enumerate(locs):
            np.testing.assert_array_equal(
                batch[i], slide.read_region((int(x), int(y)), 0, (256, 256))
            )
        assert (batch[3][:, :100] == 255).all()


def test_cmu_converts_pixel_exact(tmp_path):
    path = FIXTURES / "cmu-1-small-region.svs"
    dst = convert_to_ome_zarr(path, tmp_path / "cmu.zarr", chunk_size=512)
    with open_slide(path) as a, open_slide(dst) as b:
        assert b.level_count == 3 and b.mpp == pytest.approx(a.mpp)
        locs = np.array([[0, 0], [511, 511], [1900, 2700], [1000, 1000]])
        np.testing.assert_array_equal(
            a.read_regions(locs, 0, (300, 300)), b.read_regions(locs, 0, (300, 300))
        )


def test_boxes_tiff_levels_with_non_integer_downsamples(tmp_path):
    path = FIXTURES / "boxes.tiff"
    with open_slide(path) as slide:
        assert slide.level_dimensions == ((300, 250), (150, 125), (75, 62), (37, 31))
        assert slide.level_downsamples == pytest.approx((1.0, 2.0, 4.016, 8.086), abs=1e-3)
        for level, (w, h) in enumerate(slide.level_dimensions):
            img = slide.read_region((0, 0), level, (w, h))
            assert img.shape == (h, w, 3) and img.std() > 0
        locs = [(0, 0), (100, 40), (280, 230)]
        batch = slide.read_regions(locs, 2, (20, 20))
        for i, loc in enumerate(locs):
            np.testing.assert_array_equal(batch[i], slide.read_region(loc, 2, (20, 20)))
        view = low_res_view(slide, target_size=40)
        assert view.level == 3 and view.image.shape == (31, 37, 3)
        dst = convert_to_ome_zarr(slide, tmp_path / "boxes.zarr", chunk_size=64, ngff_version="0.5")
        with open_slide(dst) as z:
            np.testing.assert_array_equal(
                z.read_region((0, 0), 0, (300, 250)), slide.read_region((0, 0), 0, (300, 250))
            )


def test_small_svs_reads():
    with open_slide(FIXTURES / "small.svs") as slide:
        assert slide.dimensions == (16, 16)
        img = slide.read_region((-4, -4), 0, (20, 20))
        assert img.shape == (20, 20, 3) and (img[:4] == 255).all()


def test_unopenable_tiff_raises_typed_error():
    path = FIXTURES / "unopenable.tiff"
    with pytest.raises(SlideOpenError, match="Unsupported TIFF compression") as info:
        open_slide(path)
    assert str(path) in str(info.value)
