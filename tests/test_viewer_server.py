"""``wsi-ats view``'s server: tiles equal ``read_region``, only the output folder's slides are served
(no path traversal), tiles outside the slide and unknown slides are 4xx, old folders get a clear
error, and the command prints its URL."""

from __future__ import annotations

import http.client
import io
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from viewer_cohort import SIZE, predicted_cohort, running_server

from wsi_ats.cli import main
from wsi_ats.slides import open_slide
from wsi_ats.viewer import TileGrid, ViewerServer, make_server


@pytest.fixture(scope="module")
def out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return predicted_cohort(tmp_path_factory.mktemp("viewer"))


@pytest.fixture(scope="module")
def server(out: Path) -> Iterator[ViewerServer]:
    with running_server(out) as srv:
        yield srv


def get(server: ViewerServer, path: str, host: str | None = None) -> tuple[int, bytes, str]:
    """``(status, body, content type)`` of a GET of the raw ``path`` (sent as is, unnormalised)."""
    h, port = server.server_address[:2]
    conn = http.client.HTTPConnection(h, port, timeout=30)
    headers = {"Host": host} if host else {}
    conn.request("GET", path, headers=headers)
    resp = conn.getresponse()
    body = resp.read()
    conn.close()
    return resp.status, body, resp.getheader("Content-Type") or ""


def png(body: bytes) -> np.ndarray:
    img = Image.open(io.BytesIO(body))
    assert img.format == "PNG"
    return np.asarray(img.convert("RGB"))


def test_png_tiles_equal_read_region_at_each_pyramid_level(server: ViewerServer, out: Path) -> None:
    path = out.parent / "cohort" / "slide_0.tiff"
    grid = TileGrid(SIZE, SIZE)
    assert grid.max_zoom == 4 and grid.grid(0) == (12, 12)
    with open_slide(path) as slide:
        assert slide.level_downsamples[:3] == (1.0, 2.0, 4.0)
        for z, col, row in [(0, 5, 6), (0, 11, 11), (1, 2, 3), (2, 2, 2), (0, 0, 0)]:
            status, body, ctype = get(server, f"/tiles/slide_0/{z}/{col}_{row}.png")
            assert status == 200 and ctype == "image/png"
            d = 2**z
            expected = slide.read_region((col * 256 * d, row * 256 * d), z, (256, 256))
            np.testing.assert_array_equal(png(body), expected)
            assert expected.std() > 0  # not a blank tile
        # zoom 4 (downsample 16) has no pyramid level: level 3 (downsample 8) area-averaged 2x2
        status, body, _ = get(server, "/tiles/slide_0/4/0_0.png")
        coarse = slide.read_region((0, 0), 3, (384, 384)).astype(np.float64)
        expected = coarse.reshape(192, 2, 192, 2, 3).mean(axis=(1, 3))
        assert status == 200
        assert np.abs(png(body).astype(np.float64) - expected).max() <= 1.0
    # the JPEG tile (the viewer's default) holds the same pixels within JPEG's error
    status, body, ctype = get(server, "/tiles/slide_0/0/5_6.jpg")
    assert status == 200 and ctype == "image/jpeg"
    jpeg = np.asarray(Image.open(io.BytesIO(body)).convert("RGB")).astype(int)
    with open_slide(path) as slide:
        exact = slide.read_region((5 * 256, 6 * 256), 0, (256, 256)).astype(int)
    assert np.abs(jpeg - exact).mean() < 3.0


def test_edge_tiles_are_cut_at_the_slide_and_tiles_outside_are_404(server: ViewerServer) -> None:
    grid = TileGrid(1000, 600)
    assert grid.max_zoom == 2 and grid.grid(0) == (4, 3)
    assert grid.tile_size(0, 3, 2) == (1000 - 768, 600 - 512)
    assert grid.tile_size(2, 0, 0) == (250, 150)
    for bad in [
        "/tiles/slide_0/0/12_0.png",  # column 12 of 12
        "/tiles/slide_0/0/0_12.jpg",
        "/tiles/slide_0/5/0_0.jpg",  # zoom 5 > max_zoom 4
        "/tiles/slide_0/4/1_0.jpg",
        "/tiles/slide_0/0/-1_0.jpg",
        "/tiles/slide_0/0/0_0.gif",
        "/tiles/slide_0/x/0_0.jpg",
        "/sampled/slide_0/16.png",  # 2 draws x 8 tiles: rows 0..15
    ]:
        status, body, _ = get(server, bad)
        assert status == 404, bad
        assert b"\x89PNG" not in body[:8]
    status, _, _ = get(server, "/sampled/slide_0/15.png")
    assert status == 200


