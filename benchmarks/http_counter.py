"""A local static HTTP server that counts the requests it answers and the bytes it sends.

``CountingHTTPServer(root)`` serves the files under ``root`` on 127.0.0.1 (HTTP/1.1, keep-alive), with
``Range`` requests (``bytes=a-b``, ``bytes=a-``, ``bytes=-n``; one range per request, answered 206), as
sharded zarr needs. ``bytes_sent`` is every byte written to the sockets (status lines, headers and
bodies), ``body_bytes`` the bodies alone, ``requests`` the requests answered; ``reset()`` zeroes them.
``delay_s`` (default 0) is waited before each answer: a stand-in for a remote store's round trip.
Used by ``benchmarks/io.py`` and the tests.

    with CountingHTTPServer(folder) as server:
        url = f"{server.url}/slide.zarr"
"""

from __future__ import annotations

import http.server
import os
import re
import threading
import time
import urllib.parse
from pathlib import Path
from typing import Any, BinaryIO

_RANGE = re.compile(r"^bytes=(\d*)-(\d*)$")


class _CountingWriter:
    """A write-through wrapper of a socket file that adds what it writes to the server's count."""

    def __init__(self, raw: BinaryIO, server: CountingHTTPServer) -> None:
        self._raw, self._server = raw, server

    def write(self, data: bytes) -> int:
        self._server._add(bytes_sent=len(data))  # before the client can have it and read counts
        return self._raw.write(data)

    def flush(self) -> None:
        self._raw.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._raw, name)


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: CountingHTTPServer

    def setup(self) -> None:
        super().setup()
        self.wfile = _CountingWriter(self.wfile, self.server)  # type: ignore[assignment]

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet
        pass

    def do_HEAD(self) -> None:  # noqa: N802 - http.server's naming
        self._answer(body=False)

    def do_GET(self) -> None:  # noqa: N802
        self._answer(body=True)

    def _answer(self, body: bool) -> None:
        self.server._add(requests=1)
        if self.server.delay_s > 0:
            time.sleep(self.server.delay_s)
        path = self._file()
        if path is None:
            self.send_error(404, "not found")
            return
        data = path.read_bytes()
        size = len(data)
        status, start, end = 200, 0, size
        header = self.headers.get("Range")
        if header is not None:
            m = _RANGE.match(header.strip())
            if m is None or m.group(1) == m.group(2) == "":
                self.send_error(416, "unsupported range")
                return
            a, b = m.group(1), m.group(2)
            if a == "":  # suffix: the last b bytes
                start, end = max(0, size - int(b)), size
            else:
                start, end = int(a), size if b == "" else min(size, int(b) + 1)
            if start >= size or start >= end:
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{size}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            status = 206
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Content-Length", str(end - start))
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end - 1}/{size}")
        self.end_headers()
        if body:
            self.server._add(body_bytes=end - start)  # counted before it is sent (see write)
            self.wfile.write(data[start:end])

    def _file(self) -> Path | None:
        rel = urllib.parse.unquote(urllib.parse.urlsplit(self.path).path).lstrip("/")
        path = (self.server.root / rel).resolve()
        if not path.is_relative_to(self.server.root) or not path.is_file():
            return None
        return path


class CountingHTTPServer(http.server.ThreadingHTTPServer):
    """Serves ``root`` on ``127.0.0.1:port`` (0: any free port) from a daemon thread once started
    (``start()`` or ``with``); counts requests, body bytes and all bytes sent."""

    daemon_threads = True
    request_queue_size = 256  # listen backlog: socketserver's 5 drops concurrent connects (1 s
    # SYN retries), which a client opening tens of keep-alive connections at once runs into

    def __init__(self, root: str | os.PathLike[str], port: int = 0) -> None:
        super().__init__(("127.0.0.1", port), _Handler)
        self.root = Path(root).resolve()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self.requests = self.body_bytes = self.bytes_sent = 0
        self.delay_s = 0.0

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT`` (no trailing slash)."""
        return f"http://127.0.0.1:{self.server_address[1]}"

    def _add(self, requests: int = 0, body_bytes: int = 0, bytes_sent: int = 0) -> None:
        with self._lock:
            self.requests += requests
            self.body_bytes += body_bytes
            self.bytes_sent += bytes_sent

    def reset(self) -> None:
        """Zero the counters."""
        with self._lock:
            self.requests = self.body_bytes = self.bytes_sent = 0

    def counts(self) -> tuple[int, int, int]:
        """``(requests, body_bytes, bytes_sent)`` so far."""
        with self._lock:
            return self.requests, self.body_bytes, self.bytes_sent

    def start(self) -> CountingHTTPServer:
        """Serve from a daemon thread; returns self."""
        self._thread = threading.Thread(target=self.serve_forever, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the socket."""
        if self._thread is not None:
            self.shutdown()
            self._thread.join()
            self._thread = None
        self.server_close()

    def __enter__(self) -> CountingHTTPServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
