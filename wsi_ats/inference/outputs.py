"""Per-slide output files, written atomically; ``prediction.json`` last marks a slide finished.

Layout under ``out_dir/slides/<safe id>/`` (see :func:`wsi_ats.cohort.paths.slide_dir`):
``attention.npy`` (float32 ``[mh, mw]``), ``coords.csv`` (one row per sampled tile: ``draw, rank, x,
y, w, h`` in level-0 pixels, then ``cell``, its index into the row-major flattened attention map,
and ``attention``, that cell's attention), ``heatmap.png``, ``tissue.png`` (the tissue mask of the low-res view, 8-bit grey, 255 on tissue)
and ``prediction.json`` (with the geometry that maps cells to level 0: ``scale``, ``low_size`` and
``receptive_field``, see :func:`wsi_ats.inference.export.cell_polygons`, and ``slide_path``, the
slide's absolute path or URL as the manifest resolved it, which ``wsi-ats view`` reads it from).
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from wsi_ats.atomic import atomic_write_bytes
from wsi_ats.cohort.paths import PREDICTION_FILE, slide_dir
from wsi_ats.inference.heatmap import heatmap_of, save_png
from wsi_ats.stages import SlidePrediction, SlideView

TISSUE_FILE = "tissue.png"


def prediction_record(prediction: SlidePrediction) -> dict[str, Any]:
    """The JSON-able summary of a prediction (what ``prediction.json`` holds)."""
    return {
        "slide_id": prediction.slide_id,
        "probability": float(prediction.probability),
        "prediction": int(prediction.prediction),
        "std": float(prediction.std),
        "n_patches": int(prediction.n_patches),
        "n_draws": int(prediction.n_draws),
        "ci_low": _finite_or_none(prediction.ci_low),
        "ci_high": _finite_or_none(prediction.ci_high),
        "n_tiles_read": int(prediction.n_tiles_read),
        "draw_probabilities": [float(p) for p in prediction.draw_probabilities],
        "tile_size_level0": [int(v) for v in prediction.tile_size_level0],
        "scale": [float(v) for v in prediction.scale],
        **{k: v for k, v in prediction.extra.items() if isinstance(v, (str, int, float, bool))},
    }


def _finite_or_none(value: float) -> float | None:
    """``value`` as a float, or ``None`` (JSON ``null``) when it is NaN or infinite."""
    v = float(value)
    return v if math.isfinite(v) else None


def coords_csv(prediction: SlidePrediction) -> str:
    """``draw,rank,x,y,w,h,cell,attention`` rows of every sampled tile (``x, y, w, h`` in level-0
    pixels; ``cell`` and ``attention`` empty when the prediction does not carry its cells)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["draw", "rank", "x", "y", "w", "h", "cell", "attention"])
    w, h = prediction.tile_size_level0
    flat = np.asarray(prediction.attention, dtype=np.float32).reshape(-1)
    cells = prediction.cells
    for t, draw in enumerate(np.asarray(prediction.locations)):
        for i, (x, y) in enumerate(draw):
            cell = "" if cells is None else int(cells[t, i])
            att = "" if cells is None else repr(float(flat[cell]))
            writer.writerow([t, i, int(x), int(y), w, h, cell, att])
    return buf.getvalue()


def read_coords(path: Path) -> list[dict[str, Any]]:
    """``coords.csv`` rows with ints (``draw, rank, x, y, w, h, cell``) and ``attention`` (float);
    ``cell``/``attention`` are None in folders that predate them."""
    with path.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    out = []
    for r in rows:
        item: dict[str, Any] = {k: int(r[k]) for k in ("draw", "rank", "x", "y", "w", "h")}
        item["cell"] = int(r["cell"]) if r.get("cell") else None
        item["attention"] = float(r["attention"]) if r.get("attention") else None
        out.append(item)
    return out


def write_slide_outputs(
    prediction: SlidePrediction, view: SlideView, out_dir: str | Path, heatmap: bool = True
) -> Path:
    """Write a slide's outputs under ``out_dir/slides/<sanitised id>/``; returns that folder.

    Every file goes through a temporary file and ``os.replace``; ``prediction.json`` is written last,
    so its presence means the slide is finished.
    """
    folder = slide_dir(out_dir, prediction.slide_id)
    folder.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    np.save(buf, np.asarray(prediction.attention, dtype=np.float32))
    atomic_write_bytes(folder / "attention.npy", buf.getvalue())
    atomic_write_bytes(folder / "coords.csv", coords_csv(prediction).encode())
    if heatmap:
        save_png(heatmap_of(prediction, view), folder / "heatmap.png")
    mask = Image.fromarray(np.asarray(view.mask, dtype=bool).astype(np.uint8) * 255)
    save_png(mask, folder / TISSUE_FILE)
    record = prediction_record(prediction)
    record["low_size"] = [int(v) for v in view.image.shape[:2]]  # (h, w) low-res pixels
    record["slide_path"] = str(view.path)
    text = json.dumps(record, indent=2) + "\n"
    atomic_write_bytes(folder / PREDICTION_FILE, text.encode())
    return folder


def read_slide_prediction(folder: str | Path) -> dict[str, Any] | None:
    """The ``prediction.json`` record of a finished slide folder, or ``None`` when not finished
    (``OSError`` or ``ValueError`` when the file cannot be read or parsed)."""
    path = Path(folder) / PREDICTION_FILE
    if not path.exists():
        return None
    return json.loads(path.read_text())
