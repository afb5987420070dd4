"""OME-Zarr backend: NGFF multiscales v0.4 (zarr v2) and v0.5 (zarr v3), local or over fsspec.

``read_regions`` works out the chunks that cover the requested tiles, fetches each of them once per call
(concurrently, in a per-slide thread pool) and assembles the tiles from them; nothing else is read.
On a sharded (zarr v3) array the chunks are the inner chunks, all of a call read by one
:class:`~wsi_ats.slides.shards.ShardedChunkReader` batch (cached shard indexes, one byte range per run
of neighbouring chunks); a sharded layout it does not decode is read through zarr, a rectangle of
chunks per call inside one shard (zarr then reads that shard's index once for them).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import zarr

from .base import WHITE, PooledSlide, _as_locations, _as_size, _check_level, level_origin
from .errors import SlideOpenError, SlideReadError, describe
from .locations import is_url, local_path

try:  # the reader uses zarr internals (zarr.core.sync); a zarr that moved them reads shards itself
    from .shards import ShardedChunkReader
except ImportError:  # pragma: no cover - depends on the installed zarr
    ShardedChunkReader = None  # type: ignore[assignment,misc]

CHUNK_BUDGET_BYTES = 256 * 2**20  # decoded chunks held at once by one read_regions call
HTTP_TIMEOUT_S = 60.0
_UNITS_TO_UM = {"micrometer": 1.0, "nanometer": 1e-3, "millimeter": 1e3, "meter": 1e6}
_Key = tuple[int, int]
_Rect = tuple[int, int, int, int]  # chunk rows r0..r1-1, columns c0..c1-1


class OmeZarrSlide(PooledSlide):
    """An OME-Zarr image (NGFF ``multiscales``) read as a slide.

    Supported axes: ``y, x`` plus an optional channel axis (1, 3 or 4 channels; ``cyx``, ``yxc``) and
    optional ``t``/``z`` axes of which index 0 is read. ``uint8`` or ``uint16`` pixels; ``uint16`` is
    mapped to 0-255 through each channel's ``omero`` display window (``start``-``end``) when the
    metadata has one, else by its top 8 bits.
    """

    def __init__(
        self,
        path_or_url: str | os.PathLike[str],
        storage_options: dict[str, Any] | None = None,
        merged_shard_reads: bool = True,
        shard_merge_gap: int | None = None,
    ) -> None:
        """``merged_shard_reads=False`` reads sharded levels through zarr alone (for comparison).
        ``shard_merge_gap``: bytes between two inner chunks of a shard that one range request may
        span to fetch both (None: ``MERGE_GAP_BYTES``, 64 KiB; larger gaps send fewer requests
        and more bytes, 0 only the chunks' own bytes; see BENCHMARKS.md)."""
        self.path = str(path_or_url)
        group = _open_group(self.path, storage_options)
        attrs, group = _image_attrs(self.path, group)
        ms = attrs["multiscales"][0]
        self._axes = _axis_names(self.path, ms)
        self._arrays = _datasets(self.path, group, ms, len(self._axes))
        self._iy, self._ix = self._axes.index("y"), self._axes.index("x")
        self._ic = next((i for i, a in enumerate(self._axes) if a in ("c", "channel")), None)
        self._convert = _pixel_converter(
            self.path, self._arrays[0], self._ic, _omero_windows(attrs)
        )
        self._dims = tuple((int(a.shape[self._ix]), int(a.shape[self._iy])) for a in self._arrays)
        scales = _yx_scales(ms, self._iy, self._ix, len(self._arrays))
        self._ds_xy = _downsamples(self._dims, scales)
        self._mpp = _mpp_from(ms, self._iy, self._ix, scales)
        self._shard_readers = [
            self._shard_reader(a, shard_merge_gap) if merged_shard_reads else None
            for a in self._arrays
        ]
        self._init_reads("wsi-ats-zarr")

    @property
    def level_dimensions(self) -> tuple[tuple[int, int], ...]:
        return self._dims

    @property
    def level_downsamples(self) -> tuple[float, ...]:
        return tuple((dx + dy) / 2 for dx, dy in self._ds_xy)

    @property
    def mpp(self) -> tuple[float, float] | None:
        return self._mpp

    @property
    def chunk_size(self) -> tuple[int, int]:
        """``(w, h)`` of a chunk of level 0 in pixels."""
        chunks = self._arrays[0].chunks
        return int(chunks[self._ix]), int(chunks[self._iy])

    def read_region(
        self, location: tuple[int, int], level: int, size: tuple[int, int]
    ) -> np.ndarray:
        return self.read_regions([location], level, size)[0]

    def read_regions(
        self, locations: Sequence[tuple[int, int]] | np.ndarray, level: int, size: tuple[int, int]
    ) -> np.ndarray:
        """``uint8[n, h, w, 3]``; each covering chunk is decoded once per call (within a memory budget
        of ``CHUNK_BUDGET_BYTES``; a call needing more chunks than that is processed in groups)."""
        _check_level(self, level)
        locs = _as_locations(locations)
        w, h = _as_size(size)
        if self._closed:
            raise SlideReadError(self.path, "slide is closed")
        origins = np.array(
            [level_origin((int(x), int(y)), self._ds_xy[level]) for x, y in locs], dtype=np.int64
        ).reshape(-1, 2)
        out = np.full((len(locs), h, w, 3), WHITE, dtype=np.uint8)
        plan = _TilePlan(origins, (w, h), self._dims[level], self._chunk_yx(level))
        budget = max(1, CHUNK_BUDGET_BYTES // self._chunk_bytes(level))
        cache: dict[_Key, np.ndarray] = {}
        groups = plan.groups(budget)
        for gi, group in enumerate(groups):
            needed = set().union(*(plan.chunks[i] for i in group))
            missing = sorted(needed - cache.keys())
            fetched = self._fetch_many(level, missing)
            cache.update(zip(missing, fetched, strict=True))
            for i in group:
                self._assemble(out[i], plan, i, cache)
            later = (
                set().union(*(plan.chunks[i] for i in groups[gi + 1]))
                if gi + 1 < len(groups)
                else set()
            )
            cache = {k: v for k, v in cache.items() if k in later}
        return out

    def _chunk_yx(self, level: int) -> tuple[int, int]:
        chunks = self._arrays[level].chunks
        return int(chunks[self._iy]), int(chunks[self._ix])

    def _chunk_bytes(self, level: int) -> int:
        a = self._arrays[level]
        return int(np.prod(a.chunks)) * a.dtype.itemsize

    def _assemble(
        self, dst: np.ndarray, plan: _TilePlan, i: int, cache: dict[_Key, np.ndarray]
    ) -> None:
        """Copy the parts of tile ``i`` that lie inside the level into ``dst`` (``uint8[h, w, 3]``)."""
        ox, oy = plan.origins[i]
        cy, cx = plan.chunk_yx
        for r, c in plan.chunks[i]:
            block = cache[(r, c)]  # [bh, bw, C] view in native dtype
            y0, x0 = r * cy, c * cx
            ya, yb = max(y0, oy), min(y0 + block.shape[0], oy + dst.shape[0])
            xa, xb = max(x0, ox), min(x0 + block.shape[1], ox + dst.shape[1])
            if ya < yb and xa < xb:
                dst[ya - oy : yb - oy, xa - ox : xb - ox] = self._convert(
                    block[ya - y0 : yb - y0, xa - x0 : xb - x0]
                )

    def _shard_reader(self, arr: zarr.Array, merge_gap: int | None) -> ShardedChunkReader | None:
        """Our reader for a sharded level whose inner chunks hold every channel, else None."""
        if ShardedChunkReader is None:
            return None
        if self._ic is not None and arr.metadata.zarr_format == 3 and arr.shards is not None:
            inner = arr.metadata.codecs[0]
            shape = getattr(inner, "chunk_shape", None)
            if shape is None or int(shape[self._ic]) != int(arr.shape[self._ic]):
                return None
        return ShardedChunkReader.for_array(arr, merge_gap)

    def _fetch_many(self, level: int, keys: list[_Key]) -> list[np.ndarray]:
        reader = self._shard_readers[level]
        if reader is not None:
            return self._read_inner(level, reader, keys)
        shards = self._arrays[level].shards
        if shards is None:
            return list(self._map(lambda k: self._fetch(level, k), keys))
        cy, cx = self._chunk_yx(level)
        per_shard = (int(shards[self._iy]) // cy, int(shards[self._ix]) // cx)
        rects = _shard_rects(keys, per_shard)
        blocks: dict[_Key, np.ndarray] = {}
        fetched = self._map(lambda q: self._fetch_rect(level, q), rects)
        for rect, block in zip(rects, fetched, strict=True):
            r0, _, c0, _ = rect
            for r, c in _rect_keys(rect):  # per-chunk views of the rectangle
                blocks[(r, c)] = block[(r - r0) * cy : (r - r0 + 1) * cy, (c - c0) * cx :][:, :cx]
        return [blocks[k] for k in keys]

    def _read_inner(
        self, level: int, reader: ShardedChunkReader, keys: list[_Key]
    ) -> list[np.ndarray]:
        """Inner chunks ``keys`` of a sharded ``level`` in one reader batch, as ``[bh, bw, C]``
        views cropped to the level (index 0 of any ``t``/``z`` axis)."""
        ndim = len(self._axes)
        coords = []
        for r, c in keys:
            at = [0] * ndim
            at[self._iy], at[self._ix] = r, c
            coords.append(tuple(at))
        try:
            chunks = reader.read(coords)
        except Exception as exc:  # the store, its transport and the codecs raise many types
            raise SlideReadError(
                self.path,
                f"cannot read {len(keys)} inner chunks of level {level} ({describe(exc)})",
            ) from exc
        read = {self._iy, self._ix, self._ic}
        sel = tuple(slice(None) if i in read else 0 for i in range(ndim))
        kept = [a for i, a in enumerate(self._axes) if i in read]
        (lw, lh), (cy, cx) = self._dims[level], self._chunk_yx(level)
        return [
            self._as_yxc(chunk[sel], kept)[: lh - r * cy, : lw - c * cx]
            for (r, c), chunk in zip(keys, chunks, strict=True)
        ]

    def _as_yxc(self, block: np.ndarray, kept: list[str]) -> np.ndarray:
        """``block`` with axes ``kept`` (y, x and the channel axis, if any) as ``[h, w, C]``."""
        if self._ic is None:
            return block[..., None] if kept == ["y", "x"] else block.T[..., None]
        order = [kept.index("y"), kept.index("x"), kept.index(self._axes[self._ic])]
        return block.transpose(order)

    def _fetch(self, level: int, key: _Key) -> np.ndarray:
        """Chunk ``key=(row, col)`` of ``level`` as a ``[bh, bw, C]`` view (C = channels)."""
        r, c = key
        return self._fetch_rect(level, (r, r + 1, c, c + 1))

    def _fetch_rect(self, level: int, rect: _Rect) -> np.ndarray:
        """The chunks of rows ``r0..r1-1`` and columns ``c0..c1-1`` of ``level`` (``rect=(r0, r1, c0,
        c1)``) as one ``[bh, bw, C]`` view (C = channels)."""
        arr = self._arrays[level]
        cy, cx = self._chunk_yx(level)
        r0, r1, c0, c1 = rect
        sel: list[Any] = [0] * arr.ndim
        sel[self._iy] = slice(r0 * cy, r1 * cy)
        sel[self._ix] = slice(c0 * cx, c1 * cx)
        if self._ic is not None:
            sel[self._ic] = slice(None)
        try:
            block = np.asarray(arr[tuple(sel)])
        except Exception as exc:  # zarr, its codecs and fsspec raise many unrelated types
            one = (r1 - r0, c1 - c0) == (1, 1)
            where = f"(row {r0}, col {c0})" if one else f"rows {r0}-{r1 - 1}, cols {c0}-{c1 - 1}"
            raise SlideReadError(
                self.path, f"cannot read chunk {where} of level {level} ({describe(exc)})"
            ) from exc
        return self._as_yxc(
            block, [a for i, a in enumerate(self._axes) if isinstance(sel[i], slice)]
        )


def _rect_keys(rect: _Rect) -> list[_Key]:
    r0, r1, c0, c1 = rect
    return [(r, c) for r in range(r0, r1) for c in range(c0, c1)]


def _shard_rects(keys: Sequence[_Key], per_shard: tuple[int, int]) -> list[_Rect]:
    """Rectangles ``(r0, r1, c0, c1)`` (end-exclusive chunk rows and columns) that cover ``keys``
    exactly, each inside one shard of ``per_shard`` ``(rows, cols)`` chunks: per shard, each 4-connected
    group of keys as one rectangle when it is one, else one rectangle per run of a chunk row."""
    sy, sx = per_shard
    by_shard: dict[_Key, set[_Key]] = {}
    for r, c in keys:
        by_shard.setdefault((r // sy, c // sx), set()).add((r, c))
    rects: list[_Rect] = []
    for shard_keys in by_shard.values():
        left = set(shard_keys)
        while left:
            stack, group = [left.pop()], []
            while stack:  # one 4-connected group
                r, c = stack.pop()
                group.append((r, c))
                for n in ((r - 1, c), (r + 1, c), (r, c - 1), (r, c + 1)):
                    if n in left:
                        left.remove(n)
                        stack.append(n)
            rows, cols = [k[0] for k in group], [k[1] for k in group]
            box = (min(rows), max(rows) + 1, min(cols), max(cols) + 1)
            if (box[1] - box[0]) * (box[3] - box[2]) == len(group):
                rects.append(box)
                continue
            for r in sorted(set(rows)):  # not a rectangle: one per run of consecutive columns
                run = sorted(c for rr, c in group if rr == r)
                start = run[0]
                for a, b in zip(run, [*run[1:], None], strict=True):
                    if b != a + 1:
                        rects.append((r, r + 1, start, a + 1))
                        start = b
    return rects


class _TilePlan:
    """Which chunks (row, col) each tile needs; tiles grouped so that a group's chunks fit a budget."""

    def __init__(
        self,
        origins: np.ndarray,
        size: tuple[int, int],
        level_wh: tuple[int, int],
        chunk_yx: tuple[int, int],
    ) -> None:
        self.origins = origins
        self.chunk_yx = chunk_yx
        w, h = size
        lw, lh = level_wh
        cy, cx = chunk_yx
        self.chunks: list[list[_Key]] = []
        for ox, oy in origins:
            x0, x1 = max(int(ox), 0), min(int(ox) + w, lw)
            y0, y1 = max(int(oy), 0), min(int(oy) + h, lh)
            if x0 >= x1 or y0 >= y1:
                self.chunks.append([])
                continue
            self.chunks.append(
                [
                    (r, c)
                    for r in range(y0 // cy, (y1 - 1) // cy + 1)
                    for c in range(x0 // cx, (x1 - 1) // cx + 1)
                ]
            )

    def groups(self, budget: int) -> list[list[int]]:
        """Tile indices in chunk order, split so that each group needs at most ``budget`` chunks
        (a single tile needing more forms its own group)."""
        order = sorted(range(len(self.chunks)), key=lambda i: min(self.chunks[i], default=(-1, -1)))
        groups: list[list[int]] = []
        current: list[int] = []
        keys: set[_Key] = set()
        for i in order:
            new = keys | set(self.chunks[i])
            if current and len(new) > budget:
                groups.append(current)
                current, new = [], set(self.chunks[i])
            current.append(i)
            keys = new
        if current:
            groups.append(current)
        return groups


def _open_group(path: str, storage_options: dict[str, Any] | None) -> zarr.Group:
    opts = dict(storage_options or {})
    if path.startswith(("http://", "https://")) and "client_kwargs" not in opts:
        import aiohttp

        opts["client_kwargs"] = {"timeout": aiohttp.ClientTimeout(total=HTTP_TIMEOUT_S)}
    try:
        if is_url(path):
            return zarr.open_group(path, mode="r", storage_options=opts)
        return zarr.open_group(local_path(path), mode="r")
    except Exception as exc:  # zarr/fsspec raise many types for missing or broken metadata
        raise SlideOpenError(path, f"not a readable zarr group ({describe(exc)})") from exc


def _image_attrs(path: str, group: zarr.Group) -> tuple[dict[str, Any], zarr.Group]:
    """The NGFF attributes holding ``multiscales`` (v0.5 nests them under ``ome``) and their group."""
    try:
        attrs = dict(group.attrs)
    except Exception as exc:  # broken attribute JSON
        raise SlideOpenError(path, f"unreadable zarr attributes ({describe(exc)})") from exc
    attrs = attrs.get("ome", attrs) if isinstance(attrs.get("ome"), dict) else attrs
    if "multiscales" not in attrs and "bioformats2raw.layout" in attrs:
        try:
            sub = group["0"]
        except KeyError as exc:
            raise SlideOpenError(path, "bioformats2raw layout without image '0'") from exc
        if isinstance(sub, zarr.Group):
            return _image_attrs(path, sub)
    ms = attrs.get("multiscales")
    if not isinstance(ms, list) or not ms or not isinstance(ms[0], dict):
        raise SlideOpenError(path, "zarr group has no NGFF 'multiscales' metadata")
    return attrs, group


def _axis_names(path: str, ms: dict[str, Any]) -> list[str]:
    axes = ms.get("axes")
    if axes is None:  # NGFF <= 0.3: always tczyx
        return ["t", "c", "z", "y", "x"]
    try:
        names = [a["name"] if isinstance(a, dict) else str(a) for a in axes]
    except (KeyError, TypeError) as exc:
        raise SlideOpenError(path, f"malformed multiscales axes {axes!r}") from exc
    names = [n.lower() for n in names]
    if "y" not in names or "x" not in names:
        raise SlideOpenError(path, f"multiscales axes {names} lack 'y' and 'x'")
    return names


def _datasets(path: str, group: zarr.Group, ms: dict[str, Any], ndim: int) -> list[zarr.Array]:
    datasets = ms.get("datasets")
    if not isinstance(datasets, list) or not datasets:
        raise SlideOpenError(path, "multiscales has no datasets")
    arrays = []
    for ds in datasets:
        try:
            arr = group[str(ds["path"])]
        except Exception as exc:  # missing array, broken array metadata
            raise SlideOpenError(
                path, f"cannot open dataset {ds.get('path')!r} ({describe(exc)})"
            ) from exc
        if not isinstance(arr, zarr.Array) or arr.ndim != ndim:
            raise SlideOpenError(path, f"dataset {ds.get('path')!r} is not a {ndim}-d array")
        arrays.append(arr)
    return arrays


def _omero_windows(attrs: dict[str, Any]) -> list[tuple[float, float]] | None:
    """``(start, end)`` of each channel's ``omero`` display window, or None when any is missing or
    empty (``end <= start``)."""
    try:
        windows = [
            (float(ch["window"]["start"]), float(ch["window"]["end"]))
            for ch in attrs["omero"]["channels"]
        ]
    except (KeyError, TypeError, ValueError):
        return None
    return windows if windows and all(end > start for start, end in windows) else None


def _pixel_converter(
    path: str,
    arr: zarr.Array,
    ic: int | None,
    windows: list[tuple[float, float]] | None = None,
) -> Callable[[np.ndarray], np.ndarray]:
    """A function mapping a ``[h, w, C]`` block of the array's dtype to ``uint8[h, w, 3]``;
    ``uint16`` through the channels' display ``windows`` when given (one per channel)."""
    n = 1 if ic is None else int(arr.shape[ic])
    dtype = np.dtype(arr.dtype)
    if dtype == np.uint8:
        scale: Callable[[np.ndarray], np.ndarray] = lambda b: b  # noqa: E731
    elif dtype == np.uint16 and windows is not None and len(windows) == n:
        lo = np.array([w[0] for w in windows], dtype=np.float32)
        gain = 255.0 / (np.array([w[1] for w in windows], dtype=np.float32) - lo)

        def scale(b: np.ndarray) -> np.ndarray:
            return np.clip((b - lo) * gain + 0.5, 0, 255).astype(np.uint8)

    elif dtype == np.uint16:
        scale = lambda b: (b >> 8).astype(np.uint8)  # noqa: E731
    else:
        raise SlideOpenError(path, f"unsupported pixel type {dtype} (uint8 or uint16 expected)")
    if n == 3:
        return scale
    if n == 1:
        return lambda b: np.repeat(scale(b), 3, axis=-1)
    if n == 4:

        def rgba(b: np.ndarray) -> np.ndarray:
            px = scale(b).astype(np.uint16)
            a = px[..., 3:4]
            return ((px[..., :3] * a + 255 * (255 - a) + 127) // 255).astype(np.uint8)

        return rgba
    raise SlideOpenError(path, f"{n} channels (1, 3 or 4 expected)")


def _yx_scales(
    ms: dict[str, Any], iy: int, ix: int, n_levels: int
) -> list[tuple[float, float]] | None:
    """Physical ``(sy, sx)`` pixel size of each level from the ``scale`` transformations, or None."""
    out = []
    for ds in ms.get("datasets", [])[:n_levels]:
        scale = next(
            (
                t.get("scale")
                for t in ds.get("coordinateTransformations", [])
                if t.get("type") == "scale"
            ),
            None,
        )
        if not isinstance(scale, list) or len(scale) <= max(iy, ix):
            return None
        try:
            sy, sx = float(scale[iy]), float(scale[ix])
        except (TypeError, ValueError):
            return None
        if sy <= 0 or sx <= 0:
            return None
        out.append((sy, sx))
    return out


def _downsamples(
    dims: tuple[tuple[int, int], ...], scales: list[tuple[float, float]] | None
) -> tuple[tuple[float, float], ...]:
    """``(dx, dy)`` level-0 pixels per pixel of each level: from the scales, else from the sizes."""
    if scales is not None:
        sy0, sx0 = scales[0]
        return tuple((sx / sx0, sy / sy0) for sy, sx in scales)
    w0, h0 = dims[0]
    return tuple((w0 / w, h0 / h) for w, h in dims)


def _mpp_from(
    ms: dict[str, Any], iy: int, ix: int, scales: list[tuple[float, float]] | None
) -> tuple[float, float] | None:
    axes = ms.get("axes") or []
    if scales is None or len(axes) <= max(iy, ix):
        return None
    units = [a.get("unit") if isinstance(a, dict) else None for a in (axes[iy], axes[ix])]
    if units[0] not in _UNITS_TO_UM or units[1] not in _UNITS_TO_UM:
        return None
    sy, sx = scales[0]
    return (sx * _UNITS_TO_UM[units[1]], sy * _UNITS_TO_UM[units[0]])
