"""Inference stages, predict_slide, per-slide outputs and heatmaps on small pyramidal TIFFs."""

from __future__ import annotations

import csv
import json
import math
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from slide_factory import write_pyramidal_tiff

from wsi_ats.inference import predict_slide, render_heatmap, write_slide_outputs
from wsi_ats.inference.heatmap import COLORBAR_WIDTH, TITLE_HEIGHT, heatmap_title
from wsi_ats.models import PipelineConfig, build_model, save_checkpoint
from wsi_ats.slides import SlideError, open_slide
from wsi_ats.stages import (
    SlidePrediction,
    aggregate_slide,
    cells_to_locations,
    read_slide_tiles,
    sample_slide,
    slide_seed,
    tile_features,
    view_slide,
)

CFG = PipelineConfig().replace(
    slide={"lowres_size": 128, "patch_size": 32},
    sampling={"n_patches": 8},
    predict={"n_draws": 3},
)


@pytest.fixture(scope="module")
def slide_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 1024 x 1024 slide (3 levels): white glass, a pink tissue block, a dark spot."""
    img = np.full((1024, 1024, 3), 255, np.uint8)
    img[160:860, 100:900] = (225, 150, 200)
    img[400:460, 400:460] = (110, 40, 120)
    return write_pyramidal_tiff(tmp_path_factory.mktemp("slides") / "s 1.tiff", img, levels=4)


@pytest.fixture(scope="module")
def model():
    return build_model(CFG, seed=0).eval()


def test_stages_chain_equals_predict_slide(slide_path: Path, model) -> None:
    view = view_slide(slide_path, CFG, "s1")
    assert view.image.shape[:2] == view.mask.shape and view.mask.any() and not view.mask.all()
    smp = sample_slide(view, model, n_draws=3, seed=7)
    assert smp.indices.shape == (3, 8) and smp.locations.shape == (3, 8, 2)
    tiles = read_slide_tiles(smp)
    assert tiles.shape == (24, 32, 32, 3) and tiles.dtype == np.uint8
    feats = tile_features(model, tiles, batch_size=5)
    assert feats.shape == (24, CFG.features.dim)
    pred = aggregate_slide(model, smp, feats)
    direct = predict_slide(slide_path, model, n_draws=3, seed=7, slide_id="s1")
    assert direct.probability == pytest.approx(pred.probability, abs=1e-6)
    np.testing.assert_array_equal(direct.locations, pred.locations)
    assert 0.0 <= pred.probability <= 1.0 and pred.prediction == int(pred.probability >= 0.5)
    assert pred.std == pytest.approx(float(np.std(pred.draw_probabilities)), abs=1e-7)
    assert pred.n_draws == 3 and pred.n_patches == 8 and 1 <= pred.n_tiles_read <= 24


def test_samples_lie_on_tissue_and_tiles_match_reads(slide_path: Path, model) -> None:
    view = view_slide(slide_path, CFG, "s1")
    smp = sample_slide(view, model, n_draws=4, seed=0)
    mh, mw = smp.attention.shape
    assert smp.attention[np.unravel_index(smp.indices.ravel(), (mh, mw))].min() > 0
    w, h = smp.tile_size_level0
    centres = smp.locations.reshape(-1, 2) + np.array([w // 2, h // 2])
    sy, sx = view.scale
    rows = np.clip((centres[:, 1] / sy).astype(int), 0, view.mask.shape[0] - 1)
    cols = np.clip((centres[:, 0] / sx).astype(int), 0, view.mask.shape[1] - 1)
    assert view.mask[rows, cols].mean() > 0.9
    tiles = read_slide_tiles(smp)
    with open_slide(slide_path) as slide:
        x, y = smp.locations[1, 2]
        np.testing.assert_array_equal(tiles[10], slide.read_region((int(x), int(y)), 0, (32, 32)))


def test_draws_depend_only_on_seed_and_slide_id(slide_path: Path, model) -> None:
    a = predict_slide(slide_path, model, seed=3, slide_id="x")
    b = predict_slide(slide_path, model, seed=3, slide_id="x")
    c = predict_slide(slide_path, model, seed=4, slide_id="x")
    np.testing.assert_array_equal(a.locations, b.locations)
    assert a.probability == b.probability
    assert not np.array_equal(a.locations, c.locations)
    assert slide_seed(3, "x") == slide_seed(3, "x") != slide_seed(3, "y")


def test_open_slide_object_and_model_path(slide_path: Path, model, tmp_path: Path) -> None:
    save_checkpoint(tmp_path / "run" / "model.pt", model, epoch=0)
    with open_slide(slide_path) as slide:
        pred = predict_slide(slide, tmp_path / "run" / "model.pt", seed=1, slide_id="s1")
    ref = predict_slide(slide_path, model, seed=1, slide_id="s1")
    assert pred.probability == pytest.approx(ref.probability, abs=1e-6)


def test_cell_mapping_centres_tiles_on_cells(slide_path: Path) -> None:
    view = view_slide(slide_path, CFG, "s1")
    mh, mw = 64, 64  # map_stride 2 on a 128-px view
    idx = torch.tensor([[0, mw - 1, 10 * mw + 20]])
    loc = cells_to_locations(idx, (mh, mw), view, CFG)[0]
    cell = 1024 / 64  # level-0 px per cell
    p = CFG.slide.patch_size
    expected = np.array([[cell / 2 - p / 2, cell / 2 - p / 2],
                         [(mw - 0.5) * cell - p / 2, cell / 2 - p / 2],
                         [20.5 * cell - p / 2, 10.5 * cell - p / 2]])  # fmt: skip
    np.testing.assert_allclose(loc, expected, atol=1)


def test_missing_read_level_is_a_slide_error(slide_path: Path) -> None:
    with pytest.raises(SlideError, match="read_level 9"):
        view_slide(slide_path, CFG.replace(slide={"read_level": 9}), "s1")


def test_write_slide_outputs(slide_path: Path, model, tmp_path: Path) -> None:
    pred, view = predict_slide(slide_path, model, slide_id="../evil/id", return_view=True)
    folder = write_slide_outputs(pred, view, tmp_path / "out")
    assert folder.parent == (tmp_path / "out" / "slides").resolve()
    assert ".." not in folder.name and "/" not in folder.name
    names = sorted(p.name for p in folder.iterdir())
    assert names == ["attention.npy", "coords.csv", "heatmap.png", "prediction.json", "tissue.png"]
    record = json.loads((folder / "prediction.json").read_text())
    assert record["slide_id"] == "../evil/id"
    assert record["slide_path"] == str(slide_path)  # what `wsi-ats view` opens
    tissue = np.asarray(Image.open(folder / "tissue.png"))
    np.testing.assert_array_equal(tissue, view.mask.astype(np.uint8) * 255)
    assert record["probability"] == pytest.approx(pred.probability)
    assert {"prediction", "std", "n_patches", "n_draws", "draw_probabilities"} <= set(record)
    np.testing.assert_array_equal(np.load(folder / "attention.npy"), pred.attention)
    with (folder / "coords.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["draw", "rank", "x", "y", "w", "h", "cell", "attention"]
    flat = pred.attention.reshape(-1)
    assert float(rows[0]["attention"]) == pytest.approx(flat[int(rows[0]["cell"])])
    assert record["low_size"] == list(view.image.shape[:2]) and record["receptive_field"] == 0
    assert len(rows) == pred.n_draws * pred.n_patches
    assert int(rows[0]["x"]) == pred.locations[0, 0, 0] and int(rows[0]["w"]) == 32
    img = Image.open(folder / "heatmap.png")
    h, w = view.image.shape[:2]  # the map's longest side is 1024, plus title and colour bar
    map_w, map_h = round(w * 1024 / max(h, w)), round(h * 1024 / max(h, w))
    assert img.format == "PNG"
    assert img.size == (map_w + COLORBAR_WIDTH, map_h + TITLE_HEIGHT)
    assert not list(folder.glob(".*.tmp"))


def test_heatmap_title_gives_the_interval_and_long_titles_fit_small_maps() -> None:
    pred = SlidePrediction(
        "slide_0007", 0.931, 1, 0.01, 16, 8, np.zeros(8, np.float32), np.ones((4, 4), np.float32),
        np.zeros((8, 16, 2), np.int64), (64, 64), (8.0, 8.0), ci_low=0.904, ci_high=0.952,
    )  # fmt: skip
    assert heatmap_title(pred) == "slide_0007 · p = 0.93 (95% CI 0.90-0.95, 8 draws)"
    one = replace(pred, n_draws=1, ci_low=math.nan, ci_high=math.nan)
    assert heatmap_title(one) == "slide_0007 · p = 0.93"
    attention = np.full((20, 20), 1 / 400, np.float32)
    img = render_heatmap(
        np.full((80, 80, 3), 230, np.uint8), attention, title=heatmap_title(pred), max_side=120
    )
    assert img.size == (256 + COLORBAR_WIDTH, 256 + TITLE_HEIGHT)  # padded to the minimum side
    title = np.asarray(img).astype(int)[:TITLE_HEIGHT]
    inked = np.flatnonzero((title.sum(-1) < 300).any(0))
    assert inked.size and inked[0] > 0 and inked[-1] < title.shape[1] - 1  # not cut at the edges


def test_heatmap_has_a_title_and_a_colour_bar() -> None:
    rng = np.random.default_rng(0)
    image = np.full((300, 400, 3), 230, np.uint8)
    attention = (rng.random((75, 100)) ** 8).astype(np.float32)
    attention /= attention.sum()
    plain = render_heatmap(image, attention, title=None, colorbar=False, max_side=800)
    img = render_heatmap(image, attention, title="slide_0007 · p = 0.93", max_side=800)
    assert plain.size == (800, 600)
    assert img.size == (800 + COLORBAR_WIDTH, 600 + TITLE_HEIGHT)
    px = np.asarray(img).astype(int)
    # the map is kept pixel for pixel below the title strip
    np.testing.assert_array_equal(px[TITLE_HEIGHT:, :800], np.asarray(plain))
    # the title strip holds dark text on white
    title = px[:TITLE_HEIGHT, :800]
    assert (title.sum(-1) < 200).any() and (title == 255).all(-1).mean() > 0.8
    # the colour bar: a vertical strip whose colours run from the ramp's low end to its high end
    cols = np.flatnonzero(
        (np.abs(np.diff(px[TITLE_HEIGHT:, 800:], axis=0)).sum(-1) > 0).sum(0) > 100
    )
    strip = px[TITLE_HEIGHT + 100 : -100, 800 + cols[len(cols) // 2]]
    assert len(np.unique(strip, axis=0)) > 50
    top, bottom = px[TITLE_HEIGHT + 80, 800 + cols[len(cols) // 2]], strip[-1]
    assert top[0] > 200 and top[1] > 200  # yellow at the peak
    assert bottom[2] > 100 and bottom[1] < 60  # dark blue-violet at the low end


class MeanColour(torch.nn.Module):
    """A deterministic feature: the mean RGB of the tile, ``[n, 3]``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(2, 3))


