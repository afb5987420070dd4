"""Tiny labelled cohorts and models for command-line tests (a few 512 px TIFFs, an untrained model)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from slide_factory import write_pyramidal_tiff

from wsi_ats.models import PipelineConfig, build_model, save_checkpoint
from wsi_ats.models.data_range import DataRange

CONFIG = PipelineConfig().replace(
    slide={"lowres_size": 64, "patch_size": 16},
    attention={"width": 4, "depth": 2, "map_stride": 2},
    features={"width": 4, "dim": 8},
    sampling={"n_patches": 8},
    train={"epochs": 1, "batch_size": 4, "lr": 0.003, "read_workers": 2, "val_draws": 1},
    predict={"n_draws": 2},
)


def tissue_slide(
    path: Path, label: int, seed: int, size: int = 512, mpp: float = 0.5, noise: int = 0
) -> Path:
    """``size`` px square: white glass and a pink tissue rectangle; positives carry a fine
    checkerboard over the tissue (visible at level 0 only). ``noise`` > 0 adds uniform pixel noise
    of that amplitude to the tissue, so that no two tiles are alike (without it every interior
    tile is the same picture, and draws of interior tiles give exactly the same estimate)."""
    rng = np.random.default_rng(seed)
    img = np.full((size, size, 3), 255, np.uint8)
    y0, x0 = (rng.integers(20, 120, size=2) * size) // 512
    h, w = (rng.integers(250, 370, size=2) * size) // 512
    block = np.broadcast_to(np.array([220, 150, 200], np.int16), (h, w, 3)).copy()
    if label:
        yy, xx = np.mgrid[0:h, 0:w]
        block = block + np.where(((yy // 2) + (xx // 2)) % 2 == 0, 30, -30)[..., None]
    if noise:
        block = block + rng.integers(-noise, noise + 1, size=block.shape)
    img[y0 : y0 + h, x0 : x0 + w] = block.clip(0, 255).astype(np.uint8)
    return write_pyramidal_tiff(path, img, tile=128, levels=3, mpp=mpp)


def write_manifest(path: Path, rows: list[dict], columns: list[str]) -> Path:
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return path


def tiny_cohort(root: Path, n: int = 8) -> Path:
    """``n`` slides (alternating labels; the first half train, then val, then test) and
    ``manifest.csv`` with ``slide_id,path,label,split``."""
    root.mkdir(parents=True, exist_ok=True)
    splits = ["train"] * (n // 2) + ["val"] * (n // 4) + ["test"] * (n - n // 2 - n // 4)
    rows = []
    for i in range(n):
        tissue_slide(root / f"s{i}.tiff", i % 2, seed=i)
        rows.append({"slide_id": f"s{i}", "path": f"s{i}.tiff", "label": i % 2, "split": splits[i]})
    return write_manifest(root / "manifest.csv", rows, ["slide_id", "path", "label", "split"])


def tiny_model(path: Path, data_range: DataRange | None = None) -> Path:
    """An untrained model of :data:`CONFIG` saved at ``path`` (with ``data_range`` if given)."""
    model = build_model(CONFIG, seed=0)
    model.data_range = data_range
    return save_checkpoint(path, model, epoch=0)
