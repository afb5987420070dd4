"""Real-scale geometry: a 100k x 100k synthetic slide at 0.25 um/px (and 200k) with the default spec.

For each slide (``wsi_ats.synth.write_synthetic_slide`` at ``--mpp``, JPEG pyramidal TIFF, cached in
``--cache``; the time to write it is reported when it is written) two fresh subprocesses measure:

1. attention sampling (its peak RSS is this process's ``ru_maxrss``):
   - geometry: the tiles of the spec (``tile_size`` px at ``tile_mpp``), the pyramid level and size
     they are read at; the share of the tissue that can be sampled: 1,000,000 random points on the
     tissue (the tissue mask of the low-res view, each point uniform in its mask pixel's level-0
     extent) tested against the boxes of **every** tile of every attention cell (as
     ``stages.cell_tile_locations``, the one cell-to-tile mapping, places them). The same count for
     the pixel-geometry spec ``pipelines/synthetic.toml`` (512 px view, 64 px tiles at level 0) on
     the same slide shows what the former default could see;
   - ``predict_slide`` end to end (open, low-res view, tissue mask, attention, ``n_draws x N``
     cells, those tiles read, features, aggregation) with the spec's rule for the number of draws
     (``predict.n_draws``, and more rounds while ``predict.decision_max_draws`` allows and the
     interval contains the threshold), then with each fixed number of ``--draws``: the
     median of ``--repeats`` runs after one warm-up run; distinct tiles read (a tile drawn in more
     than one draw is read and featurised once), the probability, and how many of the draws' tiles
     sit on a candidate or a malignant spot (the slide's known layout) against a uniform draw over
     the tissue tiles. The model is an untrained one of ``--spec`` or, with ``--model``, a trained
     checkpoint: its weights do not change the cost of a tile, but a trained attention concentrates
     the draws, so that they repeat tiles and fewer distinct tiles are read;
2. dense tiling with the same tiles and feature network on the same slide: every tissue tile of the
   same grid (the tiles of the attention cells on tissue) read at the same level
   and pushed through ``stages.tile_features``. Only a random subset of ``--dense-tiles`` tissue
   tiles is timed (read + features, batches of ``predict.tile_batch_size``), after one untimed
   read of the same tiles, so that both sides are timed with their tiles in the page cache (the
   sampling side is the median of runs after a warm-up run); the time per slide is
   the view and mask time plus tissue tiles x the measured time per tile: **extrapolated**, and the
   output says so.

torch runs on ``--threads`` threads (2: the machine of the figures has 2 cores).

    nice python benchmarks/real_scale.py [--sizes 100000 200000] [--out benchmarks/results/real_scale.txt]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from report import emit

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SPEC = ROOT / "pipelines" / "default.toml"
PIXEL_SPEC = ROOT / "pipelines" / "synthetic.toml"
N_POINTS = 1_000_000


def slide_path(cache: Path, size: int, mpp: float, label: int = 1) -> Path:
    """The cached slide of ``size`` and ``label`` (seed 0: the same tissue and spots either label)."""
    return cache / (f"slide_{size}_{mpp:g}mpp" + ("" if label == 1 else f"_label{label}") + ".tiff")


def ensure_slide(cache: Path, size: int, mpp: float, label: int = 1) -> tuple[Path, float | None]:
    """The cached synthetic slide (written now when missing) and the seconds it took to write."""
    from wsi_ats.synth import write_synthetic_slide

    path = slide_path(cache, size, mpp, label)
    if path.exists():
        return path, None
    cache.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".tmp_{path.name}")
    t0 = time.perf_counter()
    write_synthetic_slide(tmp, size, seed=0, label=label, mpp=mpp, compression="jpeg")
    os.replace(tmp, path)
    return path, time.perf_counter() - t0


def map_size_of(view, config) -> tuple[int, int]:
    """``(mh, mw)`` of the attention map on ``view`` (``ceil(h / map_stride)``, as AttentionNet)."""
    h, w = view.image.shape[:2]
    stride = config.attention.map_stride
    return (-(-h // stride), -(-w // stride))


def sampleable_share(view, config, rng: np.random.Generator) -> dict:
    """Share of random tissue points inside the tile box of some attention cell (all cells)."""
    import torch

    from wsi_ats.stages import cell_tile_locations

    map_size = map_size_of(view, config)
    k = map_size[0] * map_size[1]
    # every tile of every cell (one a cell unless slide.tiles_per_cell > 1): [K * t, 2] (x, y)
    locs = cell_tile_locations(torch.arange(k)[None], map_size, view, config)[0].reshape(-1, 2)
    side = (view.read_size or config.slide.patch_size) * view.read_downsample  # level-0 px
    # cells form a grid: a point is covered iff its x is in some column's tile interval and its y in
    # some row's (the tile of cell (r, c) spans the column-c x interval and the row-r y interval)
    xs = np.sort(np.unique(locs[:, 0]).astype(np.float64))
    ys = np.sort(np.unique(locs[:, 1]).astype(np.float64))
    ty, tx = np.nonzero(view.mask)
    pick = rng.integers(0, len(ty), N_POINTS)
    sy, sx = view.scale
    py = (ty[pick] + rng.random(N_POINTS)) * sy
    px = (tx[pick] + rng.random(N_POINTS)) * sx
    h0, w0 = view.level0_size
    inside = (py < h0) & (px < w0)  # mask pixels that overhang the slide: drop those points
    py, px = py[inside], px[inside]

    def covered(p: np.ndarray, starts: np.ndarray) -> np.ndarray:
        i = np.searchsorted(starts, p, side="right") - 1
        ok = i >= 0
        return ok & (p < starts[np.maximum(i, 0)] + side)

    hit = covered(px, xs) & covered(py, ys)
    cell = np.array(view.image.shape[:2]) * np.array(view.scale) / np.array(map_size)
    return {
        "share": float(hit.mean()),
        "points": int(len(hit)),
        "tile_level0_px": float(side),
        "cell_level0_px": float(cell[0]),
        "cells": int(k),
        "view": f"{view.image.shape[1]}x{view.image.shape[0]}",
    }


def run_child(path: Path, args: argparse.Namespace) -> dict:
    """The measurements of one slide, ``args.part`` "ats" or "dense" (each in its own process, so
    that its peak RSS is its own; prints one JSON line)."""
    import torch

    torch.set_num_threads(args.threads)
    from wsi_ats.models import PipelineConfig, build_model, load_model
    from wsi_ats.slides import open_slide
    from wsi_ats.stages import view_slide

    cfg = PipelineConfig.from_toml(args.spec)
    if args.model is not None:  # its weights, with this spec's prediction settings
        model = load_model(args.model, config=cfg)
    else:
        model = build_model(cfg, seed=0).eval()
    rng = np.random.default_rng(0)
    out: dict = {"path": str(path), "file_gb": round(path.stat().st_size / 1e9, 2)}
    with open_slide(path) as slide:
        out["dimensions"] = list(slide.dimensions)
        out["mpp"] = slide.mpp
        out["levels"] = [round(d, 3) for d in slide.level_downsamples]
    t0 = time.perf_counter()
    view = view_slide(path, cfg)
    out["view_s"] = time.perf_counter() - t0
    if args.part == "ats":
        out.update(ats_part(path, view, cfg, model, rng, args))
    else:
        out.update(dense_part(path, view, cfg, model, rng, args))
    out["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out["torch_threads"] = torch.get_num_threads()
    return out


def ats_part(path: Path, view, cfg, model, rng: np.random.Generator, args) -> dict:
    """Geometry (real-scale and pixel specs) and attention sampling end to end."""
    from wsi_ats.inference import predict_slide
    from wsi_ats.models import PipelineConfig
    from wsi_ats.stages import view_slide

    out: dict = {
        "geometry": {
            "read_level": view.read_level,
            "read_downsample": view.read_downsample,
            "read_size": view.read_size,
            "tile_size": view.tile_size,
            "mpp_source": view.mpp_source,
            **sampleable_share(view, cfg, rng),
        }
    }
    pixel_cfg = PipelineConfig.from_toml(PIXEL_SPEC)
    out["pixel_geometry"] = sampleable_share(view_slide(path, pixel_cfg), pixel_cfg, rng)
    spots = spot_boxes(args.child_size, args.child_label)
    side = out["geometry"]["tile_level0_px"]
    out["uniform_on"] = spot_shares(tissue_tile_locations(view, cfg), (side, side), spots)
    runs = []
    for n_draws in rule_then_fixed(model, cfg, args.draws):
        t0 = time.perf_counter()
        pred = predict_slide(path, model, n_draws=n_draws, seed=0)
        first = time.perf_counter() - t0
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            pred = predict_slide(path, model, n_draws=n_draws, seed=0)
            times.append(time.perf_counter() - t0)
        runs.append(
            {
                "rule": "spec" if n_draws is None else "fixed",
                "n_draws": int(pred.n_draws),
                "n_patches": pred.n_patches,
                "first_s": first,
                "s": float(np.median(times)),
                "times_s": [round(t, 2) for t in times],
                "tiles_read": int(pred.n_tiles_read),
                "probability": float(pred.probability),
                "on": spot_shares(pred.locations, pred.tile_size_level0, spots),
            }
        )
    out["ats"] = runs
    return out


def rule_then_fixed(model, cfg, draws: list[int]):
    """Yield ``None`` (``predict_slide``'s default: the spec's rule for the number of draws), then
    each number of ``draws``, with ``model.config`` set for it: ``cfg``, then ``cfg`` with the
    decision rule off (exactly that many draws); ``cfg`` again at the end."""
    fixed = cfg.replace(predict={"decision_max_draws": 0})
    for n_draws in [None, *draws]:
        model.config = cfg if n_draws is None else fixed
        yield n_draws
    model.config = cfg


def spot_boxes(size: int, label: int) -> dict[str, np.ndarray]:
    """Level-0 boxes ``(x, y, w, h)`` of the slide's candidate spots and of its malignant ones (the
    layout ``ensure_slide`` wrote: seed 0, recomputed without pixels)."""
    from wsi_ats.synth import slide_layout

    spots = slide_layout(size, seed=0, label=label).spots
    boxes = {
        "spot": [s.box for s in spots if s.kind in ("benign", "malignant")],
        "malignant": [s.box for s in spots if s.kind == "malignant"],
    }
    return {k: np.asarray(v, dtype=np.float64).reshape(-1, 4) for k, v in boxes.items()}


def spot_shares(
    locations: np.ndarray, tile_size: tuple[int, int], boxes: dict[str, np.ndarray]
) -> dict[str, float]:
    """Share of the tiles at ``locations`` (level-0 top-left ``[..., 2]``) on each kind of spot of
    ``boxes``: for the draws' tiles, and for every tissue tile (a uniform draw)."""
    from wsi_ats.synth.lesions import tile_hits

    loc = np.asarray(locations).reshape(-1, 2)
    return {kind: float(tile_hits(loc, tile_size, b).mean()) for kind, b in boxes.items()}


