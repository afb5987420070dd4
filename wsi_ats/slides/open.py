"""``open_slide``: pick the backend for a path or URL."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .base import Slide
from .errors import SlideOpenError
from .locations import is_url, local_path, location_problem

ZARR_MARKERS = (".zattrs", ".zgroup", "zarr.json")


def is_zarr_dir(path: Path) -> bool:
    """True when the folder holds zarr v2 or v3 group metadata."""
    return any((path / m).is_file() for m in ZARR_MARKERS)


def open_slide(
    path_or_url: str | os.PathLike[str], storage_options: dict[str, Any] | None = None
) -> Slide:
    """Open an OME-Zarr (local folder, ``.zarr``, or fsspec URL) or any slide OpenSlide reads.

    ``storage_options`` go to fsspec for URLs. Raises ``SlideOpenError`` naming the path and the cause.
    """
    from .openslide_backend import OpenSlideSlide
    from .zarr_backend import OmeZarrSlide

    text = os.fspath(path_or_url)
    problem = location_problem(text)
    if problem is not None:
        raise SlideOpenError(text, problem)
    if is_url(text):
        return OmeZarrSlide(text, storage_options)
    path = Path(local_path(text))
    if not path.exists():
        raise SlideOpenError(text, "no such file or folder")
    if path.is_dir():
        if is_zarr_dir(path):
            return OmeZarrSlide(path)
        raise SlideOpenError(
            text, f"folder is not a slide: no zarr metadata ({', '.join(ZARR_MARKERS)})"
        )
    return OpenSlideSlide(path)
