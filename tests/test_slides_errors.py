"""Bad input fails with typed errors that name the path and the cause, never a raw backend error."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import tifffile
from slide_factory import test_image, write_pyramidal_tiff

from wsi_ats.slides import (
    SlideError,
    SlideOpenError,
    SlideReadError,
    convert_to_ome_zarr,
    open_slide,
)


@pytest.fixture(scope="module")
def zarr_slide(tmp_path_factory):
    root = tmp_path_factory.mktemp("errors")
    tiff = write_pyramidal_tiff(root / "z.tiff", test_image(300, 300), tile=128, levels=1)
    return convert_to_ome_zarr(tiff, root / "z.zarr", chunk_size=128, levels=2)


def copy_of(src, dst):
    shutil.copytree(src, dst)
    return dst


def test_missing_file(tmp_path):
    path = tmp_path / "nope.svs"
    with pytest.raises(SlideOpenError, match="no such file") as info:
        open_slide(path)
    assert info.value.path == str(path) and str(path) in str(info.value)
    assert isinstance(info.value, SlideError)


def test_folder_that_is_not_a_slide(tmp_path):
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(SlideOpenError, match="folder is not a slide"):
        open_slide(tmp_path)


@pytest.mark.parametrize(
    "content", [b"", b"not a slide at all", b"II*\x00\x08\x00\x00\x00" + b"\x00" * 20]
)
def test_unsupported_or_truncated_file(tmp_path, content):
    path = tmp_path / "bad.tiff"
    path.write_bytes(content)
    with pytest.raises(SlideOpenError, match="OpenSlide cannot open it") as info:
        open_slide(path)
    assert str(path) in str(info.value)
    assert info.value.__cause__ is not None  # chained, not swallowed


def test_tiff_that_opens_but_fails_on_read(tmp_path):
    """Level-0 tile data overwritten with zeros: the file opens, reading that tile fails."""
    path = write_pyramidal_tiff(tmp_path / "corrupt.tiff", test_image(512, 512), tile=256, levels=2)
    with tifffile.TiffFile(path) as tif:
        offset, count = tif.pages[0].dataoffsets[3], tif.pages[0].databytecounts[3]
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(b"\x00" * count)
    with open_slide(path) as slide:
        with pytest.raises(SlideReadError, match="cannot read level 0") as info:
            slide.read_region((300, 300), 0, (10, 10))
        assert str(path) in str(info.value)
        with pytest.raises(SlideReadError):
            slide.read_regions([(300, 300), (400, 400)], 0, (10, 10))


def test_broken_zarr_metadata_json(zarr_slide, tmp_path):
    z = copy_of(zarr_slide, tmp_path / "b.zarr")
    (z / ".zattrs").write_text("{ not json")
    with pytest.raises(SlideOpenError) as info:
        open_slide(z)
    assert str(z) in str(info.value)


def test_zarr_without_multiscales(zarr_slide, tmp_path):
    z = copy_of(zarr_slide, tmp_path / "m.zarr")
    (z / ".zattrs").write_text(json.dumps({"something": 1}))
    with pytest.raises(SlideOpenError, match="multiscales"):
        open_slide(z)


def test_zarr_with_missing_dataset(zarr_slide, tmp_path):
    z = copy_of(zarr_slide, tmp_path / "d.zarr")
    shutil.rmtree(z / "1")
    with pytest.raises(SlideOpenError, match="dataset '1'"):
        open_slide(z)


def test_zarr_with_bad_axes(zarr_slide, tmp_path):
    z = copy_of(zarr_slide, tmp_path / "a.zarr")
    attrs = json.loads((z / ".zattrs").read_text())
    attrs["multiscales"][0]["axes"] = [{"name": "c"}, {"name": "p"}, {"name": "q"}]
    (z / ".zattrs").write_text(json.dumps(attrs))
    with pytest.raises(SlideOpenError, match="lack 'y' and 'x'"):
        open_slide(z)


def test_zarr_with_corrupt_chunk(zarr_slide, tmp_path):
    z = copy_of(zarr_slide, tmp_path / "c.zarr")
    (z / "0" / "0" / "1" / "1").write_bytes(b"garbage, not zstd")
    with open_slide(z) as slide:
        np.testing.assert_array_equal(  # other chunks still read
            slide.read_region((0, 0), 0, (100, 100)).shape, (100, 100, 3)
        )
        with pytest.raises(SlideReadError, match=r"chunk \(row 1, col 1\) of level 0") as info:
            slide.read_regions([(0, 0), (130, 130)], 0, (50, 50))
        assert str(z) in str(info.value)


def test_zarr_missing_chunk_reads_as_fill_value_white(zarr_slide, tmp_path):
    """Zarr semantics: an absent chunk is the fill value (255), which is how white background is
    stored for free."""
    z = copy_of(zarr_slide, tmp_path / "w.zarr")
    (z / "0" / "0" / "1" / "1").unlink()
    with open_slide(z) as slide:
        assert (slide.read_region((128, 128), 0, (128, 128)) == 255).all()


def test_url_that_is_not_served_fails_to_open():
    with pytest.raises(SlideOpenError):
        open_slide("http://127.0.0.1:9/none.zarr", storage_options={"client_kwargs": {}})


def test_read_after_close(zarr_slide):
    slide = open_slide(zarr_slide)
    slide.close()
    with pytest.raises(SlideReadError, match="closed"):
        slide.read_region((0, 0), 0, (4, 4))