def tissue_tile_locations(view, cfg) -> np.ndarray:
    """Level-0 ``(x, y)`` of every tile of the attention cells on tissue: the dense tiling."""
    import torch

    from wsi_ats.core import mask_to_map
    from wsi_ats.stages import cell_tile_locations

    map_size = map_size_of(view, cfg)
    tissue = mask_to_map(torch.from_numpy(view.mask)[None], map_size)[0].reshape(-1)
    cells = torch.nonzero(tissue)[:, 0]
    return np.asarray(cell_tile_locations(cells[None], map_size, view, cfg)[0]).reshape(-1, 2)


def dense_part(path: Path, view, cfg, model, rng: np.random.Generator, args) -> dict:
    """Dense tiling on the same tile grid (the cells on tissue): a timed random subset."""
    import torch

    from wsi_ats.slides import open_slide
    from wsi_ats.stages import read_tiles, tile_features

    locs = tissue_tile_locations(view, cfg)
    subset = locs[rng.permutation(len(locs))[: args.dense_tiles]]
    size = (view.read_size, view.read_size)
    out_size = None if view.tile_size == view.read_size else (view.tile_size,) * 2
    batch = cfg.predict.tile_batch_size
    with open_slide(path) as slide, torch.no_grad():
        for start in range(0, len(subset), batch):  # untimed: the same tiles warm the page cache
            read_tiles(slide, subset[start : start + batch], view.read_level, size, out_size)
        t0 = time.perf_counter()
        for start in range(0, len(subset), batch):
            tiles = read_tiles(
                slide, subset[start : start + batch], view.read_level, size, out_size
            )
            tile_features(model, tiles, batch_size=batch)
        t_sub = time.perf_counter() - t0
    per_tile = t_sub / len(subset)
    return {
        "dense": {
            "tissue_tiles": int(len(locs)),
            "timed_tiles": int(len(subset)),
            "timed_s": t_sub,
            "s_per_tile": per_tile,
            "slide_s": per_tile * len(locs),  # plus the view, added in the report
        }
    }


