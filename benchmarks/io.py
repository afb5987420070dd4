"""Tile-read throughput: OpenSlide (JPEG TIFF) vs OME-Zarr (local and over HTTP), read amplification.

One run prints, side by side: random 256 x 256 tile reads per second at level 0 (one thread, and the
backends' thread pools via ``read_regions``), zarr read amplification (bytes decoded / bytes returned)
at several chunk sizes, and the floor (reading + decoding one chunk) with the batched per-tile time
relative to it. Tiles are drawn uniformly inside the tissue of a synthetic slide (what a sampler reads).

Then remote reads: NGFF 0.5 (zarr v3) conversions with plain chunks and with shards of small inner
chunks (``convert_to_ome_zarr(shard_size=...)``, ``wsi-ats convert --shard``) served by a local HTTP
server that counts what it sends (``http_counter.py``): decoded bytes (counted at the zstd codec) per
tile byte, bytes sent over HTTP (headers included) per tile byte, requests per tile and tiles/s, for one
``read_regions`` call over all tiles and for one tile per call.

    nice python benchmarks/io.py [--size 16384] [--tiles 256] [--out benchmarks/results/io.txt]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
from report import emit

TILE = 256
CHUNKS = (128, 256, 512, 1024)
# (label, chunk or inner chunk, shard side or None) of the NGFF 0.5 layouts read over HTTP
REMOTE = (
    ("plain 512", 512, None),
    ("plain 128", 128, None),
    ("plain 64", 64, None),
    ("shard 1024/256", 256, 1024),
    ("shard 1024/128", 128, 1024),
    ("shard 1024/64", 64, 1024),
    ("shard 2048/64", 64, 2048),
    ("shard 1536/96", 96, 1536),
    ("shard 1024/32", 32, 1024),
)
LATENCY_S = 0.01  # per request, for the "t/s @10ms" column
RATIO_KEYS = ("tps_batch", "tps_single", "tps_latency", "local", "req_batch", "req_single")


def make_inputs(work: Path, size: int, chunks: tuple[int, ...]) -> tuple[Path, dict[int, Path]]:
    """The synthetic JPEG TIFF and its OME-Zarr conversions (cached in ``work``)."""
    from wsi_ats.slides import convert_to_ome_zarr
    from wsi_ats.synth import write_synthetic_slide

    tiff = work / f"io_{size}.tiff"
    if not tiff.exists():
        write_synthetic_slide(tiff, size, seed=3, label=1, compression="jpeg", quality=90)
    zarrs = {}
    for c in chunks:
        dst = work / f"io_{size}_c{c}.zarr"
        if not (dst / ".zattrs").exists():
            convert_to_ome_zarr(tiff, dst, chunk_size=c, overwrite=True, threads=2)
        zarrs[c] = dst
    return tiff, zarrs


def make_remote_inputs(
    work: Path, tiff: Path, size: int, layouts: tuple[tuple[str, int, int | None], ...]
) -> dict[str, Path]:
    """NGFF 0.5 conversions of ``tiff`` for each ``(label, chunk, shard)`` layout (cached)."""
    from wsi_ats.slides import convert_to_ome_zarr

    out = {}
    for label, chunk, shard in layouts:
        name = f"io_{size}_v05_c{chunk}" + (f"_s{shard}" if shard else "") + ".zarr"
        dst = work / "remote" / name
        if not (dst / "zarr.json").exists():
            convert_to_ome_zarr(
                tiff,
                dst,
                chunk_size=chunk,
                shard_size=shard,
                ngff_version="0.5",
                overwrite=True,
                threads=2,
            )
        out[label] = dst
    return out


class DecodeCounter:
    """Counts the bytes decoded from zstd (every chunk, inner chunks of shards included): by zarr
    v3's zstd codec, and by ``ShardedChunkReader`` (which decodes inner chunks itself)."""

    def __init__(self) -> None:
        from zarr.codecs.zstd import ZstdCodec

        from wsi_ats.slides.shards import ShardedChunkReader

        self.cls, self.original, self.nbytes, self.chunks = (
            ZstdCodec,
            ZstdCodec._decode_single,
            0,
            0,
        )
        self.reader_cls, self.reader_original = ShardedChunkReader, ShardedChunkReader._chunk

    def __enter__(self) -> DecodeCounter:
        original, reader_original = self.original, self.reader_original

        async def spy(codec, chunk_bytes, chunk_spec):
            buf = await original(codec, chunk_bytes, chunk_spec)
            self.nbytes += len(buf)
            self.chunks += 1
            return buf

        def reader_spy(reader, raw):
            block = reader_original(reader, raw)
            self.nbytes += block.nbytes
            self.chunks += 1
            return block

        self.cls._decode_single = spy
        self.reader_cls._chunk = reader_spy
        return self

    def __exit__(self, *exc) -> None:
        self.cls._decode_single = self.original
        self.reader_cls._chunk = self.reader_original