@pytest.mark.parametrize("replace", [False, True])
def test_stage_draws_estimate_the_exact_attention_sum(slide_path: Path, replace: bool) -> None:
    """Over many draws, the estimator built from ``sample_slide``'s indices, attention and locations
    averages to the exact ``sum_k a_k f_k`` over every cell (each within 4 standard errors)."""
    from wsi_ats.core import expectation
    from wsi_ats.models import SlideClassifier
    from wsi_ats.stages import cells_to_locations, read_tiles

    cfg = CFG.replace(
        sampling={"n_patches": 4, "replace": replace}, features={"dim": 3}, attention={"prior": 8.0}
    )
    model = SlideClassifier(cfg, feature_net=MeanColour()).eval()
    view = view_slide(slide_path, cfg, "s1")
    smp = sample_slide(view, model, n_draws=4000, seed=0)
    att = torch.from_numpy(smp.attention).reshape(-1).double()
    cells = torch.nonzero(att > 0)[:, 0]
    locs = cells_to_locations(cells[None], smp.attention.shape, view, cfg)[0]
    with open_slide(slide_path) as slide:
        f_all = MeanColour()(
            torch.from_numpy(read_tiles(slide, locs, 0, (32, 32))).permute(0, 3, 1, 2).double()
            / 255
        )
    exact = (att[cells][:, None] * f_all).sum(0)
    lookup = {int(c): i for i, c in enumerate(cells)}
    feats = f_all[[lookup[int(i)] for i in smp.indices.reshape(-1)]].reshape(4000, 4, 3)
    # the stored locations are those of the stored indices
    np.testing.assert_array_equal(
        smp.locations.reshape(-1, 2), locs[[lookup[int(i)] for i in smp.indices.reshape(-1)]]
    )
    np.testing.assert_allclose(
        smp.sampled_attention, att.numpy()[smp.indices].astype(np.float32), rtol=1e-6
    )
    est = expectation(
        torch.from_numpy(smp.sampled_attention).double(), feats, smp.replace
    )  # [T, 3]
    se = est.std(0) / math.sqrt(est.shape[0])
    assert bool(((est.mean(0) - exact).abs() <= 4 * se + 1e-9).all()), (est.mean(0), exact, se)
    assert float(est.std(0).max()) > 0  # the draws do differ: the test is not vacuous


def test_tile_hits_and_lesion_boxes(tmp_path: Path) -> None:
    from wsi_ats.synth.lesions import lesion_boxes, tile_hits

    gt = tmp_path / "ground_truth.json"
    gt.write_text(json.dumps({"slides": {"a": {"spots": [
        {"kind": "malignant", "x": 100, "y": 200, "w": 50, "h": 50},
        {"kind": "benign", "x": 0, "y": 0, "w": 50, "h": 50},
    ]}, "b": {"spots": []}}}))  # fmt: skip
    boxes = lesion_boxes(gt)
    assert boxes["a"].shape == (1, 4) and boxes["b"].shape == (0, 4)
    locs = np.array(
        [[[90, 190], [0, 0], [140, 240]]]
    )  # centres (106, 206) in, (6, 6) benign, (156, 256) out
    hits = tile_hits(locs, (32, 32), boxes["a"])
    assert hits.tolist() == [[True, False, False]]
    assert not tile_hits(locs, (32, 32), boxes["b"]).any()
    both = lesion_boxes(gt, kinds=("malignant", "benign"))
    assert tile_hits(locs, (32, 32), both["a"]).tolist() == [[True, True, False]]
