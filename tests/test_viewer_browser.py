"""``wsi-ats view`` in a real browser (headless Chromium over the DevTools protocol): the cohort
page lists, sorts and filters the predictions; a slide page renders tiles, zooms to full
resolution, draws the attention and the tile outlines, shows tile details on hover and the
gallery at level 0; the console stays free of errors.

With ``WSI_ATS_VIEWER_SCREENSHOTS=DIR`` the screenshots are also saved there (the README's
``docs/img/viewer-*.png`` come from this).
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from cdp_browser import Browser
from PIL import Image
from viewer_cohort import predicted_cohort, running_server

from wsi_ats.viewer import ViewerServer

VIEWER_READY = (
    "window.wsiViewer && wsiViewer.ready && wsiViewer.pending === 0 && "
    "wsiViewer.stats.tilesDrawn > 0"
)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ViewerServer]:
    with running_server(predicted_cohort(tmp_path_factory.mktemp("viewer-browser"))) as srv:
        yield srv


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    b = Browser()
    yield b
    b.close()


def image(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(np.int16)


def save(name: str, png: bytes) -> None:
    """Keep a screenshot for the README when ``WSI_ATS_VIEWER_SCREENSHOTS`` names a folder."""
    folder = os.environ.get("WSI_ATS_VIEWER_SCREENSHOTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        (Path(folder) / name).write_bytes(png)


def viewer_box(browser: Browser) -> tuple[int, int, int, int]:
    """``(x0, y0, x1, y1)`` CSS pixels of the slide viewer in the page."""
    r = browser.evaluate(
        "(() => { const r = document.getElementById('viewer').getBoundingClientRect();"
        " return [r.left, r.top, r.right, r.bottom].map(Math.round); })()"
    )
    return tuple(r)


def test_cohort_page_lists_sorts_and_filters(server: ViewerServer, browser: Browser) -> None:
    browser.navigate(server.url)
    assert browser.wait_for("window.wsiCohort && wsiCohort.ready && wsiCohort.shown") == 4
    rows = browser.evaluate(
        "[...document.querySelectorAll('#predictions tbody tr')].map(r => r.dataset.slide)"
    )
    assert rows == ["slide_0", "slide_1", "slide_2", "broken"]
    links = browser.evaluate(
        "[...document.querySelectorAll('a.slide-link')].map(a => a.getAttribute('href'))"
    )
    assert links == ["/slide/slide_0", "/slide/slide_1", "/slide/slide_2"]  # no link for errors
    error = browser.evaluate("document.querySelector('tr.row-error td.error-text').textContent")
    assert error.startswith("SlideOpenError")
    text = browser.evaluate("document.querySelector('#predictions tbody tr td.num').textContent")
    assert "[" in text and "]" in text  # probability with its interval
    save("viewer-cohort.png", browser.screenshot())
    # sort by probability, twice: ascending then descending, the error row last both times
    probs = "[...document.querySelectorAll('#predictions tbody tr')].map(r => r.dataset.slide)"
    click = "document.querySelector('th[data-key=probability]').click()"
    browser.evaluate(click)
    ascending = browser.evaluate(probs)
    browser.evaluate(click)
    descending = browser.evaluate(probs)
    assert ascending[-1] == descending[-1] == "broken"  # empty values last either way
    p = {e.slide_id: e.row["probability"] for e in server.index.entries.values()}
    assert [p[s] for s in ascending[:3]] == sorted(p[s] for s in ascending[:3])
    assert descending[:3] == ascending[:3][::-1]
    # filters: status error -> the broken slide only; label 1 -> slides 1 and broken
    select = (
        "(() => {{ const s = document.getElementById('{id}'); s.value = '{v}';"
        " s.dispatchEvent(new Event('change')); return wsiCohort.shown; }})()"
    )
    assert browser.evaluate(select.format(id="f-status", v="error")) == 1
    assert browser.evaluate(probs) == ["broken"]
    browser.evaluate(select.format(id="f-status", v=""))
    assert browser.evaluate(select.format(id="f-label", v="1")) == 2
    assert sorted(browser.evaluate(probs)) == ["broken", "slide_1"]
    assert browser.errors == []


def test_slide_page_renders_zooms_and_draws_the_overlays(
    server: ViewerServer, browser: Browser
) -> None:
    browser.navigate(server.url)
    browser.wait_for("window.wsiCohort && wsiCohort.ready")
    browser.evaluate("document.querySelector('a.slide-link[href=\"/slide/slide_1\"]').click()")
    browser.wait_for("location.pathname === '/slide/slide_1' && document.readyState === 'complete'")
    stats = browser.wait_for(f"{VIEWER_READY} && wsiViewer.stats")
    assert stats["zoom"] == 2  # the whole 3072 px slide in an ~950 px canvas
    assert stats["outlinesDrawn"] == browser.evaluate("new Set(wsiViewer.info.tiles.map("
                                                      "t => t.x + ',' + t.y)).size")  # fmt: skip
    assert stats["attentionDrawn"] and not stats["tissueDrawn"]
    x0, y0, x1, y1 = viewer_box(browser)
    fit = browser.screenshot()
    save("viewer-slide.png", fit)
    fit_px = image(fit)[y0:y1, x0:x1]
    # not blank: many colours, and the slide (not only the background) is there
    assert fit_px.std() > 20 and len(np.unique(fit_px.reshape(-1, 3), axis=0)) > 500

    # the attention overlay changes the picture; toggled off, it is gone
    toggle = (
        "(() => { const c = document.getElementById('show-attention'); c.checked = !c.checked;"
        " c.dispatchEvent(new Event('input')); return c.checked; })()"
    )
    assert browser.evaluate(toggle) is False
    browser.wait_for("!wsiViewer.stats.attentionDrawn")
    plain = image(browser.screenshot())[y0:y1, x0:x1]
    assert np.abs(plain - fit_px).mean() > 2
    assert browser.evaluate(toggle) is True
    browser.wait_for("wsiViewer.stats.attentionDrawn")

    # hover a sampled tile: its draw, rank and attention
    tile = browser.evaluate("wsiViewer.info.tiles[0]")
    sx, sy = browser.evaluate(
        f"(() => {{ const v = wsiViewer.view; const t = wsiViewer.info.tiles[0];"
        f" return [(t.x + t.w / 2 - v.cx) * v.scale + v.w / 2 + {x0},"
        f" (t.y + t.h / 2 - v.cy) * v.scale + v.h / 2 + {y0}]; }})()"
    )
    browser.mouse("mouseMoved", sx, sy)
    tip = browser.wait_for(
        "!document.getElementById('tooltip').hidden && document.getElementById('tooltip').textContent"
    )
    assert f"draw {tile['draw']} · rank {tile['rank']} · attention" in tip

    # zoom in with the mouse wheel to full resolution (zoom 0): other pixels, more detail
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    for _ in range(8):
        browser.mouse("mouseWheel", cx, cy, deltaX=0, deltaY=-300)
    stats = browser.wait_for(f"{VIEWER_READY} && wsiViewer.stats.zoom === 0 && wsiViewer.stats")
    assert stats["zoom"] == 0 and browser.evaluate("wsiViewer.view.scale") >= 1
    assert browser.evaluate("document.getElementById('tooltip').hidden")  # no stale details
    deep = image(browser.screenshot())[y0:y1, x0:x1]
    assert deep.std() > 5 and np.abs(deep - fit_px).mean() > 10
    # the tiles of zoom 0 came from the server (the canvas shows them, not a stretched coarse one)
    assert browser.evaluate("Number(document.getElementById('canvas').dataset.tilesDrawn)") >= 1

    # the gallery: every distinct sampled tile at level 0, highest attention first
    gallery = browser.wait_for(
        "(() => { const imgs = [...document.querySelectorAll('#gallery img')];"
        " return imgs.length && imgs.every(i => i.complete && i.naturalWidth) &&"
        " imgs.map(i => [i.naturalWidth, i.naturalHeight]); })()"
    )
    n_distinct = browser.evaluate("wsiViewer.info.gallery.length")
    assert len(gallery) == n_distinct and all(wh == [96, 96] for wh in gallery)
    # a click on a gallery tile centres the viewer on it
    browser.evaluate("document.querySelector('#gallery figure').click()")
    first = browser.evaluate("wsiViewer.info.gallery[0]")
    view = browser.wait_for(f"{VIEWER_READY} && wsiViewer.view")
    assert view["cx"] == first["x"] + first["w"] / 2 and view["cy"] == first["y"] + first["h"] / 2
    browser.evaluate("window.scrollTo(0, 0)")
    x0, y0, x1, y1 = viewer_box(browser)
    browser.mouse("mouseMoved", (x0 + x1) / 2 + 5, (y0 + y1) / 2 + 5)  # over that tile
    tip = browser.wait_for(
        "!document.getElementById('tooltip').hidden && document.getElementById('tooltip').textContent"
    )
    draw, rank = first["draws"][0]
    assert (
        f"draw {draw} · rank {rank} · attention" in tip and f"({first['x']}, {first['y']})" in tip
    )
    save("viewer-slide-zoomed.png", browser.screenshot())
    assert browser.errors == []


def test_tissue_mask_toggle_and_an_unviewable_slide(server: ViewerServer, browser: Browser) -> None:
    browser.navigate(server.url + "slide/slide_2")
    browser.wait_for(VIEWER_READY)
    x0, y0, x1, y1 = viewer_box(browser)
    before = image(browser.screenshot())[y0:y1, x0:x1]
    browser.evaluate(
        "(() => { const c = document.getElementById('show-tissue'); c.checked = true;"
        " c.dispatchEvent(new Event('input')); })()"
    )
    browser.wait_for("wsiViewer.stats.tissueDrawn")
    after = image(browser.screenshot())[y0:y1, x0:x1]
    assert np.abs(after - before).mean() > 1  # the tint shows over the tissue
    errors = list(browser.errors)
    # a slide the folder lists without a prediction: a readable 409 page, not a viewer
    browser.navigate(server.url + "slide/broken")
    text = browser.evaluate("document.body.textContent")
    assert "409" in text and "no prediction to show" in text
    assert errors == []
