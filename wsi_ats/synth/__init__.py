"""Synthetic cohorts of tiled pyramidal TIFF slides with known lesions.

Scales, in level-0 pixels (default mpp 0.5 um/px), so that models can pick patch sizes and levels:

- slide: ``size`` px a side; pyramid levels at downsample 1, 2, 4, ... down to <= 512 px a side;
  tiles 256 x 256, JPEG quality 90 (or zlib, lossless).
- tissue: 2-4 clusters of smooth blobs covering 25-40% of the slide; pink stroma texture with
  shading (~64 px) and sparse nuclei (radius 2-4 px); the textures repeat every 1024 px.
- candidate spots: 3-8 discs per slide (both labels), diameter ``spot_diameter`` (default 1.5% of
  the shorter side: 246 px at 16k, i.e. ~15 px in a 1024 px view), darker purple, wholly in tissue.
- benign spot: mean colour (146, 92, 172) with fine grain (std ~5, 1-2 px).
- malignant spot (1-2 on positive slides): the benign texture plus a lattice of dark nuclei with a
  period of 8 px (dots ~4.5 px across), whose offsets sum to zero in every 8 x 8 cell: pyramid levels
  at downsample >= 8 are pixel-identical to benign spots; only levels 0-2 (downsample 1, 2, 4)
  show the difference. Read patches at level 0 or 1.
- all spots cover well under 1% of the tissue (``lesion_fraction_of_tissue`` in the ground truth).
"""

from wsi_ats.synth.cohort import make_cohort, slide_seed
from wsi_ats.synth.layout import Layout, Spot, SynthError, make_layout
from wsi_ats.synth.slide import SlideTruth, slide_layout, write_synthetic_slide

__all__ = [
    "Layout",
    "SlideTruth",
    "Spot",
    "SynthError",
    "make_cohort",
    "make_layout",
    "slide_layout",
    "slide_seed",
    "write_synthetic_slide",
]
