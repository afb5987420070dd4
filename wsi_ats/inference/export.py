"""GeoJSON of a ``predict`` output folder: sampled tiles and attention cells, level-0 pixels, QuPath.

Each finished slide ``OUT/slides/<folder>/`` gets ``<folder>.geojson`` (``<folder>`` is the slide's
folder name: its id, or the id made safe, see :func:`wsi_ats.cohort.paths.slide_dir_name`), a
FeatureCollection that QuPath imports (File > Import objects) over the slide:

- one Polygon per sampled tile (``T * N``, a tile drawn twice appears twice), ``objectType``
  ``annotation``, classification ``sampled tile``, properties ``draw``, ``rank`` (order within its
  draw), ``cell`` and ``attention`` (its cell's attention);
- one Polygon per attention cell whose attention is at least ``min_ratio`` times the peak (the
  cells the heatmap colours: 1e-3 by default, three decades), ``objectType`` ``detection``,
  classification ``attention cell``, property and measurement ``attention``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from wsi_ats.atomic import atomic_write_bytes
from wsi_ats.cohort.paths import NOT_AN_OUTPUT_FIX as _FIX
from wsi_ats.cohort.paths import PREDICTION_FILE, read_predictions_table, slide_dir
from wsi_ats.core.offsets import cell_boxes
from wsi_ats.inference.outputs import read_coords, read_slide_prediction

TILE_CLASS = "sampled tile"
CELL_CLASS = "attention cell"


class ExportError(ValueError):
    """A folder that is not (or no longer) a readable ``wsi-ats predict`` output; names the path."""


def box_polygon(x0: float, y0: float, x1: float, y1: float) -> dict[str, Any]:
    """A GeoJSON Polygon of the box: one closed ring, positive signed area (RFC 7946's
    counter-clockwise when y points up; clockwise on screen, where y points down)."""
    ring = [[x0, y0], [x1, y0], [x1, y1], [x0, y1], [x0, y0]]
    return {"type": "Polygon", "coordinates": [ring]}


def cell_polygons(
    cells: np.ndarray,
    map_size: tuple[int, int],
    low_size: tuple[int, int],
    scale: tuple[float, float],
    receptive_field: int = 0,
) -> np.ndarray:
    """Level-0 boxes ``float64[n, 4]`` ``(x0, y0, x1, y1)`` of flattened attention ``cells``.

    The rule of :func:`wsi_ats.core.offsets.cell_boxes` (the one that places the tiles) on the
    view's level-0 extent, ``low_size * scale`` (``low_size`` = (h, w) low-res pixels, ``scale`` =
    (sy, sx) level-0 pixels per low-res pixel), as :func:`wsi_ats.stages.cells_to_locations`.
    """
    extent = (low_size[0] * scale[0], low_size[1] * scale[1])
    idx = torch.as_tensor(np.asarray(cells, dtype=np.int64).reshape(1, -1))
    boxes = cell_boxes(idx, map_size, low_size, extent, receptive_field)[0].numpy()
    return boxes[:, [1, 0, 3, 2]]  # (y0, x0, y1, x1) -> (x0, y0, x1, y1)


def _feature(geometry: dict[str, Any], properties: dict[str, Any]) -> dict[str, Any]:
    return {"type": "Feature", "geometry": geometry, "properties": properties}


def slide_feature_collection(folder: str | Path, min_ratio: float = 1e-3) -> dict[str, Any]:
    """The FeatureCollection of one finished slide folder (see the module docstring)."""
    folder = Path(folder)
    record = _read_record(folder)
    attention = np.load(folder / "attention.npy")
    flat = attention.reshape(-1).astype(np.float64)
    rows = read_coords(folder / "coords.csv")
    if rows and (rows[0]["cell"] is None or "low_size" not in record):
        raise ExportError(
            f"{folder}: written by an older wsi-ats predict (no sampled cells or no low_size); "
            "rerun `wsi-ats predict` into a new folder"
        )
    features = []
    for row in rows:
        x, y, w, h, cell = (row[k] for k in ("x", "y", "w", "h", "cell"))
        features.append(
            _feature(
                box_polygon(x, y, x + w, y + h),
                {
                    "objectType": "annotation",
                    "classification": {"name": TILE_CLASS},
                    "name": f"draw {row['draw']} rank {row['rank']}",
                    "draw": row["draw"],
                    "rank": row["rank"],
                    "cell": cell,
                    "attention": float(flat[cell]),
                },
            )
        )
    peak = float(flat.max()) if flat.size else 0.0
    kept = np.flatnonzero((flat > 0) & (flat >= peak * min_ratio))
    boxes = cell_polygons(
        kept,
        attention.shape,
        tuple(record["low_size"]),
        tuple(record["scale"]),
        int(record.get("receptive_field", 0)),
    )
    for cell, (x0, y0, x1, y1) in zip(kept, boxes.round(3).tolist(), strict=True):
        a = float(flat[cell])
        features.append(
            _feature(
                box_polygon(x0, y0, x1, y1),
                {
                    "objectType": "detection",
                    "classification": {"name": CELL_CLASS},
                    "cell": int(cell),
                    "attention": a,
                    "measurements": {"attention": a},
                },
            )
        )
    return {"type": "FeatureCollection", "features": features}


def _read_record(folder: Path) -> dict[str, Any]:
    try:
        record = read_slide_prediction(folder)
    except (OSError, ValueError) as exc:
        raise ExportError(f"{folder}: unreadable {PREDICTION_FILE} ({exc}); {_FIX}") from exc
    if record is None:
        raise ExportError(f"{folder / PREDICTION_FILE} is missing; {_FIX}")
    return record


def finished_slides(out: str | Path) -> list[tuple[str, Path]]:
    """``(slide_id, folder)`` of the slides of ``out/predictions.csv`` with ``status`` ok;
    :class:`ExportError` when ``out`` is not a ``predict`` output folder."""
    out = Path(out)
    _, rows = read_predictions_table(out, ExportError)
    ids = [r["slide_id"] for r in rows if r["status"] == "ok"]
    slides = [(s, slide_dir(out, s)) for s in ids]
    for slide_id, folder in slides:
        for name in (PREDICTION_FILE, "attention.npy", "coords.csv"):
            if not (folder / name).is_file():
                raise ExportError(f"{folder / name} is missing (slide {slide_id!r}); {_FIX}")
    return slides


def export_geojson(out: str | Path, min_ratio: float = 1e-3) -> list[Path]:
    """Write ``<folder>.geojson`` into every finished slide folder of the ``predict`` output
    ``out`` (atomically); returns the files written. The folder and every slide's files are
    checked to exist before any is written."""
    written = []
    for _, folder in finished_slides(out):
        fc = slide_feature_collection(folder, min_ratio)
        path = folder / f"{folder.name}.geojson"
        atomic_write_bytes(path, json.dumps(fc, separators=(",", ":")).encode())
        written.append(path)
    return written
