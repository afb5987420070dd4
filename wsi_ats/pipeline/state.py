"""What a cohort output folder says about each slide, and the atomic writes that keep it truthful.

Layout under ``OUT``: ``slides/<safe id>/prediction.json`` (written last by the output writer: its
presence marks the slide *finished*), ``slides/<safe id>/error.json`` (the last failure; an errored slide
is not finished, so a restart computes it again), ``predictions.csv`` (rebuilt from those files at the
end of a run) and ``pipeline-log.jsonl`` (one line per slide computed by a run, for audit).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pandas as pd

from wsi_ats.atomic import atomic_write_bytes, atomic_write_json
from wsi_ats.cohort.paths import PREDICTION_FILE, PREDICTIONS_CSV, slide_dir

ERROR_FILE = "error.json"
LOG_FILE = "pipeline-log.jsonl"
COLUMNS = [
    "slide_id", "probability", "prediction", "std", "n_patches", "status", "error", "warnings",
    "ci_low", "ci_high", "n_draws",
]  # fmt: skip
#: columns copied from the manifest after :data:`COLUMNS`, when the manifest has them
MANIFEST_COLUMNS = ["label", "split"]


def is_finished(out: str | Path, slide_id: str) -> bool:
    """True iff the slide's ``prediction.json`` exists."""
    return (slide_dir(out, slide_id) / PREDICTION_FILE).is_file()


def write_error(
    out: str | Path, slide_id: str, error: str, *, stage: str | None = None, path: str | None = None
) -> Path:
    """Record a failure of ``slide_id`` as ``error.json`` in its folder (atomic)."""
    record = {"slide_id": slide_id, "status": "error", "error": error, "stage": stage, "path": path}
    record["time"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    return atomic_write_json(slide_dir(out, slide_id) / ERROR_FILE, record)


def clear_error(out: str | Path, slide_id: str) -> None:
    """Remove a stale ``error.json`` once the slide has succeeded."""
    (slide_dir(out, slide_id) / ERROR_FILE).unlink(missing_ok=True)


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        return None
    except (OSError, json.JSONDecodeError) as exc:
        return {"status": "error", "error": f"{type(exc).__name__}: unreadable {path}: {exc}"}
    return data if isinstance(data, dict) else None


def _number(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def slide_row(out: str | Path, slide_id: str) -> dict[str, Any]:
    """The ``predictions.csv`` row of one slide, read from its folder.

    ``status`` is ``ok`` (prediction.json), ``error`` (error.json) or ``pending`` (neither yet).
    """
    folder = slide_dir(out, slide_id)
    row: dict[str, Any] = dict.fromkeys(COLUMNS, math.nan)
    row.update(slide_id=slide_id, error="", warnings="")
    pred = _read_json(folder / PREDICTION_FILE)
    if pred is not None and pred.get("status", "ok") == "ok":
        row.update(
            probability=_number(pred.get("probability")),
            prediction=pred.get("prediction"),
            std=_number(pred.get("std")),
            n_patches=pred.get("n_patches"),
            status="ok",
            warnings=str(pred.get("warnings") or ""),
            ci_low=_number(pred.get("ci_low")),
            ci_high=_number(pred.get("ci_high")),
            n_draws=pred.get("n_draws"),
        )
        return row
    err = pred if pred is not None else _read_json(folder / ERROR_FILE)
    if err is not None:
        row.update(status="error", error=str(err.get("error", "unknown error")))
    else:
        row.update(status="pending", error="not computed yet")
    return row


def collect_predictions(out: str | Path, slide_ids: Iterable[str]) -> pd.DataFrame:
    """The cohort table (columns :data:`COLUMNS`, manifest order) rebuilt from per-slide files."""
    df = pd.DataFrame([slide_row(out, s) for s in slide_ids], columns=COLUMNS)
    df["prediction"] = df["prediction"].astype("Int64")
    df["n_patches"] = df["n_patches"].astype("Int64")
    df["n_draws"] = df["n_draws"].astype("Int64")
    return df


def write_predictions_csv(df: pd.DataFrame, out: str | Path) -> Path:
    """Write ``df`` as ``out/predictions.csv`` atomically."""
    return atomic_write_bytes(Path(out) / PREDICTIONS_CSV, df.to_csv(index=False).encode())


def append_log(out: str | Path, record: dict[str, Any]) -> None:
    """Append one JSON line to ``out/pipeline-log.jsonl`` (which slides a run computed, and how)."""
    path = Path(out) / LOG_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")


def read_log(out: str | Path) -> list[dict[str, Any]]:
    """The records of ``pipeline-log.jsonl``; a torn last line (killed run) is skipped."""
    path = Path(out) / LOG_FILE
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records
