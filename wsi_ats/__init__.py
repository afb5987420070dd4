"""wsi-ats: slide-level predictions on gigapixel whole-slide images by attention sampling.

The public names are imported lazily so that ``import wsi_ats`` stays cheap (no dask, no
OpenSlide) until a name is used.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "attention_sampling": "wsi_ats.core",
    "AttentionSampling": "wsi_ats.core",
    "open_slide": "wsi_ats.slides",
    "predict_slide": "wsi_ats.inference",
    "predict_cohort": "wsi_ats.pipeline",
}

__all__ = [*_EXPORTS, "__version__"]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'wsi_ats' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
