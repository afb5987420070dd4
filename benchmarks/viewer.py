"""Tile latency of ``wsi-ats view``: 256 px tiles from a local slide, over HTTP, end to end.

A synthetic JPEG-compressed pyramidal TIFF (``wsi_ats.synth``, 16k x 16k by default, cached under
``benchmarks/_cache/viewer``) is predicted once with a small untrained model (the viewer needs a
``predict`` output folder; the weights do not matter here), then ``wsi-ats view`` is started as
its own process (``python -m wsi_ats view OUT``, as a user starts it) and tiles are requested from
this process over keep-alive HTTP connections. Each tile is requested once (distinct random
addresses, so neither the browser-side nor OpenSlide's tile cache answers twice); the file is in
the OS page cache (it was just written or read). Scenarios:

- ``zoom 0, 1 connection``: full-resolution tiles, one after another (a user panning at 1:1);
- ``zooms 1..max, 1 connection``: the other zooms, uniformly (a zoom with its own pyramid level
  is that level's ``read_region``; the coarser ones area-average the next finer level);
- ``zoom 0, 6 connections``: six requests in flight, as a browser fetches a screen of tiles;
- ``zoom 0, png``: the lossless variant (``.png``), one connection.

Latency is from sending the request to reading the last byte (``time.perf_counter``); the
figures are p50, p95 and max in milliseconds, and tiles per second. Goal (issue 13): p95 under
50 ms on 2 cores for 256 px tiles from a local slide.

Usage (from the repository root)::

    python benchmarks/viewer.py --quick        # a 4k slide, fewer tiles (seconds)
    nice -n 5 python benchmarks/viewer.py      # the benchmark (16k slide, 400 tiles a scenario)
"""

from __future__ import annotations

import argparse
import http.client
import os
import platform
import random
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / "benchmarks" / "_cache" / "viewer"


def ensure_slide(size: int, seed: int = 1) -> Path:
    """The cached synthetic slide of ``size`` px a side (written if missing)."""
    from wsi_ats.synth.cohort import GENERATOR_VERSION
    from wsi_ats.synth.slide import write_synthetic_slide

    CACHE.mkdir(parents=True, exist_ok=True)
    path = CACHE / f"slide_{size}_s{seed}_v{GENERATOR_VERSION}.tiff"
    if not path.is_file():
        partial = path.with_suffix(".partial.tiff")
        write_synthetic_slide(partial, size, seed=seed, label=1)
        os.replace(partial, path)
    return path


def predict_folder(slide: Path, out: Path) -> Path:
    """A ``predict`` output folder of the one slide (small untrained model, 2 draws of 16)."""
    import pandas as pd

    from wsi_ats.inference import predict_slide, write_slide_outputs
    from wsi_ats.models import PipelineConfig, build_model
    from wsi_ats.pipeline.state import collect_predictions, write_predictions_csv

    config = PipelineConfig().replace(
        slide={"lowres_size": 256, "patch_size": 256},
        attention={"width": 8, "depth": 2, "map_stride": 2},
        features={"width": 8, "dim": 16},
        sampling={"n_patches": 16},
        predict={"n_draws": 2},
    )
    model = build_model(config, seed=0)
    pred, view = predict_slide(slide, model, slide_id="bench", return_view=True)
    write_slide_outputs(pred, view, out, heatmap=False)
    df: pd.DataFrame = collect_predictions(out, ["bench"])
    write_predictions_csv(df, out)
    return out


