"""Heatmaps: the attention map over the slide's thumbnail, sampled tiles outlined, with a title and
a colour bar (PIL for the map, matplotlib for the annotations; PNG)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageDraw

from wsi_ats.atomic import atomic_path

if TYPE_CHECKING:
    from wsi_ats.stages import SlidePrediction, SlideView

# a perceptually ordered ramp (dark blue -> magenta -> orange -> yellow), anchors in [0, 1]
_RAMP = np.array(
    [[13, 8, 135], [126, 3, 168], [204, 71, 120], [248, 149, 64], [240, 249, 33]], dtype=np.float32
)


def colorize(values: np.ndarray) -> np.ndarray:
    """``uint8[..., 3]`` colours of ``values`` in ``[0, 1]`` along a plasma-like ramp."""
    v = np.clip(np.asarray(values, dtype=np.float32), 0.0, 1.0) * (len(_RAMP) - 1)
    lo = np.floor(v).astype(int).clip(0, len(_RAMP) - 2)
    t = (v - lo)[..., None]
    return (_RAMP[lo] * (1 - t) + _RAMP[lo + 1] * t).round().astype(np.uint8)


def render_heatmap(
    image: np.ndarray,
    attention: np.ndarray,
    locations: np.ndarray | None = None,
    tile_size_level0: tuple[int, int] = (0, 0),
    scale: tuple[float, float] = (1.0, 1.0),
    max_side: int = 1024,
    alpha: float = 0.6,
    decades: float = 3.0,
    title: str | None = None,
    colorbar: bool = True,
) -> Image.Image:
    """Thumbnail ``uint8[h, w, 3]`` blended with ``attention`` ``[mh, mw]`` (log scale: the peak
    and ``decades`` decades below it),
    with the tiles at level-0 ``locations`` ``[..., 2]`` (x, y) outlined; ``scale`` = (sy, sx)
    level-0 pixels per thumbnail pixel. The map is enlarged so its longest side is ``max_side``;
    ``title`` (a strip above it) and ``colorbar`` (a strip on its right, see :func:`annotate`)
    make the image larger than the map.
    """
    h, w = image.shape[:2]
    zoom = max(1.0, max_side / max(h, w))
    out_size = (max(1, round(w * zoom)), max(1, round(h * zoom)))
    att = np.asarray(attention, dtype=np.float32)
    peak = float(att.max()) if att.size else 0.0
    with np.errstate(divide="ignore"):  # log scale over `decades` decades below the peak
        norm = np.clip(1.0 + np.log10(att / peak) / decades, 0.0, 1.0) if peak > 0 else att
    heat = Image.fromarray(colorize(norm)).resize(out_size, Image.Resampling.BILINEAR)
    weight = Image.fromarray((norm * 255 * alpha).astype(np.uint8)).resize(
        out_size, Image.Resampling.BILINEAR
    )
    base = Image.fromarray(np.ascontiguousarray(image, dtype=np.uint8)).resize(
        out_size, Image.Resampling.BILINEAR
    )
    canvas = Image.composite(heat, base, weight)
    if locations is not None and np.size(locations):
        overlay = Image.new("RGBA", out_size, (0, 0, 0, 0))
        draw = ImageDraw.Draw(overlay)
        sy, sx = scale
        tw, th = tile_size_level0
        for x, y in np.unique(np.asarray(locations).reshape(-1, 2), axis=0):
            x0, y0 = x / sx * zoom, y / sy * zoom
            x1, y1 = (x + tw) / sx * zoom, (y + th) / sy * zoom
            draw.rectangle(
                [x0, y0, max(x0 + 2, x1), max(y0 + 2, y1)], outline=(0, 255, 255, 170), width=1
            )
        canvas = Image.alpha_composite(canvas.convert("RGBA"), overlay).convert("RGB")
    if title is None and not colorbar:
        return canvas
    return annotate(canvas, title, peak if colorbar else None, decades)


#: pixels added above the map for the title and on its right for the colour bar
TITLE_HEIGHT = 40
COLORBAR_WIDTH = 130
#: a smaller map is padded (white, centred) to this many pixels a side, so the annotations fit
MIN_MAP_SIDE = 256
_DPI = 100


def annotate(
    canvas: Image.Image, title: str | None, peak: float | None, decades: float = 3.0
) -> Image.Image:
    """``canvas`` with ``title`` in a strip of :data:`TITLE_HEIGHT` px above it and, when ``peak``
    is given, a colour bar of :data:`COLORBAR_WIDTH` px on its right: the colours of
    :func:`render_heatmap` on its log scale, from ``peak * 10**-decades`` (cells below it are not
    coloured) to ``peak``, labelled as attention per cell (the map sums to 1) with that range. The
    map's pixels are kept as they are (no resampling); a side under :data:`MIN_MAP_SIDE` px is
    padded with white."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import LinearSegmentedColormap, LogNorm, Normalize
    from matplotlib.figure import Figure

    if min(canvas.size) < MIN_MAP_SIDE:
        padded = Image.new("RGB", tuple(max(v, MIN_MAP_SIDE) for v in canvas.size), "white")
        padded.paste(
            canvas, tuple((p - v) // 2 for p, v in zip(padded.size, canvas.size, strict=True))
        )
        canvas = padded
    w, h = canvas.size
    top = TITLE_HEIGHT if title else 0
    right = COLORBAR_WIDTH if peak is not None else 0
    width, height = w + right, h + top
    fig = Figure(figsize=(width / _DPI, height / _DPI), dpi=_DPI, facecolor="white")
    FigureCanvasAgg(fig)
    ax = fig.add_axes((0, 0, w / width, h / height))
    ax.imshow(np.asarray(canvas), interpolation="nearest", aspect="auto")
    ax.set_axis_off()
    if title:
        text = fig.text(0.5, 1 - top / 2 / height, title, ha="center", va="center", fontsize=14)
        wide = text.get_window_extent(fig.canvas.get_renderer()).width
        if wide > width - 10:  # a long title on a small map: shrink it to fit
            text.set_fontsize(14 * (width - 10) / wide)
    if peak is not None:
        cmap = LinearSegmentedColormap.from_list("wsi_ats_attention", _RAMP / 255.0)
        norm = LogNorm(peak * 10.0**-decades, peak) if peak > 0 else Normalize(0.0, 1.0)
        bar_h = max(1.0, min(h - 20.0, max(h * 0.8, 60.0)))
        cax = fig.add_axes(((w + 12) / width, (h - bar_h) / 2 / height, 18 / width, bar_h / height))
        bar = fig.colorbar(ScalarMappable(norm=norm, cmap=cmap), cax=cax)
        label = "attention per cell (log scale)"
        if peak > 0:
            label += f"\nrange {peak * 10.0**-decades:.1e} to {peak:.1e}"
        bar.set_label(label, fontsize=9)
        bar.ax.tick_params(labelsize=9)
    fig.canvas.draw()
    rgba = np.asarray(fig.canvas.buffer_rgba())
    return Image.fromarray(np.ascontiguousarray(rgba[..., :3]))


#: image formats a heatmap can be written in, by file suffix
IMAGE_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".tif": "TIFF", ".tiff": "TIFF"}


