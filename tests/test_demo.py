"""The demo's pipeline end to end at a reduced size, and its CLI wiring."""

from __future__ import annotations

import csv
import math
from pathlib import Path

import torch

from wsi_ats.cli import build_parser
from wsi_ats.cli.demo import DEMO_PIPELINE, PREDICTION_COLUMNS, demo, demo_config, format_table
from wsi_ats.models import PipelineConfig

ROOT = Path(__file__).resolve().parents[1]


def test_builtin_demo_pipeline_equals_the_toml() -> None:
    toml = PipelineConfig.from_toml(ROOT / "pipelines" / "demo.toml")
    assert toml == PipelineConfig.from_dict(DEMO_PIPELINE) == demo_config()


def test_demo_small(tmp_path: Path) -> None:
    torch.set_num_threads(1)
    cfg = demo_config().replace(
        slide={"lowres_size": 128, "patch_size": 32},
        sampling={"n_patches": 8},
        train={"epochs": 2, "batch_size": 2, "read_workers": 2, "val_draws": 1},
        predict={"n_draws": 2},
    )
    result = demo(tmp_path / "demo", n_slides=10, size=1024, config=cfg, workers=1, progress=False)
    assert result.n_test >= 2
    assert result.model_path.exists() and (tmp_path / "demo" / "cohort" / "manifest.csv").exists()
    with result.predictions_csv.open() as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == PREDICTION_COLUMNS and len(rows) == result.n_test
    assert all(0.0 <= float(r["probability"]) <= 1.0 and r["status"] == "ok" for r in rows)
    assert all(int(r["n_tiles_read"]) <= 2 * 8 for r in rows)
    assert len(result.heatmaps) == result.n_test and all(p.exists() for p in result.heatmaps)
    assert 0.0 <= result.accuracy <= 1.0 and (math.isnan(result.auc) or 0.0 <= result.auc <= 1.0)
    assert result.tissue_tiles_per_slide > result.tiles_read_per_slide > 0
    table = format_table(result)
    assert "AUC" in table and "tiles read per slide" in table and "heatmap" in table
    # cached: a second call reuses the cohort's slides (same parameters) and still works
    slides = sorted((tmp_path / "demo" / "cohort" / "slides").iterdir())
    stamps = [p.stat().st_mtime_ns for p in slides]
    again = demo(tmp_path / "demo", n_slides=10, size=1024, config=cfg, workers=1, progress=False)
    assert [p.stat().st_mtime_ns for p in slides] == stamps
    assert again.n_test == result.n_test


def test_cli_lists_my_subcommands() -> None:
    parser = build_parser()
    args = parser.parse_args(["demo", "--out", "x", "--slides", "8"])
    assert args.slides == 8 and callable(args.func)
    args = parser.parse_args(["train", "--manifest", "m.csv", "--out", "r", "--resume"])
    assert args.resume and args.pipeline is None
    args = parser.parse_args(["heatmap", "s.tiff", "--model", "r/model.pt", "--out", "h.png"])
    assert args.out == Path("h.png")