def remote_row(
    url: str, server, locs: np.ndarray, threads: int, merged: bool = True, merge_gap=None
) -> dict[str, float]:
    """Read ``locs`` over HTTP from ``url`` twice (one ``read_regions`` call; one tile per call):
    decoded bytes, bytes sent and requests per tile, and tiles/s of each; then tiles/s of one
    ``read_regions`` call with ``LATENCY_S`` added to every request. ``merged=False``: sharded
    levels read through zarr alone (no ``ShardedChunkReader``); ``merge_gap``: its byte gap."""
    from wsi_ats.slides.zarr_backend import OmeZarrSlide

    n, tile_bytes = len(locs), TILE * TILE * 3
    row: dict[str, float] = {}
    with OmeZarrSlide(url, merged_shard_reads=merged, shard_merge_gap=merge_gap) as z:
        z.read_threads = threads
        z.read_region((0, 0), 0, (16, 16))  # warm: HTTP session, pool
        for mode in ("batch", "single"):
            server.reset()
            with DecodeCounter() as dec:
                t0 = time.perf_counter()
                if mode == "batch":
                    z.read_regions(locs, 0, (TILE, TILE))
                else:
                    for x, y in locs:
                        z.read_region((int(x), int(y)), 0, (TILE, TILE))
                dt = time.perf_counter() - t0
            requests, _, sent = server.counts()
            row[f"amp_{mode}"] = dec.nbytes / (n * tile_bytes)
            row[f"chunks_{mode}"] = dec.chunks / n
            row[f"http_{mode}"] = sent / (n * tile_bytes)
            row[f"req_{mode}"] = requests / n
            row[f"tps_{mode}"] = n / dt
        server.delay_s = LATENCY_S
        try:
            t0 = time.perf_counter()
            z.read_regions(locs, 0, (TILE, TILE))
            row["tps_latency"] = n / (time.perf_counter() - t0)
        finally:
            server.delay_s = 0.0
    return row


def local_pool_tps(
    path: Path, locs: np.ndarray, threads: int, merged: bool = True, merge_gap=None
) -> float:
    """Tiles/s of one local ``read_regions`` call over ``locs``."""
    from wsi_ats.slides.zarr_backend import OmeZarrSlide

    with OmeZarrSlide(path, merged_shard_reads=merged, shard_merge_gap=merge_gap) as z:
        z.read_region((0, 0), 0, (16, 16))
        return 1 / time_batched(z, locs, threads)


