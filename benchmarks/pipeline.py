"""Cohort pipeline throughput and memory: sequential loop vs the Dask pipeline on 1 and 2 workers.

    python benchmarks/pipeline.py                   # 200 slides of 4096 px (cached), ~10 min on 2 cores
    python benchmarks/pipeline.py --n-slides 40 --memory-sizes 20,40   # reduced

Prints, in one run:
- slides/minute of a plain sequential loop (``predict_slide`` + ``write_slide_outputs`` per slide, in
  this process, torch 1 thread),
- slides/minute of ``predict_cohort`` on a ``LocalCluster`` with 1 and with 2 workers
  (``threads_per_worker=1``, torch 1 thread per worker; cluster start-up excluded, workers warmed up
  with the model loaded, as the loop's model is),
- peak RSS per worker (``ru_maxrss``) of fresh 2-worker clusters after cohorts of two sizes, to show
  memory per worker does not grow with the cohort.
Goals (issue 6): overhead of the 1-worker pipeline vs the loop <= 10%; scaling efficiency from 1 to 2
workers >= 0.8; peak RSS per worker flat in cohort size.

The cohort (``wsi_ats.synth.make_cohort``) is cached under ``benchmarks/_cache``. The model is an
untrained one built from the default ``PipelineConfig`` (throughput does not depend on the weights).
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
CACHE = HERE / "_cache"


def peak_rss_mib() -> float:
    """Peak resident set size of the calling process, MiB (Linux ``ru_maxrss`` is in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def warm_worker(model_path: str) -> int:
    """Import the stages and load the model once in a worker (what the loop has before timing)."""
    from wsi_ats.pipeline.tasks import ModelRef, resolve_model

    resolve_model(ModelRef.from_path(model_path))
    return torch.get_num_threads()


def run_loop(manifest: Path, model_path: Path, out: Path) -> tuple[float, int]:
    """Sequential ``predict_slide`` + ``write_slide_outputs`` over the manifest; (seconds, slides)."""
    from wsi_ats.inference import predict_slide, write_slide_outputs
    from wsi_ats.models import load_model
    from wsi_ats.pipeline.manifest import load_manifest

    torch.set_num_threads(1)
    model = load_model(model_path)
    entries = load_manifest(manifest).entries
    start = time.perf_counter()
    for e in entries:
        pred, view = predict_slide(e.path, model, slide_id=e.slide_id, return_view=True)
        write_slide_outputs(pred, view, out)
    return time.perf_counter() - start, len(entries)


def run_pipeline(
    manifest: Path, model_path: Path, out: Path, n_workers: int
) -> tuple[float, int, list[float]]:
    """``predict_cohort`` on a fresh LocalCluster; (seconds, slides ok, peak RSS MiB per worker)."""
    from distributed import Client

    from wsi_ats.pipeline import predict_cohort
    from wsi_ats.pipeline.cluster import local_cluster

    with (
        local_cluster(n_workers, threads_per_worker=1, dashboard_address=None) as cluster,
        Client(cluster) as client,
    ):
        client.wait_for_workers(n_workers)
        threads = client.run(warm_worker, str(model_path))
        assert set(threads.values()) == {1}, threads
        start = time.perf_counter()
        df = predict_cohort(manifest, model_path, out, client=client)
        seconds = time.perf_counter() - start
        rss = sorted(client.run(peak_rss_mib).values())
    bad = df[df["status"] != "ok"]
    if len(bad):
        raise RuntimeError(f"{len(bad)} slides failed, first: {bad.iloc[0].to_dict()}")
    return seconds, len(df), rss


def head_manifest(manifest: Path, n: int, dst: Path) -> Path:
    """The first ``n`` slides of ``manifest`` (paths made absolute) as a new manifest."""
    import pandas as pd

    df = pd.read_csv(manifest).head(n)
    df["path"] = [str((manifest.parent / p).resolve()) for p in df["path"]]
    df.to_csv(dst, index=False)
    return dst


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n-slides", type=int, default=200, help="slides timed (>= 200 for the issue)")
    ap.add_argument("--size", type=int, default=4096, help="slide side, level-0 pixels")
    ap.add_argument("--memory-sizes", default="100,200", help="cohort sizes for peak RSS")
    ap.add_argument("--results", type=Path, default=HERE / "results" / "pipeline.txt")
    args = ap.parse_args()
    mem_sizes = [int(s) for s in args.memory_sizes.split(",")]
    n_cohort = max([args.n_slides, *mem_sizes])

    from wsi_ats.models import PipelineConfig, build_model, save_checkpoint
    from wsi_ats.synth import make_cohort

    lines: list[str] = []

    def say(text: str = "") -> None:
        print(text, flush=True)
        lines.append(text)

    t0 = time.perf_counter()
    cohort = make_cohort(
        CACHE / f"pipeline_{n_cohort}x{args.size}", n_cohort, args.size, seed=0, workers=2
    )
    gen_s = time.perf_counter() - t0
    work = Path(tempfile.mkdtemp(prefix="wsi-ats-bench-pipeline-"))
    try:
        config = PipelineConfig()
        model_path = save_checkpoint(work / "run" / "model.pt", build_model(config, seed=0), 0)
        timed = head_manifest(cohort, args.n_slides, work / f"m{args.n_slides}.csv")
        say("# benchmarks/pipeline.py: cohort pipeline throughput and memory")
        say(f"command: {' '.join([Path(sys.executable).name, *sys.argv])}")
        say(f"date: {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}")
        say(f"machine: {platform.machine()}, {os.cpu_count()} cores, load avg at start "
            f"{os.getloadavg()[0]:.2f}; torch {torch.__version__}")  # fmt: skip
        say(f"cohort: {n_cohort} synthetic slides of {args.size} px (make_cohort, {gen_s:.0f} s "
            f"incl. cache check); timed on the first {args.n_slides}")  # fmt: skip
        c = config
        say(f"model: default PipelineConfig, untrained: low-res {c.slide.lowres_size} px, "
            f"{c.predict.n_draws} draws x {c.sampling.n_patches} tiles of {c.slide.patch_size} px "
            f"= {c.predict.n_draws * c.sampling.n_patches} tiles/slide")  # fmt: skip
        say()

        loop_s, n = run_loop(timed, model_path, work / "out-loop")
        loop_rate = 60 * n / loop_s
        say(f"sequential loop      : {n} slides in {loop_s:7.1f} s = {loop_rate:6.1f} slides/min")
        one_s, n1, rss1 = run_pipeline(timed, model_path, work / "out-1w", 1)
        one_rate = 60 * n1 / one_s
        say(f"pipeline, 1 worker   : {n1} slides in {one_s:7.1f} s = {one_rate:6.1f} slides/min"
            f"   peak RSS/worker {', '.join(f'{r:.0f}' for r in rss1)} MiB")  # fmt: skip
        two_s, n2, rss2 = run_pipeline(timed, model_path, work / "out-2w", 2)
        two_rate = 60 * n2 / two_s
        say(f"pipeline, 2 workers  : {n2} slides in {two_s:7.1f} s = {two_rate:6.1f} slides/min"
            f"   peak RSS/worker {', '.join(f'{r:.0f}' for r in rss2)} MiB")  # fmt: skip
        overhead = one_s / loop_s - 1
        efficiency = two_rate / (2 * one_rate)
        say()
        say(f"pipeline overhead vs loop (1 worker): {100 * overhead:+.1f}%   (goal <= +10%)")
        say(f"scaling efficiency 1 -> 2 workers   : {efficiency:.2f}    (goal >= 0.80)")
        say()
        say("peak RSS per worker (fresh 2-worker cluster per cohort size):")
        for size in mem_sizes:
            if size == args.n_slides:
                rss, secs = rss2, two_s
            else:
                m = head_manifest(cohort, size, work / f"m{size}.csv")
                secs, _, rss = run_pipeline(m, model_path, work / f"out-mem{size}", 2)
            say(f"  {size:4d} slides: {', '.join(f'{r:.0f}' for r in rss)} MiB  ({secs:.0f} s)")
        say(f"load avg at end {os.getloadavg()[0]:.2f} (2-core machine shared with other jobs)")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text("\n".join(lines) + "\n")
    print(f"written {args.results}")


if __name__ == "__main__":
    main()
