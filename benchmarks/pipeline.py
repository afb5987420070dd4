"""Cohort pipeline throughput and memory: sequential loop vs the Dask pipeline on 1 and 2 workers.

    python benchmarks/pipeline.py                      # 200 slides of 4096 px (cached), 4 rounds
    python benchmarks/pipeline.py --n-slides 40 --size 2048 --rounds 2     # reduced

Prints, in one run:
- slides/minute of a plain sequential loop (``predict_slide`` + ``write_slide_outputs`` per slide, in
  this process, torch 1 thread),
- slides/minute of ``predict_cohort`` on a ``LocalCluster`` with 1 and with 2 workers
  (``threads_per_worker=1``, torch 1 thread per worker; cluster start-up excluded, workers warmed up
  with the model loaded, as the loop's model is),
- peak RSS per worker (``ru_maxrss``) after each round, i.e. at growing cumulative cohort sizes, to
  show memory per worker does not grow with the number of slides,
- a control without Dask: the loop split over 2 independent processes, i.e. the scaling this
  (shared, virtual) 2-core machine itself allows at the time of the run.
The slides are split into ``--rounds`` consecutive chunks and, round by round, each chunk goes through
the loop, both clusters and the 2-process control (order rotated each round), so that the load of other jobs on a shared
machine weighs on all three alike. Goals (issue 6): overhead of the 1-worker pipeline vs the loop
<= 10%; scaling efficiency from 1 to 2 workers >= 0.8; peak RSS per worker flat in cohort size.

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
from contextlib import ExitStack
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


def chunk_manifests(manifest: Path, n: int, rounds: int, dst: Path) -> list[Path]:
    """The first ``n`` slides of ``manifest`` (absolute paths) split into ``rounds`` manifests."""
    import pandas as pd

    df = pd.read_csv(manifest).head(n)
    df["path"] = [str((manifest.parent / p).resolve()) for p in df["path"]]
    bounds = [round(i * n / rounds) for i in range(rounds + 1)]
    out = []
    for r in range(rounds):
        path = dst / f"chunk{r}.csv"
        df.iloc[bounds[r] : bounds[r + 1]].to_csv(path, index=False)
        out.append(path)
    return out


class Loop:
    """The sequential baseline in this process."""

    name = "sequential loop"

    def __init__(self, model_path: Path, out: Path) -> None:
        from wsi_ats.models import load_model

        torch.set_num_threads(1)
        self.model = load_model(model_path)
        self.out = out

    def run(self, manifest: Path) -> int:
        from wsi_ats.cohort.manifest import load_manifest
        from wsi_ats.inference import predict_slide, write_slide_outputs

        entries = load_manifest(manifest).entries
        for e in entries:
            pred, view = predict_slide(e.path, self.model, slide_id=e.slide_id, return_view=True)
            write_slide_outputs(pred, view, self.out)
        return len(entries)


_MODEL = None


def _loop_chunk(
    paths_ids: list[tuple[str, str]], model_path: str, out: str
) -> tuple[int, int, float]:
    """The loop's work on some slides in a pool process (model loaded once per process);
    returns (slides, pid, peak RSS MiB of the process). No slides: load the model, wait 1 s (so
    that the warm-up calls land on distinct processes)."""
    global _MODEL
    from wsi_ats.inference import predict_slide, write_slide_outputs
    from wsi_ats.models import load_model

    if _MODEL is None:
        torch.set_num_threads(1)
        _MODEL = load_model(model_path)
    for path, slide_id in paths_ids:
        pred, view = predict_slide(path, _MODEL, slide_id=slide_id, return_view=True)
        write_slide_outputs(pred, view, out)
    if not paths_ids:
        time.sleep(1.0)
    return len(paths_ids), os.getpid(), peak_rss_mib()


class ParallelLoops:
    """Control without Dask: the loop split over ``n`` independent processes (machine ceiling)."""

    def __init__(self, n: int, model_path: Path, out: Path, stack: ExitStack) -> None:
        from concurrent.futures import ProcessPoolExecutor
        from multiprocessing import get_context

        self.name = f"{n} loop processes"
        self.n, self.model_path, self.out = n, str(model_path), str(out)
        self.pool = stack.enter_context(ProcessPoolExecutor(n, mp_context=get_context("spawn")))
        self.rss: dict[int, float] = {}
        list(self.pool.map(_loop_chunk, [[]] * n, [self.model_path] * n, [self.out] * n))

    def run(self, manifest: Path) -> int:
        from wsi_ats.cohort.manifest import load_manifest

        items = [(e.path, e.slide_id) for e in load_manifest(manifest)]
        parts = [items[i :: self.n] for i in range(self.n)]
        results = self.pool.map(_loop_chunk, parts, [self.model_path] * self.n, [self.out] * self.n)
        total = 0
        for count, pid, rss in results:
            total += count
            self.rss[pid] = max(rss, self.rss.get(pid, 0.0))
        return total

    def peak_rss(self) -> list[float]:
        return sorted(self.rss.values())


class Pipeline:
    """``predict_cohort`` on a LocalCluster of ``n_workers`` single-threaded workers."""

    def __init__(self, n_workers: int, model_path: Path, out: Path, stack: ExitStack) -> None:
        from distributed import Client

        from wsi_ats.pipeline.cluster import local_cluster

        self.name = f"pipeline, {n_workers} worker{'s' * (n_workers > 1)}"
        cluster = stack.enter_context(local_cluster(n_workers, threads_per_worker=1))
        self.client = stack.enter_context(Client(cluster))
        self.client.wait_for_workers(n_workers)
        threads = self.client.run(warm_worker, str(model_path))
        assert set(threads.values()) == {1}, threads
        self.model_path, self.out = model_path, out

    def run(self, manifest: Path) -> int:
        from wsi_ats.pipeline import predict_cohort

        df = predict_cohort(manifest, self.model_path, self.out, client=self.client)
        bad = df[df["status"] != "ok"]
        if len(bad):
            raise RuntimeError(f"{len(bad)} slides failed, first: {bad.iloc[0].to_dict()}")
        return len(df)

    def peak_rss(self) -> list[float]:
        return sorted(self.client.run(peak_rss_mib).values())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n-slides", type=int, default=200, help="slides timed (>= 200 for the issue)")
    ap.add_argument("--size", type=int, default=4096, help="slide side, level-0 pixels")
    ap.add_argument("--rounds", type=int, default=4, help="interleaved rounds (chunks of slides)")
    ap.add_argument("--results", type=Path, default=HERE / "results" / "pipeline.txt")
    args = ap.parse_args()

    from wsi_ats.models import PipelineConfig, build_model, save_checkpoint
    from wsi_ats.synth import make_cohort

    lines: list[str] = []

    def say(text: str = "") -> None:
        print(text, flush=True)
        lines.append(text)

    t0 = time.perf_counter()
    cohort = make_cohort(
        CACHE / f"pipeline_{args.n_slides}x{args.size}", args.n_slides, args.size, seed=0, workers=2
    )
    gen_s = time.perf_counter() - t0
    work = Path(tempfile.mkdtemp(prefix="wsi-ats-bench-pipeline-"))
    try:
        config = PipelineConfig()
        model_path = save_checkpoint(work / "run" / "model.pt", build_model(config, seed=0), 0)
        chunks = chunk_manifests(cohort, args.n_slides, args.rounds, work)
        say("# benchmarks/pipeline.py: cohort pipeline throughput and memory")
        say(f"command: {' '.join([Path(sys.executable).name, *sys.argv])}")
        say(f"date: {time.strftime('%Y-%m-%d %H:%M:%S UTC', time.gmtime())}")
        say(f"machine: {platform.machine()}, {os.cpu_count()} cores (shared with other jobs), "
            f"load avg at start {os.getloadavg()[0]:.2f}; torch {torch.__version__}")  # fmt: skip
        say(f"cohort: {args.n_slides} synthetic slides of {args.size} px (make_cohort, {gen_s:.0f} s "
            f"incl. cache check), in {args.rounds} interleaved rounds")  # fmt: skip
        c = config
        say(f"model: default PipelineConfig, untrained: low-res {c.slide.lowres_size} px, "
            f"{c.predict.n_draws} draws x {c.sampling.n_patches} tiles of {c.slide.patch_size} px "
            f"= {c.predict.n_draws * c.sampling.n_patches} tiles/slide, outputs incl. heatmap PNG")  # fmt: skip
        say()
        with ExitStack() as stack:
            runners = [
                Loop(model_path, work / "out-loop"),
                Pipeline(1, model_path, work / "out-1w", stack),
                Pipeline(2, model_path, work / "out-2w", stack),
                ParallelLoops(2, model_path, work / "out-2loops", stack),
            ]
            k = len(runners)
            seconds = [0.0] * k
            counts = [0] * k
            done = 0
            for r, chunk in enumerate(chunks):
                order = [(i + r) % k for i in range(k)]
                for i in order:
                    start = time.perf_counter()
                    counts[i] += runners[i].run(chunk)
                    seconds[i] += time.perf_counter() - start
                done = counts[0]
                rss1, rss2, rss_loops = (runners[i].peak_rss() for i in (1, 2, 3))
                say(f"round {r + 1}/{args.rounds}: {done:4d} slides so far; peak RSS/worker "
                    f"1w {', '.join(f'{v:.0f}' for v in rss1)} MiB, "
                    f"2w {', '.join(f'{v:.0f}' for v in rss2)} MiB "
                    f"(no-Dask loop processes: {', '.join(f'{v:.0f}' for v in rss_loops)} MiB); "
                    f"load avg {os.getloadavg()[0]:.2f}")  # fmt: skip
            say()
            rates = [60 * n / s for n, s in zip(counts, seconds, strict=True)]
            for runner, n, s, rate in zip(runners, counts, seconds, rates, strict=True):
                say(f"{runner.name:<20}: {n} slides in {s:7.1f} s = {rate:6.1f} slides/min")
        overhead = seconds[1] / seconds[0] - 1
        efficiency = rates[2] / (2 * rates[1])
        ceiling = rates[3] / (2 * rates[0])
        say()
        say(f"pipeline overhead vs loop (1 worker): {100 * overhead:+.1f}%   (goal <= +10%)")
        say(f"scaling efficiency 1 -> 2 workers   : {efficiency:.2f}    (goal >= 0.80)")
        say(f"machine ceiling (2 loop processes vs 1 loop, no Dask): {ceiling:.2f}; "
            f"pipeline efficiency relative to it: {efficiency / ceiling:.2f}")  # fmt: skip
        say(f"load avg at end {os.getloadavg()[0]:.2f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    args.results.parent.mkdir(parents=True, exist_ok=True)
    args.results.write_text("\n".join(lines) + "\n")
    print(f"written {args.results}")


if __name__ == "__main__":
    main()
