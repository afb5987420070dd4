// wsi-ats view, cohort page: the predictions table from /api/predictions, sortable and filterable.
"use strict";

(function () {
  const table = document.getElementById("predictions");
  const state = { rows: [], columns: [], hasLabel: false, sortKey: null, sortDir: 1 };
  window.wsiCohort = { ready: false, shown: 0 };

  const fmt = (v, digits = 3) => (v === null || v === undefined ? "" : Number(v).toFixed(digits));
  const el = (tag, cls, text) => {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text !== undefined && text !== null) e.textContent = String(text);
    return e;
  };

  // the table's columns: [key, title, sort value, cell builder]
  function columns() {
    const cols = [
      ["slide_id", "slide", (r) => r.slide_id, slideCell],
      ["status", "status", (r) => r.status, (r) => el("td", "status-" + r.status, r.status)],
      ["probability", "probability [95% interval]", (r) => r.probability, probabilityCell],
      ["prediction", "prediction", (r) => r.prediction, predictionCell],
    ];
    if (state.hasLabel) cols.push(["label", "label", (r) => r.label, (r) => el("td", "num", r.label)]);
    if (state.columns.includes("split")) cols.push(["split", "split", (r) => r.split, (r) => el("td", "", r.split)]);
    cols.push(["n_draws", "draws x tiles", (r) => r.n_draws, (r) =>
      el("td", "num", r.n_draws === null ? "" : `${r.n_draws} x ${r.n_patches}`)]);
    cols.push(["std", "std", (r) => r.std, (r) => el("td", "num", fmt(r.std, 4))]);
    cols.push(["warnings", "warnings", (r) => r.warnings, (r) => el("td", "warn", r.warnings)]);
    cols.push(["error", "error", (r) => r.error || r.problem, errorCell]);
    return cols;
  }

  function slideCell(r) {
    const td = el("td");
    if (r.viewable) {
      const a = el("a", "slide-link", r.slide_id);
      a.href = "/slide/" + encodeURIComponent(r.name);
      td.appendChild(a);
    } else {
      td.textContent = r.slide_id;
    }
    return td;
  }

  function probabilityCell(r) {
    const td = el("td", "num");
    if (r.probability === null) return td;
    let text = fmt(r.probability);
    if (r.ci_low !== null && r.ci_high !== null) text += ` [${fmt(r.ci_low)}, ${fmt(r.ci_high)}]`;
    td.appendChild(el("span", "", text));
    td.appendChild(intervalBar(r.probability, r.ci_low, r.ci_high));
    return td;
  }

  function intervalBar(p, lo, hi) {
    const bar = el("span", "interval");
    bar.title = "probability (mark) and its 95% interval (band) on [0, 1]; grey line: 0.5";
    bar.appendChild(el("span", "threshold"));
    if (lo !== null && hi !== null) {
      const range = el("span", "range");
      range.style.left = `${lo * 100}%`;
      range.style.width = `${Math.max(1, (hi - lo) * 100)}%`;
      bar.appendChild(range);
    }
    const point = el("span", "point");
    point.style.left = `calc(${p * 100}% - 1px)`;
    bar.appendChild(point);
    return bar;
  }

  function predictionCell(r) {
    const td = el("td", "num", r.prediction);
    if (state.hasLabel && r.prediction !== null && r.label !== null) {
      const right = r.prediction === r.label;
      td.className += right ? " right" : " wrong";
      td.title = right ? "matches the label" : "differs from the label";
    }
    return td;
  }

  function errorCell(r) {
    const td = el("td", "error-text", r.error || (r.status === "ok" ? r.problem : ""));
    return td;
  }

  function fillSelect(id, values) {
    const select = document.getElementById(id);
    for (const v of values) {
      const o = el("option", "", v);
      o.value = v;
      select.appendChild(o);
    }
    select.addEventListener("change", render);
  }

  const distinct = (key) =>
    [...new Set(state.rows.map((r) => r[key]).filter((v) => v !== null && v !== ""))]
      .map(String).sort();

  function filtered() {
    const get = (id) => document.getElementById(id).value;
    const text = document.getElementById("f-text").value.trim().toLowerCase();
    const wrong = document.getElementById("f-wrong").checked;
    return state.rows.filter((r) => {
      for (const [id, key] of [["f-status", "status"], ["f-prediction", "prediction"],
        ["f-label", "label"], ["f-split", "split"]]) {
        const want = get(id);
        if (want !== "" && String(r[key]) !== want) return false;
      }
      if (text && !String(r.slide_id).toLowerCase().includes(text)) return false;
      if (wrong && !(r.label !== null && r.prediction !== null && r.label !== r.prediction)) return false;
      return true;
    });
  }

  function sorted(rows, cols) {
    const col = cols.find((c) => c[0] === state.sortKey);
    if (!col) return rows;
    const key = col[2];
    return [...rows].sort((a, b) => {
      const va = key(a), vb = key(b);
      const na = va === null || va === undefined || va === "";
      const nb = vb === null || vb === undefined || vb === "";
      if (na || nb) return na === nb ? 0 : na ? 1 : -1; // empty values last, either direction
      const cmp = typeof va === "number" && typeof vb === "number"
        ? va - vb : String(va).localeCompare(String(vb), undefined, { numeric: true });
      return cmp * state.sortDir;
    });
  }

  function render() {
    const cols = columns();
    const head = table.tHead;
    head.textContent = "";
    const hr = head.insertRow();
    for (const [key, title] of cols) {
      const th = el("th", "", title);
      th.dataset.key = key;
      if (key === state.sortKey) th.className = state.sortDir > 0 ? "sorted-asc" : "sorted-desc";
      th.addEventListener("click", () => {
        state.sortDir = state.sortKey === key ? -state.sortDir : 1;
        state.sortKey = key;
        render();
      });
      hr.appendChild(th);
    }
    const body = table.tBodies[0];
    body.textContent = "";
    const rows = sorted(filtered(), cols);
    for (const r of rows) {
      const tr = el("tr", r.status === "ok" ? "" : "row-error");
      tr.dataset.slide = r.slide_id;
      for (const c of cols) tr.appendChild(c[3](r));
      body.appendChild(tr);
    }
    summary(rows.length);
    window.wsiCohort = { ready: true, shown: rows.length, total: state.rows.length };
  }

  function summary(shown) {
    const n = state.rows.length;
    const ok = state.rows.filter((r) => r.status === "ok").length;
    let text = `${n} slides · ${ok} ok · ${n - ok} not ok · ${shown} shown`;
    const judged = state.rows.filter((r) => r.label !== null && r.label !== undefined && r.prediction !== null);
    if (state.hasLabel && judged.length) {
      const right = judged.filter((r) => r.label === r.prediction).length;
      text += ` · accuracy ${right}/${judged.length}`;
    }
    document.getElementById("summary").textContent = text;
  }

  async function main() {
    const res = await fetch("/api/predictions");
    if (!res.ok) {
      document.getElementById("summary").textContent = `cannot read the predictions (${res.status})`;
      return;
    }
    const data = await res.json();
    state.rows = data.rows;
    state.columns = data.columns;
    state.hasLabel = data.has_label;
    fillSelect("f-status", distinct("status"));
    fillSelect("f-prediction", distinct("prediction"));
    if (state.hasLabel) fillSelect("f-label", distinct("label"));
    else document.getElementById("f-label-wrap").hidden = true;
    if (state.columns.includes("split")) fillSelect("f-split", distinct("split"));
    else document.getElementById("f-split").parentElement.hidden = true;
    if (!state.hasLabel) document.getElementById("f-wrong").parentElement.hidden = true;
    document.getElementById("f-text").addEventListener("input", render);
    document.getElementById("f-wrong").addEventListener("change", render);
    render();
  }

  main();
})();
