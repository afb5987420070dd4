"""Ground-truth checks: how many sampled tiles fall on lesion boxes (synthetic cohorts)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def lesion_boxes(ground_truth: str | Path, kinds: tuple[str, ...] = ("malignant",)) -> dict:
    """``{slide_id: float64[k, 4]}`` level-0 boxes ``(x, y, w, h)`` of the spots of ``kinds`` in a
    synthetic cohort's ``ground_truth.json``."""
    data = json.loads(Path(ground_truth).read_text())
    out = {}
    for slide_id, truth in data["slides"].items():
        boxes = [
            (s["x"], s["y"], s["w"], s["h"]) for s in truth.get("spots", []) if s["kind"] in kinds
        ]
        out[slide_id] = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    return out


def tile_hits(locations: np.ndarray, tile_size: tuple[int, int], boxes: np.ndarray) -> np.ndarray:
    """``bool[...]``: whether each tile (level-0 ``(x, y)`` top-left ``[..., 2]``, ``tile_size``
    ``(w, h)``) has its centre inside any box ``(x, y, w, h)``."""
    loc = np.asarray(locations, dtype=np.float64)
    if boxes.size == 0:
        return np.zeros(loc.shape[:-1], dtype=bool)
    cx = loc[..., 0:1] + tile_size[0] / 2
    cy = loc[..., 1:2] + tile_size[1] / 2
    bx, by, bw, bh = (boxes[:, i] for i in range(4))
    inside = (cx >= bx) & (cx < bx + bw) & (cy >= by) & (cy < by + bh)
    return inside.any(axis=-1)
