"""Sharded OME-Zarr (``convert_to_ome_zarr(shard_size=...)``, ``wsi-ats convert --shard``): pixel-exact,
read locally and over HTTP with byte ranges; the byte-counting HTTP server of ``benchmarks/io.py``."""

from __future__ import annotations

import json
import socket
import sys
from pathlib import Path

import numpy as np
import pytest
import zarr
from slide_factory import test_image, write_pyramidal_tiff

from wsi_ats.cli import convert as cli_convert
from wsi_ats.cli import main
from wsi_ats.slides import OmeZarrSlide, convert_to_ome_zarr, open_slide
from wsi_ats.slides import convert as convert_module
from wsi_ats.slides.zarr_backend import _rect_keys, _shard_rects

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
from http_counter import CountingHTTPServer  # noqa: E402


@pytest.fixture(scope="module")
def tiff(tmp_path_factory):
    image = test_image(600, 900, seed=11)
    image[300:, :] = 255  # a white lower half: its shards and inner chunks are never stored
    return image, write_pyramidal_tiff(
        tmp_path_factory.mktemp("sh") / "s.tiff", image, tile=128, levels=1
    )


@pytest.fixture(scope="module")
def sharded(tiff, tmp_path_factory):
    """The same slide plain (v0.5, chunks 64) and sharded (shards 256 of inner chunks 64)."""
    _, src = tiff
    root = tmp_path_factory.mktemp("shz")
    kw = {"chunk_size": 64, "ngff_version": "0.5", "levels": 2}
    convert_to_ome_zarr(src, root / "plain.zarr", **kw)
    convert_to_ome_zarr(src, root / "sharded.zarr", shard_size=256, **kw)
    return root


def _shard_index(path: Path, n_chunks: int) -> np.ndarray:
    """``uint64[n, 2]`` (offset, nbytes) of a shard file's inner chunks (index at the end + crc32c)."""
    raw = path.read_bytes()[-(16 * n_chunks + 4) : -4]
    return np.frombuffer(raw, dtype="<u8").reshape(n_chunks, 2)


def test_sharded_conversion_is_pixel_exact_and_sharded(tiff, sharded):
    image, _ = tiff
    meta = json.loads((sharded / "sharded.zarr" / "0" / "zarr.json").read_text())
    assert meta["chunk_grid"]["configuration"]["chunk_shape"] == [3, 256, 256]  # the shards
    codec = meta["codecs"][0]
    assert codec["name"] == "sharding_indexed"
    assert codec["configuration"]["chunk_shape"] == [3, 64, 64]  # the inner chunks
    with open_slide(sharded / "sharded.zarr") as slide:
        assert isinstance(slide, OmeZarrSlide) and slide.chunk_size == (64, 64)
        np.testing.assert_array_equal(slide.read_region((0, 0), 0, (900, 600)), image)
    # one file per shard; shard row 2 (y >= 512) is all white and not stored
    files = sorted(
        p.relative_to(sharded / "sharded.zarr" / "0")
        for p in (sharded / "sharded.zarr" / "0" / "c").rglob("*")
        if p.is_file()
    )
    assert {f.parts[2] for f in files} == {"0", "1"} and len(files) == 2 * 4  # 900 px: 4 columns
    # inside shard row 1 (y 256-511) only inner row 0 (y 256-319) holds tissue (y < 300)
    index = _shard_index(sharded / "sharded.zarr" / "0" / "c" / "0" / "1" / "0", 16).reshape(
        4, 4, 2
    )
    empty = np.iinfo(np.uint64).max
    assert (index[0, :, 0] != empty).all() and (index[1:, :, 0] == empty).all()


def test_sharded_reads_equal_plain_chunks_at_every_level(sharded):
    """Our merged reads and zarr's own (the fallback for layouts the reader refuses) alike."""
    rng = np.random.default_rng(4)
    locs = np.concatenate([rng.integers(-150, 950, (40, 2)), [[0, 0], [640, 256], [-300, -300]]])
    with (
        open_slide(sharded / "sharded.zarr") as sh,
        OmeZarrSlide(sharded / "sharded.zarr", merged_shard_reads=False) as via_zarr,
        open_slide(sharded / "plain.zarr") as plain,
    ):
        assert sh.level_dimensions == plain.level_dimensions == ((900, 600), (450, 300))
        for level, size in ((0, (150, 130)), (1, (96, 80))):
            want = plain.read_regions(locs, level, size)
            np.testing.assert_array_equal(sh.read_regions(locs, level, size), want)
            np.testing.assert_array_equal(via_zarr.read_regions(locs, level, size), want)


