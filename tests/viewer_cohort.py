"""A small predicted cohort for the viewer tests: synthetic slides and one corrupt slide, through
the writer ``wsi-ats predict`` uses (without a Dask cluster, for speed)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from tiny_cohort import CONFIG, write_manifest

from wsi_ats.cohort.manifest import load_manifest
from wsi_ats.inference import predict_slide, write_slide_outputs
from wsi_ats.models import build_model, save_checkpoint
from wsi_ats.pipeline.cohort import with_manifest_columns
from wsi_ats.pipeline.state import collect_predictions, write_error, write_predictions_csv
from wsi_ats.synth.slide import write_synthetic_slide
from wsi_ats.viewer import ViewerServer, make_server

SIZE = 3072  # level-0 side: zooms 0..4 of 256 px tiles
#: the tiny test model with 96 px tiles (outlines visible at the slide's scale) and a stain prior
#: (attention on dark structures, as a trained model's would be, rather than uniform)
VIEW_CONFIG = CONFIG.replace(
    slide={"lowres_size": 96, "patch_size": 96},
    attention={"width": 4, "depth": 2, "map_stride": 2, "prior": 12.0},
)


def predicted_cohort(root: Path, n: int = 3) -> Path:
    """A ``predict`` output folder (untrained tiny model, 2 draws of 8 tiles) of ``n`` synthetic
    slides (alternating labels) and a corrupt file (an error row); returns it."""
    cohort = root / "cohort"
    cohort.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        write_synthetic_slide(cohort / f"slide_{i}.tiff", SIZE, seed=i, label=i % 2)
        rows.append({"slide_id": f"slide_{i}", "path": f"slide_{i}.tiff", "label": i % 2})
    (cohort / "broken.tiff").write_bytes(b"not a tiff")
    rows.append({"slide_id": "broken", "path": "broken.tiff", "label": 1})
    splits = ["test", "val"]
    for i, r in enumerate(rows):
        r["split"] = splits[i % 2]
    manifest_path = write_manifest(
        cohort / "manifest.csv", rows, ["slide_id", "path", "label", "split"]
    )
    manifest = load_manifest(manifest_path)
    model = build_model(VIEW_CONFIG, seed=0)
    save_checkpoint(root / "model.pt", model, epoch=0)
    out = root / "out"
    for entry in manifest:
        if entry.slide_id == "broken":
            write_error(out, entry.slide_id, "SlideOpenError: broken.tiff: not a slide")
            continue
        pred, view = predict_slide(entry.path, model, slide_id=entry.slide_id, return_view=True)
        write_slide_outputs(pred, view, out, heatmap=False)
    df = with_manifest_columns(collect_predictions(out, manifest.slide_ids), manifest)
    write_predictions_csv(df, out)
    return out


@contextmanager
def running_server(out: Path) -> Iterator[ViewerServer]:
    """``wsi-ats view``'s server over ``out`` on a free loopback port, in a background thread."""
    srv = make_server(out)
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    try:
        yield srv
    finally:
        srv.shutdown()
        srv.server_close()
