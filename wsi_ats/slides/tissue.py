"""Tissue mask of a low-resolution view: Otsu on HSV saturation, then small-object cleanup."""

from __future__ import annotations

import numpy as np
from skimage.color import rgb2hsv
from skimage.filters import threshold_otsu
from skimage.morphology import closing, disk, opening, remove_small_holes, remove_small_objects


def tissue_mask(
    image: np.ndarray,
    min_saturation: float = 0.07,
    max_value_dark: float = 0.1,
    min_object_fraction: float = 1e-4,
    smoothing_radius: int = 1,
) -> np.ndarray:
    """``bool[h, w]``, True on tissue, aligned pixel for pixel with ``image`` (``uint8[h, w, 3]``).

    A pixel is tissue when its saturation is above both Otsu's threshold and ``min_saturation`` (so a
    blank slide gives an empty mask) and it is not near-black (``value <= max_value_dark``: pen, dust,
    scanner borders). Objects and holes smaller than ``min_object_fraction`` of the image are removed.
    """
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must be [h, w, 3], got shape {image.shape}")
    h, w = image.shape[:2]
    if h == 0 or w == 0:
        return np.zeros((h, w), dtype=bool)
    hsv = rgb2hsv(image)
    sat, val = hsv[..., 1], hsv[..., 2]
    threshold = min_saturation
    if float(sat.max()) - float(sat.min()) > 1e-6:
        threshold = max(float(threshold_otsu(sat)), min_saturation)
    mask = (sat > threshold) & (val > max_value_dark)
    if smoothing_radius > 0 and mask.any():
        footprint = disk(smoothing_radius)
        mask = opening(closing(mask, footprint), footprint)
    min_px = max(1, int(min_object_fraction * h * w))
    mask = remove_small_objects(mask, max_size=min_px)
    mask = remove_small_holes(mask, max_size=min_px)
    return mask.astype(bool, copy=False)
