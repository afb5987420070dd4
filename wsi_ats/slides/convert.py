"""``convert_to_ome_zarr``: stream a slide into an OME-Zarr (NGFF multiscales) pyramid, chunk by chunk.

Layout: arrays ``0, 1, ...`` with axes ``c, y, x`` (the NGFF order; a chunk ``(3, n, n)`` holds all three
channels of an ``n x n`` square, so a tile read touches the same chunks as with interleaved RGB), ``uint8``,
fill value 255 (white; all-white background chunks are not stored). Level 0 is read from the source's level
0 and is pixel-exact; level ``l + 1`` is the 2 x 2 area mean (rounded half up) of the written level ``l``.
The pyramid is written into a hidden sibling folder (``.NAME.partial-<random>``) that is renamed to ``dst``
only once complete: an interrupted or failed conversion leaves no ``dst`` behind (and a failed
``overwrite=True`` keeps the previous ``dst``); a failure removes the partial folder.

Sharded (``shard_size``, NGFF 0.5 / zarr v3 only): each array file is a ``shard_size`` square shard of
small inner chunks (``chunk_size``, default ``DEFAULT_INNER_CHUNK``) with an index at its end, so a reader
fetches (and decodes) only the inner chunks a tile needs, by byte range, from few files. Work is done one
shard at a time (no two threads ever write one shard).
"""

from __future__ import annotations

import math
import os
import shutil
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from wsi_ats.progress import Progress as tqdm

from .base import Slide
from .lowres import area_reduce
from .open import open_slide

# 512: fastest batched reads of 256 x 256 tiles in benchmarks/io.py (1.25x the one-chunk floor per
# tile, 1.2x OpenSlide's pool). Read amplification cannot reach 2 with chunks >= the tile: an isolated
# tile at a random offset decodes ((256 + c - 1) / 256)^2 of its size (4 at c=256, 9 at c=512); only
# c <= ~106 gets under 2, where zarr's ~0.4 ms per-chunk overhead makes reads 4x slower (c=128 measured).
DEFAULT_CHUNK = 512
# Sharded: inner chunks of 64 keep the read amplification of a 256 x 256 tile under 2 (isolated tile
# ((256 + 63) / 256)^2 = 1.55, measured 1.56; 96 gives 1.90 and 128 2.24) and the bytes sent over
# HTTP at 1.04x the tile's; 1024 px shards: a 256-entry (4 KiB) index, read once per tile and shard
# it touches, and ~10,000 files for a 100k x 100k level 0. Cost: ~25 range requests per tile and
# zarr's per-chunk overhead (4x slower local reads than 512 px chunks). benchmarks/io.py.
DEFAULT_INNER_CHUNK = 64
DEFAULT_SHARD = 1024
CODECS = ("zstd", "blosc", "none")


def image_name(dst: str | Path) -> str:
    """The image name of an OME-Zarr folder: ``cmu1.ome.zarr`` -> ``cmu1``."""
    name = Path(dst).name
    for suffix in (".zarr", ".ome"):
        if name.lower().endswith(suffix) and len(name) > len(suffix):
            name = name[: -len(suffix)]
    return name


