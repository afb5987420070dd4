"""``ShardedChunkReader``: our reads of a sharded zarr v3 array's inner chunks (merged byte ranges,
cached shard indexes) equal zarr's for every layout it accepts, refuse the others, and report a
corrupt shard by its file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import zarr
from zarr.codecs import BloscCodec, BytesCodec, GzipCodec, ZstdCodec

from wsi_ats.slides import open_slide
from wsi_ats.slides.errors import SlideReadError
from wsi_ats.slides.shards import ShardedChunkReader, ShardIndexError, _merge_runs

SHAPE, SHARD, INNER = (50, 70), (32, 32), (8, 8)  # partial shards and inner chunks at the edges


def _array(path: Path, dtype: str, compressors, endian: str = "little") -> zarr.Array:
    """A sharded array with stored, absent (fill) and edge inner chunks, and an absent shard."""
    arr = zarr.create_array(
        store=str(path),
        shape=SHAPE,
        shards=SHARD,
        chunks=INNER,
        dtype=dtype,
        fill_value=7,
        compressors=compressors,
        serializer=BytesCodec(endian=endian),
    )
    rng = np.random.default_rng(0)
    data = rng.integers(0, 200, SHAPE).astype(dtype)
    data[8:16, 8:16] = 7  # an inner chunk equal to the fill value: not stored
    data[32:, :32] = 7  # shard (1, 0) all fill: no shard file
    arr[:] = data
    return arr


def _all_coords() -> list[tuple[int, int]]:
    return [(r, c) for r in range(-(-SHAPE[0] // 8)) for c in range(-(-SHAPE[1] // 8))]


@pytest.mark.parametrize(
    ("dtype", "compressors", "endian"),
    [
        ("uint8", [ZstdCodec(level=3)], "little"),
        ("uint8", None, "little"),
        ("uint16", [GzipCodec()], "big"),
        ("uint16", [BloscCodec()], "little"),
    ],
)
def test_reader_equals_zarr_on_every_inner_chunk(tmp_path, dtype, compressors, endian):
    arr = _array(tmp_path / "a.zarr", dtype, compressors, endian)
    reader = ShardedChunkReader.for_array(arr)
    assert reader is not None
    coords = _all_coords()
    rng = np.random.default_rng(1)
    order = [coords[i] for i in rng.permutation(len(coords))]  # any order, one batch
    blocks = reader.read(order)
    for (r, c), block in zip(order, blocks, strict=True):
        want = np.asarray(arr[r * 8 : (r + 1) * 8, c * 8 : (c + 1) * 8])
        assert block.shape == INNER
        np.testing.assert_array_equal(block[: want.shape[0], : want.shape[1]], want)
        assert (block[want.shape[0] :] == 7).all() and (block[:, want.shape[1] :] == 7).all()
    shards = -(-SHAPE[0] // 32) * -(-SHAPE[1] // 32)
    first = reader.requests
    assert first > shards  # the indexes, then the stored chunks' runs
    reader.read(order)
    assert reader.requests - first == first - shards  # indexes cached: the runs again only
    wide = ShardedChunkReader.for_array(arr, merge_gap=1 << 20)  # one range per stored shard
    for block, same in zip(wide.read(order), blocks, strict=True):
        np.testing.assert_array_equal(block, same)
    assert wide.requests == shards + shards - 1  # every index; one range per shard with a file


def test_reader_refuses_layouts_it_does_not_decode(tmp_path):
    plain = zarr.create_array(store=str(tmp_path / "p.zarr"), shape=SHAPE, chunks=INNER, dtype="u1")
    assert ShardedChunkReader.for_array(plain) is None  # not sharded: zarr reads it
    two = zarr.create_array(
        store=str(tmp_path / "t.zarr"),
        shape=SHAPE,
        shards=SHARD,
        chunks=INNER,
        dtype="u1",
        compressors=[ZstdCodec(), GzipCodec()],
    )
    assert ShardedChunkReader.for_array(two) is None  # two compressors
    v2 = zarr.create_array(
        store=str(tmp_path / "v2.zarr"), shape=SHAPE, chunks=INNER, dtype="u1", zarr_format=2
    )
    assert ShardedChunkReader.for_array(v2) is None


def test_merge_runs_joins_neighbours_within_the_gap():
    ranges = [(0, 10, "a"), (10, 25, "b"), (30, 40, "c"), (100, 120, "d")]
    assert [(a, b, [m[2] for m in ms]) for a, b, ms in _merge_runs(ranges, 0)] == [
        (0, 25, ["a", "b"]),
        (30, 40, ["c"]),
        (100, 120, ["d"]),
    ]
    assert [(a, b) for a, b, _ in _merge_runs(ranges, 5)] == [(0, 40), (100, 120)]
    assert _merge_runs([], 0) == []


def test_corrupt_shard_index_fails_the_read_naming_the_slide(tmp_path):
    from test_slides_shard import test_image, write_pyramidal_tiff

    from wsi_ats.slides import convert_to_ome_zarr

    src = write_pyramidal_tiff(
        tmp_path / "s.tiff", test_image(256, 256, seed=3), tile=128, levels=1
    )
    out = tmp_path / "bad.zarr"
    convert_to_ome_zarr(src, out, chunk_size=64, ngff_version="0.5", levels=1, shard_size=128)
    shard = out / "0" / "c" / "0" / "0" / "0"
    raw = bytearray(shard.read_bytes())
    raw[-10] ^= 0xFF  # a byte of the index: its crc32c no longer matches
    shard.write_bytes(bytes(raw))
    with open_slide(out) as slide:
        np.testing.assert_array_equal(  # the other shards read as before
            slide.read_region((128, 128), 0, (64, 64)).shape, (64, 64, 3)
        )
        with pytest.raises(SlideReadError, match=r"bad\.zarr.*corrupt index") as err:
            slide.read_region((0, 0), 0, (64, 64))
    assert isinstance(err.value.__cause__, ShardIndexError)