def remote_lines(
    tiff: Path, work: Path, size: int, n: int, threads: int, layouts: tuple, gaps=(None,)
) -> list[str]:
    """The remote section of the report; sharded layouts are read by ``ShardedChunkReader`` at
    each merge gap of ``gaps`` (None: its default) and through zarr alone."""
    from http_counter import CountingHTTPServer

    paths = make_remote_inputs(work, tiff, size, layouts)
    locs = tissue_locations(tiff, n, 101)
    rows, ratios = [], []
    with CountingHTTPServer(work / "remote") as server:
        for label, _, shard in layouts:
            path = paths[label]
            variants = [(True, g) for g in gaps] + [(False, None)] if shard else [(True, None)]
            for i, (merged, gap) in enumerate(variants):
                url = f"{server.url}/{path.name}"
                row = remote_row(url, server, locs, threads, merged, gap)
                row["local"] = local_pool_tps(path, locs, threads, merged, gap)
                row["files"] = sum(1 for p in (path / "0").rglob("*") if p.is_file()) - 1
                row["mb"] = sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 2**20
                name = (
                    "  via zarr" if not merged else label if i == 0 else f"  gap {gap / 1024:g} KiB"
                )
                rows.append((name, row))
            if shard:
                ours, theirs = rows[-len(variants)][1], rows[-1][1]
                ratios.append((label, {k: ours[k] / theirs[k] for k in RATIO_KEYS}))
    lines = [
        "",
        "remote: NGFF 0.5 (zarr v3, zstd 3) over HTTP from a local counting server (127.0.0.1, same",
        f"process); the same {n} tiles {TILE}x{TILE} at level 0 for every layout; pool = {threads} threads",
        "batch = one read_regions call for all tiles; single = one read_region call per tile",
        "",
        f"{'layout':<16}{'L0 files':>9}{'MiB':>7}{'chunks/tile':>12}{'amp':>6}{'HTTP/tile':>10}"
        f"{'req/tile':>9}{'http t/s':>9}   {'chunks/tile':>11}{'amp':>6}{'HTTP/tile':>10}"
        f"{'req/tile':>9}{'http t/s':>9}{'t/s @10ms':>10}{'local pool':>11}",
        f"{'':<32}{'---- batch (pool) ----':^53}{'---- single (1 per call) ----':^46}",
    ]
    for label, r in rows:
        lines.append(
            f"{label:<16}{r['files']:>9.0f}{r['mb']:>7.1f}{r['chunks_batch']:>12.2f}"
            f"{r['amp_batch']:>6.2f}{r['http_batch']:>10.2f}{r['req_batch']:>9.1f}"
            f"{r['tps_batch']:>7.0f}/s   {r['chunks_single']:>11.2f}{r['amp_single']:>6.2f}"
            f"{r['http_single']:>10.2f}{r['req_single']:>9.1f}{r['tps_single']:>7.0f}/s"
            f"{r['tps_latency']:>8.0f}/s{r['local']:>9.0f}/s"
        )
    lines += [
        "",
        "amp: bytes zstd-decoded (by zarr or the shard reader) / bytes of the tiles (256*256*3 each); absent",
        "(fill-value) chunks are never decoded. HTTP/tile: all bytes the server sent (status lines,",
        "headers, bodies) / bytes of the tiles. req/tile: HTTP requests / tiles. http t/s: tiles per",
        "second over HTTP; t/s @10ms: the batch call again with 10 ms waited before every answer",
        "(a remote store's round trip); local pool: one read_regions call on the folder, from disk.",
        "L0 files: files of level 0 (chunks or shards); MiB: the whole pyramid on disk.",
        "Sharded rows: read by ShardedChunkReader (one byte range per run of neighbouring inner",
        "chunks, shard indexes cached); 'via zarr': the same slide with merged_shard_reads=False.",
        *(
            [
                f"Merge gaps: the first row of a sharded layout merges ranges up to {gaps[0]} bytes",
                "apart; 'gap N KiB' rows: the same reader merging ranges up to N KiB apart (the bytes",
                "between them fetched and dropped: fewer requests, more bytes).",
            ]
            if len(gaps) > 1
            else []
        ),
        "Goals (issue 12): amp <= 2 and HTTP/tile <= 2.",
    ]
    if ratios:
        lines += [
            "",
            "ShardedChunkReader / zarr alone, same tiles, measured in this run (tiles/s ratios;",
            "requests per tile: zarr's / ours)",
            f"{'layout':<16}{'http batch':>11}{'http single':>12}{'@10ms':>7}{'local':>7}"
            f"{'fewer req batch':>16}{'fewer req single':>17}",
        ]
        for label, q in ratios:
            lines.append(
                f"{label:<16}{q['tps_batch']:>10.1f}x{q['tps_single']:>11.1f}x"
                f"{q['tps_latency']:>6.1f}x{q['local']:>6.1f}x"
                f"{1 / q['req_batch']:>15.1f}x{1 / q['req_single']:>16.1f}x"
            )
    return lines