def test_only_the_folders_slides_are_served_no_path_traversal(
    server: ViewerServer, out: Path
) -> None:
    secret = out / "predictions.csv"
    assert secret.is_file()
    for bad in [
        "/tiles/../predictions.csv",
        "/tiles/%2e%2e/0/0_0.jpg",
        "/tiles/%2E%2E/%2E%2E/0/0_0.jpg",
        "/slide/..%2f..%2fpredictions.csv",
        "/slide/%2e%2e%2fslides%2fslide_0",
        "/api/slide/..",
        "/api/slide/%2e%2e",
        "/overlay/slide_0/../../predictions.csv",
        "/overlay/slide_0/%2e%2e%2f%2e%2e%2fpredictions.csv",
        "/overlay/slide_0/attention.npy",
        "/overlay/slide_0/prediction.json",
        "/static/../server.py",
        "/static/%2e%2e%2fserver.py",
        "/static/..%5cserver.py",
        "/static/viewer.py",
        "//etc/passwd",
        "/slide//etc/passwd",
        f"/slide/{secret}",
        "/tiles/%2Fetc%2Fpasswd/0/0_0.jpg",
        f"/tiles/{str(out / 'slides' / 'slide_0').replace('/', '%2F')}/0/0_0.jpg",
        "/slide/unknown",
        "/api/slide/slide_9",
        "/tiles/slide_9/0/0_0.jpg",
        "/slide/slide_0.tiff",
        "/etc/passwd",
    ]:
        status, body, _ = get(server, bad)
        assert 400 <= status < 500, (bad, status)
        assert b"slide_id,probability" not in body and b"root:" not in body, bad
    # the same routes with a name the folder holds do answer
    for good in ["/slide/slide_0", "/api/slide/slide_0", "/overlay/slide_0/attention.png",
                 "/static/viewer.css", "/"]:  # fmt: skip
        assert get(server, good)[0] == 200, good


def test_error_rows_and_the_api(server: ViewerServer, out: Path) -> None:
    status, body, ctype = get(server, "/api/predictions")
    assert status == 200 and ctype == "application/json"
    data = json.loads(body)
    assert data["has_label"] and [r["slide_id"] for r in data["rows"]] == [
        "slide_0", "slide_1", "slide_2", "broken",
    ]  # fmt: skip
    broken = data["rows"][3]
    assert broken["status"] == "error" and not broken["viewable"]
    assert "SlideOpenError" in broken["error"] and broken["probability"] is None
    status, body, _ = get(server, "/slide/broken")
    assert status == 409 and b"no prediction to show" in body
    info = json.loads(get(server, "/api/slide/slide_1")[1])
    assert (info["width"], info["height"], info["max_zoom"]) == (SIZE, SIZE, 4)
    assert len(info["tiles"]) == 16 and info["record"]["n_draws"] == 2
    assert info["row"]["label"] == 1
    atts = [g["attention"] for g in info["gallery"]]
    assert atts == sorted(atts, reverse=True) and len(atts) == len({
        (t["x"], t["y"]) for t in info["tiles"]})  # fmt: skip
    assert info["attention"]["rect"] == [0.0, 0.0, SIZE, SIZE]
    overlay = Image.open(io.BytesIO(get(server, "/overlay/slide_1/attention.png")[1]))
    attention = np.load(out / "slides" / "slide_1" / "attention.npy")
    assert overlay.mode == "RGBA" and overlay.size == attention.shape[::-1]
    alpha = np.asarray(overlay)[..., 3]
    assert (alpha[attention == 0] == 0).all() and (alpha[attention > 0] > 0).all()
    # a sampled tile at full resolution is the slide's level-0 pixels
    t = info["tiles"][3]
    with open_slide(info["record"]["slide_path"]) as slide:
        expected = slide.read_region((t["x"], t["y"]), 0, (t["w"], t["h"]))
    np.testing.assert_array_equal(png(get(server, "/sampled/slide_1/3.png")[1]), expected)


