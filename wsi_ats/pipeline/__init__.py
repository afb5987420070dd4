"""Cohort prediction on Dask: manifest validation, per-slide stages as tasks, resumable outputs.

``predict_cohort`` is imported lazily so that ``wsi_ats.pipeline.paths`` (used by the output writers)
does not pull in dask.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "predict_cohort": "wsi_ats.pipeline.cohort",
    "load_manifest": "wsi_ats.pipeline.manifest",
    "ManifestError": "wsi_ats.pipeline.manifest",
    "slide_dir": "wsi_ats.pipeline.paths",
    "slide_dir_name": "wsi_ats.pipeline.paths",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'wsi_ats.pipeline' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
