"""Cohort prediction on Dask: per-slide stages as tasks, resumable outputs.

``predict_cohort`` is imported lazily, so that importing the package does not pull in dask.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {"predict_cohort": "wsi_ats.pipeline.cohort"}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'wsi_ats.pipeline' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
