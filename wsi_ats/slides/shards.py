"""Inner chunks of a sharded zarr v3 array, read with merged byte ranges and cached shard indexes.

zarr-python 3.1 reads a shard's inner chunks with one store request each, decoded one by one
through its per-chunk pipeline, and reads the shard's index again on every call: about a
millisecond of bookkeeping per 64 px chunk, and over HTTP one request per chunk. A tile needs 9 to
25 of them. :class:`ShardedChunkReader` reads the chunks of a whole ``read_regions`` call in one
concurrent batch of the array's own store, one byte range
per run of neighbouring chunks of a shard (zarr writes them in Morton order, so a tile's chunks
form few runs), and keeps recently used shard indexes. It handles the layouts zarr-python writes
by default (index at the end with crc32c, inner codecs ``bytes`` then zstd, gzip or blosc);
:func:`ShardedChunkReader.for_array` returns None for anything else, which zarr then reads.
"""

from __future__ import annotations

import asyncio
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence

import google_crc32c
import numcodecs
import numpy as np
import zarr
from zarr.abc.store import ByteRequest, RangeByteRequest, Store, SuffixByteRequest
from zarr.codecs import (
    BloscCodec,
    BytesCodec,
    Crc32cCodec,
    GzipCodec,
    ShardingCodec,
    ShardingCodecIndexLocation,
    ZstdCodec,
)
from zarr.core.buffer import Buffer, default_buffer_prototype
from zarr.core.sync import sync

MISSING = 2**64 - 1  # offset and length of an inner chunk that is not stored
INDEX_CACHE_SHARDS = 256  # shard indexes kept per array (4 KiB each for 1024 px shards of 64 px)
# bytes between two chunks' ranges that one request may span (fetched and dropped): on a 16k slide
# over HTTP, 64 KiB halves the tile time against 0 with 1.26x instead of 0.86x the tiles' bytes sent
# (benchmarks/results/io_shard_merge_gap.txt); fsspec's parquet reader merges ranges alike (64 kB)
MERGE_GAP_BYTES = 64 * 1024

Coords = tuple[int, ...]


class ShardIndexError(ValueError):
    """A shard's index is corrupt (checksum) or points outside the shard's bytes."""


