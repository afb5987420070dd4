"""OpenSlide and OME-Zarr backends agree pixel for pixel; batched reads equal single reads; white outside."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from slide_factory import pyramid, test_image, write_pyramidal_tiff

from wsi_ats.slides import OmeZarrSlide, OpenSlideSlide, convert_to_ome_zarr, open_slide
from wsi_ats.slides.openslide_backend import rgba_to_rgb

H, W, LEVELS, TILE, CHUNK = 768, 1024, 3, 128, 256


@pytest.fixture(scope="module")
def slides(tmp_path_factory):
    """The same image as a lossless pyramidal TIFF and as OME-Zarr v0.4 and v0.5 converted from it."""
    root = tmp_path_factory.mktemp("backends")
    image = test_image(H, W, seed=1)
    tiff = write_pyramidal_tiff(root / "s.tiff", image, tile=TILE, levels=LEVELS, mpp=0.5)
    z4 = convert_to_ome_zarr(
        tiff, root / "s4.zarr", chunk_size=CHUNK, levels=LEVELS, ngff_version="0.4"
    )
    z5 = convert_to_ome_zarr(
        tiff, root / "s5.zarr", chunk_size=CHUNK, levels=LEVELS, ngff_version="0.5"
    )
    opened = {"tiff": open_slide(tiff), "zarr04": open_slide(z4), "zarr05": open_slide(z5)}
    yield image, opened
    for s in opened.values():
        s.close()


def test_backends_and_metadata(slides):
    _, s = slides
    assert isinstance(s["tiff"], OpenSlideSlide)
    assert isinstance(s["zarr04"], OmeZarrSlide) and isinstance(s["zarr05"], OmeZarrSlide)
    for slide in s.values():
        assert slide.dimensions == (W, H)
        assert slide.level_count == LEVELS
        assert slide.level_dimensions == ((W, H), (W // 2, H // 2), (W // 4, H // 4))
        assert slide.level_downsamples == pytest.approx((1.0, 2.0, 4.0))
        assert slide.mpp == pytest.approx((0.5, 0.5))


@pytest.mark.parametrize("name", ["zarr04", "zarr05"])
def test_every_level_equal_between_backends(slides, name):
    """Level 0 is pixel-exact; lower levels are equal too, since the TIFF's levels were made with the
    converter's own 2x2 mean rule."""
    image, s = slides
    expected = pyramid(image, LEVELS)
    for level, (w, h) in enumerate(s["tiff"].level_dimensions):
        a = s["tiff"].read_region((0, 0), level, (w, h))
        b = s[name].read_region((0, 0), level, (w, h))
        np.testing.assert_array_equal(a, expected[level])
        np.testing.assert_array_equal(b, a)


def test_read_region_matches_image_with_white_outside(slides):
    image, s = slides
    padded = np.full((H + 400, W + 400, 3), 255, np.uint8)
    padded[200 : 200 + H, 200 : 200 + W] = image
    for slide in s.values():
        for x, y in [(-100, -50), (W - 60, H - 30), (300, 200), (W + 10, 0), (-200, -200)]:
            got = slide.read_region((x, y), 0, (150, 120))
            np.testing.assert_array_equal(got, padded[200 + y : 320 + y, 200 + x : 350 + x])
        far = slide.read_region((10 * W, 10 * H), 1, (40, 30))
        assert far.shape == (30, 40, 3) and (far == 255).all()


@pytest.mark.parametrize("level", [0, 1])
def test_read_regions_equal_single_reads(slides, level):
    """Tiles straddling chunk borders, fully inside one chunk, partly and wholly outside the slide."""
    _, s = slides
    ds = 2**level
    rng = np.random.default_rng(level)
    locs = rng.integers(-300, W + 100, size=(40, 2)) // ds * ds
    locs = np.concatenate([locs, [[CHUNK * ds - 5 * ds, CHUNK * ds - 7 * ds], [0, 0], [-5000, 10]]])
    for slide in s.values():
        batch = slide.read_regions(locs, level, (100, 90))
        assert batch.shape == (len(locs), 90, 100, 3) and batch.dtype == np.uint8
        for i, (x, y) in enumerate(locs):
            np.testing.assert_array_equal(
                batch[i], slide.read_region((int(x), int(y)), level, (100, 90))
            )
        np.testing.assert_array_equal(batch, s["tiff"].read_regions(locs, level, (100, 90)))


def test_read_regions_empty_and_bad_arguments(slides):
    _, s = slides
    for slide in s.values():
        assert slide.read_regions(np.zeros((0, 2), int), 0, (8, 8)).shape == (0, 8, 8, 3)
        with pytest.raises(ValueError, match="level"):
            slide.read_region((0, 0), LEVELS, (8, 8))
        with pytest.raises(ValueError, match="size"):
            slide.read_region((0, 0), 0, (0, 8))


def test_zarr_decodes_each_chunk_once_per_call(slides, monkeypatch):
    _, s = slides
    slide = s["zarr04"]
    fetched: list = []
    original = OmeZarrSlide._fetch

    def spy(self, level, key):
        fetched.append((level, key))
        return original(self, level, key)

    monkeypatch.setattr(OmeZarrSlide, "_fetch", spy)
    # 20 overlapping tiles that all lie in the 2 x 2 chunks at the origin
    locs = [(x, y) for x in range(0, 200, 50) for y in range(0, 250, 50)]
    slide.read_regions(locs, 0, (200, 200))
    assert sorted(fetched) == [(0, (r, c)) for r in range(2) for c in range(2)]


def test_zarr_memory_budget_groups_tiles(slides, monkeypatch):
    """With a budget of two chunks, a call still returns the right pixels (tiles are processed in
    groups)."""
    _, s = slides
    monkeypatch.setattr("wsi_ats.slides.zarr_backend.CHUNK_BUDGET_BYTES", 2 * 3 * CHUNK * CHUNK)
    locs = np.random.default_rng(5).integers(0, W, size=(12, 2))
    np.testing.assert_array_equal(
        s["zarr05"].read_regions(locs, 0, (300, 300)), s["tiff"].read_regions(locs, 0, (300, 300))
    )


def test_concurrent_reads_from_threads(slides):
    _, s = slides
    locs = np.random.default_rng(7).integers(0, 700, size=(32, 2))
    for slide in s.values():
        expected = [slide.read_region((int(x), int(y)), 0, (64, 64)) for x, y in locs]
        with ThreadPoolExecutor(8) as pool:
            got = list(
                pool.map(
                    lambda xy, s=slide: s.read_region((int(xy[0]), int(xy[1])), 0, (64, 64)), locs
                )
            )
        for a, b in zip(expected, got, strict=True):
            np.testing.assert_array_equal(a, b)


def test_rgba_composited_on_white():
    rgba = np.array([[[10, 20, 30, 255], [0, 0, 0, 0], [200, 100, 0, 128]]], np.uint8)
    rgb = rgba_to_rgb(rgba)
    assert rgb[0, 0].tolist() == [10, 20, 30]
    assert rgb[0, 1].tolist() == [255, 255, 255]
    expected = [(c * 128 + 255 * 127 + 127) // 255 for c in (200, 100, 0)]
    assert rgb[0, 2].tolist() == expected


def test_context_manager_closes(tmp_path):
    tiff = write_pyramidal_tiff(tmp_path / "c.tiff", test_image(64, 64), tile=64, levels=1)
    with open_slide(tiff) as slide:
        assert slide.read_region((0, 0), 0, (4, 4)).shape == (4, 4, 3)
    slide.close()  # idempotent
