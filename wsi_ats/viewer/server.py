"""The viewer's HTTP server (stdlib ``ThreadingHTTPServer``): pages, JSON, tiles and overlays.

Routes (``<name>`` is a slide's folder name under ``OUT/slides``, looked up in the
:class:`~wsi_ats.viewer.index.OutputIndex`; a name it does not hold is a 404, so no URL reaches a
file the output folder does not name, whatever ``..``, ``%2e%2e`` or absolute path it holds):

- ``/`` the cohort page, ``/slide/<name>`` a slide's page, ``/static/<file>`` the pages' own CSS
  and JS (a fixed list of package files);
- ``/api/predictions`` the predictions table, ``/api/slide/<name>`` what the slide page shows;
- ``/tiles/<name>/<z>/<col>_<row>.jpg`` (or ``.png``, lossless) a tile of the pyramid of
  :mod:`wsi_ats.viewer.tiles`; an address outside the slide is a 404;
- ``/overlay/<name>/attention.png`` and ``/overlay/<name>/tissue.png`` the overlays, one pixel per
  attention cell or low-res pixel;
- ``/sampled/<name>/<i>.png`` sampled tile ``i`` (row ``i`` of ``coords.csv``) at level 0.

Slides are opened through a :class:`~wsi_ats.slides.SlideCache` (at most 8 open). When bound to a
loopback address, requests whose ``Host`` is not that loopback address are refused (a web page
elsewhere cannot reach the viewer through DNS rebinding).
"""

from __future__ import annotations

import ipaddress
import json
import math
import re
import socket
import sys
import threading
import traceback
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import numpy as np
from PIL import Image

from wsi_ats.slides import Slide, SlideCache, SlideError

from . import pages
from .index import OutputIndex, SlideEntry, attention_map, fresh
from .tiles import (
    FORMATS,
    TileGrid,
    TileOutOfRange,
    attention_rgba,
    encode,
    read_tile,
    tissue_rgba,
)

STATIC_FILES = {
    "viewer.css": "text/css; charset=utf-8",
    "cohort.js": "text/javascript; charset=utf-8",
    "slide.js": "text/javascript; charset=utf-8",
}
_TILE_NAME = re.compile(r"^(\d{1,6})_(\d{1,6})\.(jpg|png)$")
_SAMPLED_NAME = re.compile(r"^(\d{1,9})\.png$")
_CSP = "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; object-src 'none'"


class HttpError(Exception):
    """An answer other than 200: ``status`` and a message for the page or JSON body."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class ViewerServer(ThreadingHTTPServer):
    """A threading HTTP server over one ``predict`` output folder (see the module docstring)."""

    daemon_threads = True

    def __init__(
        self, index: OutputIndex, host: str = "127.0.0.1", port: int = 0, quiet: bool = True
    ) -> None:
        self._index = index
        self.slides = SlideCache(max_open=8)
        self.quiet = quiet
        self._grids: dict[str, TileGrid] = {}
        self._grids_stamp = index.stamp
        self._lock = threading.Lock()
        if ":" in host:  # an IPv6 address
            self.address_family = socket.AF_INET6
        super().__init__((host, port), ViewerHandler)
        self.loopback = _is_loopback(host)

    @property
    def index(self) -> OutputIndex:
        """The folder's index, read again when ``predictions.csv`` changed (a ``predict`` run
        finished while the viewer was up)."""
        with self._lock:
            self._index = fresh(self._index)
            if self._index.stamp != self._grids_stamp:  # slides may have been recomputed
                self._grids.clear()
                self._grids_stamp = self._index.stamp
            return self._index

    @property
    def url(self) -> str:
        """``http://HOST:PORT/`` of the cohort page (IPv6 hosts in brackets)."""
        host, port = self.server_address[:2]
        host = f"[{host}]" if ":" in str(host) else host
        return f"http://{host}:{port}/"

    def grid(self, entry: SlideEntry) -> TileGrid:
        """The tile grid of ``entry``'s slide (its size read once)."""
        with self._lock:
            grid = self._grids.get(entry.name)
        if grid is None:
            with self.slides.lease(entry.path) as slide:
                grid = TileGrid(*slide.dimensions)
            with self._lock:
                self._grids[entry.name] = grid
        return grid

    def server_close(self) -> None:
        super().server_close()
        self.slides.close()


