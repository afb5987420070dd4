"""``convert_to_ome_zarr`` / ``wsi-ats convert`` and the OME-Zarr reader's handling of other layouts."""

from __future__ import annotations

import importlib
import json

import numpy as np
import pytest
import zarr
from slide_factory import test_image, write_pyramidal_tiff

from wsi_ats.cli import main
from wsi_ats.slides import OmeZarrSlide, convert_to_ome_zarr, open_slide


@pytest.fixture(scope="module")
def tiff(tmp_path_factory):
    image = test_image(600, 900, seed=6)
    image[300:, :] = 255  # a white lower half: its chunks are never stored
    return image, write_pyramidal_tiff(
        tmp_path_factory.mktemp("cv") / "s.tiff", image, tile=128, levels=1
    )


def test_v04_metadata_is_ngff(tiff, tmp_path):
    _, src = tiff
    dst = convert_to_ome_zarr(src, tmp_path / "a.zarr", chunk_size=128, min_size=200)
    attrs = json.loads((dst / ".zattrs").read_text())
    ms = attrs["multiscales"][0]
    assert ms["version"] == "0.4"
    assert [a["name"] for a in ms["axes"]] == ["c", "y", "x"]  # NGFF order: channel before space
    assert [a["type"] for a in ms["axes"]] == ["channel", "space", "space"]
    assert ms["axes"][1]["unit"] == "micrometer"
    assert [d["path"] for d in ms["datasets"]] == ["0", "1", "2", "3"]  # 900 -> 450 -> 225 -> 113
    scales = [d["coordinateTransformations"][0]["scale"] for d in ms["datasets"]]
    assert scales == [[1.0, 0.25 * 2**i, 0.25 * 2**i] for i in range(4)]
    array_meta = json.loads((dst / "0" / ".zarray").read_text())
    assert array_meta["chunks"] == [3, 128, 128] and array_meta["dimension_separator"] == "/"
    assert array_meta["fill_value"] == 255 and array_meta["compressor"]["id"] == "zstd"
    assert len(attrs["omero"]["channels"]) == 3


def test_v05_metadata_is_ngff(tiff, tmp_path):
    _, src = tiff
    dst = convert_to_ome_zarr(
        src, tmp_path / "b.zarr", chunk_size=128, ngff_version="0.5", codec="blosc"
    )
    meta = json.loads((dst / "zarr.json").read_text())
    assert meta["zarr_format"] == 3 and meta["node_type"] == "group"
    ome = meta["attributes"]["ome"]
    assert ome["version"] == "0.5" and "version" not in ome["multiscales"][0]
    arr = zarr.open_array(dst / "0", mode="r")
    assert arr.metadata.dimension_names == ("c", "y", "x")


def test_level0_exact_white_chunks_not_stored(tiff, tmp_path):
    image, src = tiff
    dst = convert_to_ome_zarr(src, tmp_path / "c.zarr", chunk_size=128, levels=2)
    with open_slide(dst) as slide:
        np.testing.assert_array_equal(slide.read_region((0, 0), 0, (900, 600)), image)
    stored_rows = {p.parent.name for p in (dst / "0" / "0").glob("*/*")}
    assert stored_rows == {"0", "1", "2"}  # chunk rows 3, 4 (y >= 384) are all white


def test_refuses_to_overwrite(tiff, tmp_path):
    _, src = tiff
    dst = convert_to_ome_zarr(src, tmp_path / "d.zarr", chunk_size=256, levels=1)
    with pytest.raises(FileExistsError):
        convert_to_ome_zarr(src, dst)
    convert_to_ome_zarr(src, dst, chunk_size=256, levels=1, overwrite=True)
    with pytest.raises(ValueError, match="ngff_version"):
        convert_to_ome_zarr(src, tmp_path / "e.zarr", ngff_version="0.3")


def test_failed_conversion_leaves_nothing_and_keeps_the_old_copy(tiff, tmp_path, monkeypatch):
    image, src = tiff
    dst = convert_to_ome_zarr(src, tmp_path / "f.zarr", chunk_size=256, levels=1)
    before = sorted(p.relative_to(dst) for p in dst.rglob("*"))
    convert_module = importlib.import_module("wsi_ats.slides.convert")
    calls = {"n": 0}
    real_reduce = convert_module.area_reduce

    def failing_reduce(*args, **kwargs):  # level 1 fails after level 0 was written
        calls["n"] += 1
        raise OSError("disk full")

    monkeypatch.setattr(convert_module, "area_reduce", failing_reduce)
    for target, overwrite in ((tmp_path / "g.zarr", False), (dst, True)):
        with pytest.raises(OSError, match="disk full"):
            convert_to_ome_zarr(src, target, chunk_size=256, levels=2, overwrite=overwrite)
    assert calls["n"] >= 2
    assert not (tmp_path / "g.zarr").exists()
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []
    assert sorted(p.relative_to(dst) for p in dst.rglob("*")) == before  # old copy intact
    with open_slide(dst) as slide:
        np.testing.assert_array_equal(slide.read_region((0, 0), 0, (900, 600)), image)
    monkeypatch.setattr(convert_module, "area_reduce", real_reduce)
    convert_to_ome_zarr(src, dst, chunk_size=256, levels=2, overwrite=True)
    with open_slide(dst) as slide:
        assert slide.level_count == 2


