"""Cost per slide vs slide size: attention sampling against dense tiling, on this machine.

Synthetic slides of 8k, 16k, 32k, 64k and 128k pixels a side (``wsi_ats.synth``, streamed tile by
tile into JPEG-compressed pyramidal TIFFs; spot diameter fixed in level-0 pixels; cached under
``benchmarks/_cache/scaling``) are run through one untrained model built from
``pipelines/synthetic.toml`` (weights do not change the cost). Each size runs in a fresh
subprocess, which measures:

- attention sampling: ``wsi_ats.inference.predict_slide`` end to end (open, low-res view, tissue
  mask, attention, ``n_draws x n_patches`` cells sampled, those tiles read through OpenSlide,
  features, aggregation): median of ``--repeats`` runs after one warm-up run, plus the first
  (cold-process) run; tiles read; decoded bytes (tiles x 64 x 64 x 3) and bytes that went through
  ``read()`` system calls (``rchar`` of ``/proc/self/io``, which includes the low-res level);
  peak RSS of the process (``ru_maxrss``) and its RSS before the first prediction;
- dense tiling: the same low-res view and tissue mask, then every tissue tile (64 x 64 at level 0
  on a grid; a tile counts as tissue when the mask is set at its centre) read with the same
  backend (``Slide.read_regions``, batched) and pushed through the same feature network
  (``wsi_ats.inference.tile_features``, ``tile_batch_size`` per batch), features averaged. It
  runs until done or until its share of ``--dense-budget-s`` (default 600 s for all sizes
  together) is spent; a size that does not finish is extrapolated from the tiles/s measured on
  it (or, with no budget left, at the largest size measured) and labelled "extrapolated".

Goals (issue 7): attention sampling's time at 128k within 1.5x of its time at 8k; speedup over
dense tiling >= 100x at 64k.

Usage (from the repository root)::

    python benchmarks/scaling.py --quick                 # 2k and 4k slides, seconds
    nice -n 5 python benchmarks/scaling.py               # the benchmark (128k: minutes to write)
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
CACHE = ROOT / "benchmarks" / "_cache" / "scaling"
DEFAULT_SIZES = (8192, 16384, 32768, 65536, 131072)
SPOT_DIAMETER = 256  # level-0 px, the same on every slide
PARTIAL_DENSE_S = 30.0  # seconds spent measuring the dense rate on a size that cannot finish


# ----------------------------------------------------------------------------- slides


def ensure_slide(size: int, cache: Path, seed: int = 1) -> tuple[Path, float | None]:
    """The cached synthetic slide of ``size`` px a side (written if missing): path, seconds spent
    writing it (``None`` when it was cached)."""
    from wsi_ats.synth.slide import write_synthetic_slide

    try:  # the cache key follows the generator's version: new pixels, new file
        from wsi_ats.synth.cohort import GENERATOR_VERSION as version
    except ImportError:
        version = 0
    cache.mkdir(parents=True, exist_ok=True)
    path = cache / f"slide_{size}_d{SPOT_DIAMETER}_s{seed}_v{version}.tiff"
    if path.is_file():
        return path, None
    partial = path.with_suffix(".partial.tiff")
    t0 = time.perf_counter()
    write_synthetic_slide(partial, size, seed=seed, label=1, spot_diameter=SPOT_DIAMETER)
    os.replace(partial, path)
    return path, time.perf_counter() - t0


# ----------------------------------------------------------------------------- child process


def _rchar() -> int:
    """Bytes this process has read through ``read()``-like system calls (Linux), else 0."""
    try:
        for line in Path("/proc/self/io").read_text().splitlines():
            if line.startswith("rchar:"):
                return int(line.split()[1])
    except OSError:
        return 0
    return 0


def _rss_mib() -> float:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def tissue_grid(view, patch: int) -> tuple[np.ndarray, np.ndarray]:
    """Level-0 ``(x, y)`` top-left corners ``int64[K, 2]`` of the ``patch`` grid tiles whose centre
    falls on tissue, row-major; and the grid shape ``(rows, cols)``."""
    h0, w0 = view.level0_size
    sy, sx = view.scale
    rows, cols = math.ceil(h0 / patch), math.ceil(w0 / patch)
    mh, mw = view.mask.shape
    cy = np.minimum(((np.arange(rows) * patch + patch / 2) / sy).astype(np.int64), mh - 1)
    cx = np.minimum(((np.arange(cols) * patch + patch / 2) / sx).astype(np.int64), mw - 1)
    tissue = view.mask[np.ix_(cy, cx)]
    r, c = np.nonzero(tissue)
    return np.stack([c * patch, r * patch], axis=1).astype(np.int64), np.array([rows, cols])


def dense_tiling(path: Path, model, time_limit_s: float) -> dict:
    """Every tissue tile through the feature net (until done or ``time_limit_s``; with a limit of 0
    only the view, the mask and the tissue-tile count are computed)."""
    import torch

    from wsi_ats.slides import open_slide
    from wsi_ats.stages import tile_features, view_slide

    cfg = model.config
    patch, level = cfg.slide.patch_size, cfg.slide.read_level
    batch = cfg.predict.tile_batch_size
    t0 = time.perf_counter()
    view = view_slide(path, cfg)
    t_view = time.perf_counter() - t0
    locs, grid = tissue_grid(view, patch * round(view.read_downsample))
    done, total = 0, np.zeros(cfg.features.dim, dtype=np.float64)
    t1 = time.perf_counter()
    with open_slide(path) as slide, torch.no_grad():
        for start in range(0, len(locs) if time_limit_s > 0 else 0, batch):
            tiles = slide.read_regions(locs[start : start + batch], level, (patch, patch))
            total += tile_features(model, tiles, batch_size=batch).sum(axis=0)
            done += len(tiles)
            if time.perf_counter() - t1 > time_limit_s:
                break
    t_tiles = time.perf_counter() - t1
    return {
        "tissue_tiles": int(len(locs)),
        "grid_tiles": int(grid.prod()),
        "tiles_done": int(done),
        "complete": bool(done == len(locs)),
        "view_s": t_view,
        "tiles_s": t_tiles,
        "tiles_per_s": done / t_tiles if t_tiles > 0 else float("nan"),
    }


def run_child(
    path: Path, config: Path, repeats: int, n_draws: int | None, dense_limit_s: float
) -> dict:
    """Measurements of one slide (runs in its own process; prints one JSON line)."""
    import torch

    from wsi_ats.inference import predict_slide
    from wsi_ats.models import PipelineConfig, build_model

    cfg = PipelineConfig.from_toml(config)
    model = build_model(cfg, seed=0).eval()
    rss_before = _rss_mib()
    t0 = time.perf_counter()
    pred = predict_slide(path, model, n_draws=n_draws, seed=0)
    first = time.perf_counter() - t0
    times, rchar = [], []
    for _ in range(repeats):
        r0 = _rchar()
        t0 = time.perf_counter()
        pred = predict_slide(path, model, n_draws=n_draws, seed=0)
        times.append(time.perf_counter() - t0)
        rchar.append(_rchar() - r0)
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    tile_w, tile_h = cfg.slide.patch_size, cfg.slide.patch_size
    out = {
        "path": str(path),
        "file_bytes": path.stat().st_size,
        "torch_threads": torch.get_num_threads(),
        "n_patches": pred.n_patches,
        "n_draws": pred.n_draws,
        "ats_first_s": first,
        "ats_s": float(np.median(times)),
        "ats_times_s": times,
        "tiles_read": int(pred.n_tiles_read),
        "decoded_bytes": int(pred.n_tiles_read) * tile_w * tile_h * 3,
        "rchar_bytes": int(np.median(rchar)),
        "rss_before_mib": rss_before,
        "peak_rss_mib": peak_mib,
        "attention_cells": int(pred.attention.size),
    }
    out["dense"] = dense_tiling(path, model, dense_limit_s)
    return out


def measure(path: Path, args, dense_limit_s: float) -> dict:
    """``run_child`` in a fresh interpreter (so peak RSS is this slide's alone)."""
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--child",
        str(path),
        "--config",
        str(args.config),
        "--repeats",
        str(args.repeats),
        "--dense-limit",
        str(dense_limit_s),
    ]
    if args.n_draws is not None:
        cmd += ["--n-draws", str(args.n_draws)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"measuring {path} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------- report


def dense_time(row: dict, fallback_rate: float | None) -> tuple[float, str]:
    """Dense time per slide and how it was obtained."""
    d = row["dense"]
    if d["tiles_done"] == 0:
        if not fallback_rate:
            return float("nan"), "not run"
        return d["view_s"] + d["tissue_tiles"] / fallback_rate, "extrapolated*"
    if d["complete"]:
        return d["view_s"] + d["tiles_s"], "measured"
    return d["view_s"] + d["tissue_tiles"] / d["tiles_per_s"], "extrapolated"


def human(size: int) -> str:
    return f"{size // 1024}k" if size >= 1024 else str(size)


def plot(rows: list[dict], path: Path) -> None:
    """Log-log PNG: time per slide vs slide side, both methods (hollow = extrapolated)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sizes = [r["size"] for r in rows]
    fig, ax = plt.subplots(figsize=(5.5, 4))
    ax.plot(sizes, [r["ats_s"] for r in rows], "o-", color="C0", label="attention sampling")
    ax.plot(sizes, [r["dense_s"] for r in rows], "-", color="C3", alpha=0.6)
    for r in rows:
        measured = r["dense_how"] == "measured"
        ax.plot(
            r["size"],
            r["dense_s"],
            "s",
            color="C3",
            mfc="C3" if measured else "white",
            label=None,
        )
    ax.plot([], [], "s", color="C3", label="dense tiling (measured)")
    ax.plot([], [], "s", color="C3", mfc="white", label="dense tiling (extrapolated)")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.minorticks_off()
    ax.set_xticks(sizes)
    ax.set_xticklabels([human(s) for s in sizes])
    ax.set_xlabel("slide side (level-0 pixels)")
    ax.set_ylabel("seconds per slide")
    ax.set_title("Inference time per slide, 2-core CPU")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def report(rows: list[dict], args, gen_times: dict, t_total: float) -> list[str]:
    base = rows[0]["ats_s"]
    first = rows[0]
    lines = [
        "Scaling: time per slide vs slide size (attention sampling vs dense tiling)",
        f"command: python benchmarks/scaling.py {' '.join(args.argv)}".rstrip(),
        f"machine: {platform.machine()} {_cpu_model()}, {os.cpu_count()} CPUs, no GPU; torch threads "
        f"{first['torch_threads']}",
        f"model: untrained, {args.config.relative_to(ROOT) if args.config.is_relative_to(ROOT) else args.config}; "
        f"N = {first['n_patches']} tiles x {first['n_draws']} draws, 64 x 64 px tiles at level 0",
        f"slides: synthetic pyramidal TIFF (JPEG q90, 256 px tiles), spot diameter {SPOT_DIAMETER} px; "
        f"ATS time = median of {args.repeats} warm runs",
        f"machine load (1-min load average, 2 cores shared with other work): {args.load_start:.1f} at "
        f"start, {os.getloadavg()[0]:.1f} at the end",
        "",
        f"{'size':>5} {'file MB':>8} {'tissue tiles':>12} {'ATS s':>7} {'x ' + human(first['size']):>5} {'1st s':>6} "
        f"{'tiles':>6} {'decoded MB':>10} {'read() MB':>9} {'RSS MB':>13} {'dense s':>9} "
        f"{'dense':>13} {'speedup':>8}",
    ]
    for r in rows:
        rss = f"{r['rss_before_mib']:.0f}->{r['peak_rss_mib']:.0f}"
        lines.append(
            f"{human(r['size']):>5} {r['file_bytes'] / 1e6:>8.1f} {r['tissue_tiles_est']:>12,d} "
            f"{r['ats_s']:>7.2f} {r['ats_s'] / base:>5.2f} {r['ats_first_s']:>6.2f} "
            f"{r['tiles_read']:>6d} {r['decoded_bytes'] / 1e6:>10.2f} {r['rchar_bytes'] / 1e6:>9.2f} "
            f"{rss:>13} {r['dense_s']:>9.1f} {r['dense_how']:>13} {r['dense_s'] / r['ats_s']:>7.0f}x"
        )
    lines.append("")
    for r in rows:
        d = r["dense"]
        if d["tiles_done"]:
            lines.append(
                f"  dense {human(r['size'])}: {d['tiles_done']:,d} of {d['tissue_tiles']:,d} tissue tiles in "
                f"{d['tiles_s']:.1f} s ({d['tiles_per_s']:.0f} tiles/s) + view/mask {d['view_s']:.2f} s"
                + ("" if d["complete"] else "; rest extrapolated at that rate")
            )
        else:
            lines.append(
                f"  dense {human(r['size'])}: not run (budget spent); extrapolated* from the rate at the "
                f"largest size measured"
            )
    if gen_times:
        lines.append(
            "  slides written this run: "
            + ", ".join(f"{human(s)} in {t:.0f} s" for s, t in sorted(gen_times.items()))
        )
    lines.append("")
    by_size = {r["size"]: r for r in rows}
    if 8192 in by_size and 131072 in by_size:
        ratio = by_size[131072]["ats_s"] / by_size[8192]["ats_s"]
        lines.append(
            f"Goal 1 (ATS time at 128k within 1.5x of 8k): ratio {ratio:.2f} -> "
            + ("MET" if ratio <= 1.5 else "NOT MET")
        )
    if 65536 in by_size:
        r = by_size[65536]
        sp = r["dense_s"] / r["ats_s"]
        lines.append(
            f"Goal 2 (speedup over dense >= 100x at 64k): {sp:.0f}x ({r['dense_how']} dense time) -> "
            + ("MET" if sp >= 100 else "NOT MET")
        )
    lines.append(f"(total wall time {t_total:.0f} s)")
    lines.append("raw: " + json.dumps(rows, separators=(",", ":")))
    return lines


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


# ----------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--sizes",
        default=",".join(str(s) for s in DEFAULT_SIZES),
        help="px a side, comma-separated",
    )
    p.add_argument("--quick", action="store_true", help="smoke run: 2k and 4k slides, small budget")
    p.add_argument("--config", type=Path, default=ROOT / "pipelines" / "synthetic.toml")
    p.add_argument("--repeats", type=int, default=3, help="timed attention-sampling runs per slide")
    p.add_argument(
        "--n-draws", type=int, default=None, help="default: the config's predict.n_draws"
    )
    p.add_argument(
        "--dense-budget-s", type=float, default=600.0, help="dense tiling, all sizes together"
    )
    p.add_argument("--cache", type=Path, default=CACHE)
    p.add_argument("--out", type=Path, default=RESULTS / "scaling.txt")
    p.add_argument("--plot", type=Path, default=RESULTS / "scaling.png")
    p.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--dense-limit", type=float, default=0.0, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.argv = argv

    if args.child is not None:
        print(
            json.dumps(
                run_child(args.child, args.config, args.repeats, args.n_draws, args.dense_limit)
            )
        )
        return 0
    if args.quick:
        args.sizes = "2048,4096"
        args.dense_budget_s = min(args.dense_budget_s, 60.0)
        args.repeats = 1
        args.out = args.cache.parent / "scaling_quick.txt"  # smoke outputs stay in the cache
        args.plot = args.cache.parent / "scaling_quick.png"
    sizes = sorted(int(s) for s in args.sizes.split(","))

    t_start = time.perf_counter()
    args.load_start = os.getloadavg()[0]
    gen_times: dict[int, float] = {}
    rows: list[dict] = []
    budget_left = args.dense_budget_s
    rate: float | None = None  # dense tiles/s at the largest size measured so far
    for size in sizes:
        path, t_gen = ensure_slide(size, args.cache)
        if t_gen is not None:
            gen_times[size] = t_gen
            print(f"wrote {path.name} in {t_gen:.0f} s", flush=True)
        # give dense tiling the rest of the budget if it should finish, else a short measurement
        expected = None
        if rate and rows:  # tissue tiles grow with the area
            expected = rows[-1]["tissue_tiles_est"] * (size / rows[-1]["size"]) ** 2 / rate
        if budget_left < 5:
            limit = 0.0
        elif expected is not None and expected > budget_left:
            limit = min(PARTIAL_DENSE_S, budget_left)
        else:
            limit = budget_left
        row = measure(path, args, limit)
        row["size"] = size
        d = row["dense"]
        row["tissue_tiles_est"] = d["tissue_tiles"]
        if d["tiles_done"]:
            budget_left -= d["tiles_s"] + d["view_s"]
            rate = d["tiles_per_s"]
        row["dense_s"], row["dense_how"] = dense_time(row, rate)
        rows.append(row)
        print(
            f"{human(size)}: ATS {row['ats_s']:.2f} s/slide, {row['tiles_read']} tiles, peak RSS "
            f"{row['peak_rss_mib']:.0f} MiB; dense {row['dense_s']:.1f} s ({row['dense_how']})",
            flush=True,
        )

    lines = report(rows, args, gen_times, time.perf_counter() - t_start)
    text = "\n".join(lines) + "\n"
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    plot(rows, args.plot)
    print(f"wrote {args.out} and {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
