"""Synthetic cohorts of tiled pyramidal TIFF slides with known lesions (``wsi-ats synth``).

Two variants (``variant=`` of :func:`make_layout`, :func:`write_synthetic_slide`,
:func:`make_cohort`; ``wsi-ats synth --variant``):

- ``"standard"`` (default): candidate spots are dark purple discs, the darkest structures on the
  slide, so a fixed stain-darkness prior finds them without learning.
- ``"distractors"``: the same tissue and candidate spots (positions, sizes, kinds) in a pale
  lavender-grey texture no darker than the stroma at low resolution, plus 4-10 dark benign
  distractors per slide whatever the label, so that a darkness prior looks in the wrong places.

The standard variant, described first:

Scales, in level-0 pixels (default mpp 0.5 um/px), so that models can pick patch sizes and levels:

- slide: ``size`` px a side; levels at downsample 1, 2, 4, ... down to <= 512 px a side; tiles
  256 x 256, JPEG quality 90 (YCbCr 2x2) or zlib (lossless); background (240, 240, 238).
- tissue: 2-4 clusters of smooth blobs covering 25-40% of the slide; pink stroma with sparse nuclei
  (radius 2-4 px, ~1 per 600 px^2), fine fibres (~3 px), shading (~64 px) and a slide-wide
  brightness variation (+-5%, wavelengths 20-60% of the side); the texture repeats every 1024 px.
- candidate spots: 3-8 discs per slide whatever the label, diameter ``spot_diameter`` (default 1.5% of
  the shorter side: 246 px at 16k, i.e. ~15 px in a 1024 px view), darker purple, wholly in tissue,
  never overlapping. Same seed, other label: same tissue and spots, only the kinds change.
- benign spot: mean colour (146, 92, 172) with a fine grain (std ~5 grey levels, 1-2 px).
- malignant spot (1-2 per positive slide): the benign texture plus a lattice of dark nuclei with an
  8 px period (dots of 16 px, ~4.5 px across, jittered in their cell) whose offsets sum to zero in
  every 8 x 8 cell: at downsample >= 8 malignant spots are pixel-identical to benign ones, so only
  levels 0-2 (downsample 1, 2, 4) tell them apart. Read patches at level 0 or 1 (>= 32 px).
- all spots cover well under 1% of the tissue at the default diameter (0.1-0.6%; see
  ``lesion_fraction_of_tissue`` and ``malignant_fraction_of_tissue`` in the ground truth).

The distractors variant differs only in the spots:

- candidate spots: same count, diameter and positions as the standard slide of the same seed, but
  pale: mean colour (206, 204, 224) with the same grain; pooled at downsample >= 8 their darkness
  ``1 - mean(RGB) / 255`` is ~0.17 against ~0.21 for the stroma (nuclei included) and ~0.06 for the
  background, and their hue (lavender-grey against pink) still shows them at low resolution.
  Malignant ones carry the same zero-sum 8 px lattice on top, so again only downsample <= 4 tells
  them apart.
- distractors: 4-10 discs of the standard benign texture (darkness ~0.46 pooled), diameter 0.7-1.3x
  ``spot_diameter``, wholly in tissue, clear of each other and of the candidate spots, the same for
  either label; never malignant. They are listed in the ground truth's ``spots`` with ``kind``
  ``"distractor"``; ``lesion_fraction_of_tissue`` still counts candidate spots only, and the
  record adds ``variant`` and ``distractor_fraction_of_tissue``. ``cohort.json`` records
  ``variant`` only when it is not ``"standard"``, so standard cohorts written earlier are reused.

Outputs of :func:`make_cohort` (see :mod:`wsi_ats.synth.cohort`): ``manifest.csv``
(``slide_id,path,label,split``, paths relative to the manifest's folder), ``ground_truth.json``
(per slide: label, size, fractions and spots with ``kind`` and level-0 boxes ``x, y, w, h``) and
``cohort.json`` (parameters; the same parameters reuse the cohort).
"""

from wsi_ats.synth.cohort import make_cohort, slide_seed
from wsi_ats.synth.layout import VARIANTS, Layout, Spot, SynthError, make_layout
from wsi_ats.synth.slide import SlideTruth, slide_layout, write_synthetic_slide

__all__ = [
    "Layout",
    "SlideTruth",
    "Spot",
    "SynthError",
    "VARIANTS",
    "make_cohort",
    "make_layout",
    "slide_layout",
    "slide_seed",
    "write_synthetic_slide",
]
