"""Why training batches mix the labels (``train.balanced_batches``): naive MIL at a low witness rate.

The instance loss of wsi-ats (``instance_topk = 0``) trains every sampled tile of a slide towards
the slide's label. Lesion tiles are a few percent of what a positive slide shows; every other tile
looks the same in both classes. This script trains the pipeline's feature network and instance head
alone on tiles of the development distractors cohort, with steps of 128 tiles that either

* mix the labels (64 tiles of negative slides, 64 of positive slides, pooled over all slides),
* take one label per step (128 tiles of negative slides, or 128 of positive slides), or
* mix the labels but take each label's 64 tiles from one slide, as a training step of two slides
  does (why ``train.instance_memory`` replays tiles pooled over recent slides), or
* pool the tiles but add the slide loss a training step back-propagates into the feature net: BCE
  of the slide head on the mean feature of each label's 64 tiles (why
  ``train.slide_to_features = 0`` exists),

with lesion tiles making up ``--witness`` (default 3.5%) of the positive slides' tiles, as the
exploration gives them on that cohort. It prints how far the instance probability of lesion tiles
rises above that of the other tiles. Same tiles, network, optimiser and number of steps.

    python benchmarks/instance_batches.py    # -> results/instance_batches.txt
    python benchmarks/instance_batches.py --modes pooled one_slide --witness 0.011 \
        --out benchmarks/results/instance_batches_one_slide.txt
    python benchmarks/instance_batches.py --modes pooled slide_loss --witness 0.011 \
        --out benchmarks/results/instance_batches_slide_loss.txt
    python benchmarks/instance_batches.py --modes pooled --witness 0.011 --per-label 256 \
        --out benchmarks/results/instance_batches_512.txt

The cohort must exist under ``benchmarks/_cache`` (``learning.py --ablation --variant distractors``
or ``learning_trace.py`` made it).
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from learning_trace import overrides

from wsi_ats.models import PipelineConfig
from wsi_ats.models.classifier import build_model
from wsi_ats.slides import open_slide
from wsi_ats.synth.lesions import lesion_boxes
from wsi_ats.training import read_cohort

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / "benchmarks" / "_cache"
RESULTS = ROOT / "benchmarks" / "results"
PIPELINE = ROOT / "pipelines" / "baselines.toml"
TILE = 64  # px at level 1, as the pipeline reads them


MODES = {
    "pooled": "mixed labels",
    "one_label": "one label per step",
    "one_slide": "one slide per label",
    "slide_loss": "mixed labels + slide loss",
}


def collect_tiles(cohort: Path, slides: int, per_slide: int, seed: int = 0) -> tuple:
    """uint8 tiles ``[n, 64, 64, 3]`` (level 1), their kind (1 = in a malignant spot), their
    slide's label and index: up to 6 crops inside each malignant spot, ``per_slide`` random tissue
    tiles."""
    rng = np.random.default_rng(seed)
    malignant = lesion_boxes(cohort / "ground_truth.json", ("malignant",))
    tiles, kinds, labels, index = [], [], [], []
    train_set = [s for s in read_cohort(cohort / "manifest.csv") if s.split == "train"]
    for i, s in enumerate(train_set[:slides]):
        with open_slide(s.path) as slide:
            w0, h0 = slide.dimensions
            for x, y, w, h in malignant.get(s.slide_id, []):
                for _ in range(6):
                    cx = int(x + rng.integers(w // 4, 3 * w // 4)) - TILE
                    cy = int(y + rng.integers(h // 4, 3 * h // 4)) - TILE
                    tiles.append(np.asarray(slide.read_region((cx, cy), 1, (TILE, TILE)))[..., :3])
                    kinds.append(1)
                    labels.append(s.label)
                    index.append(i)
            taken = 0
            while taken < per_slide:
                cx, cy = (int(v) for v in rng.integers(0, (w0 - 2 * TILE, h0 - 2 * TILE)))
                t = np.asarray(slide.read_region((cx, cy), 1, (TILE, TILE)))[..., :3]
                if t.mean() < 225:  # tissue, not glass
                    tiles.append(t)
                    kinds.append(0)
                    labels.append(s.label)
                    index.append(i)
                    taken += 1
    return np.stack(tiles), np.array(kinds), np.array(labels), np.array(index)


def run(
    tiles,
    kinds,
    labels,
    index,
    mode: str,
    witness: float,
    steps: int,
    seed: int,
    per_label: int = 64,
    settings: dict | None = None,
) -> list:
    """Train feature net + instance head with naive MIL; the lesion-minus-other probability gap
    every 100 steps."""
    config = PipelineConfig.from_toml(PIPELINE).replace(**(settings or {}))
    model = build_model(config, seed=seed)
    params = [*model.feature_net.parameters(), *model.instance_head.parameters()]
    params += list(model.head.parameters()) if mode == "slide_loss" else []
    opt = torch.optim.Adam(params, lr=config.train.lr)
    rng = np.random.default_rng(seed)
    x = torch.from_numpy(tiles).permute(0, 3, 1, 2).float() / 255
    negative = np.flatnonzero(labels == 0)
    positive_other = np.flatnonzero((labels == 1) & (kinds == 0))
    lesion = np.flatnonzero(kinds == 1)

    def positives(n: int, among: np.ndarray | None = None) -> np.ndarray:
        k = rng.binomial(n, witness)
        other, hits = positive_other, lesion
        if among is not None:  # one slide's tiles (a slide without a lesion crop gives none)
            other, hits = np.intersect1d(other, among), np.intersect1d(hits, among)
            k = k if hits.size else 0
        return np.concatenate([rng.choice(other, n - k), rng.choice(hits, k)]).astype(int)

    def one_slide(label: int) -> np.ndarray:
        return np.flatnonzero(index == rng.choice(np.unique(index[labels == label])))

    gaps = []
    for step in range(1, steps + 1):
        if mode in ("pooled", "slide_loss"):
            idx = np.concatenate([rng.choice(negative, per_label), positives(per_label)])
        elif mode == "one_slide":
            idx = np.concatenate(
                [rng.choice(one_slide(0), per_label), positives(per_label, one_slide(1))]
            )
        else:
            b = 2 * per_label
            idx = rng.choice(negative, b) if rng.random() < 0.5 else positives(b)
        target = torch.from_numpy(labels[idx]).float()
        feats = model.features(x[idx])
        logits = model.instance_logits(feats)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, target)
        if mode == "slide_loss":  # idx: per_label tiles of negative slides, then of positive
            pooled = torch.stack([feats[:per_label].mean(0), feats[per_label:].mean(0)])
            slide_logits = model.classify(pooled)
            slide_target = torch.tensor([0.0, 1.0])
            loss = loss + torch.nn.functional.binary_cross_entropy_with_logits(
                slide_logits.reshape(-1), slide_target
            )
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, config.train.grad_clip)
        opt.step()
        if step % 100 == 0:
            with torch.no_grad():
                p = torch.sigmoid(model.instance_logits(model.features(x))).numpy()
            gaps.append(float(p[kinds == 1].mean() - p[(kinds == 0) & (labels == 0)].mean()))
    return gaps


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--cohort", default="dev_distractors_100x16384", help="folder in _cache")
    ap.add_argument("--witness", type=float, default=0.035, help="lesion share of positive tiles")
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--modes", nargs="+", choices=list(MODES), default=["pooled", "one_label"])
    ap.add_argument("--per-label", type=int, default=64, help="tiles of each label a step")
    ap.add_argument("--set", action="append", default=[], help="SECTION.FIELD=VALUE override")
    ap.add_argument("--out", type=Path, default=RESULTS / "instance_batches.txt")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    now = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    tiles, kinds, labels, index = collect_tiles(CACHE / args.cohort, slides=60, per_slide=40)
    lines = [
        f"# benchmarks/instance_batches.py {' '.join(sys.argv[1:])}  ({now})",
        f"# cohort {args.cohort}: {len(tiles)} level-1 tiles of 60 training slides, "
        f"{int(kinds.sum())} in malignant spots; lesion share of positive tiles {args.witness:.1%}",
        f"# machine: {platform.machine()}, torch {torch.__version__}, 1 thread; "
        f"pipelines/baselines.toml feature net + instance head, Adam, naive MIL, "
        f"{2 * args.per_label} tiles a step",
        "# gap: mean instance probability of lesion tiles minus that of negative slides' tiles",
        f"{'steps':<28}" + "".join(f"{k:>8}" for k in range(100, args.steps + 1, 100)),
    ]
    print("\n".join(lines), flush=True)
    t0 = time.perf_counter()
    for seed in args.seeds:
        for mode in args.modes:
            gaps = run(
                tiles, kinds, labels, index, mode, args.witness, args.steps, seed, args.per_label,
                overrides(args.set),
            )  # fmt: skip
            name = f"{MODES[mode]}, seed {seed}"
            lines.append(f"{name:<28}" + "".join(f"{g:>8.3f}" for g in gaps))
            print(lines[-1], flush=True)
    lines.append(f"total {time.perf_counter() - t0:.0f} s")
    print(lines[-1])
    args.out.write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
