"""``wsi-ats export geojson``: a predict output folder as QuPath-readable GeoJSON, one file per slide,
tile polygons at the saved level-0 locations, attention cells on the grid the tiles were placed on."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import geojson
import numpy as np
import pytest
import torch
from distributed import LocalCluster
from tiny_cohort import tiny_cohort, tiny_model

from wsi_ats.cli import main
from wsi_ats.core.offsets import cell_boxes, cell_offsets
from wsi_ats.inference.export import cell_polygons


@pytest.fixture(scope="module")
def predicted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A ``wsi-ats predict`` output folder of four tiny slides (untrained model, 2 draws of 8)."""
    root = tmp_path_factory.mktemp("export")
    manifest = tiny_cohort(root / "cohort", n=4)
    model = tiny_model(root / "run" / "model.pt")
    out = root / "out"
    with LocalCluster(
        n_workers=1, processes=False, threads_per_worker=1, dashboard_address=None
    ) as cluster:
        argv = ["predict", "--manifest", str(manifest), "--model", str(model), "--out", str(out)]
        assert main([*argv, "--scheduler", cluster.scheduler_address, "--no-progress"]) == 0
    return out


def _load(path: Path) -> dict:
    obj = geojson.loads(path.read_text())
    assert obj.is_valid, obj.errors()
    return json.loads(path.read_text())


def test_export_writes_valid_geojson_matching_the_saved_tiles_and_cells(
    predicted: Path, capsys: pytest.CaptureFixture
) -> None:
    assert main(["export", "geojson", str(predicted)]) == 0
    assert "4 GeoJSON file(s)" in capsys.readouterr().out
    for i in range(4):
        folder = predicted / "slides" / f"s{i}"
        fc = _load(folder / f"s{i}.geojson")
        assert fc["type"] == "FeatureCollection"
        record = json.loads((folder / "prediction.json").read_text())
        attention = np.load(folder / "attention.npy")
        with (folder / "coords.csv").open() as fh:
            rows = list(csv.DictReader(fh))
        tiles = [f for f in fc["features"] if f["properties"]["objectType"] == "annotation"]
        cells = [f for f in fc["features"] if f["properties"]["objectType"] == "detection"]
        # one tile polygon per sampled tile: T draws x N ranks, at the saved location and size
        assert len(tiles) == len(rows) == record["n_draws"] * record["n_patches"] == 16
        tw, th = record["tile_size_level0"]
        assert (tw, th) == (16, 16)
        for feat, row in zip(tiles, rows, strict=True):
            x, y = int(row["x"]), int(row["y"])
            ring = feat["geometry"]["coordinates"][0]
            assert ring == [[x, y], [x + tw, y], [x + tw, y + th], [x, y + th], [x, y]]
            props = feat["properties"]
            assert props["classification"] == {"name": "sampled tile"}
            assert (props["draw"], props["rank"]) == (int(row["draw"]), int(row["rank"]))
            assert props["attention"] == pytest.approx(attention.reshape(-1)[props["cell"]])
            assert props["attention"] > 0  # sampled cells are on tissue
        # cells: those at >= 1e-3 of the peak, each with its attention
        flat = attention.reshape(-1)
        expected = np.flatnonzero((flat > 0) & (flat >= flat.max() * 1e-3))
        assert 0 < len(expected) < flat.size  # glass has zero attention
        assert [f["properties"]["cell"] for f in cells] == expected.tolist()
        for feat in cells:
            assert feat["properties"]["attention"] == pytest.approx(
                flat[feat["properties"]["cell"]]
            )
            assert feat["properties"]["classification"] == {"name": "attention cell"}
        # the cells tile the 512 px slide: 512 / mw level-0 px a cell (receptive field 0)
        low = record["low_size"]
        assert [v * s for v, s in zip(low, record["scale"], strict=True)] == [512.0, 512.0]
        mh, mw = attention.shape
        assert mh < low[0] and mw < low[1]  # map stride 2: cells larger than view pixels
        sy, sx = 512 / mh, 512 / mw
        for feat in cells:
            c = feat["properties"]["cell"]
            x0, y0, x1, y1 = (c % mw) * sx, (c // mw) * sy, (c % mw + 1) * sx, (c // mw + 1) * sy
            ring = feat["geometry"]["coordinates"][0]
            assert ring == [[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]
        # each sampled tile is centred on its cell's polygon
        for feat in tiles:
            ((cx0, cy0, cx1, cy1),) = cell_polygons(
                [feat["properties"]["cell"]], attention.shape, tuple(low), tuple(record["scale"])
            )
            (x, y), _, (x1, y1) = feat["geometry"]["coordinates"][0][:3]
            assert abs((x + x1) / 2 - (cx0 + cx1) / 2) <= 1
            assert abs((y + y1) / 2 - (cy0 + cy1) / 2) <= 1


def test_min_ratio_zero_exports_every_nonzero_cell(predicted: Path) -> None:
    assert main(["export", "geojson", str(predicted), "--min-ratio", "0"]) == 0
    fc = _load(predicted / "slides" / "s0" / "s0.geojson")
    n_cells = sum(f["properties"]["objectType"] == "detection" for f in fc["features"])
    assert n_cells == int((np.load(predicted / "slides" / "s0" / "attention.npy") > 0).sum())


def test_output_of_an_older_predict_is_refused_in_one_line(
    predicted: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    import shutil

    old = tmp_path / "old"
    shutil.copytree(predicted, old)
    coords = old / "slides" / "s2" / "coords.csv"
    lines = coords.read_text().splitlines()
    coords.write_text("\n".join(",".join(line.split(",")[:6]) for line in lines) + "\n")
    assert main(["export", "geojson", str(old)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert "s2: written by an older wsi-ats predict" in err and "rerun `wsi-ats predict`" in err


def test_cell_boxes_hold_the_patches_cell_offsets_centres() -> None:
    """The box rule and the tile rule are one: with a receptive field and a non-integer scale,
    every patch of ``cell_offsets`` is centred (to rounding) on its ``cell_boxes`` box."""
    idx = torch.arange(7 * 9).reshape(1, -1)
    args = ((7, 9), (50, 61), (1000, 1333))
    boxes = cell_boxes(idx, *args, receptive_field=6)[0]
    tl = cell_offsets(idx, *args, patch_size=32, receptive_field=6)[0].double()
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2
    assert torch.allclose(tl + 16, centre, atol=0.5 + 1e-9)
    assert boxes[0, 0] == pytest.approx(3 * 1000 / 50) and boxes[-1, 3] < 1333
