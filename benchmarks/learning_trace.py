"""Trace what the attention and the tile classifier learn, epoch by epoch, on a cached cohort.

After every epoch, on a fixed probe of 7 training slides (4 positive, 3 negative), for the cells of
three kinds (malignant spots, benign spots or distractors, other tissue, from the cohort's ground
truth): the mean attention per cell times the number of tissue cells (1 = a uniform draw) and the
mean instance probability of their tiles. This is how the two failure modes of issue 11 were
found: an attention net whose ReLUs all switched off or on (a flat map that never learns again),
and distillation fitted to an untrained tile classifier's bias.

    python benchmarks/learning_trace.py --cohort dev_standard_100x16384 --seed 2
    python benchmarks/learning_trace.py --cohort dev_standard_100x16384 --seed 2 \\
        --set attention.activation=relu --set train.evidence_quantile=0

Training uses ``pipelines/baselines.toml`` (the spec of ``benchmarks/learning.py``) into a scratch
folder; the cohort must exist under ``benchmarks/_cache`` (``learning.py`` generates it).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import torch
from clam_style import read_view_tiles, tile_size_level0

from wsi_ats.models import PipelineConfig, SlideClassifier
from wsi_ats.slides import open_slide
from wsi_ats.stages import cells_to_locations, eval_mode, tiles_to_tensor, view_slide, view_tensors
from wsi_ats.synth.lesions import lesion_boxes, tile_hits
from wsi_ats.training import read_cohort, train

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / "benchmarks" / "_cache"
PIPELINE = ROOT / "pipelines" / "baselines.toml"
KINDS = ("malignant", "benign", "tissue")


def overrides(pairs: list[str]) -> dict:
    """``["train.seed=2", "attention.activation=relu"]`` -> ``{"train": {"seed": 2}, ...}``."""
    out: dict = {}
    for pair in pairs:
        key, value = pair.split("=", 1)
        section, name = key.split(".", 1)
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError:
            parsed = value
        out.setdefault(section, {})[name] = parsed
    return out


class Probe:
    """The probe slides' views, ground truth and a fixed choice of cells of each kind."""

    def __init__(self, cohort: Path, config: PipelineConfig) -> None:
        gt = cohort / "ground_truth.json"
        self.malignant = lesion_boxes(gt, ("malignant",))
        self.benign = lesion_boxes(gt, ("benign", "distractor"))
        train_slides = [s for s in read_cohort(cohort / "manifest.csv") if s.split == "train"]
        pos = [s for s in train_slides if s.label == 1][:4]
        neg = [s for s in train_slides if s.label == 0][:3]
        self.views = [(s, view_slide(s.path, config, s.slide_id)) for s in pos + neg]

    def __call__(self, model: SlideClassifier, row: dict) -> str:
        cfg = model.config
        att_by, p_by = {k: [] for k in KINDS}, {k: [] for k in KINDS}
        for s, view in self.views:
            x, m = view_tensors(view, model.device)
            with torch.no_grad(), eval_mode(model):
                att = model.attention(x, m)[0]
            flat = att.reshape(-1)
            idx = torch.nonzero(flat > 0)[:, 0]
            locs = cells_to_locations(idx[None], tuple(att.shape), view, cfg)[0]
            size = tile_size_level0(cfg, view)
            on_mal = tile_hits(locs, size, self.malignant[s.slide_id])
            on_ben = tile_hits(locs, size, self.benign[s.slide_id])
            rest = np.nonzero(~on_mal & ~on_ben)[0]
            picks = {
                "malignant": np.nonzero(on_mal)[0][:8],
                "benign": np.nonzero(on_ben)[0][:8],
                "tissue": np.random.default_rng(1).choice(rest, min(12, len(rest)), replace=False),
            }
            a = flat[idx].numpy() * len(idx)
            with open_slide(s.path) as handle:
                for kind, cells in picks.items():
                    if len(cells) == 0:
                        continue
                    tiles = read_view_tiles(handle, view, cfg, locs[cells])
                    t = tiles_to_tensor(tiles, model.device)
                    with torch.no_grad(), eval_mode(model):
                        p = torch.sigmoid(model.instance_logits(model.features(t))).numpy()
                    att_by[kind] += a[cells].tolist()
                    p_by[kind] += p.tolist()
        cells = "  ".join(
            f"{k} {np.mean(att_by[k]):7.2f} / {np.mean(p_by[k]):.3f}" for k in KINDS if att_by[k]
        )
        bias = getattr(model.attention_net, "bias", None)  # attention.stratum_scale > 0
        if bias is not None:
            cells += f"  strata logits max {float(bias.max()):.2f} ({int((bias > 0).sum())} > 0)"
        return (
            f"{row['epoch']:>5} {row['val_auc']:>7.2f} {row['instance_loss']:>8.3f} "
            f"{row['distill_loss']:>8.3f}   {cells}"
        )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument(
        "--cohort", default="dev_standard_100x16384", help="folder in benchmarks/_cache"
    )
    ap.add_argument("--seed", type=int, default=0, help="training seed")
    ap.add_argument("--set", action="append", default=[], help="SECTION.FIELD=VALUE override")
    ap.add_argument("--out", type=Path, help="also write the output to this file")
    ap.add_argument(
        "--keep", type=Path, help="train into this folder (kept) instead of a scratch one"
    )
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    cohort = CACHE / args.cohort
    ov = overrides(args.set)
    ov.setdefault("train", {})["seed"] = args.seed
    config = PipelineConfig.from_toml(PIPELINE).replace(**ov)
    probe = Probe(cohort, config)
    now = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        f"# benchmarks/learning_trace.py {' '.join(sys.argv[1:])}  ({now})",
        f"# cohort: {args.cohort}; pipeline: pipelines/baselines.toml with {json.dumps(ov)}",
        f"# machine: {platform.machine()}, torch {torch.__version__}, 1 thread",
        "# probe: 4 positive + 3 negative training slides; per kind of cell: attention x tissue "
        "cells (1 = uniform) / instance probability",
        f"{'epoch':>5} {'val AUC':>7} {'instance':>8} {'distill':>8}   per kind",
    ]
    print("\n".join(lines), flush=True)

    def on_epoch(model: SlideClassifier, row: dict) -> None:
        line = probe(model, row)
        lines.append(line)
        print(line, flush=True)

    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory() as scratch:
        result = train(
            cohort / "manifest.csv", config, args.keep or Path(scratch) / "run", progress=False,
            on_epoch=on_epoch, overwrite=True,
        )  # fmt: skip
    lines.append(
        f"best validation AUC {result.best_val_auc:.2f} at epoch {result.best_epoch}; "
        f"{time.perf_counter() - t0:.0f} s"
    )
    print(lines[-1])
    if args.out:
        args.out.write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
