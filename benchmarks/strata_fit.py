"""Time of the cohort strata fit (k-means of the training slides' cell descriptors), side by side.

On a cached cohort's training slides: one k-means run (``train.explore_restarts = 1``) and
``--restarts`` runs (the default, 8), as training fits them; each fit's time (median of
``--repeats``), as a multiple of one run's, and its inertia.

    python benchmarks/strata_fit.py --cohort dev_distractors_100x16384 \\
        --out benchmarks/results/strata_fit_dev_distractors.txt
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
from report import command_line, emit

from wsi_ats.core import fit_appearance_strata
from wsi_ats.models import PipelineConfig
from wsi_ats.models.classifier import build_model
from wsi_ats.stages import attention_map_size
from wsi_ats.training import read_cohort
from wsi_ats.training.data import SlideStore

ROOT = Path(__file__).resolve().parents[1]
PIPELINE = ROOT / "pipelines" / "baselines.toml"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--cohort", default="dev_distractors_100x16384", help="folder in _cache")
    ap.add_argument("--restarts", type=int, default=8)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    config = PipelineConfig.from_toml(PIPELINE)
    model = build_model(config, seed=args.seed)
    manifest = ROOT / "benchmarks" / "_cache" / args.cohort / "manifest.csv"
    train = [s for s in read_cohort(manifest) if s.split == "train"]
    with SlideStore(config, 2) as store:
        desc = store.cohort_descriptors(train, lambda view: attention_map_size(model, view))
    k = config.train.explore_strata
    fits = {"1 run": 1, f"{args.restarts} runs": args.restarts}
    lines = [
        command_line("strata_fit.py"),
        f"# cohort {args.cohort}: {len(train)} training slides, {desc.shape[0]} tissue cells "
        f"({desc.shape[1]} descriptors each; the fit uses at most 200000), {k} strata, seed "
        f"{args.seed}, one torch thread",
        f"# machine: {platform.machine()}, {platform.processor() or '?'}, torch {torch.__version__}",
        f"{'fit':<26} {'seconds':>8} {'x 1 run':>8} {'inertia':>8}",
    ]
    base = None
    for name, restarts in fits.items():
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            strata = fit_appearance_strata(desc, k, seed=args.seed, restarts=restarts)
            times.append(time.perf_counter() - t0)
        z = (desc - strata.mean) / strata.std
        inertia = float(torch.cdist(z, strata.centres).min(1).values.pow(2).mean())
        t = statistics.median(times)
        base = base or t
        lines.append(f"{name:<26} {t:8.2f} {t / base:8.1f} {inertia:8.4f}")
    return emit(lines, args.out)


if __name__ == "__main__":
    sys.exit(main())