def start_viewer(out: Path) -> tuple[subprocess.Popen, str, int]:
    """``wsi-ats view OUT`` in its own process; returns it, its host and port."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "wsi_ats", "view", str(out)],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    url = line.split(" at ")[1].split()[0]
    host, port = url.removeprefix("http://").rstrip("/").rsplit(":", 1)
    return proc, host, int(port)


def fetch_all(host: str, port: int, paths: list[str], connections: int) -> list[float]:
    """Seconds per request of ``paths``, spread over ``connections`` keep-alive connections."""
    times: list[float] = []
    lock = threading.Lock()
    queue = list(paths)

    def worker() -> None:
        conn = http.client.HTTPConnection(host, port, timeout=60)
        while True:
            with lock:
                if not queue:
                    break
                path = queue.pop()
            t0 = time.perf_counter()
            conn.request("GET", path)
            resp = conn.getresponse()
            body = resp.read()
            dt = time.perf_counter() - t0
            if resp.status != 200 or not body:
                raise RuntimeError(f"{path}: HTTP {resp.status}")
            with lock:
                times.append(dt)
        conn.close()

    threads = [threading.Thread(target=worker) for _ in range(connections)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return times


def tile_paths(size: int, zooms: list[int], n: int, rng: random.Random, fmt: str) -> list[str]:
    """``n`` distinct random tile addresses over ``zooms`` (fewer when the zooms hold fewer)."""
    from wsi_ats.viewer import TileGrid

    grid = TileGrid(size, size)
    every = [
        (z, c, r) for z in zooms for c in range(grid.grid(z)[0]) for r in range(grid.grid(z)[1])
    ]
    pick = rng.sample(every, min(n, len(every)))
    return [f"/tiles/bench/{z}/{c}_{r}.{fmt}" for z, c, r in pick]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--size", type=int, default=16384, help="slide side in level-0 px")
    p.add_argument("--tiles", type=int, default=400, help="tiles per scenario")
    p.add_argument("--quick", action="store_true", help="a 4096 px slide, 100 tiles a scenario")
    args = p.parse_args()
    if args.quick:
        args.size, args.tiles = 4096, 100
    from wsi_ats.viewer import TileGrid

    slide = ensure_slide(args.size)
    tmp = Path(tempfile.mkdtemp(prefix="wsi-ats-viewer-bench-"))
    rng = random.Random(0)
    try:
        out = predict_folder(slide, tmp / "out")
        proc, host, port = start_viewer(out)
        try:
            max_zoom = TileGrid(args.size, args.size).max_zoom
            fetch_all(host, port, ["/api/slide/bench"], 1)  # opens the slide once
            zoom0 = tile_paths(args.size, [0], 3 * args.tiles, rng, "jpg")
            scenarios = [
                ("zoom 0, 1 connection, jpg", zoom0[: args.tiles], 1),
                (
                    f"zooms 1..{max_zoom}, 1 connection, jpg",
                    tile_paths(args.size, list(range(1, max_zoom + 1)), args.tiles, rng, "jpg"),
                    1,
                ),
                ("zoom 0, 6 connections, jpg", zoom0[args.tiles : 2 * args.tiles], 6),
                (
                    "zoom 0, 1 connection, png",
                    [q.replace(".jpg", ".png") for q in zoom0[2 * args.tiles :]],
                    1,
                ),
            ]
            print(
                f"# wsi-ats view tile latency: {args.size} x {args.size} px synthetic JPEG TIFF "
                f"({slide.name}), 256 px tiles over HTTP keep-alive, server in its own process"
            )
            print(
                f"# machine: {platform.machine()}, {os.cpu_count()} CPU cores (shared), "
                f"Python {platform.python_version()}; load average (1 min) at start "
                f"{os.getloadavg()[0]:.1f}"
            )
            print(f"{'scenario':<36} {'tiles':>6} {'p50 ms':>8} {'p95 ms':>8} {'max ms':>8} "
                  f"{'tiles/s':>8}")  # fmt: skip
            for name, paths, conns in scenarios:
                t0 = time.perf_counter()
                times = np.array(fetch_all(host, port, paths, conns)) * 1e3
                wall = time.perf_counter() - t0
                p50, p95 = np.percentile(times, [50, 95])
                print(f"{name:<36} {len(times):>6} {p50:>8.1f} {p95:>8.1f} {times.max():>8.1f} "
                      f"{len(times) / wall:>8.0f}")  # fmt: skip
            print(f"# load average (1 min) at end {os.getloadavg()[0]:.1f}")
            print("goal: p95 < 50 ms for 256 px tiles from a local slide (zoom 0, 1 connection)")
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