def test_cli_convert(tiff, tmp_path, capsys):
    image, src = tiff
    dst = tmp_path / "cli.zarr"
    assert (
        main(
            [
                "convert",
                str(src),
                str(dst),
                "--chunk-size",
                "256",
                "--ngff-version",
                "0.5",
                "--quiet",
            ]
        )
        == 0
    )
    assert capsys.readouterr().out.strip() == str(dst)
    with open_slide(dst) as slide:
        np.testing.assert_array_equal(slide.read_region((0, 0), 0, (900, 600)), image)
    assert (
        main(["convert", str(tmp_path / "missing.svs"), str(tmp_path / "x.zarr"), "--quiet"]) == 2
    )
    assert "no such file" in capsys.readouterr().err


def _write_ngff(path, data, axes, chunks, version="0.4", scale=None):
    """A hand-made single-level NGFF image with the given axes (names) and array."""
    fmt = 2 if version == "0.4" else 3
    group = zarr.open_group(path, mode="w", zarr_format=fmt)
    arr = group.create_array("0", shape=data.shape, chunks=chunks, dtype=data.dtype)
    arr[...] = data
    ms = {
        "axes": [{"name": a, "type": "channel" if a == "c" else "space"} for a in axes],
        "datasets": [
            {
                "path": "0",
                "coordinateTransformations": [
                    {"type": "scale", "scale": scale or [1.0] * len(axes)}
                ],
            }
        ],
    }
    if version == "0.4":
        group.attrs["multiscales"] = [{"version": "0.4", **ms}]
    else:
        group.attrs["ome"] = {"version": "0.5", "multiscales": [ms]}
    return path


@pytest.mark.parametrize(
    ("axes", "transform", "chunks"),
    [
        ("yxc", lambda a: a, (50, 40, 3)),
        ("cyx", lambda a: a.transpose(2, 0, 1), (1, 32, 64)),
        ("tczyx", lambda a: a.transpose(2, 0, 1)[None, :, None], (1, 1, 1, 30, 30)),
    ],
)
@pytest.mark.parametrize("version", ["0.4", "0.5"])
def test_reader_handles_common_axes(tmp_path, axes, transform, chunks, version):
    image = test_image(90, 110, seed=8)
    path = _write_ngff(tmp_path / "x.zarr", transform(image), axes, chunks, version)
    with open_slide(path) as slide:
        assert isinstance(slide, OmeZarrSlide) and slide.dimensions == (110, 90)
        assert slide.mpp is None  # no units
        np.testing.assert_array_equal(slide.read_region((0, 0), 0, (110, 90)), image)
        np.testing.assert_array_equal(
            slide.read_region((-5, 70), 0, (30, 30))[:20, 5:], image[70:, :25]
        )


def test_reader_handles_grey_and_uint16(tmp_path):
    grey = (np.arange(40 * 60).reshape(40, 60) % 65536).astype(np.uint16) * 16
    path = _write_ngff(tmp_path / "g.zarr", grey[None], "cyx", (1, 16, 16), scale=[1.0, 0.5, 0.5])
    with open_slide(path) as slide:
        img = slide.read_region((0, 0), 0, (60, 40))
        assert img.shape == (40, 60, 3)
        np.testing.assert_array_equal(img[..., 1], (grey >> 8).astype(np.uint8))


def test_reader_maps_uint16_through_the_omero_window(tmp_path):
    """12-bit data in uint16 with a display window 100-4095: the window sets the 0-255 range."""
    rng = np.random.default_rng(3)
    data = rng.integers(0, 4096, size=(3, 40, 60)).astype(np.uint16)
    path = _write_ngff(tmp_path / "w.zarr", data, "cyx", (3, 16, 16))
    group = zarr.open_group(path, mode="r+")
    windows = [(100, 4095), (0, 2000), (50, 3000)]
    group.attrs["omero"] = {
        "channels": [{"window": {"start": a, "end": b, "min": 0, "max": 65535}} for a, b in windows]
    }
    with open_slide(path) as slide:
        img = slide.read_region((0, 0), 0, (60, 40))
    for c, (a, b) in enumerate(windows):
        expected = np.clip((data[c].astype(np.float64) - a) * 255.0 / (b - a) + 0.5, 0, 255).astype(
            np.uint8
        )
        np.testing.assert_allclose(img[..., c], expected, atol=1)
    assert img[..., 1].max() == 255 and img[..., 0].min() == 0  # clipped at both ends
    assert img.mean() > 60  # not the top-8-bits mapping, which would leave 12-bit data dark
    group.attrs["omero"] = {"channels": [{"window": {"start": 5, "end": 5}}] * 3}  # empty window
    with open_slide(path) as slide:
        np.testing.assert_array_equal(
            slide.read_region((0, 0), 0, (60, 40)), (data >> 8).astype(np.uint8).transpose(1, 2, 0)
        )


def test_cli_names_the_image_without_ome_zarr_and_overwrites_on_request(tiff, tmp_path, capsys):
    _, src = tiff
    dst = tmp_path / "cmu1.ome.zarr"
    assert main(["convert", str(src), str(dst), "--levels", "1", "--quiet"]) == 0
    attrs = zarr.open_group(str(dst), mode="r").attrs.asdict()
    assert attrs["multiscales"][0]["name"] == "cmu1"
    assert main(["convert", str(src), str(dst), "--levels", "1", "--quiet"]) == 2
    assert "add --overwrite" in capsys.readouterr().err
    assert main(["convert", str(src), str(dst), "--levels", "1", "--quiet", "--overwrite"]) == 0
