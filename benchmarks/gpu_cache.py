"""Training throughput with a frozen backbone, with and without ``features.cache_tiles``.

    python benchmarks/gpu_cache.py [--manifest M] [--backbone timm:resnet50] [--epochs 3]

Trains the same spec twice (``freeze = "all"``, random backbone weights, ``n_patches_start = 0``)
on the cohort of ``M`` (default: the one ``benchmarks/gpu.py`` writes), once with ``cache_tiles = 0``
and once with ``cache_tiles = --cache``, and prints each epoch's training tiles/s and seconds, and
the cache's hits and misses. Runs on the device it finds (``--device``).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

from wsi_ats.models import PipelineConfig, build_model  # noqa: E402
from wsi_ats.models.accel import resolve_device  # noqa: E402
from wsi_ats.training import train  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument(
        "--manifest", type=Path, default=HERE / "_cache" / "gpu_16_4096" / "manifest.csv"
    )
    p.add_argument("--backbone", default="timm:resnet50")
    p.add_argument("--patch-size", type=int, default=224)
    p.add_argument("--n-patches", type=int, default=32)
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--cache", type=int, default=100_000, help="cache_tiles of the cached run")
    p.add_argument("--read-workers", type=int, default=8)
    p.add_argument("--device", default=None)
    args = p.parse_args()
    device = resolve_device(args.device)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    print(f"device: {device}; torch {torch.__version__}; backbone {args.backbone} frozen; "
          f"tiles {args.patch_size} px; N={args.n_patches}; {args.epochs} epochs; {args.manifest}")  # fmt: skip
    base = PipelineConfig().replace(
        slide={"lowres_size": 512, "patch_size": args.patch_size},
        features={"backbone": args.backbone, "freeze": "all"},
        sampling={"n_patches": args.n_patches},
        train={"epochs": args.epochs, "batch_size": 4, "n_patches_start": 0,
               "read_workers": args.read_workers, "val_draws": 2},
    )  # fmt: skip
    for cache in (0, args.cache):
        cfg = base.replace(features={"cache_tiles": cache})
        model = build_model(cfg, seed=0)
        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory() as out:
            res = train(args.manifest, None, out, progress=False, device=device, model=model)
        total = time.perf_counter() - t0
        rows = ", ".join(
            f"epoch {r['epoch']}: {r['tiles_per_s']:.0f} tiles/s {r['seconds']:.1f}s"
            for r in res.history
        )
        tc = getattr(model.feature_net, "tile_cache", None)
        hits = "" if tc is None else f"; cache {len(tc)} tiles, hits {tc.hits}, misses {tc.misses}"
        print(f"cache_tiles={cache}: {rows}; total {total:.1f}s{hits}", flush=True)


if __name__ == "__main__":
    main()
