"""Feature-stage and end-to-end throughput against the tile-decode floor, on the device it finds.

    python benchmarks/gpu.py                                   # 16 slides of 8192 px, cached
    python benchmarks/gpu.py --n-slides 3 --size 2048 --patch-size 64 --feature-tiles 256  # quick

Prints, in one run and for each backbone (``--backbones``, default the built-in compact CNN and,
where timm imports, ``timm:resnet50``; random weights, since throughput does not depend on them):

- decode floor: tiles/s of reading and decoding the sampled tiles alone (OpenSlide, the distinct
  tiles of each slide's draws), one slide at a time ("1t") and ``--read-workers`` slides at a time;
  each slide's batched read already runs on the backend's own per-slide read pool;
- feature stage: tiles/s of host uint8 tiles -> device -> feature network -> host features, in
  batches of ``--batch-size``: float32, and on CUDA the default path (autocast bfloat16 where
  supported, else float16, channels-last, pinned copies);
- end to end: slides/min (and tiles/s) of ``predict_slide`` one slide after the other (view, attention,
  draws, reads, features, aggregation), and pipelined: the view, draws and tile reads of the next
  slides run on ``--read-workers`` threads while the device computes the features of the current one;
- the ratios of each rate to the decode floors, side by side.

The cohort (``wsi_ats.synth.make_cohort``, JPEG tiled TIFFs) is written once under ``--cohort``
(default ``benchmarks/_cache/gpu_<n>_<size>``) and reused.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from wsi_ats.inference import predict_slide  # noqa: E402
from wsi_ats.models import PipelineConfig, build_model  # noqa: E402
from wsi_ats.models.accel import (  # noqa: E402
    FeaturePrecision,
    feature_precision,
    host_to_device,
    resolve_device,
    run_feature_net,
)
from wsi_ats.slides import open_slide  # noqa: E402
from wsi_ats.stages import (  # noqa: E402
    aggregate_slide,
    read_tiles,
    sample_slide,
    tile_features,
    view_slide,
)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def cohort_paths(args: argparse.Namespace) -> list[str]:
    """Paths of the cohort's slides (generated on first use)."""
    import pandas as pd

    root = args.cohort or HERE / "_cache" / f"gpu_{args.n_slides}_{args.size}"
    manifest = Path(root) / "manifest.csv"
    if not manifest.exists():
        from wsi_ats.synth import make_cohort

        print(f"writing {args.n_slides} slides of {args.size} px to {root} ...", flush=True)
        manifest = make_cohort(root, args.n_slides, args.size, seed=0, workers=2)
    df = pd.read_csv(manifest)
    return [str((manifest.parent / p).resolve()) for p in df["path"]][: args.n_slides]


def config_for(args: argparse.Namespace, backbone: str) -> PipelineConfig:
    return PipelineConfig().replace(
        slide={"lowres_size": 512, "patch_size": args.patch_size},
        features={"backbone": backbone, "dim": 32},
        sampling={"n_patches": args.n_patches},
        predict={"n_draws": args.n_draws, "tile_batch_size": args.batch_size},
    )


def unique_locations(smp) -> np.ndarray:  # noqa: ANN001 - a SlideSample
    return np.unique(smp.locations.reshape(-1, 2), axis=0)


def decode_floor(paths: list[str], samples: list, workers: int) -> tuple[float, int]:
    """tiles/s of reading the distinct sampled tiles of every slide on ``workers`` threads."""

    def read(job: tuple[str, object]) -> int:
        path, smp = job
        with open_slide(path) as slide:
            locs = unique_locations(smp)
            return len(read_tiles(slide, locs, smp.read_level, smp.tile_size))

    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=workers) as pool:
        n = sum(pool.map(read, zip(paths, samples, strict=True)))
    return n / (time.perf_counter() - t0), n


