"""Low-resolution views (a pyramid level, or streamed when there is none) and tissue masks."""

from __future__ import annotations

import numpy as np
import pytest
from slide_factory import pyramid, test_image, write_pyramidal_tiff

from wsi_ats.slides import OpenSlideSlide, low_res_view, open_slide, tissue_mask
from wsi_ats.slides.lowres import area_reduce


@pytest.fixture(scope="module")
def pyramidal(tmp_path_factory):
    image = test_image(768, 1024, seed=2)
    path = write_pyramidal_tiff(
        tmp_path_factory.mktemp("lr") / "p.tiff", image, tile=128, levels=3, mpp=0.5
    )
    return image, path


@pytest.fixture
def read_sizes(monkeypatch) -> list[tuple[int, int]]:
    """The ``size`` of every OpenSlide ``read_region`` call made during the test."""
    sizes: list[tuple[int, int]] = []
    original = OpenSlideSlide.read_region

    def spy(self, location, level, size):
        sizes.append(size)
        return original(self, location, level, size)

    monkeypatch.setattr(OpenSlideSlide, "read_region", spy)
    return sizes


def test_picks_the_level_nearest_the_target_size(pyramidal):
    image, path = pyramidal
    with open_slide(path) as slide:
        view = low_res_view(slide, target_size=300)  # downsample 3.4: level 2 (4.0) is nearest
        assert view.level == 2 and view.scale == (4.0, 4.0)
        np.testing.assert_array_equal(view.image, pyramid(image, 3)[2])
        assert low_res_view(slide, target_size=520).level == 1


def test_picks_the_level_nearest_the_target_mpp(pyramidal):
    _, path = pyramidal
    with open_slide(path) as slide:
        view = low_res_view(slide, target_mpp=1.0)
        assert view.level == 1 and view.image.shape == (384, 512, 3)


def test_streams_when_no_level_is_near(tmp_path, monkeypatch, read_sizes):
    """A single-level slide: the view is computed tile by tile (no read larger than a tile) and equals
    the area mean of the whole level."""
    image = test_image(900, 1200, seed=4)
    path = write_pyramidal_tiff(tmp_path / "flat.tiff", image, tile=128, levels=1)
    monkeypatch.setattr("wsi_ats.slides.lowres.STREAM_TILE", 256)
    with open_slide(path) as slide:
        view = low_res_view(slide, target_size=200)  # downsample 6, no such level
    assert view.level is None and view.scale == (6.0, 6.0)
    assert view.image.shape == (150, 200, 3)
    np.testing.assert_array_equal(view.image, area_reduce(image, 6))
    assert len(read_sizes) > 4 and max(w * h for w, h in read_sizes) <= 256 * 256


def test_refuses_a_view_near_full_resolution_before_reading(pyramidal, tmp_path, read_sizes):
    _, path = pyramidal
    flat = write_pyramidal_tiff(tmp_path / "flat.tiff", test_image(900, 1200, seed=5), levels=1)
    with open_slide(path) as slide:
        with pytest.raises(
            ValueError, match=r"p\.tiff: the low-resolution view would be 1024 x 768"
        ):
            low_res_view(slide, target_mpp=0.25, max_pixels=500_000)  # finer than level 0
        assert low_res_view(slide, target_mpp=1.0, max_pixels=500_000).level == 1
    with open_slide(flat) as slide, pytest.raises(ValueError, match="200 x 150 px"):
        low_res_view(slide, target_size=200, max_pixels=20_000)  # the streamed view too
    assert read_sizes == [(512, 384)]  # only the accepted level-1 view was read


def test_area_reduce_partial_edge_blocks():
    img = np.zeros((5, 3, 3), np.uint8)
    img[4, :] = 200
    img[:, 2] = 100
    out = area_reduce(img, 2)
    assert out.shape == (3, 2, 3)
    assert out[2, 0].tolist() == [200] * 3  # a 1x2 block of 200s
    assert out[0, 1].tolist() == [100] * 3  # a 2x1 block of 100s
    assert out[2, 1].tolist() == [100] * 3  # the single corner pixel
    assert out[0, 0].tolist() == [0] * 3


