"""The CLAM-style baseline of benchmarks/clam_style.py: dense grid, frozen encoders, gated MIL."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from wsi_ats.models import PipelineConfig
from wsi_ats.stages import tissue_tile_count, view_slide
from wsi_ats.synth import make_cohort, write_synthetic_slide
from wsi_ats.training.data import LabelledSlide, read_cohort

_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "clam_style.py"
_SPEC = importlib.util.spec_from_file_location("wsi_ats_bench_clam_style", _PATH)
cs = importlib.util.module_from_spec(_SPEC)
sys.modules[_SPEC.name] = cs
_SPEC.loader.exec_module(cs)

SMALL = {"slide": {"patch_size": 32, "read_level": 0}, "features": {"width": 8, "dim": 16}}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """One torch thread: tiny models only lose time to thread contention on a shared machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def slide(tmp_path_factory) -> LabelledSlide:
    path = tmp_path_factory.mktemp("clam") / "slide.tiff"
    write_synthetic_slide(path, 2048, seed=5, label=1)
    return LabelledSlide("slide", str(path), 1, "test")


@pytest.mark.parametrize(("patch", "level"), [(64, 0), (32, 0), (64, 1)])
def test_grid_is_dense_non_overlapping_and_on_tissue(slide, patch, level):
    config = PipelineConfig().replace(slide={"patch_size": patch, "read_level": level})
    view = view_slide(slide.path, config, slide.slide_id)
    size0 = cs.tile_size_level0(config, view)
    assert size0 == (patch * 2**level,) * 2
    grid = cs.tissue_tile_grid(view, size0)
    assert grid.dtype == np.int64 and grid.ndim == 2 and grid.shape[1] == 2
    # spaced by the tile size from 0, wholly inside the slide, each tile once: no overlap
    assert np.all(grid % np.asarray(size0) == 0)
    h0, w0 = view.level0_size
    assert np.all(grid >= 0) and np.all(grid[:, 0] + size0[0] <= w0)
    assert np.all(grid[:, 1] + size0[1] <= h0)
    assert len(np.unique(grid, axis=0)) == len(grid)
    # row-major order
    assert np.all(np.diff(grid[:, 1] * w0 + grid[:, 0]) > 0)
    sy, sx = view.scale
    rows = ((grid[:, 1] + size0[1] / 2) / sy).astype(int)
    cols = ((grid[:, 0] + size0[0] / 2) / sx).astype(int)
    assert view.mask[rows, cols].all()
    expected = tissue_tile_count(view, size0)
    assert expected > 50
    assert abs(len(grid) - expected) <= 0.15 * expected


def test_gated_attention_sums_to_one_and_handles_empty_bags():
    torch.manual_seed(0)
    model = cs.GatedAttentionMIL(16).eval()
    logit, attention = model(torch.randn(37, 16))
    assert logit.shape == () and attention.shape == (37,)
    assert torch.all(attention >= 0)
    assert torch.isclose(attention.sum(), torch.tensor(1.0))
    logit, attention = model(torch.zeros(0, 16))
    assert torch.isfinite(logit) and attention.shape == (0,)


def toy_bags(n: int, rng: np.random.Generator) -> tuple[list, list[np.ndarray]]:
    """Bags of 50-200 Gaussian vectors (dim 16); odd bags hide 1-3 witnesses shifted along e_0."""
    bags, witnesses = [], []
    for i in range(n):
        k = int(rng.integers(50, 201))
        x = rng.standard_normal((k, 16)).astype(np.float32)
        mark = np.zeros(k, dtype=bool)
        if i % 2:
            mark[rng.choice(k, size=int(rng.integers(1, 4)), replace=False)] = True
            x[mark, 0] += 6.0
        bags.append(cs.Bag(f"b{i}", i % 2, x, np.zeros((k, 2), np.int64), 0.0))
        witnesses.append(mark)
    return bags, witnesses


def test_gated_attention_mil_learns_a_toy_problem():
    rng = np.random.default_rng(0)
    train, _ = toy_bags(80, rng)
    val, _ = toy_bags(20, rng)
    test, witnesses = toy_bags(40, rng)
    model, val_auc, history = cs.train_mil(train, val, epochs=10, lr=1e-3, seed=0)
    assert len(history) == 10 and val_auc >= 0.9
    assert not model.training
    probs = cs.predict_mil(model, test)
    assert cs.nan_safe_auc([b.label for b in test], probs) >= 0.95
    with torch.no_grad():
        for bag, mark in zip(test, witnesses, strict=True):
            if bag.label:
                attention = model(cs.bag_tensor(bag))[1].numpy()
                assert attention[mark].mean() > attention.mean()
    # seeded: the same (short) run twice gives the same weights and history
    runs = [cs.train_mil(train[:16], val, epochs=2, lr=1e-3, seed=3) for _ in range(2)]
    assert runs[0][2] == runs[1][2]
    assert cs.predict_mil(runs[0][0], test) == cs.predict_mil(runs[1][0], test)
    assert np.isnan(cs.nan_safe_auc([1, 1], [0.2, 0.9]))


