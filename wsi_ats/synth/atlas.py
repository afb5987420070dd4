"""Texture atlases: periodic H&E-like textures and their mean-pooled pyramids.

Every atlas is a square, periodic (wrap-around) uint8 image of side ``A`` (a power of two, default
1024 level-0 pixels). Level ``k`` of a slide (downsample ``2**k``) reads the atlas pooled by
``2**k`` at ``(y_k mod A_k, x_k mod A_k)``, so that each level is the mean of level 0 up to rounding,
without ever reading level 0 back.

Textures (sizes in level-0 pixels):

- ``stroma``: pink (eosin) with low-frequency shading (~64 px) and sparse purple nuclei of radius
  2-4 px, about one per 600 px^2.
- ``benign``: candidate-spot texture: mean colour ``SPOT_MEAN`` plus fine, low-contrast grain
  (std ~5 grey levels, 1-2 px).
- ``malignant``: the benign texture plus a dense lattice of dark "nuclei" on an 8 x 8 px grid
  (16 dark pixels, ~4.5 px across, per cell, jittered inside the cell), with integer offsets that sum
  to exactly zero in every 8 x 8 cell. Hence its mean-pooled levels at downsample >= 8 are
  *identical* to the benign ones, while levels 0-2 (downsample 1, 2, 4) show the pattern.
- ``pale_benign`` / ``pale_malignant`` (the ``"distractors"`` variant's candidate spots): the same
  grain around the pale lavender-grey ``PALE_SPOT_MEAN``, no darker than the stroma once pooled,
  and the same zero-sum lattice offsets as ``malignant`` on top. They are drawn from their own seed
  sequence, so the three textures above are bit-identical to those of earlier versions.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np

STROMA_COLOUR = np.array([236.0, 176.0, 208.0])  # eosin pink, RGB
NUCLEUS_COLOUR = np.array([100.0, 62.0, 150.0])  # hematoxylin purple, RGB
SPOT_MEAN = np.array([146, 92, 172])  # mean colour of every candidate spot, RGB
# pale candidate spots ("distractors" variant): lavender-grey, brighter than the stroma (~202 mean
# grey level with its nuclei). The highest mean such that grain (+-15), tint (+-6, 6, 3) and the
# light lattice offset (26, 20, 12) stay <= 255: R <= 208, G <= 214, B <= 225.
PALE_SPOT_MEAN = np.array([206, 204, 224])
BENIGN_GRAIN_STD = 5.0  # grey levels
MALIGNANT_PERIOD = 8  # level-0 px between lattice nuclei
MALIGNANT_DOT_PIXELS = 16  # dark pixels per 8 x 8 cell
# per channel offsets: dark * 16 == light * 48, so every 8 x 8 cell sums to zero
MALIGNANT_DARK = np.array([-78, -60, -36])
MALIGNANT_LIGHT = np.array([26, 20, 12])


@dataclass(frozen=True)
class AtlasPyramid:
    """One texture and its pooled levels: ``levels[k]`` is uint8 ``[A_k, A_k, 3]``, ``A_k =
    max(1, A / 2**k)`` (for ``2**k > A`` the whole-atlas mean, ``[1, 1, 3]``)."""

    levels: tuple[np.ndarray, ...]

    def level(self, k: int) -> np.ndarray:
        """The atlas pooled by ``2**k`` (the last one for any deeper level)."""
        return self.levels[min(k, len(self.levels) - 1)]


@dataclass(frozen=True)
class Atlases:
    """The textures of a cohort: stroma, dark candidate spots (``benign``, ``malignant``; also the
    distractors of the ``"distractors"`` variant) and pale candidate spots (``pale_*``)."""

    stroma: AtlasPyramid
    benign: AtlasPyramid
    malignant: AtlasPyramid
    pale_benign: AtlasPyramid
    pale_malignant: AtlasPyramid

    def spot(self, kind: str, variant: str = "standard") -> AtlasPyramid:
        """The texture of a spot of ``kind`` (benign, malignant, distractor) in ``variant``."""
        if kind == "distractor":
            return self.benign
        if variant == "distractors":
            return self.pale_malignant if kind == "malignant" else self.pale_benign
        return self.malignant if kind == "malignant" else self.benign


def pool_pyramid(atlas: np.ndarray) -> AtlasPyramid:
    """Mean-pool a uint8 ``[A, A, 3]`` atlas by 1, 2, 4, ... A (each level from level 0, rounded)."""
    side = atlas.shape[0]
    if side & (side - 1) or atlas.shape[1] != side:
        raise ValueError(f"atlas must be square with a power-of-two side, got {atlas.shape}")
    levels = [atlas]
    sums = atlas.astype(np.float64)  # block means of level 0, pooled 2 x 2 at a time
    while sums.shape[0] > 1:
        a = sums.shape[0] // 2
        sums = sums.reshape(a, 2, a, 2, 3).mean(axis=(1, 3))
        levels.append(np.rint(sums).astype(np.uint8))
    return AtlasPyramid(tuple(levels))


def periodic_noise(rng: np.random.Generator, side: int, scale: float) -> np.ndarray:
    """Periodic Gaussian noise ``[side, side]`` with correlation length ``scale`` px, std 1."""
    white = rng.standard_normal((side, side))
    fy, fx = np.fft.fftfreq(side), np.fft.rfftfreq(side)
    kernel = np.exp(-2.0 * (np.pi * scale) ** 2 * (fy[:, None] ** 2 + fx[None, :] ** 2))
    field = np.fft.irfft2(np.fft.rfft2(white) * kernel, s=white.shape)
    return (field - field.mean()) / max(field.std(), 1e-12)


def _stroma(rng: np.random.Generator, side: int) -> np.ndarray:
    shade = periodic_noise(rng, side, 64.0)
    fibres = periodic_noise(rng, side, 3.0)
    img = STROMA_COLOUR[None, None, :] + shade[..., None] * 4.0 + fibres[..., None] * 5.0
    n = side * side // 600
    cy, cx = rng.uniform(0, side, (2, n))
    ry, rx = rng.uniform(2.0, 4.0, (2, n))
    darkness = rng.uniform(0.75, 1.0, n)
    yy, xx = np.mgrid[-5:6, -5:6]
    iy, ix = cy.astype(int), cx.astype(int)
    dy = (yy[None] + iy[:, None, None] + 0.5 - cy[:, None, None]) / ry[:, None, None]
    dx = (xx[None] + ix[:, None, None] + 0.5 - cx[:, None, None]) / rx[:, None, None]
    inside = dy**2 + dx**2 <= 1.0  # [n, 11, 11]
    which, py, px = np.nonzero(inside)
    rows = (py - 5 + iy[which]) % side
    cols = (px - 5 + ix[which]) % side
    alpha = np.zeros((side, side))
    np.maximum.at(alpha, (rows, cols), darkness[which])  # overlapping nuclei: the darkest wins
    img = img * (1 - alpha[..., None]) + NUCLEUS_COLOUR * alpha[..., None]
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def _benign(rng: np.random.Generator, side: int, mean: np.ndarray = SPOT_MEAN) -> np.ndarray:
    """Spot texture, int16 (unclipped): ``mean`` plus fine grain and a slight tint."""
    grain = periodic_noise(rng, side, 0.7)
    grain = np.clip(grain, -3.0, 3.0) * BENIGN_GRAIN_STD
    tint = np.clip(periodic_noise(rng, side, 0.7), -3.0, 3.0) * 2.0
    img = mean[None, None, :] + grain[..., None] + tint[..., None] * np.array([1.0, -1.0, 0.5])
    return np.rint(img).astype(np.int16)


def _check_no_clip(*textures: np.ndarray) -> None:
    """Spot textures must fit uint8 as they are, else pooled benign and malignant means differ."""
    if any(t.min() < 0 or t.max() > 255 for t in textures):
        raise AssertionError("spot textures must not clip: pixel means would differ")


def _malignant_offsets(rng: np.random.Generator, side: int) -> np.ndarray:
    """Integer offsets ``[side, side, 3]`` that sum to zero over every 8 x 8 cell."""
    p = MALIGNANT_PERIOD
    n = side // p
    cy = rng.uniform(0, p, (n, n))
    cx = rng.uniform(0, p, (n, n))
    yy, xx = np.mgrid[0:p, 0:p] + 0.5
    # wrapped distance, inside the cell, from each pixel to the cell's jittered centre
    dy = np.abs(yy[None, None] - cy[..., None, None])
    dx = np.abs(xx[None, None] - cx[..., None, None])
    dy = np.minimum(dy, p - dy)
    dx = np.minimum(dx, p - dx)
    d2 = (dy**2 + dx**2).reshape(n, n, p * p)
    order = np.argsort(d2, axis=-1, kind="stable")
    dark = np.zeros((n, n, p * p), dtype=bool)
    np.put_along_axis(dark, order[..., :MALIGNANT_DOT_PIXELS], True, axis=-1)
    dark = dark.reshape(n, n, p, p).transpose(0, 2, 1, 3).reshape(side, side)
    return np.where(dark[..., None], MALIGNANT_DARK, MALIGNANT_LIGHT).astype(np.int16)


@lru_cache(maxsize=4)
def build_atlases(seed: int = 0, side: int = 1024) -> Atlases:
    """The cohort's textures, deterministic in ``seed``; ``side`` is a power of two >= 8."""
    if side < MALIGNANT_PERIOD or side & (side - 1):
        raise ValueError(f"atlas side must be a power of two >= 8, got {side}")
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0xA71A5]))
    stroma = _stroma(rng, side)
    benign = _benign(rng, side)
    offsets = _malignant_offsets(rng, side)
    malignant = benign + offsets
    # the pale textures use their own stream: the draws above stay those of earlier versions
    pale_rng = np.random.default_rng(np.random.SeedSequence([seed, 0xA71A5, 0x9A1E]))
    pale = _benign(pale_rng, side, PALE_SPOT_MEAN)
    pale_malignant = pale + offsets
    _check_no_clip(benign, malignant, pale, pale_malignant)
    return Atlases(
        stroma=pool_pyramid(stroma),
        benign=pool_pyramid(benign.astype(np.uint8)),
        malignant=pool_pyramid(malignant.astype(np.uint8)),
        pale_benign=pool_pyramid(pale.astype(np.uint8)),
        pale_malignant=pool_pyramid(pale_malignant.astype(np.uint8)),
    )
