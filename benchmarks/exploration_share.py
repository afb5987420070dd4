"""Where the exploration measure puts its mass, per kind of structure, on a cached cohort.

For the first ``--slides`` training slides: the share of the exploration measure
(``train.explore_strata`` appearance strata, ``explore_rarity``, ``explore_context`` of the spec)
on tiles whose centre lies in a malignant spot, a benign candidate spot or a distractor, the share
a uniform draw over tissue would give them, and the ratio; plus how much of each kind of spot the
tissue mask covers. This is what the tile classifier gets to see before the attention has learnt
anything: half of the training draws follow this measure (``train.explore = 0.5``).

    python benchmarks/exploration_share.py --cohort dev_standard_100x16384
    python benchmarks/exploration_share.py --cohort dev_distractors_100x16384
    python benchmarks/exploration_share.py --cohort dev_distractors_100x16384 --set train.explore_strata=32

Spec: ``pipelines/baselines.toml`` (``--set SECTION.FIELD=VALUE`` overrides, as in
``learning_trace.py``); the cohort must exist under ``benchmarks/_cache``.
"""

from __future__ import annotations

import argparse
import functools
import json
import platform
import sys
from pathlib import Path

import numpy as np
import torch
from clam_style import tile_size_level0
from learning_trace import overrides
from report import command_line, emit

from wsi_ats import stages
from wsi_ats.models import PipelineConfig
from wsi_ats.models.classifier import build_model
from wsi_ats.slides import tissue_mask
from wsi_ats.stages import attention_map_size, cells_to_locations
from wsi_ats.synth.lesions import lesion_boxes, tile_hits
from wsi_ats.training import read_cohort
from wsi_ats.training.data import SlideStore

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / "benchmarks" / "_cache"
PIPELINE = ROOT / "pipelines" / "baselines.toml"
KINDS = ("malignant", "benign", "distractor")


def mask_cover(view, box: np.ndarray) -> float:
    """Share of a spot's disc (inscribed in its level-0 box) that the view's tissue mask covers."""
    sy, sx = view.scale
    x, y, w, h = (float(v) for v in box)
    ys, xs = np.mgrid[: view.mask.shape[0], : view.mask.shape[1]]
    cy, cx = (ys + 0.5) * sy, (xs + 0.5) * sx
    inside = ((cx - x - w / 2) / (w / 2)) ** 2 + ((cy - y - h / 2) / (h / 2)) ** 2 <= 1
    return float(view.mask[inside].mean()) if inside.any() else float("nan")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--cohort", default="dev_standard_100x16384", help="folder in _cache")
    ap.add_argument("--slides", type=int, default=40, help="training slides looked at")
    ap.add_argument("--set", action="append", default=[], help="SECTION.FIELD=VALUE override")
    ap.add_argument("--out", type=Path, help="also write the output to this file")
    ap.add_argument(
        "--hole-fraction", type=float,
        help="tissue mask: fill holes up to this share of the view (default: tissue_mask's own; "
        "1e-4 was the rule before pale regions inside tissue were filled)",
    )  # fmt: skip
    args = ap.parse_args(argv)
    if args.hole_fraction is not None:
        stages._tissue_mask = functools.partial(tissue_mask, max_hole_fraction=args.hole_fraction)
    torch.set_num_threads(1)
    cohort = CACHE / args.cohort
    ov = overrides(args.set)
    config = PipelineConfig.from_toml(PIPELINE).replace(**ov)
    model = build_model(config, seed=0)
    boxes = {k: lesion_boxes(cohort / "ground_truth.json", (k,)) for k in KINDS}
    slides = [s for s in read_cohort(cohort / "manifest.csv") if s.split == "train"]
    slides = slides[: args.slides]
    share = {k: [] for k in KINDS}
    cover = {k: [] for k in KINDS}
    with SlideStore(config, 2) as store:
        if config.train.explore_scope == "cohort":
            store.fit_strata(slides, lambda v: attention_map_size(model, v))
        for s in slides:
            view = store.view(s)
            map_size = attention_map_size(model, view)
            e = store.exploration(s, map_size)
            cells = np.flatnonzero(e > 0)
            locs = cells_to_locations(torch.from_numpy(cells)[None], map_size, view, config)[0]
            for kind in KINDS:
                b = boxes[kind].get(s.slide_id)
                if b is None or len(b) == 0:
                    continue
                cover[kind] += [mask_cover(view, box) for box in b]
                hit = tile_hits(locs, tile_size_level0(config, view), b)
                if hit.any():
                    share[kind].append((float(e[cells][hit].sum()), float(hit.mean())))
    lines = [
        command_line("exploration_share.py"),
        f"# cohort {args.cohort}, first {len(slides)} training slides; pipelines/baselines.toml "
        f"with {json.dumps(ov)}",
        f"# machine: {platform.machine()}, torch {torch.__version__}",
        f"{'kind':<11} {'slides':>6} {'exploration':>11} {'uniform':>8} {'ratio':>7} "
        f"{'mask covers':>11}",
    ]
    for kind in KINDS:
        if not share[kind]:
            continue
        explored = np.mean([a for a, _ in share[kind]])
        uniform = np.mean([u for _, u in share[kind]])
        lines.append(
            f"{kind:<11} {len(share[kind]):>6} {100 * explored:>10.2f}% {100 * uniform:>7.2f}% "
            f"{explored / uniform:>6.0f}x {100 * np.nanmean(cover[kind]):>10.1f}%"
        )
    return emit(lines, args.out)


if __name__ == "__main__":
    sys.exit(main())
