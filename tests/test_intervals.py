"""Per-slide 95% intervals for the exact (dense) probability, and adaptive draws until they are
narrow enough (``target_halfwidth``)."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import stats
from tiny_cohort import CONFIG, tissue_slide

from wsi_ats.inference import predict_slide
from wsi_ats.inference.adaptive import decided
from wsi_ats.intervals import halfwidth, logit_interval, probability_interval, sigmoid
from wsi_ats.models import build_model
from wsi_ats.slides import open_slide
from wsi_ats.stages import (
    aggregate_slide,
    cells_to_locations,
    read_tiles,
    sample_slide,
    tile_features,
    view_slide,
)

N_SLIDES, N_SEEDS, T = 40, 8, 16


@pytest.fixture(scope="module")
def model():
    return build_model(CONFIG, seed=0).eval()


@pytest.fixture(scope="module")
def slides(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    root = tmp_path_factory.mktemp("ci-slides")
    return [
        tissue_slide(root / f"s{i}.tiff", i % 2, seed=100 + i, size=256) for i in range(N_SLIDES)
    ]


def dense(model, path: Path, slide_id: str):
    """The slide's view, the exact probability ``sigmoid(classify(sum_k a_k f_k))`` over every tissue
    cell (each cell's tile through the feature net), and the features of every cell (row = cell,
    -1 off tissue), so that draws can be scored without reading tiles again."""
    view = view_slide(path, CONFIG, slide_id)
    smp = sample_slide(view, model, 1, 0)
    att = torch.from_numpy(smp.attention).reshape(-1).double()
    cells = torch.nonzero(att > 0)[:, 0]
    locs = cells_to_locations(cells[None], smp.attention.shape, view, CONFIG)[0]
    with open_slide(path) as slide:
        tiles = read_tiles(slide, locs, smp.read_level, smp.tile_size)
    feats = tile_features(model, tiles)
    exact_model = copy.deepcopy(model).double()  # the model's own slide logit, in float64
    with torch.no_grad():
        pooled = (att[cells][:, None] * torch.from_numpy(feats).double()).sum(0)
        exact = float(torch.sigmoid(exact_model.classify(pooled[None]))[0])
    row = np.full(att.numel(), -1)
    row[cells.numpy()] = np.arange(len(cells))
    return view, exact, feats, row


def test_intervals_cover_the_dense_probability_at_the_nominal_rate(model, slides) -> None:
    """Over 40 slides x 8 seeds (320 intervals of T = 16 draws), the exact dense probability lies in
    ``[ci_low, ci_high]`` at 95% within 3 standard errors; a too-narrow interval (z = 1 instead of
    the t quantile, ~68%) on the same draws falls outside that tolerance, so the test can fail."""
    hits, narrow_hits = [], []
    for i, path in enumerate(slides):
        view, exact, feats, row = dense(model, path, f"s{i}")
        for seed in range(N_SEEDS):
            smp = sample_slide(view, model, T, seed)
            pred = aggregate_slide(model, smp, feats[row[smp.indices.reshape(-1)]])
            assert pred.ci_low <= pred.probability <= pred.ci_high
            hits.append(pred.ci_low <= exact <= pred.ci_high)
            mean, se = pred.draw_logits.mean(), pred.draw_logits.std(ddof=1) / math.sqrt(T)
            narrow_hits.append(sigmoid(mean - se) <= exact <= sigmoid(mean + se))
    m = len(hits)
    tol = 3 * math.sqrt(0.95 * 0.05 / m)
    coverage, narrow = float(np.mean(hits)), float(np.mean(narrow_hits))
    assert abs(coverage - 0.95) <= tol, (coverage, tol)
    assert abs(narrow - 0.95) > tol, (narrow, tol)  # the check has power


def test_interval_formula_and_single_draw() -> None:
    logits = np.array([0.1, 0.3, -0.2, 0.4])
    mean, low, high = logit_interval(logits)
    q = stats.t.ppf(0.975, 3) * np.std(logits, ddof=1) / 2
    assert (mean, low, high) == pytest.approx((0.15, 0.15 - q, 0.15 + q))
    p, lo, hi = probability_interval(logits)
    assert (p, lo, hi) == pytest.approx((sigmoid(0.15), sigmoid(0.15 - q), sigmoid(0.15 + q)))
    assert halfwidth(p, lo, hi) == pytest.approx(max(p - lo, hi - p))
    p1, lo1, hi1 = probability_interval(np.array([0.7]))
    assert p1 == pytest.approx(sigmoid(0.7)) and math.isnan(lo1) and math.isnan(hi1)
    assert halfwidth(p1, lo1, hi1) == math.inf


def test_target_halfwidth_draws_rounds_until_narrow(model, slides) -> None:
    """Rounds of ``n_draws`` are added until the half-width is below W (and not one round later);
    the first round is the plain prediction's; a tiny W stops at ``max_draws`` (last round cut)."""
    path = slides[2]
    base = predict_slide(path, model, n_draws=2, seed=0)
    assert math.isfinite(base.ci_low) and base.ci_low <= base.probability <= base.ci_high
    w = 0.5 * halfwidth(base.probability, base.ci_low, base.ci_high)
    pred = predict_slide(path, model, n_draws=2, seed=0, target_halfwidth=w, max_draws=40)
    n = pred.n_draws
    assert 2 < n < 40 and n % 2 == 0 and pred.draw_logits.shape == (n,)
    assert halfwidth(pred.probability, pred.ci_low, pred.ci_high) < w
    assert halfwidth(*probability_interval(pred.draw_logits[: n - 2])) >= w
    np.testing.assert_array_equal(pred.cells[:2], base.cells)  # round 0 = the plain draws
    assert not np.array_equal(pred.cells[2:4], base.cells)  # later rounds are fresh draws
    assert pred.locations.shape[0] == n
    capped = predict_slide(path, model, n_draws=2, seed=0, target_halfwidth=1e-12, max_draws=7)
    assert capped.n_draws == 7 and len(capped.draw_probabilities) == 7


