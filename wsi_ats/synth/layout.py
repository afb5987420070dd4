"""Analytic slide layout: tissue blobs and candidate spots, in level-0 pixels.

Tissue is ``{f >= threshold}`` for ``f`` a sum of axis-aligned Gaussians (2-4 clusters of 2-4
blobs); the threshold is the quantile that makes tissue cover a random 25-40% of the slide. Spots
are discs of a fixed diameter placed wholly inside tissue, 3-8 per slide whatever the label;
positive slides have 1-2 malignant spots among them. The label is drawn last, so the same seed gives
the same tissue and spot positions for either label.

The ``"distractors"`` variant adds 4-10 dark benign discs (kind ``"distractor"``, diameter 0.7-1.3x
the spots', in both labels) drawn from a seed stream of their own, after the candidate spots: its
tissue and candidate spots are those of the ``"standard"`` layout with the same seed and label.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

TISSUE_COVERAGE = (0.25, 0.40)  # fraction of the slide area
SPOT_COUNT = (3, 8)  # candidate spots per slide, inclusive, same for both labels
MALIGNANT_COUNT = (1, 2)  # malignant spots on a positive slide, inclusive
DEFAULT_SPOT_FRACTION = 0.015  # default spot diameter, as a fraction of the slide's shorter side
SHADING_AMPLITUDE = 0.05  # relative std of the slide-wide stroma brightness (spots are not shaded)
_GRID = 256  # coarse grid used to pick the threshold and spot candidates
VARIANTS = ("standard", "distractors")
CANDIDATE_KINDS = ("benign", "malignant")  # the candidate spots; "distractor" is not one
DISTRACTOR_COUNT = (4, 10)  # dark benign discs per slide of the "distractors" variant, inclusive
DISTRACTOR_SCALE = (0.7, 1.3)  # distractor diameter over the spot diameter
_TRIES = 4000  # rejection-sampling attempts per slide for spots (and again for distractors)


class SynthError(ValueError):
    """A synthetic slide cannot be laid out (e.g. spots too large for the tissue)."""


@dataclass(frozen=True)
class Spot:
    """A disc centred at ``(cx, cy)`` with ``radius``, level-0 pixels: a candidate spot (benign or
    malignant) or, in the ``"distractors"`` variant, a dark benign distractor."""

    kind: str  # "benign", "malignant" or "distractor"
    cx: float
    cy: float
    radius: float

    @property
    def box(self) -> tuple[int, int, int, int]:
        """Level-0 bounding box ``(x, y, w, h)`` in whole pixels."""
        x0, y0 = int(np.floor(self.cx - self.radius)), int(np.floor(self.cy - self.radius))
        x1, y1 = int(np.ceil(self.cx + self.radius)), int(np.ceil(self.cy + self.radius))
        return x0, y0, x1 - x0, y1 - y0


@dataclass(frozen=True)
class Layout:
    """Everything needed to render a slide. ``width``/``height`` in level-0 pixels; the tissue field
    is ``sum_i amp_i exp(-((x-cx_i)^2 / 2 sx_i^2 + (y-cy_i)^2 / 2 sy_i^2))`` (level-0 px)."""

    width: int
    height: int
    label: int
    blobs: np.ndarray  # float64 [n, 5]: amp, cx, cy, sx, sy
    threshold: float
    tissue_fraction: float  # of the slide area, estimated on a 256 x 256 grid
    spots: tuple[Spot, ...] = field(default=())
    waves: np.ndarray = field(default_factory=lambda: np.zeros((0, 4)))  # amp, kx, ky, phase
    variant: str = "standard"  # see VARIANTS; "distractors" adds spots of kind "distractor"

    def shading(self, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
        """Stroma brightness factor on the grid ``ys x xs`` (level-0 px): ``1 + sum_j amp_j
        cos(kx_j x + ky_j y + phase_j)``, ``[len(ys), len(xs)]``; smooth over the whole slide."""
        amp, kx, ky, phase = self.waves.T
        ax = np.outer(kx, xs)  # cos(a + b) = cos a cos b - sin a sin b: one small product
        by = np.outer(ky, ys) + phase[:, None]
        left = np.concatenate([np.cos(by), np.sin(by)]).T
        right = np.concatenate([amp[:, None] * np.cos(ax), -amp[:, None] * np.sin(ax)])
        return 1.0 + left @ right

    def field_1d(self, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
        """Tissue field on the grid ``ys x xs`` (level-0 px): ``[len(ys), len(xs)]``."""
        amp, cx, cy, sx, sy = self.blobs.T
        gx = np.exp(-((xs[None, :] - cx[:, None]) ** 2) / (2 * sx[:, None] ** 2))
        gy = np.exp(-((ys[None, :] - cy[:, None]) ** 2) / (2 * sy[:, None] ** 2))
        return (gy * amp[:, None]).T @ gx

    def field_at(self, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
        """Tissue field at the points ``(xs[i], ys[i])``."""
        amp, cx, cy, sx, sy = self.blobs.T
        e = ((xs[:, None] - cx) / sx) ** 2 + ((ys[:, None] - cy) / sy) ** 2
        return np.exp(-0.5 * e) @ amp

    def field_bounds(self, x0: float, x1: float, y0: float, y1: float) -> tuple[float, float]:
        """Lower and upper bounds of the field on the rectangle ``[x0, x1] x [y0, y1]`` (each blob's
        minimum and maximum there, summed)."""
        amp, cx, cy, sx, sy = self.blobs.T
        dx = np.maximum(0.0, np.maximum(x0 - cx, cx - x1))
        dy = np.maximum(0.0, np.maximum(y0 - cy, cy - y1))
        upper = np.sum(amp * np.exp(-0.5 * ((dx / sx) ** 2 + (dy / sy) ** 2)))
        fx = np.maximum(np.abs(x0 - cx), np.abs(x1 - cx))
        fy = np.maximum(np.abs(y0 - cy), np.abs(y1 - cy))
        lower = np.sum(amp * np.exp(-0.5 * ((fx / sx) ** 2 + (fy / sy) ** 2)))
        return float(lower), float(upper)

    @property
    def lesion_fraction(self) -> float:
        """Area of the candidate spots (benign and malignant) over the tissue area."""
        return spot_area(self.spots, CANDIDATE_KINDS) / self.tissue_area

    @property
    def malignant_fraction(self) -> float:
        """Area of the malignant spots over the tissue area."""
        return spot_area(self.spots, "malignant") / self.tissue_area

    @property
    def distractor_fraction(self) -> float:
        """Area of the distractors over the tissue area (0 in the standard variant)."""
        return spot_area(self.spots, "distractor") / self.tissue_area

    @property
    def tissue_area(self) -> float:
        """Tissue area, level-0 px^2."""
        return self.tissue_fraction * self.width * self.height

    def truth(self, **extra: object) -> dict:
        """Ground truth as plain JSON-able data (boxes in level-0 pixels)."""
        return truth_dict(
            self.width,
            self.height,
            self.label,
            self.tissue_fraction,
            self.spots,
            variant=self.variant,
            **extra,
        )


def spot_area(spots: tuple[Spot, ...], kind: str | tuple[str, ...] | None = None) -> float:
    """Total area of the spots (of ``kind``, one or a tuple of kinds, or all), level-0 px^2."""
    kinds = (kind,) if isinstance(kind, str) else kind
    return float(sum(np.pi * s.radius**2 for s in spots if kinds is None or s.kind in kinds))


def truth_dict(
    width: int,
    height: int,
    label: int,
    tissue_fraction: float,
    spots: tuple[Spot, ...],
    variant: str = "standard",
    **extra: object,
) -> dict:
    """The ground-truth record of a slide: sizes, fractions and spots with boxes ``x, y, w, h``.

    ``lesion_fraction_of_tissue`` counts the candidate spots only. Other variants than
    ``"standard"`` also record ``variant`` and ``distractor_fraction_of_tissue`` (standard records
    stay as they were)."""
    tissue = tissue_fraction * width * height
    fractions = {
        "lesion_fraction_of_tissue": round(spot_area(spots, CANDIDATE_KINDS) / tissue, 6),
        "malignant_fraction_of_tissue": round(spot_area(spots, "malignant") / tissue, 6),
    }
    if variant != "standard":
        fractions["distractor_fraction_of_tissue"] = round(
            spot_area(spots, "distractor") / tissue, 6
        )
    return {
        **extra,
        **({} if variant == "standard" else {"variant": variant}),
        "width": width,
        "height": height,
        "label": label,
        "tissue_fraction": round(tissue_fraction, 6),
        **fractions,
        "spots": [
            {**asdict(s), **dict(zip(("x", "y", "w", "h"), s.box, strict=True))} for s in spots
        ],
    }


def default_spot_diameter(width: int, height: int) -> float:
    """Default spot diameter in level-0 px: 1.5% of the shorter side."""
    return DEFAULT_SPOT_FRACTION * min(width, height)


def make_layout(
    width: int,
    height: int,
    seed: int,
    label: int,
    spot_diameter: float | None = None,
    variant: str = "standard",
) -> Layout:
    """Random tissue and spots for one slide, deterministic in ``(seed, label, variant)``.

    ``variant="distractors"`` appends 4-10 spots of kind ``"distractor"`` (the same for either
    label) to the candidate spots, which stay those of the ``"standard"`` layout."""
    if label not in (0, 1):
        raise ValueError(f"label must be 0 or 1, got {label!r}")
    check_variant(variant)
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x5117E]))
    side = min(width, height)
    blobs = []
    for _ in range(rng.integers(2, 5)):
        ccx, ccy = rng.uniform(0.25, 0.75, 2)
        for _ in range(rng.integers(2, 5)):
            bx = np.clip(ccx + rng.normal(0, 0.08), 0.15, 0.85) * width
            by = np.clip(ccy + rng.normal(0, 0.08), 0.15, 0.85) * height
            sx, sy = rng.uniform(0.05, 0.12, 2) * side
            blobs.append((rng.uniform(0.6, 1.0), bx, by, sx, sy))
    blob_arr = np.asarray(blobs, dtype=np.float64)
    xs = (np.arange(_GRID) + 0.5) * width / _GRID
    ys = (np.arange(_GRID) + 0.5) * height / _GRID
    layout = Layout(width, height, label, blob_arr, 0.0, 0.0)
    grid = layout.field_1d(xs, ys)
    coverage = rng.uniform(*TISSUE_COVERAGE)
    threshold = float(np.quantile(grid, 1.0 - coverage))
    tissue = grid >= threshold
    layout = Layout(width, height, label, blob_arr, threshold, float(tissue.mean()))

    diameter = default_spot_diameter(width, height) if spot_diameter is None else spot_diameter
    radius = float(diameter) / 2.0
    if radius <= 0:
        raise SynthError(f"spot diameter must be positive, got {diameter}")
    n_spots = int(rng.integers(SPOT_COUNT[0], SPOT_COUNT[1] + 1))
    cells = np.argwhere(tissue)
    centres = _place_discs(layout, rng, cells, [radius] * n_spots, [])
    if len(centres) < n_spots:
        raise SynthError(
            f"could not place {n_spots} spots of diameter {diameter:.0f} px in the tissue of a "
            f"{width} x {height} slide (seed {seed})"
        )
    wave_rng = np.random.default_rng(np.random.SeedSequence([seed, 0x5AADE]))
    n_waves = 3
    angle = wave_rng.uniform(0, 2 * np.pi, n_waves)
    k = 2 * np.pi / (wave_rng.uniform(0.2, 0.6, n_waves) * side)  # wavelength 20-60% of the side
    waves = np.stack(
        [
            np.full(n_waves, SHADING_AMPLITUDE / np.sqrt(n_waves)),
            k * np.cos(angle),
            k * np.sin(angle),
            wave_rng.uniform(0, 2 * np.pi, n_waves),
        ],
        axis=1,
    )
    n_malignant = int(rng.integers(MALIGNANT_COUNT[0], MALIGNANT_COUNT[1] + 1))
    malignant = (
        set(rng.choice(n_spots, size=n_malignant, replace=False).tolist()) if label else set()
    )
    spots = tuple(
        Spot("malignant" if i in malignant else "benign", cx, cy, radius)
        for i, (cx, cy) in enumerate(centres)
    )
    if variant == "distractors":
        spots += _distractors(layout, seed, cells, spots)
    return Layout(
        width, height, label, blob_arr, threshold, layout.tissue_fraction, spots, waves, variant
    )


def check_variant(variant: str) -> str:
    """``variant`` if it is one of :data:`VARIANTS`, else a ``ValueError``."""
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    return variant


def _place_discs(
    layout: Layout,
    rng: np.random.Generator,
    cells: np.ndarray,
    radii: list[float],
    taken: list[tuple[float, float, float]],
) -> list[tuple[float, float]]:
    """Centres for discs of ``radii`` (placed in that order) by rejection: wholly in tissue (a ring
    at 1.3 r), inside the slide, and at least ``1.5 (r + r')`` from every other disc, including the
    discs ``taken`` ``(cx, cy, r)``. ``cells`` are the tissue cells of the 256 x 256 grid. Fewer
    centres than radii when ``_TRIES`` attempts do not suffice."""
    width, height = layout.width, layout.height
    angles = np.linspace(0, 2 * np.pi, 24, endpoint=False)
    placed = list(taken)
    centres: list[tuple[float, float]] = []
    for _ in range(_TRIES):
        if len(centres) == len(radii):
            break
        radius = radii[len(centres)]
        cy_cell, cx_cell = cells[rng.integers(len(cells))]
        cx = (cx_cell + rng.uniform()) * width / _GRID
        cy = (cy_cell + rng.uniform()) * height / _GRID
        ring = 1.3 * radius
        if not (ring <= cx <= width - ring and ring <= cy <= height - ring):
            continue
        if any((cx - ox) ** 2 + (cy - oy) ** 2 < (1.5 * (radius + r)) ** 2 for ox, oy, r in placed):
            continue
        px = np.append(cx + ring * np.cos(angles), cx)
        py = np.append(cy + ring * np.sin(angles), cy)
        if np.all(layout.field_at(px, py) >= layout.threshold):
            centres.append((float(cx), float(cy)))
            placed.append((float(cx), float(cy), radius))
    return centres


def _distractors(
    layout: Layout, seed: int, cells: np.ndarray, spots: tuple[Spot, ...]
) -> tuple[Spot, ...]:
    """4-10 dark benign discs, 0.7-1.3x the spot diameter, clear of each other and of ``spots``;
    from a seed stream of their own, so they do not depend on the label."""
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0xD157C]))
    n = int(rng.integers(DISTRACTOR_COUNT[0], DISTRACTOR_COUNT[1] + 1))
    spot_radius = spots[0].radius
    radii = sorted((rng.uniform(*DISTRACTOR_SCALE, n) * spot_radius).tolist(), reverse=True)
    taken = [(s.cx, s.cy, s.radius) for s in spots]
    centres = _place_discs(layout, rng, cells, radii, taken)
    if len(centres) < n:
        raise SynthError(
            f"could not place {n} distractors of diameter up to {2 * radii[0]:.0f} px in the "
            f"tissue of a {layout.width} x {layout.height} slide (seed {seed})"
        )
    return tuple(Spot("distractor", cx, cy, r) for (cx, cy), r in zip(centres, radii, strict=True))
