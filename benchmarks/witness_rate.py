"""Witness rate: the share of the tiles a training step draws on positive slides that lie in lesions.

The tile classifier learns from the lesion tiles among the tiles it is shown; this script measures
their share under the training proposal of an untrained model (the attention is near uniform, so
the share is what exploration gives), per kind of spot, drawing ``N`` cells of each positive
training slide of a cached cohort as ``training/step.py`` does (without replacement, exploration
share ``explore``).

    python benchmarks/witness_rate.py --cohort dev_distractors_100x16384 \\
        --out benchmarks/results/witness_rate_dev_distractors.txt

``--fit-seeds 0 1 2 ...`` instead fits the cohort strata once per seed (``--restarts`` k-means runs
each, the lowest inertia kept) and prints each fit's inertia and witness rate; ``--by-stratum``
adds, per fit and cohort stratum, the tiles drawn on positive and negative slides and the share of
each kind of spot among the positive slides' ones (is the lesion stratum clean, or diluted?).
"""

from __future__ import annotations

import argparse
import platform
import sys
from pathlib import Path

import numpy as np
import torch
from clam_style import tile_size_level0
from learning_trace import overrides
from report import command_line, emit

from wsi_ats.core import fit_appearance_strata, nearest_stratum
from wsi_ats.core.exploration import RESTARTED_LLOYD_STEPS, cell_descriptors, lloyd_steps
from wsi_ats.models import PipelineConfig
from wsi_ats.models.classifier import build_model
from wsi_ats.stages import attention_map_size, cells_to_locations, view_tensors
from wsi_ats.synth.lesions import lesion_boxes, tile_hits
from wsi_ats.training import read_cohort
from wsi_ats.training.data import SlideStore
from wsi_ats.training.step import StepSettings, plan_batch

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / "benchmarks" / "_cache"
PIPELINE = ROOT / "pipelines" / "baselines.toml"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--cohort", default="dev_distractors_100x16384", help="folder in _cache")
    ap.add_argument("--n", type=int, default=128, help="tiles drawn per slide")
    ap.add_argument("--explore", type=float, default=0.5, help="exploration share of the draws")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--set", action="append", default=[], help="SECTION.FIELD=VALUE override")
    ap.add_argument("--fit-seeds", type=int, nargs="*", help="cohort strata fitted per seed")
    ap.add_argument("--restarts", type=int, default=8, help="k-means runs per fit (--fit-seeds)")
    ap.add_argument(
        "--iters", type=int,
        help=f"Lloyd steps per run (--fit-seeds; default as training: {RESTARTED_LLOYD_STEPS} "
        "with restarts, else 20)",
    )  # fmt: skip
    ap.add_argument(
        "--by-stratum", action="store_true", help="per stratum composition (--fit-seeds)"
    )
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    if args.iters is None:
        args.iters = lloyd_steps(args.restarts)
    torch.set_num_threads(1)
    cohort = CACHE / args.cohort
    config = PipelineConfig.from_toml(PIPELINE).replace(**overrides(args.set))
    model = build_model(config, seed=args.seed)
    kinds = ("malignant", "benign", "distractor")
    boxes = {k: lesion_boxes(cohort / "ground_truth.json", (k,)) for k in kinds}
    train = [s for s in read_cohort(cohort / "manifest.csv") if s.split == "train"]
    slides = [s for s in train if s.label]
    fits = []
    with SlideStore(config, 2) as store:
        if args.fit_seeds:
            desc = store.cohort_descriptors(train, lambda view: attention_map_size(model, view))
            for seed in args.fit_seeds:
                store.set_strata(fit_appearance_strata(
                    desc, config.train.explore_strata, seed=seed, restarts=args.restarts,
                    iters=args.iters,
                ))  # fmt: skip
                hits, total = witness(model, store, slides, boxes, args)
                fits.append(f"fit seed {seed:>3}: inertia {inertia(desc, store.strata):.4f}  " + (
                    "  ".join(f"{k} {hits[k] / total:6.2%}" for k in kinds)))  # fmt: skip
                if args.by_stratum:
                    fits += by_stratum(model, store, train, boxes, args)
        else:
            if config.train.explore_scope == "cohort":  # as the training loop: on every train slide
                store.fit_strata(train, lambda view: attention_map_size(model, view))
            hits, total = witness(model, store, slides, boxes, args)
    lines = [
        command_line("witness_rate.py"),
        f"# cohort {args.cohort}: {len(slides)} positive training slides, N = {args.n} per slide "
        f"without replacement, explore {args.explore}, untrained model of {PIPELINE.name} "
        f"(seed {args.seed})",
        f"# machine: {platform.machine()}, torch {torch.__version__}",
    ]
    if fits:
        lines += [
            f"# {args.restarts} k-means run(s) of up to {args.iters} Lloyd steps per fit, the "
            "lowest inertia kept",
            *fits,
        ]
    else:
        lines += [f"tiles drawn: {total}", *(f"{k:<11} {hits[k] / total:7.2%}" for k in kinds)]
    return emit(lines, args.out)