def test_tissue_mask_finds_the_tissue():
    rng = np.random.default_rng(0)
    img = np.full((200, 300, 3), 245, np.uint8)
    img = (img.astype(int) + rng.integers(-8, 8, img.shape)).clip(0, 255).astype(np.uint8)
    img[50:150, 80:220] = (190, 110, 170)  # pink tissue
    img[95:100, 140:145] = 240  # a tiny hole inside it
    img[10, 10] = (200, 50, 150)  # an isolated speck
    img[180:195, 5:20] = 5  # a black pen mark
    mask = tissue_mask(img, min_object_fraction=1e-3)  # objects < 60 px go, holes < 60 px filled
    assert mask.shape == (200, 300) and mask.dtype == bool
    assert mask[52:148, 82:218].all()  # tissue, hole filled
    assert not tissue_mask(img, max_hole_fraction=1e-4)[96:99, 141:144].any()  # 25 px hole kept
    assert not mask[10, 10] and not mask[180:195, 5:20].any()
    assert mask.sum() == pytest.approx(100 * 140, rel=0.02)


def test_tissue_mask_fills_pale_regions_inside_tissue_but_not_large_holes():
    """A lightly stained region enclosed by tissue (saturation under Otsu's threshold) is tissue,
    up to ``max_hole_fraction`` of the view; a larger hole (a lumen, a tear) stays background."""
    img = np.full((400, 400, 3), 242, np.uint8)
    img[40:360, 40:360] = (236, 176, 208)  # stroma pink, saturation ~0.25
    yy, xx = np.mgrid[:400, :400]
    pale = (yy - 100) ** 2 + (xx - 100) ** 2 <= 6**2  # ~113 px: under 0.1% of 160,000 px
    img[pale] = (214, 212, 222)  # pale lavender-grey, saturation ~0.04: under any threshold
    lumen = (yy - 250) ** 2 + (xx - 250) ** 2 <= 30**2  # ~2,800 px: 1.8% of the view
    img[lumen] = 242
    mask = tissue_mask(img)
    assert mask[pale].all()
    assert not mask[(yy - 250) ** 2 + (xx - 250) ** 2 <= 25**2].any()
    core = (yy - 100) ** 2 + (xx - 100) ** 2 <= 4**2
    assert not tissue_mask(img, max_hole_fraction=1e-4)[core].any()  # the earlier rule: a hole


def test_saturation_value_equals_skimage_rgb2hsv_bit_for_bit():
    """The tissue mask's saturation and value skip the hue; they must be skimage's exactly (grey
    and black pixels included), for uint8 and float images."""
    from skimage.color import rgb2hsv

    from wsi_ats.slides.tissue import saturation_value

    rng = np.random.default_rng(5)
    img = rng.integers(0, 256, (97, 61, 3)).astype(np.uint8)
    img[:5] = 0  # black: value 0, saturation 0 (0 / 0 in the formula)
    img[5:10] = img[5:10, :, :1]  # greys: delta 0
    for image in (img, img / 255.0):
        sat, val = saturation_value(image)
        hsv = rgb2hsv(image)
        assert np.array_equal(sat, hsv[..., 1]) and np.array_equal(val, hsv[..., 2])
        assert sat.dtype == np.float64 and not np.isnan(sat).any()


def test_tissue_mask_of_a_blank_view_is_empty():
    assert not tissue_mask(np.full((64, 64, 3), 255, np.uint8)).any()
    noisy = np.random.default_rng(1).integers(240, 256, (64, 64, 3)).astype(np.uint8)
    assert not tissue_mask(noisy).any()
    assert tissue_mask(np.zeros((0, 5, 3), np.uint8)).shape == (0, 5)


def test_area_reduce_matches_a_reference_mean():
    rng = np.random.default_rng(3)
    for shape, factor in [((64, 48, 3), 2), ((63, 49, 3), 2), ((50, 70, 3), 3)]:
        img = rng.integers(0, 256, shape).astype(np.uint8)
        h, w = shape[:2]
        ref = np.empty((-(-h // factor), -(-w // factor), 3), np.uint8)
        for i in range(ref.shape[0]):
            for j in range(ref.shape[1]):
                block = img[i * factor : (i + 1) * factor, j * factor : (j + 1) * factor]
                ref[i, j] = np.floor(block.reshape(-1, 3).mean(0) + 0.5)
        np.testing.assert_array_equal(area_reduce(img, factor), ref)