def tissue_locations(tiff: Path, n: int, seed: int) -> np.ndarray:
    """``int64[n, 2]`` level-0 ``(x, y)`` tile corners, uniform over the tissue mask."""
    from wsi_ats.slides import low_res_view, open_slide, tissue_mask

    with open_slide(tiff) as slide:
        view = low_res_view(slide, target_size=1024)
    ys, xs = np.nonzero(tissue_mask(view.image))
    rng = np.random.default_rng(seed)
    i = rng.integers(0, len(ys), n)
    sy, sx = view.scale
    x = (xs[i] + rng.random(n)) * sx - TILE / 2
    y = (ys[i] + rng.random(n)) * sy - TILE / 2
    return np.stack([x, y], axis=1).astype(np.int64)


def fresh_openslide(tiff: Path):
    """Open with a new, empty shared tile cache, so that earlier runs do not warm it."""
    from wsi_ats.slides import open_slide, openslide_backend

    openslide_backend._cache = None
    return open_slide(tiff)


def time_single(slide, locs: np.ndarray) -> float:
    """Seconds per tile, one ``read_region`` at a time on one thread."""
    slide.read_threads = 1
    t0 = time.perf_counter()
    for x, y in locs:
        slide.read_region((int(x), int(y)), 0, (TILE, TILE))
    return (time.perf_counter() - t0) / len(locs)


def time_batched(slide, locs: np.ndarray, threads: int) -> float:
    """Seconds per tile of one ``read_regions`` call for all tiles."""
    slide.read_threads = threads
    slide._pool = None
    t0 = time.perf_counter()
    slide.read_regions(locs, 0, (TILE, TILE))
    return (time.perf_counter() - t0) / len(locs)


class ChunkCounter:
    """Counts the chunks an ``OmeZarrSlide`` fetches (patched in for a measurement)."""

    def __init__(self) -> None:
        from wsi_ats.slides.zarr_backend import OmeZarrSlide

        self.cls, self.original, self.keys = OmeZarrSlide, OmeZarrSlide._fetch, []

    def __enter__(self) -> ChunkCounter:
        original, keys = self.original, self.keys

        def spy(slide, level, key):
            keys.append(key)
            return original(slide, level, key)

        self.cls._fetch = spy
        return self

    def __exit__(self, *exc) -> None:
        self.cls._fetch = self.original


def stored(zarr_path: Path, keys: list[tuple[int, int]]) -> int:
    """How many of the chunk keys exist on disk (absent chunks are the fill value: never decoded)."""
    return sum((zarr_path / "0" / "0" / str(r) / str(c)).exists() for r, c in keys)


