// wsi-ats view, slide page: a canvas deep-zoom viewer over /tiles, with the attention, tissue and
// sampled-tile overlays drawn in level-0 pixels, the colour bar, the facts and the tile gallery.
"use strict";

(function () {
  const name = document.body.dataset.name;
  const viewer = document.getElementById("viewer");
  const canvas = document.getElementById("canvas");
  const ctx = canvas.getContext("2d");
  const tooltip = document.getElementById("tooltip");
  const statusLine = document.getElementById("status-line");
  const ui = {
    attention: document.getElementById("show-attention"),
    opacity: document.getElementById("attention-opacity"),
    tiles: document.getElementById("show-tiles"),
    tissue: document.getElementById("show-tissue"),
  };
  const MAX_SCALE = 8; // screen pixels per level-0 pixel at the deepest zoom
  const CACHE_SIZE = 600; // tile images kept
  const GALLERY_FIRST = 48;

  let info = null;
  const view = { cx: 0, cy: 0, scale: 1, w: 0, h: 0, dpr: 1 };
  const cache = new Map(); // "z/c/r" -> {img, loaded, failed}, least recently used first
  let pending = 0;
  let failed = 0;
  let hovered = null; // level-0 key "x,y,w,h" of the tile under the mouse
  let active = null; // the gallery tile last clicked
  let frame = 0;
  const overlays = { attention: null, tissue: null };
  const stats = { zoom: 0, tilesDrawn: 0, outlinesDrawn: 0, attentionDrawn: false, tissueDrawn: false, draws: 0 };

  const el = (tag, cls, text) => {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = String(text);
    return e;
  };
  const fmt = (v, d = 3) => (v === null || v === undefined ? "–" : Number(v).toFixed(d));
  const sci = (v) => (v === null || v === undefined ? "–" : Number(v).toExponential(2));

  // ------------------------------------------------------------------ geometry
  const zoomFor = (scale) =>
    Math.max(0, Math.min(info.max_zoom, Math.floor(Math.log2(1 / (scale * view.dpr)) + 1e-9)));
  const toScreen = (x, y) => [(x - view.cx) * view.scale + view.w / 2, (y - view.cy) * view.scale + view.h / 2];
  const toLevel0 = (sx, sy) => [view.cx + (sx - view.w / 2) / view.scale, view.cy + (sy - view.h / 2) / view.scale];
  const fitScale = () => Math.min(view.w / info.width, view.h / info.height) * 0.95;

  function fit() {
    view.scale = fitScale();
    view.cx = info.width / 2;
    view.cy = info.height / 2;
    moved();
  }

  function zoomAt(sx, sy, factor) {
    const [x, y] = toLevel0(sx, sy);
    view.scale = Math.max(fitScale() / 2, Math.min(MAX_SCALE, view.scale * factor));
    view.cx = x - (sx - view.w / 2) / view.scale;
    view.cy = y - (sy - view.h / 2) / view.scale;
    moved();
  }

  function goTo(x, y, w, h) {
    view.cx = x + w / 2;
    view.cy = y + h / 2;
    view.scale = Math.min(MAX_SCALE, Math.min(view.w, view.h) / (Math.max(w, h) * 4));
    moved();
  }

  function resize() {
    view.dpr = window.devicePixelRatio || 1;
    view.w = viewer.clientWidth;
    view.h = viewer.clientHeight;
    canvas.width = Math.round(view.w * view.dpr);
    canvas.height = Math.round(view.h * view.dpr);
    requestDraw();
  }

  // ------------------------------------------------------------------ tiles
  function tile(z, c, r, request) {
    const key = `${z}/${c}/${r}`;
    let t = cache.get(key);
    if (t) {
      cache.delete(key); // most recently used last
      cache.set(key, t);
      return t;
    }
    if (!request) return null;
    t = { img: new Image(), loaded: false, failed: false };
    pending++;
    t.img.onload = () => { t.loaded = true; pending--; requestDraw(); };
    t.img.onerror = () => { t.failed = true; pending--; failed++; requestDraw(); };
    t.img.src = `/tiles/${encodeURIComponent(name)}/${z}/${c}_${r}.jpg`;
    cache.set(key, t);
    while (cache.size > CACHE_SIZE) cache.delete(cache.keys().next().value);
    return t;
  }

  // draw the tiles of zoom z over the view; returns how many were drawn
  function drawLevel(z, request) {
    const span = info.tile * 2 ** z;
    const cols = Math.ceil(info.width / span), rows = Math.ceil(info.height / span);
    const [x0, y0] = toLevel0(0, 0), [x1, y1] = toLevel0(view.w, view.h);
    const c0 = Math.max(0, Math.floor(x0 / span)), c1 = Math.min(cols - 1, Math.floor(x1 / span));
    const r0 = Math.max(0, Math.floor(y0 / span)), r1 = Math.min(rows - 1, Math.floor(y1 / span));
    let drawn = 0;
    for (let r = r0; r <= r1; r++) {
      for (let c = c0; c <= c1; c++) {
        const t = tile(z, c, r, request);
        if (!t || !t.loaded) continue;
        const [sx, sy] = toScreen(c * span, r * span);
        const w = Math.min(span, info.width - c * span) * view.scale;
        const h = Math.min(span, info.height - r * span) * view.scale;
        ctx.drawImage(t.img, sx, sy, w, h);
        drawn++;
      }
    }
    return drawn;
  }

  function drawImageRect(img, rect) {
    const [sx0, sy0] = toScreen(rect[0], rect[1]);
    const [sx1, sy1] = toScreen(rect[2], rect[3]);
    ctx.drawImage(img, sx0, sy0, sx1 - sx0, sy1 - sy0);
  }

  function draw() {
    frame = 0;
    if (!info) return;
    ctx.setTransform(view.dpr, 0, 0, view.dpr, 0, 0);
    ctx.fillStyle = "#e9ebef";
    ctx.fillRect(0, 0, view.w, view.h);
    const z = zoomFor(view.scale);
    // full resolution and beyond: show the pixels as they are
    ctx.imageSmoothingEnabled = view.scale * view.dpr < 1;
    // coarser zooms already loaded stand in for tiles of z that are still on their way
    for (let zz = info.max_zoom; zz > z; zz--) drawLevel(zz, zz === info.max_zoom);
    stats.tilesDrawn = drawLevel(z, true);
    stats.zoom = z;
    ctx.imageSmoothingEnabled = false;
    stats.tissueDrawn = false;
    if (ui.tissue.checked && overlays.tissue) {
      drawImageRect(overlays.tissue, info.tissue.rect);
      stats.tissueDrawn = true;
    }
    stats.attentionDrawn = false;
    if (ui.attention.checked && overlays.attention) {
      ctx.globalAlpha = ui.opacity.value / 100;
      drawImageRect(overlays.attention, info.attention.rect);
      ctx.globalAlpha = 1;
      stats.attentionDrawn = true;
    }
    stats.outlinesDrawn = ui.tiles.checked ? drawOutlines() : 0;
    stats.draws++;
    const downsample = 1 / view.scale;
    statusLine.textContent = `zoom ${z} of 0–${info.max_zoom} · ${downsample >= 1 ? downsample.toFixed(1) : "1/" + (1 / downsample).toFixed(1)} level-0 px per screen px` + (pending ? ` · loading ${pending}` : "");
    canvas.dataset.zoom = String(z);
    canvas.dataset.tilesDrawn = String(stats.tilesDrawn);
    canvas.dataset.outlines = String(stats.outlinesDrawn);
  }

  function drawOutlines() {
    let n = 0;
    const seen = new Set();
    ctx.lineWidth = 2;
    for (const t of info.tiles) {
      const key = `${t.x},${t.y},${t.w},${t.h}`;
      if (seen.has(key)) continue;
      seen.add(key);
      const [sx, sy] = toScreen(t.x, t.y);
      const w = Math.max(4, t.w * view.scale), h = Math.max(4, t.h * view.scale);
      if (sx > view.w || sy > view.h || sx + w < 0 || sy + h < 0) continue;
      const hot = key === hovered || (active && key === active);
      ctx.strokeStyle = hot ? "#ffffff" : "#00e5ff";
      ctx.lineWidth = hot ? 3 : 2;
      ctx.strokeRect(sx, sy, w, h);
      n++;
    }
    return n;
  }

  function requestDraw() {
    if (!frame) frame = requestAnimationFrame(draw);
  }

  // the view moved under a still mouse: the tooltip no longer describes what is under it
  function moved() {
    tooltip.hidden = true;
    hovered = null;
    requestDraw();
  }

  // ------------------------------------------------------------------ interaction
  function tilesAt(sx, sy) {
    const [x, y] = toLevel0(sx, sy);
    const slack = 2 / view.scale; // outlines are at least 4 screen px
    return info.tiles.filter((t) => x >= t.x - slack && y >= t.y - slack &&
      x <= t.x + Math.max(t.w, 4 / view.scale) + slack && y <= t.y + Math.max(t.h, 4 / view.scale) + slack);
  }

  function showTooltip(e, sx, sy) {
    const hits = ui.tiles.checked ? tilesAt(sx, sy) : [];
    const key = hits.length ? `${hits[0].x},${hits[0].y},${hits[0].w},${hits[0].h}` : null;
    if (key !== hovered) { hovered = key; requestDraw(); }
    if (!hits.length) { tooltip.hidden = true; return; }
    const lines = hits.map((t) => `draw ${t.draw} · rank ${t.rank} · attention ${sci(t.attention)} (cell ${t.cell})`);
    const t = hits[0];
    lines.push(`level-0 (${t.x}, ${t.y}), ${t.w} x ${t.h} px`);
    tooltip.textContent = lines.join("\n");
    tooltip.hidden = false;
    tooltip.style.left = `${Math.min(sx + 14, view.w - tooltip.offsetWidth - 4)}px`;
    tooltip.style.top = `${Math.min(sy + 14, view.h - tooltip.offsetHeight - 4)}px`;
  }

  function bindEvents() {
    let drag = null;
    canvas.addEventListener("pointerdown", (e) => {
      drag = { x: e.clientX, y: e.clientY, cx: view.cx, cy: view.cy };
      canvas.setPointerCapture(e.pointerId);
      viewer.classList.add("dragging");
    });
    canvas.addEventListener("pointermove", (e) => {
      const rect = canvas.getBoundingClientRect();
      if (drag) {
        view.cx = drag.cx - (e.clientX - drag.x) / view.scale;
        view.cy = drag.cy - (e.clientY - drag.y) / view.scale;
        tooltip.hidden = true;
        requestDraw();
      } else {
        showTooltip(e, e.clientX - rect.left, e.clientY - rect.top);
      }
    });
    const end = () => { drag = null; viewer.classList.remove("dragging"); };
    canvas.addEventListener("pointerup", end);
    canvas.addEventListener("pointercancel", end);
    canvas.addEventListener("pointerleave", () => { tooltip.hidden = true; if (hovered) { hovered = null; requestDraw(); } });
    canvas.addEventListener("wheel", (e) => {
      e.preventDefault();
      const rect = canvas.getBoundingClientRect();
      const dy = e.deltaMode === 1 ? e.deltaY * 33 : e.deltaY;
      zoomAt(e.clientX - rect.left, e.clientY - rect.top, Math.exp(-dy * 0.002));
    }, { passive: false });
    canvas.addEventListener("dblclick", (e) => {
      const rect = canvas.getBoundingClientRect();
      zoomAt(e.clientX - rect.left, e.clientY - rect.top, 2);
    });
    document.getElementById("zoom-in").addEventListener("click", () => zoomAt(view.w / 2, view.h / 2, 2));
    document.getElementById("zoom-out").addEventListener("click", () => zoomAt(view.w / 2, view.h / 2, 0.5));
    document.getElementById("zoom-fit").addEventListener("click", fit);
    viewer.addEventListener("keydown", (e) => {
      const step = 80 / view.scale;
      const keys = {
        "+": () => zoomAt(view.w / 2, view.h / 2, 1.5), "=": () => zoomAt(view.w / 2, view.h / 2, 1.5),
        "-": () => zoomAt(view.w / 2, view.h / 2, 1 / 1.5), "0": fit,
        ArrowLeft: () => { view.cx -= step; }, ArrowRight: () => { view.cx += step; },
        ArrowUp: () => { view.cy -= step; }, ArrowDown: () => { view.cy += step; },
      };
      if (keys[e.key]) { e.preventDefault(); keys[e.key](); moved(); }
    });
    for (const input of Object.values(ui)) input.addEventListener("input", requestDraw);
    window.addEventListener("resize", resize);
  }

  // ------------------------------------------------------------------ panel
  function facts() {
    const rec = info.record, row = info.row;
    const box = document.getElementById("facts");
    box.textContent = "";
    box.appendChild(el("h2", "", "Prediction"));
    const p = el("div", "big", fmt(rec.probability));
    p.id = "probability";
    box.appendChild(p);
    const dl = el("dl");
    const add = (k, v, cls) => { dl.appendChild(el("dt", "", k)); dl.appendChild(el("dd", cls || "", v)); };
    add("95% interval", rec.ci_low === null || rec.ci_low === undefined ? "– (one draw)" : `${fmt(rec.ci_low)} – ${fmt(rec.ci_high)}`);
    add("prediction", rec.prediction);
    if (row.label !== undefined && row.label !== null) {
      add("label", `${row.label} (${row.label === rec.prediction ? "right" : "wrong"})`, row.label === rec.prediction ? "right" : "wrong");
    }
    if (row.split) add("split", row.split);
    add("draws", `${rec.n_draws} x ${rec.n_patches} tiles`);
    add("per draw", (info.draw_probabilities || []).map((v) => fmt(v)).join(", "));
    add("tiles read", rec.n_tiles_read);
    add("tile", `${rec.tile_size_level0[0]} x ${rec.tile_size_level0[1]} level-0 px`);
    add("slide", `${info.width} x ${info.height} px, ${info.levels.length} levels`);
    if (info.mpp) add("mpp", `${fmt(info.mpp[0], 4)} µm/px`);
    if (rec.warnings) add("warnings", rec.warnings, "warn");
    add("file", info.path);
    box.appendChild(dl);
    document.getElementById("slide-title").textContent = info.slide_id;
    let verdict = `p = ${fmt(rec.probability)}`;
    if (rec.ci_low !== null && rec.ci_low !== undefined) verdict += ` [${fmt(rec.ci_low)}, ${fmt(rec.ci_high)}]`;
    verdict += ` · prediction ${rec.prediction} · ${rec.n_tiles_read} tiles read`;
    document.getElementById("verdict").textContent = verdict;
  }

  function colorbar() {
    const c = document.getElementById("colorbar-canvas");
    const g = c.getContext("2d");
    const grad = g.createLinearGradient(0, 0, c.width, 0);
    const ramp = info.attention.ramp;
    ramp.forEach((rgb, i) => grad.addColorStop(i / (ramp.length - 1), `rgb(${rgb[0]},${rgb[1]},${rgb[2]})`));
    g.fillStyle = grad;
    g.fillRect(0, 0, c.width, c.height);
    const ticks = document.getElementById("colorbar-ticks");
    const peak = info.attention.peak, decades = info.attention.decades;
    for (let k = 0; k <= decades; k++) {
      const s = el("span", "", peak ? sci(peak * 10 ** (k - decades)) : "0");
      s.style.left = `${(k / decades) * 100}%`;
      ticks.appendChild(s);
    }
    document.getElementById("colorbar-caption").textContent =
      `attention per cell, log scale (peak and ${decades} decades below; lower is transparent)`;
  }

  function gallery() {
    const box = document.getElementById("gallery");
    const items = info.gallery;
    document.getElementById("gallery-count").textContent =
      `(${items.length} distinct of ${info.tiles.length} sampled, level 0)`;
    const more = document.getElementById("gallery-more");
    const show = (upto) => {
      box.textContent = "";
      for (const g of items.slice(0, upto)) {
        const fig = el("figure");
        const img = el("img");
        img.src = `/sampled/${encodeURIComponent(name)}/${g.index}.png`;
        img.alt = `sampled tile at (${g.x}, ${g.y})`;
        img.loading = "lazy";
        fig.appendChild(img);
        const draws = g.draws.map((d) => `draw ${d[0]} rank ${d[1]}`).join(", ");
        const drawn = g.draws.length === 1 ? `d${g.draws[0][0]} r${g.draws[0][1]}` : `${g.draws.length} draws`;
        fig.appendChild(el("figcaption", "", `${sci(g.attention)} · ${drawn}`));
        fig.title = `${draws}\nlevel-0 (${g.x}, ${g.y}) ${g.w} x ${g.h} px: click to go there`;
        fig.addEventListener("click", () => {
          active = `${g.x},${g.y},${g.w},${g.h}`;
          for (const f of box.children) f.classList.remove("active");
          fig.classList.add("active");
          goTo(g.x, g.y, g.w, g.h);
          viewer.scrollIntoView({ block: "nearest" });
        });
        box.appendChild(fig);
      }
      more.hidden = items.length <= upto;
    };
    more.addEventListener("click", () => show(items.length));
    show(GALLERY_FIRST);
  }

  function loadOverlay(key, spec) {
    if (!spec) { ui[key].disabled = true; ui[key].parentElement.title = "not in this output folder"; return; }
    const img = new Image();
    img.onload = () => { overlays[key] = img; requestDraw(); };
    img.onerror = () => { console.error(`wsi-ats view: cannot load the ${key} overlay`); };
    img.src = spec.url;
  }

  async function main() {
    const res = await fetch(`/api/slide/${encodeURIComponent(name)}`);
    const data = await res.json();
    if (!res.ok) {
      statusLine.textContent = data.error || `error ${res.status}`;
      console.error(`wsi-ats view: ${data.error}`);
      return;
    }
    info = data;
    facts();
    colorbar();
    gallery();
    loadOverlay("attention", info.attention);
    loadOverlay("tissue", info.tissue);
    bindEvents();
    resize();
    fit();
  }

  // for tests and the curious: the view, what the last frame drew, and the controls
  window.wsiViewer = {
    view, stats,
    get ready() { return info !== null && overlays.attention !== null; },
    get pending() { return pending; },
    get failed() { return failed; },
    get info() { return info; },
    zoomAt, fit, goTo,
  };
  main();
})();