def feature_rate(
    model, tiles: np.ndarray, batch: int, device: torch.device, precision: FeaturePrecision | None
) -> float:  # noqa: ANN001
    """tiles/s of host tiles -> device -> features -> host, ``precision`` None: the default path."""
    net = model.feature_net

    def run() -> None:
        with torch.no_grad():
            for start in range(0, len(tiles), batch):
                if precision is None:
                    tile_features(model, tiles[start : start + batch], batch)
                else:
                    x = host_to_device(tiles[start : start + batch], device)
                    x = x.permute(0, 3, 1, 2).float().div_(255.0)
                    run_feature_net(net, x, precision).cpu()

    run_small = tiles[: min(len(tiles), 2 * batch)]
    with torch.no_grad():  # warm-up (cuDNN autotuning, lazy conversions)
        for start in range(0, len(run_small), batch):
            if precision is None:
                tile_features(model, run_small[start : start + batch], batch)
            else:
                x = host_to_device(run_small[start : start + batch], device)
                run_feature_net(net, x.permute(0, 3, 1, 2).float().div_(255.0), precision).cpu()
    sync(device)
    t0 = time.perf_counter()
    run()
    sync(device)
    return len(tiles) / (time.perf_counter() - t0)


def end_to_end_sequential(model, paths: list[str], device: torch.device) -> tuple[float, int]:  # noqa: ANN001
    """(seconds, distinct tiles read) of ``predict_slide`` on every slide, one after the other."""
    t0 = time.perf_counter()
    n = 0
    for path in paths:
        n += predict_slide(path, model).n_tiles_read
    sync(device)
    return time.perf_counter() - t0, n