def convert_to_ome_zarr(
    src: str | os.PathLike[str] | Slide,
    dst: str | os.PathLike[str],
    chunk_size: int | None = None,
    codec: str = "zstd",
    compression_level: int = 3,
    levels: int | None = None,
    min_size: int = 1024,
    ngff_version: str = "0.4",
    overwrite: bool = False,
    threads: int = 4,
    progress: bool = False,
    shard_size: int | None = None,
) -> Path:
    """Write ``src`` (a path/URL or an open ``Slide``) as an OME-Zarr at ``dst``; returns ``dst``.

    ``levels``: number of pyramid levels (default: halve until the longest side is ``<= min_size``).
    ``ngff_version`` ``"0.4"`` writes zarr v2, ``"0.5"`` zarr v3. ``chunk_size``: chunk side in pixels
    (default ``DEFAULT_CHUNK``, or ``DEFAULT_INNER_CHUNK`` for the inner chunks when sharded).
    ``shard_size``: shard side in pixels, a multiple of ``chunk_size`` (``ngff_version="0.5"`` only);
    None writes one file per chunk. Memory: about ``threads`` write units (chunks, or shards when
    sharded) of level 0, ``4 * unit**2 * 3`` bytes each for the lower levels.
    """
    if ngff_version not in ("0.4", "0.5"):
        raise ValueError(f"ngff_version must be '0.4' or '0.5', got {ngff_version!r}")
    if codec not in CODECS:
        raise ValueError(f"codec must be one of {CODECS}, got {codec!r}")
    if chunk_size is None:
        chunk_size = DEFAULT_CHUNK if shard_size is None else DEFAULT_INNER_CHUNK
    if chunk_size <= 0 or chunk_size % 2:
        raise ValueError(f"chunk_size must be a positive even number, got {chunk_size}")
    if shard_size is not None:
        if ngff_version != "0.5":
            raise ValueError("sharding needs zarr v3: pass ngff_version='0.5' with shard_size")
        if shard_size <= 0 or shard_size % chunk_size:
            raise ValueError(
                f"shard_size must be a positive multiple of chunk_size ({chunk_size}), "
                f"got {shard_size}"
            )
    dst = Path(dst)
    if dst.exists() and not overwrite:
        raise FileExistsError(f"{dst} exists (pass overwrite=True to replace it)")
    dst.parent.mkdir(parents=True, exist_ok=True)
    partial = dst.parent / f".{dst.name}.partial-{uuid.uuid4().hex[:12]}"
    slide = src if isinstance(src, Slide) else open_slide(src)
    try:
        _convert(
            slide,
            partial,
            image_name(dst),
            chunk_size,
            codec,
            compression_level,
            levels,
            min_size,
            ngff_version,
            threads,
            progress,
            shard_size,
        )
        if dst.exists():  # overwrite=True: the old copy goes only once the new one is complete
            shutil.rmtree(dst) if dst.is_dir() else dst.unlink()
        partial.rename(dst)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    finally:
        if slide is not src:
            slide.close()
    return dst


def _convert(
    slide: Slide,
    dst: Path,
    name: str,
    chunk: int,
    codec: str,
    clevel: int,
    levels: int | None,
    min_size: int,
    ngff_version: str,
    threads: int,
    progress: bool,
    shard: int | None = None,
) -> None:
    w0, h0 = slide.dimensions
    if levels is None:
        levels = 1 + max(0, math.ceil(math.log2(max(w0, h0) / min_size)))
    shapes = [(math.ceil(h0 / 2**i), math.ceil(w0 / 2**i)) for i in range(levels)]
    zarr_format = 2 if ngff_version == "0.4" else 3
    group = zarr.open_group(dst, mode="w", zarr_format=zarr_format)
    arrays = [
        group.create_array(str(i), **_array_kwargs(shape, chunk, codec, clevel, zarr_format, shard))
        for i, shape in enumerate(shapes)
    ]
    unit = chunk if shard is None else shard  # what one task writes: never two tasks per file
    total = sum(math.ceil(h / unit) * math.ceil(w / unit) for h, w in shapes)
    with (
        ThreadPoolExecutor(max(1, threads), thread_name_prefix="wsi-ats-convert") as pool,
        tqdm(
            total=total,
            unit="chunk" if shard is None else "shard",
            desc=f"convert {name}",
            disable=not progress,
        ) as bar,
    ):
        for i, arr in enumerate(arrays):
            h, w = shapes[i]
            prev = arrays[i - 1] if i else None

            def task(
                key: tuple[int, int],
                arr: zarr.Array = arr,
                prev: zarr.Array | None = prev,
                h: int = h,
                w: int = w,
            ) -> None:
                y, x = key
                ch, cw = min(unit, h - y), min(unit, w - x)
                if prev is None:
                    block = slide.read_region((x, y), 0, (cw, ch))
                else:
                    src = np.asarray(prev[:, 2 * y : 2 * (y + ch), 2 * x : 2 * (x + cw)])
                    block = area_reduce(src.transpose(1, 2, 0), 2)
                arr[:, y : y + ch, x : x + cw] = block.transpose(2, 0, 1)

            for y in range(0, h, unit):  # one row of units at a time: bounded pending work
                for _ in pool.map(task, [(y, x) for x in range(0, w, unit)]):
                    bar.update(1)
    mpp = slide.mpp
    attrs = ngff_attributes(name, levels, mpp, ngff_version)
    group.attrs.update(attrs)