def image_format(path: str | Path) -> str:
    """PIL's format name for ``path``'s suffix; ``ValueError`` naming the path when ``path`` is a
    folder or its suffix is not one of :data:`IMAGE_FORMATS`."""
    path = Path(path)
    if path.is_dir():
        raise ValueError(
            f"{path} is a folder; give an image file name, e.g. {path / 'heatmap.png'}"
        )
    fmt = IMAGE_FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise ValueError(
            f"{path}: unknown image type {path.suffix or '(no suffix)'!r}; "
            f"end the name in one of {', '.join(IMAGE_FORMATS)}"
        )
    return fmt


def save_image(img: Image.Image, path: str | Path) -> Path:
    """Write ``img`` atomically in the format of ``path``'s suffix (see :func:`image_format`)."""
    fmt = image_format(path)
    with atomic_path(path) as tmp:
        img.save(tmp, format=fmt)
    return Path(path)


def save_png(img: Image.Image, path: str | Path) -> Path:
    """Write ``img`` as PNG atomically (temporary file, then ``os.replace``)."""
    with atomic_path(path) as tmp:
        img.save(tmp, format="PNG")
    return Path(path)


def heatmap_title(prediction: SlidePrediction) -> str:
    """``"<slide id> · p = 0.93 (95% CI 0.90-0.95, 8 draws)"``: the heatmap's title (no interval
    when it is undefined, e.g. a single draw)."""
    text = f"{prediction.slide_id} · p = {prediction.probability:.2f}"
    if math.isfinite(prediction.ci_low) and math.isfinite(prediction.ci_high):
        text += f" (95% CI {prediction.ci_low:.2f}-{prediction.ci_high:.2f}, "
        text += f"{prediction.n_draws} draws)"
    return text


def heatmap_of(prediction: SlidePrediction, view: SlideView, max_side: int = 1024) -> Image.Image:
    """The heatmap of a :class:`SlidePrediction` over its :class:`SlideView`'s thumbnail, titled
    with :func:`heatmap_title`, with its colour bar; the map's longest side is ``max_side``."""
    return render_heatmap(
        view.image,
        prediction.attention,
        prediction.locations,
        prediction.tile_size_level0,
        view.scale,
        max_side=max_side,
        title=heatmap_title(prediction),
    )