def test_without_the_reader_zarr_reads_the_shards(sharded, monkeypatch):
    """A zarr release without the internals the reader imports leaves zarr's own shard reads."""
    from wsi_ats.slides import zarr_backend

    locs = np.array([[0, 0], [300, 100], [640, 256]])
    with open_slide(sharded / "sharded.zarr") as sh:
        want = sh.read_regions(locs, 0, (150, 130))
    monkeypatch.setattr(zarr_backend, "ShardedChunkReader", None)
    with open_slide(sharded / "sharded.zarr") as sh:
        assert sh._shard_readers == [None, None]
        np.testing.assert_array_equal(sh.read_regions(locs, 0, (150, 130)), want)


def test_shard_rects_cover_the_keys_exactly_within_shards():
    rng = np.random.default_rng(0)
    for _ in range(50):
        keys = {(int(r), int(c)) for r, c in rng.integers(0, 12, (int(rng.integers(1, 40)), 2))}
        rects = _shard_rects(sorted(keys), (4, 4))
        covered = [k for rect in rects for k in _rect_keys(rect)]
        assert sorted(covered) == sorted(keys)  # every key once, nothing else
        for r0, r1, c0, c1 in rects:
            assert r0 // 4 == (r1 - 1) // 4 and c0 // 4 == (c1 - 1) // 4  # one shard each
    tile = [(r, c) for r in range(1, 4) for c in range(2, 6)]  # a tile across two shards
    assert sorted(_shard_rects(tile, (4, 4))) == [(1, 4, 2, 4), (1, 4, 4, 6)]


def test_argument_errors(tiff, tmp_path):
    _, src = tiff
    with pytest.raises(ValueError, match="zarr v3"):
        convert_to_ome_zarr(src, tmp_path / "a.zarr", shard_size=256)  # ngff 0.4
    with pytest.raises(ValueError, match="multiple of chunk_size"):
        convert_to_ome_zarr(src, tmp_path / "b.zarr", shard_size=300, ngff_version="0.5")
    assert not (tmp_path / "a.zarr").exists() and not (tmp_path / "b.zarr").exists()


def test_cli_shard_defaults_and_errors(tiff, tmp_path, capsys):
    image, src = tiff
    assert (
        cli_convert.DEFAULT_CHUNK,
        cli_convert.DEFAULT_INNER_CHUNK,
        cli_convert.DEFAULT_SHARD,
    ) == (
        convert_module.DEFAULT_CHUNK,
        convert_module.DEFAULT_INNER_CHUNK,
        convert_module.DEFAULT_SHARD,
    )
    dst = tmp_path / "d.zarr"
    assert main(["convert", str(src), str(dst), "--shard", "--levels", "1", "--quiet"]) == 0
    arr = zarr.open_array(dst / "0", mode="r")
    assert arr.metadata.zarr_format == 3  # --shard implies NGFF 0.5
    inner, shard = convert_module.DEFAULT_INNER_CHUNK, convert_module.DEFAULT_SHARD
    assert arr.chunks == (3, inner, inner) and arr.shards == (3, shard, shard)
    with open_slide(dst) as slide:
        np.testing.assert_array_equal(slide.read_region((0, 0), 0, (900, 600)), image)
    dst2 = tmp_path / "e.zarr"
    args = ["convert", str(src), str(dst2), "--shard", "256", "--chunk-size", "128", "--quiet"]
    assert main(args) == 0
    arr = zarr.open_array(dst2 / "0", mode="r")
    assert arr.chunks == (3, 128, 128) and arr.shards == (3, 256, 256)
    capsys.readouterr()
    bad = tmp_path / "f.zarr"
    assert main(["convert", str(src), str(bad), "--shard", "--ngff-version", "0.4"]) == 2
    assert "--ngff-version 0.5" in capsys.readouterr().err
    assert main(["convert", str(src), str(bad), "--shard", "300", "--quiet"]) == 2
    assert "multiple of the chunk size 64" in capsys.readouterr().err
    assert not bad.exists()