def test_decision_rule_draws_rounds_while_the_interval_contains_the_threshold(slides) -> None:
    """``predict.decision_max_draws``: rounds of ``n_draws`` are added while the 95% interval
    contains ``predict.threshold`` and not one round after it stops doing so, up to the cap; a
    slide whose first interval already excludes the threshold keeps its first round."""
    path = slides[3]
    plain = build_model(CONFIG.replace(predict={"n_draws": 2}), seed=0).eval()
    base = predict_slide(path, plain, seed=0)
    assert base.n_draws == 2 and math.isfinite(base.ci_high)

    def rule(threshold: float, cap: int):
        predict = {"n_draws": 2, "decision_max_draws": cap, "threshold": threshold}
        return predict_slide(path, build_model(CONFIG.replace(predict=predict), seed=0), seed=0)

    far = 0.5 * (base.ci_high + 1.0)  # above the first interval: decided at once
    assert rule(far, 12).n_draws == 2 and decided(base.draw_logits, far)
    pred = rule(base.probability, 12)  # the estimate itself: inside the first interval
    n = pred.n_draws
    assert 2 < n <= 12 and n % 2 == 0 and pred.draw_logits.shape == (n,)
    np.testing.assert_array_equal(pred.cells[:2], base.cells)  # round 0 = the plain draws
    assert not decided(pred.draw_logits[: n - 2], base.probability)  # every round was needed
    assert n == 12 or decided(pred.draw_logits, base.probability)  # stopped: decided or capped
    capped = rule(base.probability, 3)  # a cap that cuts the second round
    assert capped.n_draws == 3
    np.testing.assert_allclose(capped.draw_logits, pred.draw_logits[:3], atol=1e-5)  # batching
    assert rule(base.probability, 0).n_draws == 2  # 0 = exactly n_draws