def end_to_end_pipelined(
    model, paths: list[str], device: torch.device, workers: int
) -> tuple[float, int]:  # noqa: ANN001
    """(seconds, tiles) with view + draws + reads of upcoming slides on ``workers`` threads while
    the device computes features of the current slide."""

    def prepare(path: str) -> tuple[object, np.ndarray, np.ndarray]:
        view = view_slide(path, model.config)
        smp = sample_slide(view, model)
        flat = smp.locations.reshape(-1, 2)
        uniq, inverse = np.unique(flat, axis=0, return_inverse=True)
        with open_slide(path) as slide:
            tiles = read_tiles(slide, uniq, smp.read_level, smp.tile_size)
        return smp, tiles, inverse.reshape(-1)

    t0 = time.perf_counter()
    n = 0
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for smp, tiles, inverse in pool.map(prepare, paths):
            feats = tile_features(model, tiles)[inverse]
            aggregate_slide(model, smp, feats)
            n += len(tiles)
    sync(device)
    return time.perf_counter() - t0, n


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--cohort", type=Path, default=None, help="cohort folder (made if absent)")
    p.add_argument("--n-slides", type=int, default=16)
    p.add_argument("--size", type=int, default=8192, help="level-0 side of the slides, px")
    p.add_argument("--patch-size", type=int, default=224, help="tile side, level-0 px")
    p.add_argument("--n-patches", type=int, default=32, help="N tiles per draw")
    p.add_argument("--n-draws", type=int, default=8, help="draws per slide")
    p.add_argument("--batch-size", type=int, default=256, help="tiles per feature batch")
    p.add_argument(
        "--feature-tiles", type=int, default=4096, help="tiles timed in the feature stage"
    )
    p.add_argument("--read-workers", type=int, default=min(8, os.cpu_count() or 1))
    p.add_argument(
        "--backbones", default=None, help="comma-separated (default compact[,timm:resnet50])"
    )
    p.add_argument("--device", default=None, help="auto, cpu or cuda (default auto)")
    args = p.parse_args()

    device = resolve_device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    else:
        torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
    backbones = args.backbones.split(",") if args.backbones else ["compact"]
    if args.backbones is None:
        try:
            import timm  # noqa: F401

            backbones.append("timm:resnet50")
        except ModuleNotFoundError:
            pass
    precision = feature_precision(device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor()
    print(f"device: {device} ({name or platform.machine()}); torch {torch.__version__}; "
          f"{os.cpu_count()} CPU cores; torch threads {torch.get_num_threads()}; "
          f"feature path: autocast {precision.amp_dtype}, channels_last {precision.channels_last}")  # fmt: skip
    paths = cohort_paths(args)
    print(f"cohort: {len(paths)} slides of {args.size} px; tiles {args.patch_size} px at level 0, "
          f"N={args.n_patches} x {args.n_draws} draws per slide; feature batch {args.batch_size}; "
          f"read workers {args.read_workers}", flush=True)  # fmt: skip

    rows = []
    for backbone in backbones:
        model = build_model(config_for(args, backbone), seed=0).to(device).eval()
        views = [view_slide(path, model.config) for path in paths]
        samples = [sample_slide(v, model) for v in views]
        floor1, n_unique = decode_floor(paths, samples, 1)
        floor_w, _ = decode_floor(paths, samples, args.read_workers)
        tiles = []
        for path, smp in zip(paths, samples, strict=True):
            with open_slide(path) as slide:
                tiles.append(
                    read_tiles(slide, unique_locations(smp), smp.read_level, smp.tile_size)
                )
        pool = np.concatenate(tiles)
        reps = -(-args.feature_tiles // len(pool))
        feature_tiles = np.ascontiguousarray(np.concatenate([pool] * reps)[: args.feature_tiles])
        fp32 = feature_rate(model, feature_tiles, args.batch_size, device,
                            FeaturePrecision(device.type, None, False))  # fmt: skip
        default = feature_rate(model, feature_tiles, args.batch_size, device, None)
        predict_slide(paths[0], model)  # warm-up of the whole path
        seq_s, seq_tiles = end_to_end_sequential(model, paths, device)
        pipe_s, pipe_tiles = end_to_end_pipelined(model, paths, device, args.read_workers)
        rows.append((backbone, n_unique, floor1, floor_w, fp32, default,
                     len(paths) * 60 / seq_s, seq_tiles / seq_s,
                     len(paths) * 60 / pipe_s, pipe_tiles / pipe_s))  # fmt: skip
        del model
        if device.type == "cuda":
            torch.cuda.empty_cache()

    print()
    print(f"{'backbone':<16} {'tiles':>6} {'decode 1t':>10} {f'decode {args.read_workers}t':>10} "
          f"{'feat fp32':>10} {'feat amp':>10} {'e2e seq':>9} {'e2e seq':>9} "
          f"{'e2e pipe':>9} {'e2e pipe':>9}")  # fmt: skip
    print(f"{'':<16} {'':>6} {'tiles/s':>10} {'tiles/s':>10} {'tiles/s':>10} {'tiles/s':>10} "
          f"{'slides/min':>9} {'tiles/s':>9} {'slides/min':>9} {'tiles/s':>9}")  # fmt: skip
    for b, n, f1, fw, fp, fa, ss, st, ps, pt in rows:
        print(f"{b:<16} {n:>6d} {f1:>10.0f} {fw:>10.0f} {fp:>10.0f} {fa:>10.0f} "
              f"{ss:>9.1f} {st:>9.0f} {ps:>9.1f} {pt:>9.0f}")  # fmt: skip
    print()
    print("ratios to the decode floor (1 thread / read-workers threads):")
    for b, _n, f1, fw, fp, fa, _ss, st, _ps, pt in rows:
        print(f"  {b:<16} feature fp32 {fp / f1:6.2f} / {fp / fw:6.2f}   "
              f"feature default {fa / f1:6.2f} / {fa / fw:6.2f}   "
              f"e2e sequential {st / f1:5.2f} / {st / fw:5.2f}   "
              f"e2e pipelined {pt / f1:5.2f} / {pt / fw:5.2f}")  # fmt: skip
    print("(feature default = autocast + channels-last + pinned copies on CUDA; = fp32 on the CPU)")


if __name__ == "__main__":
    main()