def report(rows: list[dict], args: argparse.Namespace) -> list[str]:
    lines = [
        "# real-scale geometry: synthetic slides at "
        f"{args.mpp:g} um/px, "
        + (
            f"trained model {args.model} with the prediction settings of "
            f"{Path(args.spec).resolve().relative_to(ROOT)}"
            if args.model is not None
            else f"untrained model of the spec {Path(args.spec).relative_to(ROOT)}"
        ),
        f"# machine: {platform.machine()}, {os.cpu_count()} cores ({platform.processor() or '?'}), "
        f"torch threads {args.threads}, load average at start {args.load_start:.2f} (cores "
        "shared with other jobs)",
        f"# command: python benchmarks/real_scale.py {' '.join(sys.argv[1:])}",
        "",
    ]
    from wsi_ats.models import PipelineConfig

    predict = PipelineConfig.from_toml(args.spec).predict
    cfg_rule = f"{predict.n_draws} draws"
    if predict.decision_max_draws > predict.n_draws:
        cfg_rule += (
            f", rounds of {predict.n_draws} more while the 95% interval contains "
            f"{predict.threshold:g}, up to {predict.decision_max_draws}"
        )
    for r in rows:
        g, p, d = r["geometry"], r["pixel_geometry"], r["dense"]
        w, h = r["dimensions"]
        dense_s = r["dense_view_s"] + d["slide_s"]
        lines += [
            f"## {w} x {h} px slide, label {r['label']}, {r['file_gb']} GB TIFF, mpp "
            f"{r['mpp'][0]:g}, level downsamples {r['levels']}"
            + (f", written in {r['write_s']:.0f} s" if r.get("write_s") else " (cached)"),
            f"tiles: {g['tile_size']} px at 0.5 um/px, read at level {g['read_level']} "
            f"(downsample {g['read_downsample']:g}) as {g['read_size']} px "
            f"({'resized' if g['read_size'] != g['tile_size'] else 'no resize'}); one attention "
            f"cell = {g['cell_level0_px']:g} level-0 px = "
            f"{(k := g['cell_level0_px'] / g['tile_level0_px']):g} x {k:g} tile footprints of "
            f"{g['tile_level0_px']:g} px; low-res view {g['view']} px in {r['view_s']:.2f} s, "
            f"{g['cells']} cells",
            f"share of tissue that can be sampled: {g['share']:.4%} of {g['points']:,} random "
            f"tissue points (pixel-geometry spec synthetic.toml on the same slide: {p['share']:.2%}"
            f", {p['tile_level0_px']:g} px tiles in {p['cell_level0_px']:.0f} px cells)",
            f"dense tiling, same tiles and feature net: {d['tissue_tiles']} tissue tiles; timed "
            f"{d['timed_tiles']} random ones in {d['timed_s']:.1f} s ({1 / d['s_per_tile']:.1f} "
            f"tiles/s) -> EXTRAPOLATED {dense_s:.0f} s per slide (view {r['dense_view_s']:.2f} s "
            f"+ {d['tissue_tiles']} tiles); peak RSS {r['dense_peak_rss_mib']:.0f} MiB",
        ]
        for a in r["ats"]:
            rule = (
                f"the spec's rule ({cfg_rule}): {a['n_draws']} draws"
                if a["rule"] == "spec"
                else f"{a['n_draws']} draw(s), fixed"
            )
            lines.append(
                f"attention sampling, {rule} x N = {a['n_patches']}: "
                f"{a['s']:.2f} s per slide (median of {len(a['times_s'])} after a warm-up: "
                f"{a['times_s']}; first {a['first_s']:.2f} s), {a['tiles_read']} distinct tiles "
                f"read ({d['tissue_tiles'] / a['tiles_read']:.0f}x fewer than dense): "
                f"{dense_s / a['s']:.0f}x faster than dense; probability {a['probability']:.3f}; "
                f"tiles on a candidate spot {a['on']['spot']:.1%} (uniform over tissue "
                f"{r['uniform_on']['spot']:.1%}), on a malignant spot {a['on']['malignant']:.1%} "
                f"(uniform {r['uniform_on']['malignant']:.1%})"
            )
        lines += [
            f"peak RSS, attention-sampling process (geometry checks and every run above): "
            f"{r['peak_rss_mib']:.0f} MiB",
            "",
        ]
    return lines


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[100_000])
    p.add_argument("--mpp", type=float, default=0.25)
    p.add_argument("--spec", type=Path, default=DEFAULT_SPEC)
    p.add_argument(
        "--model",
        type=Path,
        help="a trained checkpoint (model.pt or run folder) to measure instead of an untrained "
        "model of --spec (--spec's prediction settings are used; architectures must match)",
    )
    p.add_argument(
        "--labels", type=int, nargs="+", default=[1], help="labels of the slides (seed 0) per size"
    )
    p.add_argument("--cache", type=Path, default=ROOT / "benchmarks" / "_cache" / "real_scale")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--dense-tiles", type=int, default=1024)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, help="also write the report here")
    p.add_argument(
        "--draws",
        type=int,
        nargs="+",
        default=[8, 4, 2, 1],
        help="fixed numbers of draws measured after the spec's own rule",
    )
    p.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--child-size", type=int, help=argparse.SUPPRESS)
    p.add_argument("--child-label", type=int, help=argparse.SUPPRESS)
    p.add_argument("--part", choices=("ats", "dense"), default="ats", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child is not None:
        print(json.dumps(run_child(args.child, args)))
        return 0
    args.load_start = os.getloadavg()[0]
    rows = []
    for size, label in ((s, lab) for s in args.sizes for lab in args.labels):
        path, write_s = ensure_slide(args.cache, size, args.mpp, label)
        parts = {}
        for part in ("ats", "dense"):
            cmd = [sys.executable, str(Path(__file__).resolve()), "--child", str(path)]
            cmd += ["--part", part, "--spec", str(args.spec), "--repeats", str(args.repeats)]
            cmd += ["--dense-tiles", str(args.dense_tiles), "--threads", str(args.threads)]
            cmd += ["--draws", *map(str, args.draws), "--child-size", str(size)]
            cmd += ["--child-label", str(label)]
            if args.model is not None:
                cmd += ["--model", str(args.model)]
            proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if proc.returncode != 0:
                raise SystemExit(f"measuring {path} ({part}) failed:\n{proc.stderr[-3000:]}")
            parts[part] = json.loads(proc.stdout.strip().splitlines()[-1])
        row = parts["ats"]
        row["dense"] = parts["dense"]["dense"]
        row["dense_view_s"] = parts["dense"]["view_s"]
        row["dense_peak_rss_mib"] = parts["dense"]["peak_rss_mib"]
        row["write_s"] = write_s
        row["label"] = label
        rows.append(row)
    lines = report(rows, args)
    lines.append(f"# load average at the end: {os.getloadavg()[0]:.2f}")
    return emit(lines, args.out)


if __name__ == "__main__":
    raise SystemExit(main())
