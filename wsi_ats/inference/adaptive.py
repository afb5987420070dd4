"""Adaptive prediction: more rounds of draws until the slide's interval is narrow enough, or
until it no longer contains the decision threshold (the spec's ``predict.decision_max_draws``)."""

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


def decided(logits: np.ndarray, threshold: float) -> bool:
    """Whether the 95% interval of the probability (per-draw ``logits``) lies wholly on one side of
    ``threshold`` (prediction = probability >= threshold); never with a single draw."""
    _, low, high = probability_interval(logits)
    return bool(low >= threshold or high < threshold)  # NaN ends (one draw) compare False


def draw_until(
    model: SlideClassifier,
    view: SlideView,
    sample: SlideSample,
    features: np.ndarray,
    slide: Slide,
    target_halfwidth: float | None,
    max_draws: int = MAX_DRAWS,
    seed: int | None = None,
    threshold: float | None = None,
) -> tuple[SlideSample, np.ndarray]:
    """Extend a first round of draws (``sample``, ``features``) by rounds of as many draws
    (:func:`sample_slide` with ``round_index`` 1, 2, ...) until the probability interval's
    half-width (:func:`wsi_ats.intervals.halfwidth`) is below ``target_halfwidth`` (or, with
    ``target_halfwidth=None``, until the interval excludes ``threshold``: :func:`decided`), or
    ``max_draws`` draws are used. Only one round's tiles are in memory at a time; the features of
    every draw are kept. Returns the combined sample and features ``[T*N, D]``."""
    if target_halfwidth is None and threshold is None:
        raise ValueError("draw_until needs a target_halfwidth or a threshold")
    if target_halfwidth is not None and target_halfwidth <= 0:
        raise ValueError(f"target_halfwidth must be > 0, got {target_halfwidth}")
    per_round = sample.indices.shape[0]
    samples, feats = [sample], [np.asarray(features)]
    logits = [round_logits(model, sample, features)]
    total = per_round
    while total < max_draws:
        so_far = np.concatenate(logits)
        if target_halfwidth is None:
            if decided(so_far, threshold):
                break
        elif halfwidth(*probability_interval(so_far)) < target_halfwidth:
            break
        n = min(per_round, max_draws - total)
        smp = sample_slide(view, model, n, seed, round_index=len(samples))
        f = unique_tile_features(model, smp, slide)  # this round's tiles only, then dropped
        samples.append(smp)
        feats.append(f)
        logits.append(round_logits(model, smp, f))
        total += n
    return concat_samples(samples), np.concatenate(feats)


def extend_draws(
    model: SlideClassifier,
    view: SlideView,
    sample: SlideSample,
    features: np.ndarray,
    slide: Slide,
    target_halfwidth: float | None = None,
    max_draws: int = MAX_DRAWS,
    seed: int | None = None,
) -> tuple[SlideSample, np.ndarray]:
    """The draws a prediction ends with, from its first round (``sample``, ``features``): rounds
    until the half-width is below ``target_halfwidth`` (at most ``max_draws``) when one is given;
    otherwise, with the spec's ``predict.decision_max_draws`` above the first round's draws,
    rounds while the interval contains ``predict.threshold`` (at most that many draws); otherwise
    the first round as it is."""
    if target_halfwidth is not None:
        return draw_until(model, view, sample, features, slide, target_halfwidth, max_draws, seed)
    predict = model.config.predict
    if predict.decision_max_draws > sample.indices.shape[0]:
        return draw_until(
            model,
            view,
            sample,
            features,
            slide,
            None,
            predict.decision_max_draws,
            seed,
            threshold=predict.threshold,
        )
    return sample, features


def may_extend(model: SlideClassifier, sample: SlideSample, target_halfwidth: float | None) -> bool:
    """Whether :func:`extend_draws` may draw more than ``sample`` (and so needs the slide open)."""
    cap = model.config.predict.decision_max_draws
    return target_halfwidth is not None or cap > sample.indices.shape[0]
