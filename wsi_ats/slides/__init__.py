"""Slide I/O: one small ``Slide`` interface over OpenSlide and OME-Zarr, plus low-res views, tissue
masks, conversion to OME-Zarr and the core's ``PatchSource`` over slides."""

from __future__ import annotations

from .base import Slide
from .cache import SlideCache
from .convert import convert_to_ome_zarr
from .errors import SlideError, SlideOpenError, SlideReadError
from .lowres import LowResView, low_res_view
from .open import open_slide
from .openslide_backend import OpenSlideSlide
from .source import SlidePatchSource
from .tissue import tissue_mask
from .zarr_backend import OmeZarrSlide

__all__ = [
    "LowResView",
    "OmeZarrSlide",
    "OpenSlideSlide",
    "Slide",
    "SlideCache",
    "SlideError",
    "SlideOpenError",
    "SlidePatchSource",
    "SlideReadError",
    "convert_to_ome_zarr",
    "low_res_view",
    "open_slide",
    "tissue_mask",
]
