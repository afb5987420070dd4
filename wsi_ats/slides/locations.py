"""Where a slide lives: the one rule for what is a remote URL and what is a local path.

``http``, ``https``, ``s3`` and ``gs`` URLs are remote (read through fsspec); ``file://`` is a local
path; a path with any other ``scheme://`` prefix is refused with a message naming it.
"""

from __future__ import annotations

import re

REMOTE_SCHEMES = ("http", "https", "s3", "gs")
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")


def url_scheme(path: str) -> str | None:
    """The lower-case scheme of ``scheme://...``, or None for a plain path."""
    match = _SCHEME.match(path)
    return match.group(1).lower() if match else None


def is_url(path: str) -> bool:
    """True for a remote URL (``http``, ``https``, ``s3``, ``gs``)."""
    return url_scheme(path) in REMOTE_SCHEMES


def local_path(path: str) -> str:
    """``path`` without a ``file://`` prefix (``file:///data/a.svs`` -> ``/data/a.svs``)."""
    return path[len("file://") :] if url_scheme(path) == "file" else path


def location_problem(path: str) -> str | None:
    """Why ``path`` names no place a slide can be read from (an unsupported scheme), or None."""
    scheme = url_scheme(path)
    if scheme is None or scheme == "file" or scheme in REMOTE_SCHEMES:
        return None
    return (
        f"unsupported URL scheme {scheme}:// in {path!r}: only "
        f"{', '.join(s + '://' for s in REMOTE_SCHEMES)} are remote, file:// is a local path"
    )