def test_extract_bag_random_encoder_and_cache(slide, tmp_path, monkeypatch):
    config = PipelineConfig().replace(**SMALL)
    encoder = cs.build_encoder("random", config, seed=0)
    assert not encoder.training and encoder.kind == "random"
    assert all(not p.requires_grad for p in encoder.parameters())
    encoder.train()  # frozen: stays in eval mode
    assert not encoder.training
    bag = cs.extract_bag(slide, config, encoder, batch_size=128)
    view = view_slide(slide.path, config, slide.slide_id)
    grid = cs.tissue_tile_grid(view, cs.tile_size_level0(config, view))
    assert bag.features.shape == (len(grid), 16) and bag.features.dtype == np.float32
    assert np.array_equal(bag.locations, grid) and bag.seconds > 0
    assert np.isfinite(bag.features).all()
    assert np.allclose(cs.random_encoder(config, seed=0).net.proj.weight, encoder.net.proj.weight)

    first = cs.extract_bags([slide], config, encoder, cache_dir=tmp_path)[0]
    assert cs.bag_cache_path(tmp_path, slide.slide_id, "random").exists()

    def no_extraction(*args, **kwargs):
        raise AssertionError("the cached bag should have been reused")

    monkeypatch.setattr(cs, "extract_bag", no_extraction)
    cached = cs.extract_bags([slide], config, None, tmp_path, kind="random", tag=encoder.tag)[0]
    assert np.array_equal(cached.features, first.features)
    assert np.array_equal(cached.locations, first.locations)
    assert cached.seconds == first.seconds and cached.label == slide.label
    # another recipe (other seed) never reuses it
    with pytest.raises(AssertionError, match="cached bag"):
        cs.extract_bags([slide], config, cs.random_encoder(config, seed=1), tmp_path)


def test_tile_supervised_encoder_and_main(tmp_path, capsys):
    manifest = make_cohort(
        tmp_path / "cohort", 4, 1024, seed=2, splits=(("train", 2), ("val", 1), ("test", 1))
    )
    pipeline = tmp_path / "small.toml"
    pipeline.write_text(
        "[slide]\npatch_size = 32\nread_level = 0\n[features]\nwidth = 8\ndim = 16\n"
    )
    config = PipelineConfig.from_toml(pipeline)
    slides = read_cohort(manifest)
    gt = manifest.parent / "ground_truth.json"
    encoder = cs.build_encoder("tile-supervised", config, slides, gt, seed=0, epochs=1)
    assert encoder.kind == "tile-supervised" and not encoder.training
    train_ids = [s.slide_id for s in slides if s.split == "train"]
    assert encoder.tag == cs.encoder_tag("tile-supervised", config, 0, train_ids, epochs=1)
    assert all(not p.requires_grad for p in encoder.parameters())
    assert not torch.equal(encoder.net.proj.weight, cs.random_encoder(config).net.proj.weight)
    with pytest.raises(ValueError, match="ground-truth"):
        cs.build_encoder("tile-supervised", config, slides, None)

    args = ["--manifest", str(manifest), "--pipeline", str(pipeline), "--epochs", "2"]
    assert cs.main([*args, "--cache", str(tmp_path / "bags")]) == 0
    out = capsys.readouterr().out
    assert "test AUC:" in out and "tiles per slide (test):" in out
    assert "seconds per slide (test, end to end):" in out
    assert len(list((tmp_path / "bags").glob("*.random.npz"))) == 4


def test_dense_tiles_follow_a_physical_spec(slide):
    """With tiles in microns the grid's step is one tile's level-0 footprint and the tiles are read
    as the pipeline reads them: resized to the spec's tile size (0.6 um/px is no pyramid level)."""
    from wsi_ats.slides import open_slide

    config = PipelineConfig().replace(slide={"tile_mpp": 0.6, "tile_size": 32})
    view = view_slide(slide.path, config, slide.slide_id)
    size0 = cs.tile_size_level0(config, view)
    mpp0 = float(np.mean(view.mpp))
    assert abs(size0[0] * mpp0 - 32 * 0.6) <= mpp0  # 19.2 um, within one level-0 pixel
    grid = cs.tissue_tile_grid(view, size0)
    assert len(grid) > 20 and np.all(grid % np.asarray(size0) == 0)
    with open_slide(slide.path) as handle:
        tiles = cs.read_view_tiles(handle, view, config, grid[:5])
    assert tiles.shape == (5, 32, 32, 3) and tiles.dtype == np.uint8
    pixel = PipelineConfig().replace(slide={"patch_size": 32, "read_level": 0})
    assert cs.encoder_tag("random", pixel, 0) != cs.encoder_tag("random", config, 0)
