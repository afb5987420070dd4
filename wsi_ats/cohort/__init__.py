"""A cohort's manifest (validated CSV of slides) and its output folders (slide ids made safe).

Below both training and inference: ``training`` reads labelled slides from a manifest, ``inference``
and ``pipeline`` write per-slide outputs under folders named by :func:`slide_dir`.
"""

from wsi_ats.cohort.manifest import Manifest, ManifestError, SlideEntry, load_manifest
from wsi_ats.cohort.paths import UnsafePathError, slide_dir, slide_dir_name

__all__ = [
    "Manifest",
    "ManifestError",
    "SlideEntry",
    "UnsafePathError",
    "load_manifest",
    "slide_dir",
    "slide_dir_name",
]
