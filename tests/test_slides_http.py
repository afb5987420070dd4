"""An OME-Zarr served over HTTP on 127.0.0.1 reads the same pixels as from disk (v0.4 and v0.5)."""

from __future__ import annotations

import functools
import http.server
import threading

import numpy as np
import pytest
from slide_factory import test_image, write_pyramidal_tiff

from wsi_ats.slides import OmeZarrSlide, convert_to_ome_zarr, open_slide


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format, *args):  # noqa: A002 - keep test output clean
        pass


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("http")
    tiff = write_pyramidal_tiff(root / "s.tiff", test_image(400, 500, seed=3), tile=128, levels=2)
    for version in ("0.4", "0.5"):
        convert_to_ome_zarr(
            tiff, root / f"s{version}.zarr", chunk_size=128, levels=2, ngff_version=version
        )
    handler = functools.partial(_QuietHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("version", ["0.4", "0.5"])
def test_http_reads_same_pixels_as_disk(served, version):
    root, base = served
    locs = np.array([[-50, -50], [100, 100], [120, 250], [450, 350], [0, 0]])
    with (
        open_slide(f"{base}/s{version}.zarr") as remote,
        open_slide(root / f"s{version}.zarr") as local,
    ):
        assert isinstance(remote, OmeZarrSlide)
        assert remote.level_dimensions == local.level_dimensions == ((500, 400), (250, 200))
        assert remote.mpp == local.mpp
        for level in (0, 1):
            np.testing.assert_array_equal(
                remote.read_regions(locs, level, (96, 80)),
                local.read_regions(locs, level, (96, 80)),
            )


def test_http_path_that_is_not_a_zarr(served):
    _, base = served
    from wsi_ats.slides import SlideOpenError

    with pytest.raises(SlideOpenError, match="http://127.0.0.1"):
        open_slide(f"{base}/nothing-here.zarr")