def make_server(
    out: str | Path,
    host: str = "127.0.0.1",
    port: int = 0,
    manifest: str | Path | None = None,
    quiet: bool = True,
) -> ViewerServer:
    """A :class:`ViewerServer` over the ``predict`` output folder ``out``, bound but not serving
    yet (call ``serve_forever``); ``port`` 0 picks a free one (see ``.url``). Raises
    :class:`~wsi_ats.viewer.index.ViewerError` when ``out`` is not a predict output."""
    return ViewerServer(OutputIndex(out, manifest), host, port, quiet)


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


class ViewerHandler(BaseHTTPRequestHandler):
    """Routes one request (see the module docstring)."""

    server: ViewerServer
    protocol_version = "HTTP/1.1"  # keep-alive: a page's tiles reuse a few connections
    disable_nagle_algorithm = True  # headers then body: without it, 40 ms of delayed ACK each
    server_version = "wsi-ats-view"

    def log_message(self, format: str, *args: Any) -> None:
        if not self.server.quiet:
            super().log_message(format, *args)

    def do_HEAD(self) -> None:
        self._answer(head=True)

    def do_GET(self) -> None:
        self._answer(head=False)

    # ------------------------------------------------------------------------------------------
    def _answer(self, head: bool) -> None:
        try:
            self._check_host()
            status, ctype, body, cache = self._route()
        except Exception as exc:  # the server's boundary: every request gets an answer
            if not isinstance(exc, HttpError):
                traceback.print_exc(file=sys.stderr)
                exc = HttpError(HTTPStatus.INTERNAL_SERVER_ERROR, f"{type(exc).__name__}: {exc}")
            status, cache = exc.status, "no-store"
            if self.path.startswith("/api/"):
                ctype = "application/json"
                body = json.dumps({"error": exc.message, "status": exc.status}).encode()
            else:
                ctype = "text/html; charset=utf-8"
                body = pages.error_page(exc.status, exc.message).encode()
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", cache)
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Content-Security-Policy", _CSP)
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def _check_host(self) -> None:
        if not self.server.loopback:
            return
        host = (self.headers.get("Host") or "").rsplit(":", 1)[0].strip("[]")
        if host not in ("localhost", "127.0.0.1", "::1", str(self.server.server_address[0])):
            raise HttpError(HTTPStatus.FORBIDDEN, f"host {host!r} is not served")

    def _route(self) -> tuple[int, str, bytes, str]:
        raw = urlsplit(self.path)
        if "//" in raw.path or "\\" in raw.path:
            raise HttpError(HTTPStatus.NOT_FOUND, "no such page")
        parts = [unquote(p) for p in raw.path.split("/")[1:]]
        if any(p in (".", "..") or "/" in p or "\\" in p for p in parts):
            raise HttpError(HTTPStatus.NOT_FOUND, "no such page")
        html, js = "text/html; charset=utf-8", "application/json"
        match parts:
            case [""]:
                return 200, html, pages.cohort_page(self.server.index).encode(), "no-cache"
            case ["favicon.ico"]:
                return 204, "image/x-icon", b"", "max-age=86400"
            case ["static", name] if name in STATIC_FILES:
                data = resources.files("wsi_ats.viewer").joinpath("static", name).read_bytes()
                return 200, STATIC_FILES[name], data, "no-cache"
            case ["slide", name]:
                entry = self._viewable(name)
                return 200, html, pages.slide_page(entry).encode(), "no-cache"
            case ["api", "predictions"]:
                index = self.server.index
                payload = {
                    "out": str(index.out),
                    "columns": index.columns,
                    "has_label": index.has_label,
                    "rows": index.rows(),
                }
                return 200, js, _json(payload), "no-cache"
            case ["api", "slide", name]:
                entry = self._viewable(name)
                with self._slide(entry) as slide:
                    info = pages.slide_info(entry, slide)
                return 200, js, _json(info), "no-cache"
            case ["tiles", name, z, tile]:
                return self._tile(self._viewable(name), z, tile)
            case ["overlay", name, "attention.png"]:
                pixels = attention_rgba(attention_map(self._viewable(name)))
                return 200, "image/png", encode(pixels, "png"), "no-cache"
            case ["overlay", name, "tissue.png"]:
                entry = self._viewable(name)
                path = entry.folder / "tissue.png"
                if not path.is_file():
                    raise HttpError(HTTPStatus.NOT_FOUND, f"{entry.slide_id}: no tissue mask")
                mask = np.asarray(Image.open(path).convert("L"))
                return 200, "image/png", encode(tissue_rgba(mask), "png"), "no-cache"
            case ["sampled", name, file]:
                return self._sampled(self._viewable(name), file)
        raise HttpError(HTTPStatus.NOT_FOUND, "no such page")

    def _viewable(self, name: str) -> SlideEntry:
        entry = self.server.index.get(name)
        if entry is None:
            raise HttpError(HTTPStatus.NOT_FOUND, "no slide of this output folder has that name")
        if not entry.viewable:
            raise HttpError(HTTPStatus.CONFLICT, f"slide {entry.slide_id!r}: {entry.problem}")
        return entry

    def _slide(self, entry: SlideEntry) -> AbstractContextManager[Slide]:
        assert entry.path is not None
        return _leased(self.server.slides, entry.path)

    def _tile(self, entry: SlideEntry, z: str, tile: str) -> tuple[int, str, bytes, str]:
        m = _TILE_NAME.match(tile)
        if not (m and z.isdigit() and len(z) <= 3):
            raise HttpError(HTTPStatus.NOT_FOUND, "a tile is /tiles/<slide>/<z>/<col>_<row>.jpg")
        col, row, fmt = int(m[1]), int(m[2]), m[3]
        grid = self._grid(entry)
        try:
            grid.box(int(z), col, row)
        except TileOutOfRange as exc:
            raise HttpError(HTTPStatus.NOT_FOUND, f"{entry.slide_id}: {exc}") from None
        with self._slide(entry) as slide:
            pixels = read_tile(slide, grid, int(z), col, row)
        return 200, FORMATS[fmt][1], encode(pixels, fmt), "max-age=600"

    def _sampled(self, entry: SlideEntry, file: str) -> tuple[int, str, bytes, str]:
        m = _SAMPLED_NAME.match(file)
        if not m or int(m[1]) >= len(entry.coords):
            raise HttpError(HTTPStatus.NOT_FOUND, f"{entry.slide_id}: no such sampled tile")
        c = entry.coords[int(m[1])]
        with self._slide(entry) as slide:
            pixels = slide.read_region((c["x"], c["y"]), 0, (c["w"], c["h"]))
        return 200, "image/png", encode(pixels, "png"), "max-age=600"

    def _grid(self, entry: SlideEntry) -> TileGrid:
        try:
            return self.server.grid(entry)
        except SlideError as exc:
            raise HttpError(HTTPStatus.BAD_GATEWAY, str(exc)) from None


@contextmanager
def _leased(cache: SlideCache, path: str) -> Iterator[Slide]:
    """The open slide at ``path`` from ``cache``; a :class:`SlideError` becomes a 502."""
    try:
        with cache.lease(path) as slide:
            yield slide
    except SlideError as exc:
        raise HttpError(HTTPStatus.BAD_GATEWAY, str(exc)) from None


def _json(payload: Any) -> bytes:
    """``payload`` as JSON bytes, NaN and infinities as ``null`` (which browsers parse)."""
    return json.dumps(_finite(payload), allow_nan=False).encode()


def _finite(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def serve(server: ViewerServer) -> None:
    """Serve until interrupted (Ctrl-C), then close the server and its slides."""
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        print("wsi-ats view: stopped", file=sys.stderr)
    finally:
        server.server_close()
