"""The real test slides through ``wsi-ats predict`` with the real-scale default spec
(``pipelines/default.toml``: 256 px tiles at 0.5 um/px): cmu-1-small-region.svs (0.499 um/px, 20x)
gets a prediction; boxes.tiff, whose 352.8 um/px is a 72-dpi TIFF resolution tag, gets a clear
error naming it, or the manifest's stated mpp.

The slides live outside the repository (see ../shared/fixtures/PROVENANCE.md); CI has them beside
the clone.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from distributed import LocalCluster
from tiny_cohort import write_manifest

from wsi_ats.cli import main
from wsi_ats.cohort.paths import slide_dir
from wsi_ats.inference import predict_slide
from wsi_ats.models import PipelineConfig, build_model, load_model, save_checkpoint
from wsi_ats.stages import cells_to_locations, view_slide

ROOT = Path(__file__).resolve().parents[1]
DEFAULT = ROOT / "pipelines" / "default.toml"
FIXTURES = ROOT.parent / "shared" / "fixtures"
if not FIXTURES.is_dir():  # a missing fixture folder fails the run: these tests must not vanish
    pytest.fail(
        f"real test slides not found at {FIXTURES}: put the project's shared/ folder beside the "
        "clone (CI does; see shared/fixtures/PROVENANCE.md)",
        pytrace=False,
    )
CMU = FIXTURES / "cmu-1-small-region.svs"
BOXES = FIXTURES / "boxes.tiff"


def test_cmu_geometry_with_the_default_spec() -> None:
    cfg = PipelineConfig.from_toml(DEFAULT)
    view = view_slide(CMU, cfg)
    # 0.499 um/px is 20x: tiles read at level 0 as 256 px, no resize; cells of 256 level-0 px
    assert (view.read_level, view.read_size, view.tile_size) == (0, 256, 256)
    assert view.mpp == (0.499, 0.499) and view.mpp_source == "slide"
    mh, mw = math.ceil(2967 / 256), math.ceil(2220 / 256)
    stride = cfg.attention.map_stride
    assert view.image.shape[:2] == (mh * stride, mw * stride) and view.scale == (64.0, 64.0)
    locs = cells_to_locations(torch.arange(mh * mw)[None], (mh, mw), view, cfg)[0]
    xs, ys = np.unique(locs[:, 0]), np.unique(locs[:, 1])
    np.testing.assert_array_equal(xs, np.arange(mw) * 256)  # the cells' tiles tile the slide
    np.testing.assert_array_equal(ys, np.arange(mh) * 256)
    assert 0.2 < view.mask.mean() < 0.98  # an H&E crop: mostly tissue, some background


def test_ome_zarr_mpp_gives_the_same_geometry(tmp_path: Path) -> None:
    """OME-NGFF coordinateTransformations carry the mpp: the converted slide's view and tiles match."""
    from wsi_ats.slides import convert_to_ome_zarr

    cfg = PipelineConfig.from_toml(DEFAULT)
    zarr = convert_to_ome_zarr(CMU, tmp_path / "cmu.zarr", chunk_size=512)
    a, b = view_slide(CMU, cfg), view_slide(zarr, cfg)
    assert b.mpp == pytest.approx(a.mpp) and b.mpp_source == "slide"
    assert (b.read_level, b.read_size, b.scale) == (a.read_level, a.read_size, a.scale)
    assert b.image.shape == a.image.shape
    assert np.abs(b.image.astype(int) - a.image.astype(int)).max() <= 2  # other pyramid, rounding


def test_predict_with_the_default_spec_on_the_real_fixtures(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    model = save_checkpoint(
        tmp_path / "run" / "model.pt", build_model(PipelineConfig.from_toml(DEFAULT), seed=0), 0
    )
    rows = [
        {"slide_id": "cmu", "path": str(CMU), "mpp": ""},
        {"slide_id": "boxes", "path": str(BOXES), "mpp": ""},
        {"slide_id": "boxes_stated", "path": str(BOXES), "mpp": "0.5"},
    ]
    manifest = write_manifest(tmp_path / "m.csv", rows, ["slide_id", "path", "mpp"])
    out = tmp_path / "out"
    argv = ["predict", "--manifest", str(manifest), "--model", str(model), "--out", str(out)]
    with LocalCluster(
        n_workers=1, processes=False, threads_per_worker=1, dashboard_address=None
    ) as cluster:
        code = main([*argv, "--scheduler", cluster.scheduler_address, "--no-progress"])
    assert code == 1  # a slide failed (boxes), the others were computed
    df = pd.read_csv(out / "predictions.csv", keep_default_na=False).set_index("slide_id")
    cmu = df.loc["cmu"]
    assert cmu["status"] == "ok" and 0.0 <= float(cmu["probability"]) <= 1.0
    n = int(cmu["n_draws"])  # the default spec: rounds of 4 while the interval contains 0.5, to 16
    assert int(cmu["n_patches"]) == 32 and n in (4, 8, 12, 16)
    assert n == 16 or float(cmu["ci_low"]) >= 0.5 or float(cmu["ci_high"]) < 0.5
    ref = predict_slide(CMU, load_model(model), slide_id="cmu")  # the same rule, in one process
    assert ref.n_draws == n and ref.probability == pytest.approx(
        float(cmu["probability"]), abs=1e-6
    )
    record = json.loads((slide_dir(out, "cmu") / "prediction.json").read_text())
    assert record["tile_size_level0"] == [256, 256]
    boxes = df.loc["boxes"]
    assert boxes["status"] == "error" and boxes["probability"] in ("", None)
    error = str(boxes["error"])
    assert str(BOXES) in error and "352.778 um/px" in error and "72-dpi" in error
    assert "assume_mpp" in error and "mpp column" in error
    stated = df.loc["boxes_stated"]  # 300 x 250 px at the stated 0.5 um/px: one 256 px cell
    assert stated["status"] == "ok" and 0.0 <= float(stated["probability"]) <= 1.0


def test_heatmap_of_boxes_tiff_needs_its_mpp(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    model = save_checkpoint(
        tmp_path / "run" / "model.pt", build_model(PipelineConfig.from_toml(DEFAULT), seed=0), 0
    )
    argv = ["heatmap", str(BOXES), "--model", str(model), "--out", str(tmp_path / "h.png")]
    assert main([*argv, "--draws", "2"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "boxes.tiff" in err and "352.778 um/px" in err
    assert not (tmp_path / "h.png").exists()
    assert main([*argv, "--draws", "2", "--mpp", "0.5"]) == 0
    assert (tmp_path / "h.png").stat().st_size > 0
