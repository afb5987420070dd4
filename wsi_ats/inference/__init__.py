"""Inference: ``predict_slide`` (the per-slide stages of :mod:`wsi_ats.stages` chained), heatmaps and
per-slide output files."""

from wsi_ats.inference.heatmap import render_heatmap, save_png
from wsi_ats.inference.outputs import prediction_record, write_slide_outputs
from wsi_ats.inference.predict import predict_slide

__all__ = [
    "predict_slide",
    "prediction_record",
    "render_heatmap",
    "save_png",
    "write_slide_outputs",
]