def witness(model, store: SlideStore, slides: list, boxes: dict, args) -> tuple[dict, int]:
    """Lesion tiles per kind among the ``args.n`` cells drawn on each of ``slides``, and the total."""
    config = model.config
    generator = torch.Generator().manual_seed(args.seed)
    hits = dict.fromkeys(boxes, 0)
    total = 0
    for s in slides:
        plan = plan_batch(model, store, [s], generator, StepSettings(args.n, args.explore))[0]
        plan.tiles.cancel()  # only the locations are needed
        map_size = attention_map_size(model, plan.view)
        locs = cells_to_locations(plan.drawn.indices, map_size, plan.view, config)[0]
        size = tile_size_level0(config, plan.view)
        for k in boxes:
            hits[k] += int(tile_hits(np.asarray(locs), size, boxes[k][s.slide_id]).sum())
        total += int(np.asarray(locs).reshape(-1, 2).shape[0])
    return hits, total


def by_stratum(model, store: SlideStore, train: list, boxes: dict, args) -> list[str]:
    """Per stratum of ``store.strata``: tiles drawn on the positive and the negative slides of
    ``train`` (``args.n`` each, as :func:`witness`), and each kind's share of the positive ones."""
    config, strata = model.config, store.strata
    generator = torch.Generator().manual_seed(args.seed)
    n = len(strata.centres)
    drawn = np.zeros((2, n))
    kind_hits = {k: np.zeros(n) for k in boxes}
    for s in train:
        plan = plan_batch(model, store, [s], generator, StepSettings(args.n, args.explore))[0]
        plan.tiles.cancel()
        map_size = attention_map_size(model, plan.view)
        x, _ = view_tensors(plan.view, torch.device("cpu"))
        cell_strata = nearest_stratum(cell_descriptors(x, map_size, config.train.explore_context),
                                      strata)[0]  # fmt: skip
        of_drawn = cell_strata[plan.drawn.indices.reshape(-1)].numpy()
        np.add.at(drawn[int(s.label > 0)], of_drawn, 1)
        if s.label:
            locs = cells_to_locations(plan.drawn.indices, map_size, plan.view, config)[0]
            size = tile_size_level0(config, plan.view)
            for k in boxes:
                hit = tile_hits(np.asarray(locs), size, boxes[k][s.slide_id]).reshape(-1)
                np.add.at(kind_hits[k], of_drawn[hit], 1)
    lines = [f"  {'stratum':>7} {'drawn neg':>9} {'drawn pos':>9} " + " ".join(
        f"{k:>10}" for k in boxes)]  # fmt: skip
    for j in range(n):
        pos = max(drawn[1, j], 1)
        lines.append(f"  {j:>7} {drawn[0, j]:9.0f} {drawn[1, j]:9.0f} " + " ".join(
            f"{kind_hits[k][j] / pos:10.2%}" for k in boxes))  # fmt: skip
    return lines


def inertia(desc: torch.Tensor, strata) -> float:
    """Mean squared standardised distance of ``desc`` to its nearest centre."""
    z = (desc - strata.mean) / strata.std
    return float(((z - strata.centres[nearest_stratum(desc, strata)]) ** 2).sum(1).mean())


if __name__ == "__main__":
    sys.exit(main())
