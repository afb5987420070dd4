"""The viewer's two HTML pages and the JSON they fetch.

The pages are small shells: ``static/cohort.js`` and ``static/slide.js`` build them from
``/api/predictions`` and ``/api/slide/<name>`` (:func:`slide_info`). Every value taken from the
output folder reaches HTML through :func:`html.escape` or the DOM's ``textContent``.
"""

from __future__ import annotations

import html
import math
from typing import Any

from wsi_ats.slides import Slide

from .index import OutputIndex, SlideEntry
from .tiles import DECADES, TILE, TileGrid, attention_rect, ramp

_HEAD = """<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title><link rel="stylesheet" href="/static/viewer.css"></head>
"""


def cohort_page(index: OutputIndex) -> str:
    """The cohort page: the predictions table, filled in by ``cohort.js``."""
    title = html.escape(f"wsi-ats · {index.out.name or index.out}")
    return (
        _HEAD.format(title=title)
        + f"""<body class="cohort">
<header><h1>{title}</h1><span id="summary"></span></header>
<section id="filters" aria-label="filters">
  <label>status <select id="f-status"><option value="">all</option></select></label>
  <label>prediction <select id="f-prediction"><option value="">all</option></select></label>
  <label id="f-label-wrap">label <select id="f-label"><option value="">all</option></select></label>
  <label>split <select id="f-split"><option value="">all</option></select></label>
  <label>slide <input id="f-text" type="search" placeholder="id contains"></label>
  <label><input id="f-wrong" type="checkbox"> wrong predictions only</label>
</section>
<table id="predictions"><thead></thead><tbody></tbody></table>
<p class="hint">Click a column title to sort (again to reverse). Click a slide to open it.</p>
<script src="/static/cohort.js"></script>
</body></html>
"""
    )


def slide_page(entry: SlideEntry) -> str:
    """The slide page shell; ``slide.js`` reads ``data-name`` and fetches the rest."""
    title = html.escape(f"wsi-ats · {entry.slide_id}")
    name = html.escape(entry.name, quote=True)
    return (
        _HEAD.format(title=title)
        + f"""<body class="slide" data-name="{name}">
<header><a href="/" id="back">&larr; cohort</a><h1 id="slide-title"></h1>
  <span id="verdict"></span></header>
<main>
  <div id="viewer" tabindex="0" aria-label="slide viewer"><canvas id="canvas"></canvas>
    <div id="tooltip" hidden></div>
    <div id="zoom-buttons"><button id="zoom-in" title="zoom in">+</button>
      <button id="zoom-out" title="zoom out">&minus;</button>
      <button id="zoom-fit" title="whole slide">fit</button></div>
    <div id="status-line"></div></div>
  <aside id="panel">
    <section id="facts"></section>
    <section id="layers"><h2>Overlays</h2>
      <label><input type="checkbox" id="show-attention" checked> attention</label>
      <label class="slider">opacity <input type="range" id="attention-opacity" min="0" max="100"
        value="50"></label>
      <div id="colorbar"><canvas id="colorbar-canvas" width="200" height="14"></canvas>
        <div id="colorbar-ticks"></div><div id="colorbar-caption"></div></div>
      <label><input type="checkbox" id="show-tiles" checked> sampled tiles</label>
      <label><input type="checkbox" id="show-tissue"> tissue mask</label>
    </section>
    <section id="help"><h2>Navigate</h2><p>Drag to pan, wheel or +/&minus; to zoom,
      double-click to zoom in. Hover a tile outline for its draw, rank and attention.
      Click a gallery tile to go to it.</p></section>
  </aside>
</main>
<section id="gallery-wrap"><h2>Sampled tiles, highest attention first
  <span id="gallery-count"></span></h2><div id="gallery"></div>
  <button id="gallery-more" hidden>show all</button></section>
<script src="/static/slide.js"></script>
</body></html>
"""
    )


def error_page(status: int, message: str) -> str:
    """A plain page for an error, with a link back to the cohort."""
    text = html.escape(message)
    return (
        _HEAD.format(title=f"wsi-ats · {status}")
        + f"""<body class="error"><header><a href="/">&larr; cohort</a>
<h1>{status}</h1></header><p class="error-text">{text}</p></body></html>
"""
    )


def slide_info(entry: SlideEntry, slide: Slide) -> dict[str, Any]:
    """What ``slide.js`` needs: the pyramid, the prediction, the overlays' level-0 rectangles,
    the sampled tiles and the gallery (distinct tiles, highest attention first)."""
    record = entry.record or {}
    width, height = slide.dimensions
    grid = TileGrid(width, height)
    low_size = tuple(record["low_size"])
    scale = tuple(record["scale"])
    rf = int(record.get("receptive_field", 0))
    seen: dict[tuple[int, int, int, int], dict[str, Any]] = {}
    for i, c in enumerate(entry.coords):
        key = (c["x"], c["y"], c["w"], c["h"])
        if key not in seen:
            seen[key] = {"index": i, **c, "draws": []}
        seen[key]["draws"].append([c["draw"], c["rank"]])
    gallery = sorted(seen.values(), key=lambda g: -(g["attention"] or 0.0))
    return {
        "slide_id": entry.slide_id,
        "name": entry.name,
        "path": entry.path,
        "row": entry.row,
        "record": {k: v for k, v in record.items() if k != "draw_probabilities"},
        "draw_probabilities": record.get("draw_probabilities", []),
        "width": width,
        "height": height,
        "tile": TILE,
        "max_zoom": grid.max_zoom,
        "levels": [list(d) for d in slide.level_dimensions],
        "mpp": list(slide.mpp) if slide.mpp else None,
        "attention": {
            "url": f"/overlay/{entry.name}/attention.png",
            "rect": attention_rect(low_size, scale, rf),
            "peak": _finite(float(_peak(entry))),
            "decades": DECADES,
            "ramp": ramp(),
        },
        "tissue": {
            "url": f"/overlay/{entry.name}/tissue.png",
            "rect": [0.0, 0.0, low_size[1] * scale[1], low_size[0] * scale[0]],
        }
        if (entry.folder / "tissue.png").is_file()
        else None,
        "tiles": entry.coords,
        "gallery": gallery,
    }


def _peak(entry: SlideEntry) -> float:
    from .index import attention_map

    att = attention_map(entry)
    return float(att.max()) if att.size else 0.0


def _finite(v: float) -> float | None:
    return v if math.isfinite(v) else None
