"""``wsi-ats view SLIDE --model M``: predict one slide into a folder that the viewer serves."""

from __future__ import annotations

import os
from pathlib import Path

from wsi_ats.slides.locations import is_url


def slide_id_of(slide: str | os.PathLike[str]) -> str:
    """The id a single slide is shown under: its file or folder name without the extension."""
    text = os.fspath(slide).rstrip("/")
    name = text.rsplit("/", 1)[-1] if is_url(text) else Path(text).name
    stem = name.split("?")[0]
    for ext in (".ome.zarr", ".zarr", ".ome.tiff", ".ome.tif"):
        if stem.lower().endswith(ext):
            return stem[: -len(ext)] or "slide"
    return Path(stem).stem or "slide"


def predict_into(
    slide: str | os.PathLike[str], model: str | os.PathLike[str], out: str | Path
) -> Path:
    """Predict ``slide`` with the checkpoint ``model`` (its ``[predict]`` settings) and write a
    ``predict`` output folder of that one slide into ``out``; returns ``out``. Raises the
    model's :class:`~wsi_ats.models.CheckpointError` or the slide's
    :class:`~wsi_ats.slides.SlideError`."""
    from wsi_ats.inference import predict_slide, write_slide_outputs
    from wsi_ats.models import load_model
    from wsi_ats.pipeline.state import collect_predictions, write_predictions_csv

    out = Path(out)
    net = load_model(model, map_location="cpu").eval()
    slide_id = slide_id_of(slide)
    text = os.fspath(slide)
    path = text if is_url(text) else str(Path(text).expanduser().resolve())
    pred, view = predict_slide(path, net, slide_id=slide_id, return_view=True)
    write_slide_outputs(pred, view, out)
    write_predictions_csv(collect_predictions(out, [slide_id]), out)
    return out
