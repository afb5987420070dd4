"""The attention learns where to look with no prior (``attention.prior = 0``, the default) and the
default remedies on (instance loss, attention distillation, stratified exploration, N annealing):
on a small synthetic "needle" cohort the share of sampled tiles that land on the malignant spots
rises from what the untrained attention gets (about a uniform draw over tissue) to several times
that, by many standard errors.

The cohort: 24 slides of 1024 x 1024 px (18 train, 6 val), 3-8 dark candidate spots of 82 px per
slide, 1-2 of them malignant on positive slides (a texture only visible at full resolution); the
malignant spots cover about 3% of the tissue. Sizes are scaled for a short CPU run (16 epochs of
one slide per step); every remedy keeps its default weight and schedule (the defaults of
``pipelines/default.toml``, chosen on the benchmarks' development cohorts).

Measured (torch on one thread, 2 CPUs, the defaults of this round: stratum logits, cohort strata,
tile memory with augmented replay): untrained 2.85% of the tiles on lesions, trained 23.5% (50
draws x 32 tiles on each of the 12 positive slides): 8.2x, z = 39. The test checks that the
default spec learns where to look; whether each remedy is needed is measured by
``benchmarks/learning.py --ablation`` on 16k slides.

Seeds at this size (18 training slides), trained lesion share over the untrained one, training
seeds 0-3: 7.6x, 7.4x, 8.0x and 8.2x with these defaults (60-90 s each); with the previous
defaults (per-slide strata, no tile memory, no stratum logits) seeds 0-3 gave 0.6x, 2.8x, 9.5x and
7.4x, and with ReLUs and the prior-odds evidence of an earlier round seeds 0-2 ended at 1.0-1.1x.
The seed here is fixed, so the test is deterministic, but a change in what the training draws may
flip it. The development cohorts of ``benchmarks/learning.py`` (60 training slides of 16k) are
where the defaults were chosen.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from wsi_ats.models import PipelineConfig, SlideClassifier, build_model
from wsi_ats.stages import sample_slide, view_slide
from wsi_ats.synth import make_cohort
from wsi_ats.synth.lesions import lesion_boxes, tile_hits
from wsi_ats.training import LabelledSlide, read_cohort, train

SIZE = 1024
SPOT = 0.08 * SIZE  # level-0 px
DRAWS = 50

CFG = PipelineConfig().replace(
    slide={"lowres_size": 128, "patch_size": 32},  # 8x view: a spot is ~10 px; tiles at level 0
    attention={"width": 8, "depth": 2},
    features={"width": 8, "dim": 16},
    sampling={"n_patches": 32},
    train={
        "epochs": 16, "batch_size": 1, "anneal_epochs": 3, "read_workers": 1, "val_draws": 1,
        "seed": 3,
    },
)  # fmt: skip


def lesion_share(
    model: SlideClassifier, slides: list[LabelledSlide], boxes: dict
) -> tuple[float, float]:
    """Mean share of a draw's tiles whose centre lies on a malignant spot, over ``DRAWS`` draws of
    every slide, and its standard error over those draws."""
    per_draw = []
    for s in slides:
        view = view_slide(s.path, model.config, s.slide_id)
        smp = sample_slide(view, model, DRAWS, seed=1)
        per_draw.append(tile_hits(smp.locations, smp.tile_size_level0, boxes[s.slide_id]).mean(1))
    x = np.concatenate(per_draw)
    return float(x.mean()), float(x.std(ddof=1) / np.sqrt(len(x)))


@pytest.fixture(scope="module")
def needle_cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("needle")
    splits = (("train", 18), ("val", 6))
    return make_cohort(root, 24, SIZE, seed=0, splits=splits, spot_diameter=SPOT)


def test_attention_learns_to_sample_the_lesions(needle_cohort: Path, tmp_path: Path) -> None:
    torch.set_num_threads(1)
    assert CFG.attention.prior == 0.0
    positives = [s for s in read_cohort(needle_cohort) if s.label == 1]
    boxes = lesion_boxes(needle_cohort.parent / "ground_truth.json")
    model = build_model(CFG, seed=CFG.train.seed)  # the weights train() would start from
    before, se_before = lesion_share(model, positives, boxes)
    train(needle_cohort, CFG, tmp_path / "run", progress=False, device="cpu", model=model)
    after, se_after = lesion_share(model, positives, boxes)
    z = (after - before) / np.hypot(se_before, se_after)
    assert after > 3 * before and z > 8, (before, after, z)