class ShardedChunkReader:
    """Reads inner chunks (coordinates on the inner-chunk grid) of one sharded zarr v3 array."""

    def __init__(
        self,
        array: zarr.Array,
        decode: Callable[[memoryview], object],
        dtype: np.dtype,
        merge_gap: int = MERGE_GAP_BYTES,
    ) -> None:
        sharding: ShardingCodec = array.metadata.codecs[0]
        self.array = array
        self.inner = tuple(int(n) for n in sharding.chunk_shape)
        self.per_shard = tuple(
            int(s) // int(c) for s, c in zip(array.shards, self.inner, strict=True)
        )
        self.n_inner = int(np.prod(self.per_shard))
        self.index_bytes = 16 * self.n_inner + 4
        self.dtype = dtype
        self.fill = np.full(self.inner, array.metadata.fill_value, dtype=dtype)
        self.fill.flags.writeable = False
        self.merge_gap = merge_gap
        self._decode = decode
        self._indexes: OrderedDict[Coords, np.ndarray | None] = OrderedDict()
        self._lock = threading.Lock()  # the index cache, shared by concurrent read calls
        self.requests = 0  # store byte ranges requested (indexes and chunk runs), for tests

    @classmethod
    def for_array(cls, array: zarr.Array, merge_gap: int | None = None):
        """A reader for ``array`` that merges ranges ``merge_gap`` bytes apart (None:
        ``MERGE_GAP_BYTES``), or None when it is not sharded or its layout is not one this reader
        decodes (then zarr reads it)."""
        codecs = array.metadata.codecs if array.metadata.zarr_format == 3 else ()
        if len(codecs) != 1 or not isinstance(codecs[0], ShardingCodec):
            return None
        sharding = codecs[0]
        index_ok = (
            sharding.index_location == ShardingCodecIndexLocation.end
            and [type(c) for c in sharding.index_codecs] == [BytesCodec, Crc32cCodec]
            and _endian(sharding.index_codecs[0]) in (None, "little")
        )
        inner = list(sharding.codecs)
        if not index_ok or not inner or not isinstance(inner[0], BytesCodec):
            return None
        decode = _bytes_decoder(inner[1:])
        if decode is None:
            return None
        dtype = np.dtype(array.dtype)
        if dtype.itemsize > 1:
            dtype = dtype.newbyteorder("<" if _endian(inner[0]) in (None, "little") else ">")
        return cls(array, decode, dtype, MERGE_GAP_BYTES if merge_gap is None else merge_gap)

    def read(self, coords: Sequence[Coords]) -> list[np.ndarray]:
        """The decoded inner chunks at ``coords`` (full inner-chunk shape, edge chunks padded with
        the fill value, as stored; read-only arrays), fetched in one store batch."""
        by_shard: dict[Coords, list[int]] = {}
        for i, c in enumerate(coords):
            by_shard.setdefault(self._shard_of(c), []).append(i)
        indexes = self._load_indexes(list(by_shard))
        out: list[np.ndarray] = [self.fill] * len(coords)
        requests: list[tuple[str, RangeByteRequest]] = []
        members: list[list[tuple[int, int, int]]] = []  # (coords position, start, stop) per run
        for shard, positions in by_shard.items():
            index = indexes[shard]
            if index is None:
                continue  # no shard file: all fill
            ranges = []
            for i in positions:
                offset, length = index[self._local(coords[i])]
                if offset != MISSING:
                    ranges.append((int(offset), int(offset + length), i))
            for start, stop, run in _merge_runs(sorted(ranges), self.merge_gap):
                requests.append((self._key(shard), RangeByteRequest(start, stop)))
                members.append([(i, a - start, b - start) for a, b, i in run])
        fetched = self._get(requests)
        for (key, byte_range), run, data in zip(requests, members, fetched, strict=True):
            if data is None or len(data) < byte_range.end - byte_range.start:
                raise ShardIndexError(f"shard {key} is shorter than its index says")
            view = memoryview(data)
            for i, a, b in run:
                out[i] = self._chunk(view[a:b])
        return out

    def _chunk(self, raw: memoryview) -> np.ndarray:
        block = np.frombuffer(self._decode(raw), dtype=self.dtype)
        if block.size != self.fill.size:
            raise ShardIndexError(f"an inner chunk of {self.array.path} decodes to the wrong size")
        return block.reshape(self.inner)

    def _shard_of(self, c: Coords) -> Coords:
        return tuple(x // n for x, n in zip(c, self.per_shard, strict=True))

    def _local(self, c: Coords) -> Coords:
        return tuple(x % n for x, n in zip(c, self.per_shard, strict=True))

    def _key(self, shard: Coords) -> str:
        key = self.array.metadata.encode_chunk_key(shard)
        return f"{self.array.path}/{key}" if self.array.path else key

    def _load_indexes(self, shards: list[Coords]) -> dict[Coords, np.ndarray | None]:
        """The ``uint64[*per_shard, 2]`` (offset, length) index of each shard (None: no shard),
        from the cache or fetched in one batch."""
        with self._lock:
            found = {s: self._indexes[s] for s in shards if s in self._indexes}
        missing = [s for s in shards if s not in found]
        if missing:
            suffix = SuffixByteRequest(self.index_bytes)
            raws = self._get([(self._key(s), suffix) for s in missing])
            for shard, raw in zip(missing, raws, strict=True):
                found[shard] = None if raw is None else self._parse_index(shard, raw)
        with self._lock:
            for s in shards:
                self._indexes[s] = found[s]
                self._indexes.move_to_end(s)
            while len(self._indexes) > INDEX_CACHE_SHARDS:
                self._indexes.popitem(last=False)
        return found

    def _parse_index(self, shard: Coords, raw: bytes) -> np.ndarray:
        body, stored = raw[:-4], raw[-4:]
        if (
            len(raw) != self.index_bytes
            or google_crc32c.value(body).to_bytes(4, "little") != stored
        ):
            raise ShardIndexError(f"shard {self._key(shard)} has a corrupt index (crc32c)")
        return np.frombuffer(body, dtype="<u8").reshape(*self.per_shard, 2)

    def _get(self, key_ranges: list[tuple[str, ByteRequest]]) -> list[bytes | None]:
        """The byte ranges, fetched concurrently from the array's store on zarr's event loop
        (None where a key is absent)."""
        if not key_ranges:
            return []
        self.requests += len(key_ranges)
        bufs = sync(_get_all(self.array.store, key_ranges))
        return [None if b is None else b.to_bytes() for b in bufs]


async def _get_all(store: Store, key_ranges: list[tuple[str, ByteRequest]]) -> list[Buffer | None]:
    """``store.get`` of every ``(key, byte range)`` at once (``get_partial_values`` would do, but
    zarr's local store raises there for an absent key where ``get`` answers None)."""
    proto = default_buffer_prototype()
    return await asyncio.gather(*(store.get(k, proto, byte_range=r) for k, r in key_ranges))


def _endian(codec: BytesCodec) -> str | None:
    """``"little"``, ``"big"`` or None (one-byte types) of a ``bytes`` codec."""
    return getattr(codec.endian, "value", codec.endian)


def _merge_runs(
    ranges: list[tuple[int, int, int]], gap: int
) -> list[tuple[int, int, list[tuple[int, int, int]]]]:
    """Sorted ``(start, stop, item)`` byte ranges merged into ``(start, stop, members)`` runs:
    a range joins the run before it when it starts at most ``gap`` bytes after the run's end."""
    runs: list[tuple[int, int, list[tuple[int, int, int]]]] = []
    for start, stop, item in ranges:
        if runs and start - runs[-1][1] <= gap:
            a, b, members = runs[-1]
            members.append((start, stop, item))
            runs[-1] = (a, max(b, stop), members)
        else:
            runs.append((start, stop, [(start, stop, item)]))
    return runs


def _bytes_decoder(codecs: list) -> Callable[[memoryview], object] | None:
    """The inverse of a chain of bytes-to-bytes codecs (none, or one of zstd, gzip, blosc),
    or None for any other chain."""
    if not codecs:
        return lambda raw: raw
    if len(codecs) != 1:
        return None
    codec = codecs[0]
    if isinstance(codec, ZstdCodec):
        inverse = numcodecs.Zstd()
    elif isinstance(codec, GzipCodec):
        inverse = numcodecs.GZip()
    elif isinstance(codec, BloscCodec):
        inverse = numcodecs.Blosc()
    else:
        return None
    return inverse.decode