def _array_kwargs(
    shape: tuple[int, int],
    chunk: int,
    codec: str,
    clevel: int,
    zarr_format: int,
    shard: int | None = None,
) -> dict[str, Any]:
    kwargs: dict[str, Any] = {
        "shape": (3, *shape),
        "chunks": (3, chunk, chunk),
        "dtype": "uint8",
        "fill_value": 255,
        "compressors": _compressors(codec, clevel, zarr_format),
    }
    if zarr_format == 2:
        kwargs["chunk_key_encoding"] = {"name": "v2", "separator": "/"}
    else:
        kwargs["dimension_names"] = ["c", "y", "x"]
        if shard is not None:
            kwargs["shards"] = (3, shard, shard)
    return kwargs


def _compressors(codec: str, clevel: int, zarr_format: int) -> Any:
    if codec == "none":
        return None
    if zarr_format == 2:
        import numcodecs

        if codec == "zstd":
            return numcodecs.Zstd(level=clevel)
        return numcodecs.Blosc(cname="zstd", clevel=clevel, shuffle=numcodecs.Blosc.NOSHUFFLE)
    from zarr.codecs import BloscCodec, ZstdCodec

    if codec == "zstd":
        return ZstdCodec(level=clevel)
    return BloscCodec(cname="zstd", clevel=clevel, shuffle="noshuffle", typesize=1)


def ngff_attributes(
    name: str, levels: int, mpp: tuple[float, float] | None, ngff_version: str
) -> dict[str, Any]:
    """NGFF group attributes for ``levels`` arrays ``0..levels-1`` of axes ``c, y, x``, each level half
    the size of the previous; physical scale in micrometers when ``mpp (x, y)`` is known."""
    space: dict[str, Any] = {"type": "space"}
    if mpp is not None:
        space["unit"] = "micrometer"
    axes = [{"name": "c", "type": "channel"}, {"name": "y", **space}, {"name": "x", **space}]
    px, py = mpp if mpp is not None else (1.0, 1.0)
    datasets = [
        {
            "path": str(i),
            "coordinateTransformations": [{"type": "scale", "scale": [1.0, py * 2**i, px * 2**i]}],
        }
        for i in range(levels)
    ]
    multiscale: dict[str, Any] = {
        "name": name,
        "axes": axes,
        "datasets": datasets,
        "type": "mean",
        "metadata": {"description": "2x2 area mean of the previous level, rounded half up"},
    }
    omero = {
        "name": name,
        "rdefs": {"model": "color"},
        "channels": [
            {
                "label": label,
                "color": color,
                "active": True,
                "window": {"start": 0, "end": 255, "min": 0, "max": 255},
            }
            for label, color in (("R", "FF0000"), ("G", "00FF00"), ("B", "0000FF"))
        ],
    }
    if ngff_version == "0.4":
        return {
            "multiscales": [{"version": "0.4", **multiscale}],
            "omero": {"version": "0.4", **omero},
        }
    return {"ome": {"version": "0.5", "multiscales": [multiscale], "omero": omero}}
