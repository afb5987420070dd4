"""Geometry in microns (``slide.tile_mpp``): level choice, a low-res view that follows the slide's
mpp, attention cells whose tiles tile the slide with no gap, the mpp errors and assumptions, and
the refusal of a spec whose tiles would cover less than half of their cells."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
from slide_factory import write_pyramidal_tiff
from tiny_cohort import tissue_slide, write_manifest

from wsi_ats.cli import main
from wsi_ats.cohort.manifest import ManifestError, load_manifest
from wsi_ats.models import ConfigError, PipelineConfig, build_model
from wsi_ats.slides import open_slide
from wsi_ats.slides.lowres import area_reduce
from wsi_ats.slides.resolution import SlideResolutionError, resolve_mpp, tile_geometry
from wsi_ats.stages import (
    cell_tile_locations,
    cells_to_locations,
    read_slide_tiles,
    sample_slide,
    view_slide,
)

#: 64 px tiles at 0.5 um/px (32 um), 4 low-res px per cell: a small physical spec
PHYSICAL = PipelineConfig().replace(
    slide={"tile_mpp": 0.5, "tile_size": 64},
    attention={"width": 4, "depth": 2, "map_stride": 4},
    features={"width": 4, "dim": 8},
    sampling={"n_patches": 8},
    predict={"n_draws": 2},
)


def _image(h: int = 900, w: int = 1200, seed: int = 0) -> np.ndarray:
    """White glass with a pink, textured tissue block (uint8 ``[h, w, 3]``)."""
    rng = np.random.default_rng(seed)
    img = np.full((h, w, 3), 255, np.uint8)
    block = rng.integers(120, 230, size=(h // 2, w // 2, 3), dtype=np.uint8)
    img[h // 5 : h // 5 + h // 2, w // 4 : w // 4 + w // 2] = block
    return img


def test_tile_geometry_chooses_the_coarsest_level_at_least_as_fine_as_the_tiles() -> None:
    aperio = (1.0, 4.0, 16.0)
    dims = (100_000, 80_000)
    g = tile_geometry(dims, aperio, 0.25, 0.5, 256, 4)  # 40x scan, 20x tiles: no 20x level
    assert (g.read_level, g.read_size, g.tile_size) == (0, 512, 256)  # read 512, resized
    assert g.cell_level0 == 512 and g.view_downsample == 128
    assert g.view_shape == (4 * math.ceil(80_000 / 512), 4 * math.ceil(100_000 / 512))
    g = tile_geometry(dims, aperio, 0.25, 1.0, 256, 4)  # 10x tiles: level 1 exactly
    assert (g.read_level, g.read_size, g.read_downsample) == (1, 256, 4.0)
    g = tile_geometry(dims, aperio, 0.2527, 1.0, 256, 4)  # within 5%: read as is, not resized
    assert (g.read_level, g.read_size) == (1, 256)
    g = tile_geometry(dims, aperio, 0.25, 2.0, 256, 4)  # between levels: the finer one, resized
    assert (g.read_level, g.read_size) == (1, 512)
    g = tile_geometry(dims, (1.0,), 0.499, 0.5, 224, 2)  # cmu-1 (20x, no pyramid)
    assert (g.read_level, g.read_size, g.cell_level0) == (0, 224, 224.0)
    g = tile_geometry(dims, (1.0, 2.0, 4.016), 0.25, 1.0, 256, 4)  # non-integer downsample
    assert g.read_level == 2 and g.read_size == 256 and g.cell_level0 == pytest.approx(1028.1, 0.01)
    g = tile_geometry(dims, aperio, 0.25, 0.5, 256, 4, lowres_mpp=40.0)  # coarser cells
    assert g.cell_level0 == 640 and g.coverage == pytest.approx((512 / 640) ** 2)


def test_low_res_view_follows_the_slides_mpp(tmp_path: Path) -> None:
    img = _image()
    views = {}
    for mpp in (0.25, 0.5):
        path = write_pyramidal_tiff(tmp_path / f"s{mpp}.tiff", img, tile=128, levels=4, mpp=mpp)
        views[mpp] = view_slide(path, PHYSICAL)
    # 0.25 um/px: tiles read at level 1 (64 px = 128 level-0 px a cell); 0.5: level 0, 64 px cells
    fine, coarse = views[0.25], views[0.5]
    assert (fine.read_level, fine.read_size, fine.scale) == (1, 64, (32.0, 32.0))
    assert fine.image.shape[:2] == (4 * math.ceil(900 / 128), 4 * math.ceil(1200 / 128))
    assert (coarse.read_level, coarse.read_size, coarse.scale) == (0, 64, (16.0, 16.0))
    assert coarse.image.shape[:2] == (4 * math.ceil(900 / 64), 4 * math.ceil(1200 / 64))
    assert fine.mpp == (0.25, 0.25) and fine.mpp_source == "slide"
    # the view is the slide's area mean on that grid (from level 2 reduced 4x: rounding only)
    # and white where it overhangs the slide
    h, w = math.ceil(900 / 16), math.ceil(1200 / 16)
    want = area_reduce(img, 16).astype(int)
    assert np.abs(coarse.image[:h, :w].astype(int) - want).max() <= 2
    assert (coarse.image[h:] == 255).all() and (coarse.image[:, w:] == 255).all()


@pytest.mark.parametrize("mpp", [0.25, 0.3])  # read at level 1 as is; at level 0 and resized
def test_tiles_of_all_cells_tile_the_slide_without_gaps(tmp_path: Path, mpp: float) -> None:
    img = _image(700, 1000)
    path = write_pyramidal_tiff(tmp_path / "s.tiff", img, tile=128, levels=3, mpp=mpp)
    view = view_slide(path, PHYSICAL)
    mh, mw = view.image.shape[0] // 4, view.image.shape[1] // 4
    cells = torch.arange(mh * mw)[None]
    locs = cells_to_locations(cells, (mh, mw), view, PHYSICAL)[0]
    side = round(view.read_size * view.read_downsample)  # level-0 px of one tile
    if mpp == 0.3:  # 64 px at 0.5 um/px = 106.7 level-0 px: read 107 px, resized to 64
        assert (view.read_level, view.read_size, view.tile_size) == (0, 107, 64)
    # every level-0 pixel of the slide lies in exactly one cell's tile: no gap, no overlap
    count = np.zeros((700 + side, 1000 + side), np.int32)
    for x, y in locs:
        assert x >= 0 and y >= 0
        count[y : y + side, x : x + side] += 1
    assert (count[:700, :1000] == 1).all()
    # so every tissue pixel can be sampled; the sampled tiles come back at tile_size
    model = build_model(PHYSICAL, seed=0)
    smp = sample_slide(view, model, n_draws=2, seed=0)
    tiles = read_slide_tiles(smp)
    assert tiles.shape[1:] == (64, 64, 3)
    assert smp.tile_size == (view.read_size, view.read_size)
    assert smp.tile_size_level0 == (side, side)
    if mpp == 0.3:
        x, y = smp.locations[0, 0]
        with open_slide(path) as slide:
            raw = slide.read_region((int(x), int(y)), 0, (107, 107))
        from PIL import Image

        want = np.asarray(Image.fromarray(raw).resize((64, 64), Image.Resampling.BILINEAR))
        np.testing.assert_array_equal(tiles[0], want)


@pytest.mark.parametrize("mpp", [0.25, 0.3])
def test_cells_of_whole_tiles_cover_the_slide_and_draw_each_tile_evenly(
    tmp_path: Path, mpp: float
) -> None:
    """``slide.tiles_per_cell = 2``: cells of 2 x 2 tile footprints (a view half as fine); the
    tiles of all cells tile the slide with no gap or overlap, and a drawn cell reads each of its
    4 tiles with probability 1/4 (every count within 5 standard errors over 8,000 draws)."""
    img = _image(700, 1000)
    path = write_pyramidal_tiff(tmp_path / "s.tiff", img, tile=128, levels=3, mpp=mpp)
    spec = PHYSICAL.replace(slide={"tiles_per_cell": 2})
    one, view = view_slide(path, PHYSICAL), view_slide(path, spec)
    assert view.scale == (2 * one.scale[0], 2 * one.scale[1])
    mh, mw = view.image.shape[0] // 4, view.image.shape[1] // 4
    every = cell_tile_locations(torch.arange(mh * mw)[None], (mh, mw), view, spec)[0]
    assert every.shape == (mh * mw, 4, 2)
    side = round(view.read_size * view.read_downsample)
    count = np.zeros((700 + 2 * side, 1000 + 2 * side), np.int32)
    for x, y in every.reshape(-1, 2):
        assert x >= 0 and y >= 0
        count[y : y + side, x : x + side] += 1
    assert (count[:700, :1000] == 1).all()
    cell = (mh // 2) * mw + mw // 2
    with pytest.raises(ValueError, match="generator"):
        cells_to_locations(torch.tensor([[cell]]), (mh, mw), view, spec)
    gen = torch.Generator().manual_seed(0)
    n = 8000
    drawn = cells_to_locations(torch.full((1, n), cell), (mh, mw), view, spec, gen)[0]
    which = [every[cell].tolist().index(xy) for xy in drawn.tolist()]
    counts = np.bincount(which, minlength=4)
    assert np.abs(counts - n / 4).max() < 5 * math.sqrt(n * 0.25 * 0.75)
    # predict_slide's draws read tiles of the grid, of the tile size
    smp = sample_slide(view, build_model(spec, seed=0), n_draws=2, seed=0)
    grid = {tuple(xy) for xy in every.reshape(-1, 2).tolist()}
    assert {tuple(xy) for xy in smp.locations.reshape(-1, 2).tolist()} <= grid
    assert read_slide_tiles(smp).shape[1:] == (64, 64, 3)


@pytest.mark.parametrize("replace", [True, False])
def test_estimates_over_cells_of_whole_tiles_are_unbiased_for_the_mean_over_tiles(
    tmp_path: Path, replace: bool
) -> None:
    """With 2 x 2 tiles a cell, the estimate from the drawn cells' chosen tiles has the expectation
    ``sum_c a_c mean_{t in c} f(t)``: the mean of 4,000 independent estimates is within 4 of its
    standard errors of it, with and without replacement."""
    from wsi_ats.core import draw, estimate

    path = write_pyramidal_tiff(tmp_path / "s.tiff", _image(700, 1000), tile=128, levels=3, mpp=0.5)
    spec = PHYSICAL.replace(slide={"tiles_per_cell": 2})
    view = view_slide(path, spec)
    mh, mw = view.image.shape[0] // 4, view.image.shape[1] // 4
    gen = torch.Generator().manual_seed(1)
    att = torch.softmax(2 * torch.randn(1, mh * mw, generator=gen, dtype=torch.float64), 1)
    every = cell_tile_locations(torch.arange(mh * mw)[None], (mh, mw), view, spec)[0]

    def f(xy: np.ndarray) -> torch.Tensor:  # a value per tile, unlike within each cell
        return torch.from_numpy(np.sin(xy[..., 0] / 37.0) + np.cos(xy[..., 1] / 23.0))[..., None]

    truth = float((att[0] * f(every).mean(dim=1)[:, 0]).sum())
    runs, n = 4000, 6
    drawn = draw(att.expand(runs, -1), n, replace, gen)
    locs = cells_to_locations(drawn.indices, (mh, mw), view, spec, gen)  # [runs, n, 2]
    est = estimate(att.expand(runs, -1), drawn, f(locs))[:, 0]
    se = float(est.std()) / math.sqrt(runs)
    assert abs(float(est.mean()) - truth) < 4 * se


def test_tiles_per_cell_needs_physical_geometry_without_lowres_mpp() -> None:
    with pytest.raises(ConfigError, match="tiles_per_cell must be >= 1"):
        PHYSICAL.replace(slide={"tiles_per_cell": 0})
    for slide in ({"tile_mpp": 0.0}, {"lowres_mpp": 8.0}):
        with pytest.raises(ConfigError, match="tiles_per_cell > 1 needs physical geometry"):
            PHYSICAL.replace(slide={**slide, "tiles_per_cell": 2})


def test_a_slide_without_plausible_mpp_is_an_error_unless_an_assumption_is_stated(
    tmp_path: Path,
) -> None:
    img = _image()
    none = write_pyramidal_tiff(tmp_path / "none.tiff", img, tile=128, levels=3, mpp=None)
    dpi72 = write_pyramidal_tiff(tmp_path / "dpi72.tiff", img, tile=128, levels=3, mpp=352.8)
    with pytest.raises(SlideResolutionError, match="reports no resolution") as info:
        view_slide(none, PHYSICAL)
    assert str(none) in str(info.value) and "assume_mpp" in str(info.value)
    with pytest.raises(SlideResolutionError, match=r"352\.8 um/px.*72-dpi") as info:
        view_slide(dpi72, PHYSICAL)
    assert str(dpi72) in str(info.value)
    guess = PHYSICAL.replace(slide={"assume_mpp": 0.5})
    assumed = view_slide(none, guess)
    assert assumed.mpp_source == "assumed" and assumed.scale == (16.0, 16.0)
    smp = sample_slide(assumed, build_model(guess, seed=0), n_draws=1, seed=0)
    assert "resolution assumed: 0.5 um/px (slide.assume_mpp)" in smp.warnings
    stated = view_slide(dpi72, PHYSICAL, mpp=0.25)  # the manifest's value wins
    assert stated.mpp_source == "manifest" and stated.read_level == 1
    # the spec's assumption never overrides a plausible mpp of the slide itself
    assert resolve_mpp("x", (0.5, 0.5), None, 0.25) == (0.5, "slide")
    # pixel geometry does not need an mpp
    assert view_slide(none, PipelineConfig()).mpp is None


def test_manifest_mpp_column(tmp_path: Path) -> None:
    slide = tissue_slide(tmp_path / "a.tiff", 0, seed=0)
    rows = [{"slide_id": "a", "path": str(slide), "mpp": "0.25"}, {"slide_id": "b", "path": str(slide), "mpp": ""}]  # fmt: skip
    m = load_manifest(write_manifest(tmp_path / "m.csv", rows, ["slide_id", "path", "mpp"]))
    assert [e.mpp for e in m] == [0.25, None]
    from wsi_ats.training import read_cohort
    from wsi_ats.training.data import SlideStore

    rows[1]["mpp"] = ""
    for row in rows:
        row["label"] = 0
    labelled = write_manifest(tmp_path / "l.csv", rows, ["slide_id", "path", "label", "mpp"])
    slides = read_cohort(labelled)
    assert [s.mpp for s in slides] == [0.25, None]
    with SlideStore(PHYSICAL, workers=1) as store:  # training views take the manifest's mpp
        assert store.view(slides[0]).mpp == (0.25, 0.25)
        assert store.view(slides[1]).mpp == (0.5, 0.5)  # the slide's own
    rows[1]["mpp"] = "352.8"
    bad = write_manifest(tmp_path / "bad.csv", rows, ["slide_id", "path", "mpp"])
    with pytest.raises(ManifestError, match=r"line 3: b: mpp must be .* got '352.8'"):
        load_manifest(bad)


def test_tiles_covering_less_than_half_of_their_cells_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    # 64 px x 0.5 um = 32 um tiles; cells of 4 x 12 um = 48 um: (32/48)^2 = 44% < 50%
    with pytest.raises(ConfigError, match=r"cover 44% of its attention cell.*lowres_mpp <= 11.3"):
        PHYSICAL.replace(slide={"lowres_mpp": 12.0})
    ok = PHYSICAL.replace(slide={"lowres_mpp": 11.0})  # (32/44)^2 = 53%: allowed
    assert ok.slide.cell_coverage(4) == pytest.approx((32 / 44) ** 2)
    spec = tmp_path / "coarse.toml"
    spec.write_text("[slide]\ntile_mpp = 0.5\ntile_size = 256\nlowres_mpp = 128.0\n")  # 25%
    out = tmp_path / "run"
    slide = tissue_slide(tmp_path / "a.tiff", 0, seed=0)
    rows = [{"slide_id": "a", "path": str(slide), "label": 0}]
    manifest = write_manifest(tmp_path / "m.csv", rows, ["slide_id", "path", "label"])
    argv = ["train", "--manifest", str(manifest), "--pipeline", str(spec)]
    assert main([*argv, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "coarse.toml" in err and "lowres_mpp" in err
    assert "could never be sampled" in err and not out.exists()


@pytest.mark.parametrize("tiles_per_cell", [1, 2])
def test_training_and_prediction_in_physical_geometry(tmp_path: Path, tiles_per_cell: int) -> None:
    """Tiles read at level 0 and resized (0.8 um/px tiles on 0.5 um/px slides) through a training
    epoch, validation and predict_slide; with one tile a cell, and with 2 x 2."""
    from wsi_ats.inference import predict_slide
    from wsi_ats.training import train

    rows = []
    for i in range(6):
        path = tissue_slide(tmp_path / f"s{i}.tiff", i % 2, seed=i)
        rows.append({"slide_id": f"s{i}", "path": str(path), "label": i % 2,
                     "split": "train" if i < 4 else "val"})  # fmt: skip
    manifest = write_manifest(tmp_path / "m.csv", rows, ["slide_id", "path", "label", "split"])
    cfg = PHYSICAL.replace(
        slide={"tile_mpp": 0.8, "tile_size": 24, "tiles_per_cell": tiles_per_cell},
        train={"epochs": 1, "batch_size": 2, "read_workers": 2, "val_draws": 1},
    )
    view = view_slide(rows[0]["path"], cfg)
    assert (view.read_level, view.read_size, view.tile_size) == (0, 38, 24)
    assert view.scale == (38 * tiles_per_cell / 4,) * 2  # level-0 px per low-res px
    result = train(manifest, cfg, tmp_path / "run", progress=False)
    pred = predict_slide(rows[1]["path"], result.model_path)
    assert 0.0 <= pred.probability <= 1.0 and pred.tile_size_level0 == (38, 38)
    assert pred.n_tiles_read > 0


def test_the_view_of_a_slide_without_pyramid_is_streamed_in_bounded_reads(tmp_path: Path) -> None:
    """One level only (as cmu-1): the view is reduced tile by tile, never read as a whole level."""
    from wsi_ats.slides.lowres import STREAM_TILE, view_at_downsample

    img = _image(2500, 3000)
    path = write_pyramidal_tiff(tmp_path / "flat.tiff", img, tile=256, levels=1, mpp=0.5)
    with open_slide(path) as slide:
        sizes: list[tuple[int, int]] = []
        read = slide.read_region

        def recording(location, level, size):  # noqa: ANN001, ANN202
            sizes.append(tuple(size))
            return read(location, level, size)

        slide.read_region = recording  # type: ignore[method-assign]
        view = view_at_downsample(slide, 16.0, (160, 192))
    assert view.scale == (16.0, 16.0) and view.image.shape == (160, 192, 3)
    assert len(sizes) > 1 and max(w * h for w, h in sizes) <= STREAM_TILE**2
    want = area_reduce(img, 16).astype(int)  # exact grid: the streamed mean itself
    np.testing.assert_array_equal(view.image[: want.shape[0], : want.shape[1]], want)
    assert (view.image[want.shape[0] :] == 255).all()
