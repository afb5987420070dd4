"""What ``wsi-ats view`` serves: the slides a ``predict`` output folder names, and nothing else.

:class:`OutputIndex` reads ``OUT/predictions.csv`` once. Each slide is addressed by its folder name
under ``OUT/slides/`` (:func:`wsi_ats.cohort.paths.slide_dir_name`: ``[A-Za-z0-9._-]`` only), and
the server looks every name a URL holds up in this index: a name it does not hold is unknown, so
no URL can reach a file the folder does not name. The slide file itself is the ``slide_path`` that
``predict`` records in each ``prediction.json``; folders written before it did so are served when
``--manifest`` gives the manifest, and otherwise each such slide says why it cannot be shown.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from wsi_ats.cohort.paths import (
    PREDICTION_FILE,
    PREDICTIONS_CSV,
    read_predictions_table,
    slide_dir,
    slide_dir_name,
)
from wsi_ats.inference.outputs import read_coords, read_slide_prediction

#: predictions.csv columns read as numbers (the others stay text)
FLOAT_COLUMNS = ("probability", "std", "ci_low", "ci_high")
INT_COLUMNS = ("prediction", "n_patches", "n_draws", "label")


class ViewerError(ValueError):
    """A folder that is not a readable ``wsi-ats predict`` output; names the path and the fix."""


@dataclass
class SlideEntry:
    """One row of ``predictions.csv``: its folder, and for finished slides what the page needs."""

    slide_id: str
    name: str  # folder name under OUT/slides, the slide's address in URLs
    folder: Path
    row: dict[str, Any]  # the predictions.csv row, numbers parsed (NaN and empty -> None)
    record: dict[str, Any] | None = None  # prediction.json (None unless status is ok)
    path: str | None = None  # the slide file or URL (None when it cannot be recovered)
    problem: str | None = None  # why the slide page cannot show the slide
    coords: list[dict[str, Any]] = field(default_factory=list)  # coords.csv rows, numbers

    @property
    def viewable(self) -> bool:
        """True when the slide page can show this slide."""
        return self.record is not None and self.path is not None and self.problem is None


class OutputIndex:
    """The slides of the ``predict`` output folder ``out``, by folder name (manifest order).

    ``manifest`` (optional) gives slide paths to folders whose ``prediction.json`` predates
    ``slide_path``. Raises :class:`ViewerError` when ``out`` is not a ``predict`` output.
    """

    def __init__(self, out: str | Path, manifest: str | Path | None = None) -> None:
        self.out = Path(out)
        self.manifest = manifest
        self.stamp = _stamp(self.out / PREDICTIONS_CSV)
        self.columns, rows = read_predictions(self.out)
        fallback = _manifest_paths(manifest) if manifest is not None else {}
        self.entries: dict[str, SlideEntry] = {}
        for row in rows:
            entry = _entry(self.out, row, fallback)
            self.entries[entry.name] = entry

    def get(self, name: str) -> SlideEntry | None:
        """The entry whose folder name is exactly ``name``, or None."""
        return self.entries.get(name)

    def rows(self) -> list[dict[str, Any]]:
        """The predictions table for the cohort page: each row plus ``name`` and ``viewable``."""
        out = []
        for e in self.entries.values():
            out.append({**e.row, "name": e.name, "viewable": e.viewable, "problem": e.problem})
        return out

    @property
    def has_label(self) -> bool:
        """True when ``predictions.csv`` has the manifest's ``label`` column."""
        return "label" in self.columns


def _stamp(path: Path) -> tuple[int, int] | None:
    """``(mtime_ns, size)`` of ``path``, or None when it cannot be read."""
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size


def fresh(index: OutputIndex) -> OutputIndex:
    """``index``, or a new one when ``predictions.csv`` changed since it was read (a ``predict``
    run into the folder finished meanwhile); the old one when the new table cannot be read."""
    if _stamp(index.out / PREDICTIONS_CSV) == index.stamp:
        return index
    try:
        return OutputIndex(index.out, index.manifest)
    except (ViewerError, OSError, ValueError):
        return index


def read_predictions(out: Path) -> tuple[list[str], list[dict[str, Any]]]:
    """``(columns, rows)`` of ``out/predictions.csv``, numbers parsed; :class:`ViewerError` when
    ``out`` is not a ``predict`` output folder."""
    columns, rows = read_predictions_table(out, ViewerError)
    return columns, [{k: _parse(k, v) for k, v in r.items()} for r in rows]


def _parse(column: str, value: str | None) -> Any:
    """A predictions.csv cell as JSON-able: numbers for numeric columns, None for empty/NaN."""
    if value is None or value == "":
        return None
    if column in FLOAT_COLUMNS or column in INT_COLUMNS:
        try:
            number = float(value)
        except ValueError:
            return value
        if not math.isfinite(number):
            return None
        return int(number) if column in INT_COLUMNS else number
    return value


def _manifest_paths(manifest: str | Path) -> dict[str, str]:
    """slide_id -> resolved path of every row of ``manifest``."""
    from wsi_ats.cohort.manifest import load_manifest

    return {e.slide_id: e.path for e in load_manifest(manifest, on_missing="error-row")}


def _entry(out: Path, row: dict[str, Any], fallback: dict[str, str]) -> SlideEntry:
    slide_id = str(row["slide_id"])
    entry = SlideEntry(slide_id, slide_dir_name(slide_id), slide_dir(out, slide_id), row)
    if row.get("status") != "ok":
        entry.problem = f"status {row.get('status')}: no prediction to show"
        return entry
    try:
        entry.record = read_slide_prediction(entry.folder)
        if entry.record is not None:
            entry.coords = read_coords(entry.folder / "coords.csv")
        reason = None if entry.record is not None else f"no {PREDICTION_FILE}"
    except (OSError, ValueError) as exc:
        reason = str(exc)
    if reason is not None:
        entry.problem = f"{entry.folder}: unreadable outputs ({reason}); rerun `wsi-ats predict`"
        return entry
    entry.path = entry.record.get("slide_path") or fallback.get(slide_id)
    if entry.path is None:
        entry.problem = (
            f"{entry.folder / PREDICTION_FILE} does not record the slide's path (written by a "
            "wsi-ats predict from before `view`); pass the run's manifest with --manifest, or "
            "rerun `wsi-ats predict` into a new folder"
        )
    elif "low_size" not in entry.record or (entry.coords and entry.coords[0]["cell"] is None):
        entry.problem = (
            f"{entry.folder}: written by an older wsi-ats predict (no sampled cells or no "
            "low_size); rerun `wsi-ats predict` into a new folder"
        )
    return entry


def attention_map(entry: SlideEntry) -> np.ndarray:
    """float32 ``[mh, mw]``: the slide's saved attention map."""
    return np.load(entry.folder / "attention.npy").astype(np.float32)
