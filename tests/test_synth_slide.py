"""Synthetic slides: a real pyramidal TIFF, deterministic, with lesions only high resolution reveals."""

from __future__ import annotations

import math
import tracemalloc
import weakref
from pathlib import Path

import numpy as np
import openslide
import pytest

from wsi_ats.synth import make_layout, slide_layout, write_synthetic_slide
from wsi_ats.synth.atlas import build_atlases
from wsi_ats.synth.render import BACKGROUND, level_shapes, render_tile
from wsi_ats.synth.tiff_writer import write_pyramid

SIZE = 4096


@pytest.fixture(scope="module")
def positive_slide(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    path = tmp_path_factory.mktemp("synth") / "pos.tiff"
    truth = write_synthetic_slide(path, SIZE, seed=7, label=1, spot_diameter=160)
    return path, truth


def test_openslide_reads_levels_downsamples_and_mpp(positive_slide) -> None:
    path, _ = positive_slide
    with openslide.OpenSlide(str(path)) as s:
        assert s.properties[openslide.PROPERTY_NAME_VENDOR] == "generic-tiff"
        assert s.level_dimensions == ((4096, 4096), (2048, 2048), (1024, 1024), (512, 512))
        assert s.level_downsamples == (1.0, 2.0, 4.0, 8.0)
        assert float(s.properties[openslide.PROPERTY_NAME_MPP_X]) == pytest.approx(0.5)
        assert float(s.properties[openslide.PROPERTY_NAME_MPP_Y]) == pytest.approx(0.5)
        corner = np.asarray(s.read_region((0, 0), 0, (64, 64)).convert("RGB"))
    assert (np.abs(corner.astype(int) - BACKGROUND).max(axis=-1) <= 3).all()  # JPEG error


def test_lossless_file_holds_exactly_the_rendered_tiles(tmp_path: Path) -> None:
    """Non-square, non-multiple-of-256 size: every level read back equals the renderer."""
    path = tmp_path / "odd.tiff"
    w, h = 1300, 1000
    write_synthetic_slide(path, (w, h), seed=3, label=1, compression="zlib")
    layout = slide_layout((w, h), 3, 1)
    atlases = build_atlases(0)
    shapes = level_shapes(w, h)
    with openslide.OpenSlide(str(path)) as s:
        assert s.level_dimensions == tuple((lw, lh) for lh, lw in shapes)
        for level, (lh, lw) in enumerate(shapes):
            got = np.asarray(s.read_region((0, 0), level, (lw, lh)).convert("RGB"))
            rows = [
                np.concatenate(
                    [
                        _tile_or_blank(render_tile(layout, atlases, level, r, c))
                        for c in range(math.ceil(lw / 256))
                    ],
                    axis=1,
                )
                for r in range(math.ceil(lh / 256))
            ]
            want = np.concatenate(rows, axis=0)[:lh, :lw]
            np.testing.assert_array_equal(got, want)


def _tile_or_blank(tile: np.ndarray | None) -> np.ndarray:
    if tile is not None:
        return tile
    return np.broadcast_to(BACKGROUND, (256, 256, 3))


def test_same_seed_gives_identical_bytes(tmp_path: Path) -> None:
    a, b, c = tmp_path / "a.tiff", tmp_path / "b.tiff", tmp_path / "c.tiff"
    write_synthetic_slide(a, 1024, seed=11, label=1)
    write_synthetic_slide(b, 1024, seed=11, label=1)
    write_synthetic_slide(c, 1024, seed=12, label=1)
    assert a.read_bytes() == b.read_bytes()
    assert a.read_bytes() != c.read_bytes()


def test_truth_boxes_inside_slide_and_spot_counts() -> None:
    """Many layouts (cheap: no pixels): spots in tissue, in the slide, < 1% of the tissue."""
    for seed in range(40):
        label = seed % 2
        layout = make_layout(16384, 16384, seed, label)
        truth = layout.truth()
        assert 0.2 <= truth["tissue_fraction"] <= 0.45
        assert 0 < truth["lesion_fraction_of_tissue"] < 0.01
        spots = truth["spots"]
        assert 3 <= len(spots) <= 8
        n_malignant = sum(s["kind"] == "malignant" for s in spots)
        assert (1 <= n_malignant <= 2) if label else n_malignant == 0
        for s in spots:
            assert s["x"] >= 0 and s["x"] + s["w"] <= 16384
            assert s["y"] >= 0 and s["y"] + s["h"] <= 16384
            assert s["w"] == pytest.approx(0.015 * 16384, abs=2)
        xs = np.array([s["cx"] for s in spots])
        ys = np.array([s["cy"] for s in spots])
        assert (layout.field_at(xs, ys) >= layout.threshold).all()


def test_label_changes_only_spot_kinds() -> None:
    neg, pos = make_layout(8192, 8192, 5, 0), make_layout(8192, 8192, 5, 1)
    assert [(s.cx, s.cy, s.radius) for s in neg.spots] == [
        (s.cx, s.cy, s.radius) for s in pos.spots
    ]
    assert neg.threshold == pos.threshold
    assert {s.kind for s in neg.spots} == {"benign"} and "malignant" in {s.kind for s in pos.spots}


def test_standard_layout_has_no_distractors() -> None:
    layout = make_layout(4096, 4096, 5, 1)
    assert layout.variant == "standard"
    assert {s.kind for s in layout.spots} <= {"benign", "malignant"}
    truth = layout.truth()
    assert "variant" not in truth and "distractor_fraction_of_tissue" not in truth


def test_standard_atlases_keep_their_random_draws() -> None:
    """The pale textures draw from their own stream: stroma, benign and malignant are exactly what
    the original single stream (stroma, benign, lattice, in that order) gives."""
    from wsi_ats.synth.atlas import _benign, _malignant_offsets, _stroma

    rng = np.random.default_rng(np.random.SeedSequence([0, 0xA71A5]))
    stroma, benign = _stroma(rng, 256), _benign(rng, 256)
    malignant = benign + _malignant_offsets(rng, 256)
    atlases = build_atlases(0, 256)
    np.testing.assert_array_equal(atlases.stroma.level(0), stroma)
    np.testing.assert_array_equal(atlases.benign.level(0), benign)
    np.testing.assert_array_equal(atlases.malignant.level(0), malignant)


def test_spot_diameter_in_level0_pixels() -> None:
    layout = make_layout(32768, 32768, 1, 1, spot_diameter=256)
    assert all(s.radius == 128 for s in layout.spots)
    assert layout.lesion_fraction < 0.001


def _spot_pixels(s: openslide.OpenSlide, spot, level: int) -> np.ndarray:
    """Pixels of ``level`` whose centres lie well inside the spot (radius * 0.8): [n, 3] float."""
    ds = 2**level
    r = spot.radius
    x0, y0 = int(spot.cx - r) // ds, int(spot.cy - r) // ds
    n = int(2 * r) // ds + 2
    img = np.asarray(s.read_region((x0 * ds, y0 * ds), level, (n, n)).convert("RGB"), float)
    yc = (np.arange(y0, y0 + n) + 0.5) * ds
    xc = (np.arange(x0, x0 + n) + 0.5) * ds
    inside = (xc[None] - spot.cx) ** 2 + (yc[:, None] - spot.cy) ** 2 <= (0.8 * r) ** 2
    return img[inside]


def test_benign_and_malignant_look_alike_at_low_res_only(positive_slide) -> None:
    path, truth = positive_slide
    benign = [s for s in truth.spots if s.kind == "benign"]
    malignant = [s for s in truth.spots if s.kind == "malignant"]
    assert benign and malignant
    with openslide.OpenSlide(str(path)) as s:
        low = s.level_count - 1  # downsample 8 at 4096 px
        for level in (low - 1, low):
            b = np.concatenate([_spot_pixels(s, sp, level) for sp in benign]).mean(0)
            m = np.concatenate([_spot_pixels(s, sp, level) for sp in malignant]).mean(0)
            assert np.abs(b - m).max() <= 2.0, (level, b, m)
        b0 = [_spot_pixels(s, sp, 0) for sp in benign]
        m0 = [_spot_pixels(s, sp, 0) for sp in malignant]
    # the mean stays the same at level 0, but the texture differs clearly
    b_mean = np.concatenate(b0).mean(0)
    m_mean = np.concatenate(m0).mean(0)
    assert np.abs(b_mean - m_mean).max() <= 2.0
    b_std = max(p.std(0).mean() for p in b0)
    m_std = min(p.std(0).mean() for p in m0)
    assert m_std > 3 * b_std, (b_std, m_std)


def test_low_res_levels_identical_for_either_label() -> None:
    """Same seed, label 0 vs 1: every tile at downsample >= 8 is pixel-identical; level 0 is not."""
    atlases = build_atlases(0)
    neg, pos = make_layout(4096, 4096, 5, 0), make_layout(4096, 4096, 5, 1)
    for level in (3, 4):
        n = math.ceil(4096 / 2**level / 256)
        for r in range(n):
            for c in range(n):
                a = render_tile(neg, atlases, level, r, c)
                b = render_tile(pos, atlases, level, r, c)
                assert (a is None and b is None) or np.array_equal(a, b)
    spot = next(s for s in pos.spots if s.kind == "malignant")
    r, c = int(spot.cy) // 256, int(spot.cx) // 256
    assert not np.array_equal(
        render_tile(neg, atlases, 0, r, c), render_tile(pos, atlases, 0, r, c)
    )


def test_writer_consumes_tiles_one_at_a_time(tmp_path: Path) -> None:
    """Bounded memory by construction: no tile is kept once the next one is requested."""
    alive: list[weakref.ref] = []
    max_alive = 0

    def tiles(level: int):
        nonlocal max_alive
        for i in range(16 // 4**level):
            tile = np.full((256, 256, 3), i * 10, dtype=np.uint8)
            alive.append(weakref.ref(tile))
            max_alive = max(max_alive, sum(ref() is not None for ref in alive))
            yield tile
            del tile

    write_pyramid(tmp_path / "t.tiff", [(1024, 1024), (512, 512), (256, 256)], tiles, mpp=1.0)
    assert len(alive) == 16 + 4 + 1
    assert max_alive <= 2
    with openslide.OpenSlide(str(tmp_path / "t.tiff")) as s:
        assert s.level_dimensions == ((1024, 1024), (512, 512), (256, 256))


def test_peak_memory_far_below_one_level(tmp_path: Path) -> None:
    """A 4096 px slide (level 0 = 48 MiB of RGB) is written with a few MiB of working memory."""
    build_atlases(0)  # cohort-wide textures are built once, outside the measurement
    tracemalloc.start()
    try:
        write_synthetic_slide(tmp_path / "big.tiff", 4096, seed=2, label=1)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8 * 2**20, peak


@pytest.mark.parametrize("n_tiles", [3, 5])
def test_writer_rejects_a_wrong_tile_count(tmp_path: Path, n_tiles: int) -> None:
    def tiles(level: int):
        return iter([None] * n_tiles)

    with pytest.raises(ValueError, match="tiles"):
        write_pyramid(tmp_path / "bad.tiff", [(512, 512)], tiles, mpp=1.0)
    assert not list(tmp_path.iterdir())  # no partial file left behind
