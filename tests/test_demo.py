"""The demo's pipeline end to end at a reduced size, and its CLI wiring."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from wsi_ats.cli import build_parser
from wsi_ats.cli.demo import DEMO_COLUMNS, DEMO_PIPELINE, demo, demo_config, format_table
from wsi_ats.models import PipelineConfig, load_model
from wsi_ats.pipeline.state import COLUMNS
from wsi_ats.stages import cells_to_locations, sample_slide, view_slide
from wsi_ats.synth.lesions import lesion_boxes, tile_hits
from wsi_ats.training import read_cohort

ROOT = Path(__file__).resolve().parents[1]


def test_builtin_demo_pipeline_equals_the_toml() -> None:
    toml = PipelineConfig.from_toml(ROOT / "pipelines" / "demo.toml")
    assert toml == PipelineConfig.from_dict(DEMO_PIPELINE) == demo_config()


def test_demo_small(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    # The attention is pinned to a stain prior on a fine map: two epochs cannot teach it where to
    # look (tests/test_learning_needle.py checks that it learns), and the lesion share below then
    # checks the demo's bookkeeping end to end (cells -> tile locations -> ground-truth hits).
    cfg = demo_config().replace(
        slide={"lowres_size": 128, "patch_size": 32},
        attention={"map_stride": 2, "prior": 16.0},
        sampling={"n_patches": 8},
        train={"epochs": 2, "batch_size": 2, "read_workers": 2, "val_draws": 1},
        predict={"n_draws": 2},
    )
    result = demo(tmp_path / "demo", n_slides=10, size=1024, config=cfg, workers=1, progress=False)
    assert result.n_test >= 2
    assert result.model_path.exists() and (tmp_path / "demo" / "cohort" / "manifest.csv").exists()
    with result.predictions_csv.open() as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == [*COLUMNS, *DEMO_COLUMNS] and len(rows) == result.n_test
    assert all(0.0 <= float(r["probability"]) <= 1.0 and r["status"] == "ok" for r in rows)
    # the same columns as wsi-ats predict, interval included
    assert all(float(r["ci_low"]) <= float(r["probability"]) <= float(r["ci_high"]) for r in rows)
    assert all(int(r["n_draws"]) == cfg.predict.n_draws for r in rows)
    assert all(int(r["n_tiles_read"]) <= 2 * 8 for r in rows)
    assert len(result.heatmaps) == result.n_test and all(p.exists() for p in result.heatmaps)
    # the summary is computed from the predictions it reports
    labels = [int(r["label"]) for r in rows]
    probs = [float(r["probability"]) for r in rows]
    assert {0, 1} <= set(labels)
    assert result.accuracy == pytest.approx(
        sum(int(r["prediction"]) == y for r, y in zip(rows, labels, strict=True)) / len(rows)
    )
    assert result.auc == pytest.approx(roc_auc_score(labels, probs))
    assert result.tissue_tiles_per_slide > result.tiles_read_per_slide > 0
    # the reported lesion share is the CSV's hits over the tiles sampled on positive test slides
    positives = [r for r in rows if int(r["label"]) == 1]
    hits = sum(int(r["lesion_hits"]) for r in positives)
    assert result.lesion_hit_share == pytest.approx(hits / (len(positives) * 2 * 8))
    assert all(int(r["lesion_hits"]) == 0 for r in rows if int(r["label"]) == 0)
    # the model's draws land on the lesions: over many draws on every positive slide of the cohort,
    # its share of tiles on malignant spots is several times that of a uniform draw over the same
    # tissue cells, by many standard errors
    share, se, uniform = _lesion_share(tmp_path / "demo" / "cohort", result.model_path, 64)
    assert share > 5 * uniform and share - uniform > 6 * se, (share, se, uniform)
    table = format_table(result)
    assert "AUC" in table and "tiles read per slide" in table and "heatmap" in table
    assert 1 <= result.best_epoch <= result.epochs  # the table says which epoch's weights it kept
    assert f"(epoch {result.best_epoch} of {result.epochs}: best validation AUC" in table
    assert all(r["split"] == "test" and "warnings" in r for r in rows)
    # cached: a second call reuses the cohort's slides (same parameters) and still works
    slides = sorted((tmp_path / "demo" / "cohort" / "slides").iterdir())
    stamps = [p.stat().st_mtime_ns for p in slides]
    again = demo(tmp_path / "demo", n_slides=10, size=1024, config=cfg, workers=1, progress=False)
    assert [p.stat().st_mtime_ns for p in slides] == stamps
    assert again.n_test == result.n_test
    # training and prediction are seeded: the same cohort and config give the same predictions
    with again.predictions_csv.open() as fh:
        rows_again = list(csv.DictReader(fh))
    assert [r["slide_id"] for r in rows_again] == [r["slide_id"] for r in rows]
    assert [float(r["probability"]) for r in rows_again] == pytest.approx(probs, abs=1e-6)
    assert [r["lesion_hits"] for r in rows_again] == [r["lesion_hits"] for r in rows]


def _lesion_share(cohort: Path, model_path: Path, draws: int) -> tuple[float, float, float]:
    """Share of the tiles the model draws that lie on malignant spots (positive slides of the
    cohort, ``draws`` draws each), its standard error over the draws, and the share a uniform draw
    over the same tissue cells would get."""
    model = load_model(model_path)
    boxes = lesion_boxes(cohort / "ground_truth.json")
    per_draw, uniform = [], []
    for s in read_cohort(cohort / "manifest.csv"):
        if s.label != 1:
            continue
        view = view_slide(s.path, model.config, s.slide_id)
        smp = sample_slide(view, model, draws, seed=0)
        per_draw.extend(tile_hits(smp.locations, smp.tile_size_level0, boxes[s.slide_id]).mean(1))
        tissue = torch.nonzero(torch.from_numpy(smp.attention).reshape(-1) > 0).T  # [1, K]
        cells = cells_to_locations(tissue, smp.attention.shape, view, model.config)
        uniform.append(tile_hits(cells, smp.tile_size_level0, boxes[s.slide_id]).mean())
    x = np.asarray(per_draw)
    return float(x.mean()), float(x.std(ddof=1) / np.sqrt(len(x))), float(np.mean(uniform))


def test_cli_lists_my_subcommands() -> None:
    parser = build_parser()
    args = parser.parse_args(["demo", "--out", "x", "--slides", "8"])
    assert args.slides == 8 and callable(args.func)
    args = parser.parse_args(["train", "--manifest", "m.csv", "--out", "r", "--resume"])
    assert args.resume and args.pipeline is None
    args = parser.parse_args(["heatmap", "s.tiff", "--model", "r/model.pt", "--out", "h.png"])
    assert args.out == Path("h.png")