def test_sharded_reads_over_http_are_exact_and_partial(tiff, sharded):
    image, _ = tiff
    rng = np.random.default_rng(9)
    locs = np.concatenate([rng.integers(-100, 900, (30, 2)), [[-50, -50], [850, 550]]])
    with (
        CountingHTTPServer(sharded) as server,
        open_slide(f"{server.url}/sharded.zarr") as remote,
        open_slide(sharded / "sharded.zarr") as local,
    ):
        assert remote.level_dimensions == local.level_dimensions
        for level, size in ((0, (128, 100)), (1, (64, 64))):
            np.testing.assert_array_equal(
                remote.read_regions(locs, level, size), local.read_regions(locs, level, size)
            )
        # the slide keeps the shard indexes it read: one 64 x 64 tile inside one inner chunk of
        # shard (0, 0) now costs that chunk's byte range only
        server.reset()
        tile = remote.read_region((64, 128), 0, (64, 64))
        cached = server.counts()
    with CountingHTTPServer(sharded) as server, open_slide(f"{server.url}/sharded.zarr") as fresh:
        server.reset()  # opening reads the metadata
        first = fresh.read_region((64, 128), 0, (64, 64))
        uncached = server.counts()
        # a 128 x 128 tile on inner chunks (0, 0), (0, 1), (1, 0), (1, 1): those stored lie one
        # after another (Morton order), so one byte range for them
        server.reset()
        block = fresh.read_region((0, 0), 0, (128, 128))
        merged = server.counts()
    np.testing.assert_array_equal(tile, image[128:192, 64:128])
    np.testing.assert_array_equal(first, tile)
    np.testing.assert_array_equal(block, image[:128, :128])
    shard_file = sharded / "sharded.zarr" / "0" / "c" / "0" / "0" / "0"
    index = _shard_index(shard_file, 16).reshape(4, 4, 2)
    chunk_bytes = int(index[2, 1, 1])  # inner chunk row 2, column 1
    assert cached[:2] == (1, chunk_bytes)  # one request, that chunk's bytes
    assert uncached[:2] == (2, (16 * 16 + 4) + chunk_bytes)  # + the index, not the shard
    assert uncached[1] < shard_file.stat().st_size / 8 and uncached[2] > uncached[1]  # + headers
    stored = index[:2, :2][index[:2, :2, 0] != np.iinfo(np.uint64).max]  # (0, 0) is white
    assert merged[:2] == (1, int(stored[:, 1].sum()))  # cached index, one merged range


def _raw_http(port: int, request: str) -> bytes:
    """Send ``request`` on a fresh socket; everything received until the server closes."""
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(request.encode())
        chunks = []
        while data := sock.recv(65536):
            chunks.append(data)
    return b"".join(chunks)


def test_counting_server_counts_what_it_sends(tmp_path):
    payload = bytes(range(256)) * 40  # 10240 bytes
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "f.bin").write_bytes(payload)
    with CountingHTTPServer(tmp_path) as server:
        port = server.server_address[1]
        total = 0
        cases = [
            ("GET", "bytes=10-19", 206, payload[10:20]),
            ("GET", "bytes=-5", 206, payload[-5:]),
            ("GET", "bytes=10200-", 206, payload[10200:]),
            ("GET", None, 200, payload),
            ("HEAD", None, 200, b""),
        ]
        expected_body = 0
        for method, rng, status, body in cases:
            headers = f"Range: {rng}\r\n" if rng else ""
            raw = _raw_http(
                port,
                f"{method} /sub/f.bin HTTP/1.1\r\nHost: x\r\n{headers}Connection: close\r\n\r\n",
            )
            head, _, got = raw.partition(b"\r\n\r\n")
            assert head.split(b" ")[1] == str(status).encode() and got == body
            total += len(raw)
            expected_body += len(body)
        raw = _raw_http(port, "GET /missing HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        assert raw.startswith(b"HTTP/1.1 404")
        total += len(raw)
        requests, body_bytes, sent = server.counts()
        assert requests == len(cases) + 1
        assert body_bytes == expected_body == 10 + 5 + 40 + 10240
        assert sent == total  # every byte the client received, headers included
        server.reset()
        assert server.counts() == (0, 0, 0)


def test_the_merge_gap_spans_the_chunks_between_in_one_request(tiff, sharded):
    """``shard_merge_gap``: chunks of one shard that are not neighbours on disk, fetched in one
    range with the bytes between them by default (64 KiB), one range each with 0; same pixels."""
    image, _ = tiff
    where, size = (64, 0), (64, 192)  # inner chunks (0, 1), (1, 1), (2, 1): Morton 1, 3, 9
    counts, tiles = [], []
    for gap in (0, None):
        with (
            CountingHTTPServer(sharded) as server,
            OmeZarrSlide(f"{server.url}/sharded.zarr", shard_merge_gap=gap) as remote,
        ):
            remote.read_region(where, 0, size)  # reads the shard index
            server.reset()
            tiles.append(remote.read_region(where, 0, size))
            counts.append(server.counts())
    np.testing.assert_array_equal(tiles[0], image[:192, 64:128])
    np.testing.assert_array_equal(tiles[1], tiles[0])
    assert counts[0][0] > 1 and counts[1][0] == 1
    assert counts[1][1] > counts[0][1]  # the bytes between came too