def floor_per_chunk(slide, zarr_path: Path, locs: np.ndarray, c: int) -> tuple[float, float]:
    """Mean seconds to (a) read + decode one stored tissue chunk through zarr, (b) only decode it."""
    import numcodecs

    keys = []
    for x, y in locs[:40]:
        key = (int(y) // c, int(x) // c)
        if key not in keys and stored(zarr_path, [key]):
            keys.append(key)
    keys = keys[:20]
    t0 = time.perf_counter()
    for k in keys:
        slide._fetch(0, k)
    via_zarr = (time.perf_counter() - t0) / len(keys)
    blobs = [(zarr_path / "0" / "0" / str(r) / str(cc)).read_bytes() for r, cc in keys]
    codec = numcodecs.Zstd()
    t0 = time.perf_counter()
    for b in blobs:
        codec.decode(b)
    return via_zarr, (time.perf_counter() - t0) / len(blobs)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=16384, help="slide side in level-0 pixels")
    parser.add_argument("--tiles", type=int, default=256, help="tiles per measurement")
    parser.add_argument("--threads", type=int, default=8, help="pool size of read_regions")
    parser.add_argument("--chunks", type=int, nargs="+", default=list(CHUNKS))
    parser.add_argument("--workdir", type=Path, default=Path("benchmarks/_cache/io"))
    parser.add_argument("--remote-only", action="store_true", help="only the remote (HTTP) section")
    parser.add_argument(
        "--layouts",
        nargs="+",
        default=None,
        help="labels of the remote layouts to measure (default: all), e.g. 'plain 512' 'shard 1024/64'",
    )
    parser.add_argument(
        "--merge-gaps",
        type=int,
        nargs="+",
        default=None,
        help="byte gaps at which ShardedChunkReader merges ranges (default: its own), e.g. 0 65536",
    )
    parser.add_argument("--out", type=Path, default=None, help="also write the report here")
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    from wsi_ats.slides import open_slide

    n = args.tiles
    layouts = REMOTE
    if args.layouts:
        unknown = set(args.layouts) - {label for label, _, _ in REMOTE}
        if unknown:
            parser.error(f"unknown layouts {sorted(unknown)}; known: {[r[0] for r in REMOTE]}")
        layouts = tuple(r for r in REMOTE if r[0] in args.layouts)
    gaps = tuple(args.merge_gaps) if args.merge_gaps else (None,)
    if args.remote_only:
        tiff, _ = make_inputs(args.workdir, args.size, ())
        lines = [f"io benchmark (remote only): {args.size} x {args.size} synthetic slide, "]
        lines[0] += f"{os.cpu_count()} CPUs"
        lines += remote_lines(tiff, args.workdir, args.size, n, args.threads, layouts, gaps)
        return emit(lines, args.out)
    tiff, zarrs = make_inputs(args.workdir, args.size, tuple(args.chunks))
    lines = [
        f"io benchmark: {args.size} x {args.size} synthetic slide (JPEG q90 TIFF, tiles 256), "
        f"{n} random {TILE}x{TILE} tiles in tissue per measurement, level 0, pool = {args.threads} "
        f"threads, {os.cpu_count()} CPUs",
        "",
        f"{'source':<22}{'1 thread':>12}{'pool':>12}{'x OpenSlide 1t':>16}{'x OpenSlide pool':>18}",
    ]
    seed = iter(range(1000))
    with fresh_openslide(tiff) as s:
        os1 = time_single(s, tissue_locations(tiff, n, next(seed)))
    with fresh_openslide(tiff) as s:
        osp = time_batched(s, tissue_locations(tiff, n, next(seed)), args.threads)
    rows = [("OpenSlide TIFF", os1, osp)]
    amp_rows = []
    for c, path in zarrs.items():
        with open_slide(path) as z:
            single = time_single(z, tissue_locations(tiff, n, next(seed)))
            locs = tissue_locations(tiff, n, next(seed))
            with ChunkCounter() as counter:
                batched1 = time_batched(z, locs, 1)
            pool = time_batched(z, tissue_locations(tiff, n, next(seed)), args.threads)
            via_zarr, raw = floor_per_chunk(z, path, locs, c)
        decoded = stored(path, counter.keys) * c * c * 3
        amp = decoded / (n * TILE * TILE * 3)
        isolated = ((TILE + c - 1) / TILE) ** 2
        rows.append((f"OME-Zarr chunk {c}", single, pool))
        amp_rows.append((c, len(counter.keys) / n, amp, isolated, via_zarr, raw, batched1, pool))
    for name, t1, tp in rows:
        lines.append(
            f"{name:<22}{1 / t1:>9.0f}/s {1 / tp:>9.0f}/s{os1 / t1:>16.2f}{osp / tp:>18.2f}"
        )
    lines += [
        "",
        "zarr read amplification (bytes decoded / bytes returned) and the floor (one chunk read+decoded)",
        f"{'chunk':>6}{'chunks/tile':>12}{'amp batch':>10}{'amp 1 tile':>11}{'floor zarr':>11}"
        f"{'decode only':>12}{'batch 1t/tile':>14}{'pool/tile':>10}{'pool/floor':>11}",
    ]
    for c, cpt, amp, iso, fz, fr, b1, bp in amp_rows:
        lines.append(
            f"{c:>6}{cpt:>12.2f}{amp:>10.2f}{iso:>11.2f}{fz * 1e3:>9.2f}ms{fr * 1e3:>10.2f}ms"
            f"{b1 * 1e3:>12.2f}ms{bp * 1e3:>8.2f}ms{bp / fz:>11.2f}"
        )
    lines += [
        "",
        "amp batch: measured over the batched call (chunks shared by tiles decoded once; absent",
        "(fill-value) chunks cost nothing). amp 1 tile: expected for an isolated tile at a uniform",
        "random offset, ((256 + c - 1) / 256)^2. pool/floor: batched per-tile wall time over the floor.",
    ]
    lines += remote_lines(tiff, args.workdir, args.size, n, args.threads, layouts, gaps)
    return emit(lines, args.out)


if __name__ == "__main__":
    sys.exit(main())
