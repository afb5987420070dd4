"""Slide ids -> safe folder names inside an output folder.

A slide id comes from a user's manifest and may hold anything: slashes, ``..``, control characters,
unicode, names reserved on Windows. :func:`slide_dir_name` maps it to one path component made of
``[A-Za-z0-9._-]`` only; when that mapping changed the id, a short hash of the original id is appended
so that two ids that sanitise alike (``a/b`` and ``a_b``) never share a folder.
"""

from __future__ import annotations

import csv
import hashlib
import re
import unicodedata
from pathlib import Path

SLIDES_SUBDIR = "slides"
PREDICTIONS_CSV = "predictions.csv"  # the cohort table a ``predict`` run writes in its folder
PREDICTION_FILE = "prediction.json"  # a slide's record, written last: the slide is finished
NOT_AN_OUTPUT_FIX = "give the --out folder of a `wsi-ats predict` run"
MAX_NAME_LENGTH = 96
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")
_WINDOWS_RESERVED = {
    "con", "prn", "aux", "nul",
    *(f"com{i}" for i in range(1, 10)),
    *(f"lpt{i}" for i in range(1, 10)),
}  # fmt: skip


class UnsafePathError(ValueError):
    """A path built from a slide id would leave the output folder."""

    def __init__(self, slide_id: str, path: Path, root: Path) -> None:
        super().__init__(f"slide id {slide_id!r} maps to {path}, outside {root}")
        self.slide_id = slide_id
        self.path = path


def id_hash(slide_id: str, length: int = 8) -> str:
    """A short, stable hex digest of ``slide_id`` (sha1 of its UTF-8 bytes)."""
    return hashlib.sha1(slide_id.encode("utf-8", "surrogatepass")).hexdigest()[:length]


def slide_dir_name(slide_id: str) -> str:
    """One safe path component for ``slide_id``; equal to it when it is already safe.

    Unicode is folded to ASCII where it has an ASCII form (``é`` -> ``e``), other characters become
    ``_``, leading/trailing dots and underscores are dropped (no ``.``, ``..`` or hidden folders), the name is cut to
    ``MAX_NAME_LENGTH`` characters; whenever the result differs from ``slide_id`` a ``-<sha1[:8]>``
    suffix of the original id keeps distinct ids in distinct folders.
    """
    folded = unicodedata.normalize("NFKD", slide_id).encode("ascii", "ignore").decode("ascii")
    name = _UNSAFE.sub("_", folded).strip("._")[:MAX_NAME_LENGTH].rstrip(".")
    reserved = name.split(".")[0].lower() in _WINDOWS_RESERVED
    if name and name == slide_id and not reserved:
        return name
    return f"{name or 'slide'}-{id_hash(slide_id)}"


def slide_dir(out: str | Path, slide_id: str) -> Path:
    """``out/slides/<slide_dir_name(slide_id)>``, checked to lie inside ``out/slides``."""
    root = (Path(out) / SLIDES_SUBDIR).resolve()
    path = root / slide_dir_name(slide_id)
    if path.resolve().parent != root:
        raise UnsafePathError(slide_id, path, root)
    return path


def read_predictions_table(
    out: str | Path, error: type[ValueError] = ValueError
) -> tuple[list[str], list[dict[str, str]]]:
    """``(columns, rows)`` of ``out/predictions.csv`` as text; ``error`` naming the path and the
    fix when ``out`` is not a ``predict`` output folder (no such folder, no table, or a table
    without ``slide_id`` and ``status`` columns)."""
    out = Path(out)
    if not out.is_dir():
        what = "is a file" if out.exists() else "does not exist"
        raise error(f"{out} {what}; {NOT_AN_OUTPUT_FIX}")
    table = out / PREDICTIONS_CSV
    if not table.is_file():
        raise error(
            f"{out} has no {PREDICTIONS_CSV}, so no predict run wrote it; {NOT_AN_OUTPUT_FIX}"
        )
    with table.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        columns = list(reader.fieldnames or ())
        if not {"slide_id", "status"} <= set(columns):
            raise error(f"{table} has no slide_id and status columns; {NOT_AN_OUTPUT_FIX}")
        return columns, list(reader)
