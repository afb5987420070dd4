"""Inference: per-slide stages, ``predict_slide``, heatmaps and per-slide output files."""

from wsi_ats.inference.heatmap import render_heatmap, save_png
from wsi_ats.inference.outputs import prediction_record, write_slide_outputs
from wsi_ats.inference.predict import predict_slide
from wsi_ats.inference.stages import (
    SlidePrediction,
    SlideSample,
    SlideView,
    aggregate_slide,
    read_slide_tiles,
    sample_slide,
    slide_seed,
    tile_features,
    view_slide,
)

__all__ = [
    "SlidePrediction",
    "SlideSample",
    "SlideView",
    "aggregate_slide",
    "predict_slide",
    "prediction_record",
    "read_slide_tiles",
    "render_heatmap",
    "sample_slide",
    "save_png",
    "slide_seed",
    "tile_features",
    "view_slide",
    "write_slide_outputs",
]
