"""Adaptive prediction: more rounds of draws until the slide's interval is narrow enough."""

from __future__ import annotations

import numpy as np

from wsi_ats.intervals import halfwidth, probability_interval
from wsi_ats.models import SlideClassifier
from wsi_ats.slides import Slide
from wsi_ats.stages import (
    SlideSample,
    SlideView,
    aggregate_slide,
    concat_samples,
    sample_slide,
    unique_tile_features,
)

MAX_DRAWS = 64  # default cap on the draws of one slide with a target half-width


def round_logits(model: SlideClassifier, sample: SlideSample, features: np.ndarray) -> np.ndarray:
    """Per-draw logits ``float64[T]`` of ``sample`` (what :func:`aggregate_slide` computes)."""
    return np.asarray(aggregate_slide(model, sample, features).draw_logits)


def draw_until(
    model: SlideClassifier,
    view: SlideView,
    sample: SlideSample,
    features: np.ndarray,
    slide: Slide,
    target_halfwidth: float,
    max_draws: int = MAX_DRAWS,
    seed: int | None = None,
) -> tuple[SlideSample, np.ndarray]:
    """Extend a first round of draws (``sample``, ``features``) by rounds of as many draws
    (:func:`sample_slide` with ``round_index`` 1, 2, ...) until the probability interval's
    half-width (:func:`wsi_ats.intervals.halfwidth`) is below ``target_halfwidth`` or
    ``max_draws`` draws are used. Only one round's tiles are in memory at a time; the features of
    every draw are kept. Returns the combined sample and features ``[T*N, D]``."""
    if target_halfwidth <= 0:
        raise ValueError(f"target_halfwidth must be > 0, got {target_halfwidth}")
    per_round = sample.indices.shape[0]
    samples, feats = [sample], [np.asarray(features)]
    logits = [round_logits(model, sample, features)]
    total = per_round
    while total < max_draws:
        p, low, high = probability_interval(np.concatenate(logits))
        if halfwidth(p, low, high) < target_halfwidth:
            break
        n = min(per_round, max_draws - total)
        smp = sample_slide(view, model, n, seed, round_index=len(samples))
        f = unique_tile_features(model, smp, slide)  # this round's tiles only, then dropped
        samples.append(smp)
        feats.append(f)
        logits.append(round_logits(model, smp, f))
        total += n
    return concat_samples(samples), np.concatenate(feats)