def test_requests_for_another_host_name_are_refused(server: ViewerServer) -> None:
    """A page elsewhere that rebinds its DNS name to 127.0.0.1 cannot read the slides."""
    assert get(server, "/api/predictions", host="evil.example:80")[0] == 403
    port = server.server_address[1]
    assert get(server, "/api/predictions", host=f"localhost:{port}")[0] == 200


def test_folders_without_slide_paths_need_the_manifest(out: Path, tmp_path: Path) -> None:
    old = tmp_path / "old"
    shutil.copytree(out, old)
    record_path = old / "slides" / "slide_0" / "prediction.json"
    record = json.loads(record_path.read_text())
    del record["slide_path"]
    record_path.write_text(json.dumps(record))
    srv = make_server(old)
    entry = srv.index.get("slide_0")
    srv.server_close()
    assert entry is not None and not entry.viewable
    assert "--manifest" in str(entry.problem) and "rerun `wsi-ats predict`" in str(entry.problem)
    srv = make_server(old, manifest=out.parent / "cohort" / "manifest.csv")
    entry = srv.index.get("slide_0")
    srv.server_close()
    assert entry is not None and entry.viewable
    assert entry.path == str((out.parent / "cohort" / "slide_0.tiff").resolve())


def test_view_of_a_folder_that_is_not_a_predict_output_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    assert main(["view", str(tmp_path / "nope")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("wsi-ats view: error:") and "does not exist" in err
    assert len(err.splitlines()) == 1
    assert main(["view", str(tmp_path)]) == 2
    assert "no predictions.csv" in capsys.readouterr().err


def test_the_command_prints_its_url_and_binds_loopback(out: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "wsi_ats", "view", str(out)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith(f"wsi-ats view: {out} at http://127.0.0.1:"), line
        url = line.split(" at ")[1].split()[0]
        host, port = url.removeprefix("http://").rstrip("/").split(":")
        conn = http.client.HTTPConnection(host, int(port), timeout=30)
        conn.request("GET", "/api/predictions")
        assert conn.getresponse().status == 200
        conn.close()
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_one_slide_with_a_model_is_predicted_into_a_viewable_folder(
    out: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    from wsi_ats.viewer.single import predict_into, slide_id_of

    assert slide_id_of("/data/a b.svs") == "a b"
    assert slide_id_of("/data/x.ome.zarr/") == "x" and slide_id_of("s3://b/k/y.zarr") == "y"
    slide = out.parent / "cohort" / "slide_2.tiff"
    folder = predict_into(slide, out.parent / "model.pt", tmp_path / "one")
    srv = make_server(folder)
    srv.server_close()
    entry = srv.index.get("slide_2")
    assert list(srv.index.entries) == ["slide_2"] and entry is not None and entry.viewable
    assert entry.path == str(slide.resolve()) and entry.row["n_draws"] == 2
    # without --model a slide is not an output folder: the error says how to view it
    assert main(["view", str(slide)]) == 2
    assert "give --model RUN/model.pt" in capsys.readouterr().err
    assert main(["view", str(slide), "--model", str(tmp_path / "none.pt")]) == 2
    assert "none.pt" in capsys.readouterr().err


def test_a_new_predictions_table_is_picked_up_without_a_restart(out: Path, tmp_path: Path) -> None:
    folder = tmp_path / "running"
    shutil.copytree(out, folder)
    table = folder / "predictions.csv"
    lines = table.read_text().splitlines()
    table.write_text("\n".join(lines[:2]) + "\n")  # a run that had finished one slide
    with running_server(folder) as srv:
        assert [r["slide_id"] for r in json.loads(get(srv, "/api/predictions")[1])["rows"]] == [
            "slide_0"
        ]
        assert get(srv, "/slide/slide_1")[0] == 404
        table.write_text("\n".join(lines) + "\n")  # the run finished
        rows = json.loads(get(srv, "/api/predictions")[1])["rows"]
        assert len(rows) == 4 and get(srv, "/slide/slide_1")[0] == 200


def test_the_pages_files_ship_as_package_data() -> None:
    """Every file the server serves is in ``static/`` and matched by pyproject's package-data."""
    import ast
    import fnmatch
    import re

    from wsi_ats.viewer.server import STATIC_FILES

    root = Path(__file__).resolve().parents[1]
    static = root / "wsi_ats" / "viewer" / "static"
    assert {p.name for p in static.iterdir()} == set(STATIC_FILES)
    text = (root / "pyproject.toml").read_text()
    section = text.split("[tool.setuptools.package-data]", 1)[1]  # (tomllib needs Python 3.11)
    globs = ast.literal_eval(re.search(r'"wsi_ats\.viewer" = (\[.*?\])', section)[1])
    for name in STATIC_FILES:
        assert any(fnmatch.fnmatch(f"static/{name}", g) for g in globs), name


def test_a_zoom_without_a_pyramid_level_is_area_averaged_in_bounded_reads(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from slide_factory import test_image, write_pyramidal_tiff

    from wsi_ats.viewer import read_tile, tiles

    img = test_image(600, 1000, seed=3)
    path = write_pyramidal_tiff(tmp_path / "flat.tiff", img, tile=128, levels=1)
    grid = TileGrid(1000, 600)
    reads: list[tuple[int, int]] = []
    with open_slide(path) as slide:
        assert slide.level_count == 1
        whole = read_tile(slide, grid, 2, 0, 0)  # downsample 4 from level 0, one read
        expected = img.reshape(150, 4, 250, 4, 3).mean(axis=(1, 3))
        assert whole.shape == (150, 250, 3)
        assert np.abs(whole - expected).max() <= 1.0
        original = slide.read_region

        def spy(location: tuple[int, int], level: int, size: tuple[int, int]) -> np.ndarray:
            reads.append(size)
            return original(location, level, size)

        monkeypatch.setattr(slide, "read_region", spy)
        monkeypatch.setattr(tiles, "MAX_READ", 64)
        blocks = read_tile(slide, grid, 2, 0, 0)
    np.testing.assert_array_equal(blocks, whole)
    assert len(reads) == 16 * 10 and max(max(s) for s in reads) <= 64


def test_an_ome_zarr_slide_is_served_pixel_exact(out: Path, tmp_path: Path) -> None:
    from wsi_ats.slides import convert_to_ome_zarr
    from wsi_ats.viewer.single import predict_into

    zarr = tmp_path / "slide_0.ome.zarr"
    convert_to_ome_zarr(out.parent / "cohort" / "slide_0.tiff", zarr, min_size=256, threads=1)
    folder = predict_into(zarr, out.parent / "model.pt", tmp_path / "one")
    with running_server(folder) as srv, open_slide(zarr) as slide:
        assert list(srv.index.entries) == ["slide_0"]
        assert type(slide).__name__ == "OmeZarrSlide"
        for z, col, row in [(0, 4, 7), (1, 3, 2)]:
            status, body, _ = get(srv, f"/tiles/slide_0/{z}/{col}_{row}.png")
            d = 2**z
            expected = slide.read_region((col * 256 * d, row * 256 * d), z, (256, 256))
            assert status == 200
            np.testing.assert_array_equal(png(body), expected)


def test_a_slide_folder_without_its_prediction_is_listed_with_the_reason(
    out: Path, tmp_path: Path
) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(out, broken)
    (broken / "slides" / "slide_0" / "prediction.json").unlink()
    srv = make_server(broken)
    entry, other = srv.index.get("slide_0"), srv.index.get("slide_1")
    srv.server_close()
    assert entry is not None and not entry.viewable
    assert "no prediction.json" in str(entry.problem) and "rerun `wsi-ats predict`" in str(
        entry.problem
    )
    assert other is not None and other.viewable  # the other slides are unaffected
