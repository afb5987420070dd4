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


def settled(logits: np.ndarray, target_halfwidth: float | None, threshold: float | None) -> bool:
    """The stopping test of :func:`draw_until`: the interval's half-width is below
    ``target_halfwidth`` or, with ``target_halfwidth=None``, the interval excludes ``threshold``."""
    if target_halfwidth is None:
        return decided(logits, threshold)
    return halfwidth(*probability_interval(logits)) < target_halfwidth


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
    (:func:`sample_slide` with ``round_index`` 1, 2, ...) until :func:`settled` (the probability
    interval's half-width below ``target_halfwidth``, or with ``target_halfwidth=None`` the
    interval excluding ``threshold``), or ``max_draws`` draws are used. Only one round's tiles are
    in memory at a time; the features of every draw are kept. Returns the combined sample and
    features ``[T*N, D]``."""
    if target_halfwidth is None and threshold is None:
        raise ValueError("draw_until needs a target_halfwidth or a threshold")
    if target_halfwidth is not None and target_halfwidth <= 0:
        raise ValueError(f"target_halfwidth must be > 0, got {target_halfwidth}")
    per_round = sample.indices.shape[0]
    samples, feats = [sample], [np.asarray(features)]
    logits = [round_logits(model, sample, features)]
    total = per_round
    while total < max_draws and not settled(np.concatenate(logits), target_halfwidth, threshold):
        n = min(per_round, max_draws - total)
        smp = sample_slide(view, model, n, seed, round_index=len(samples))
        f = unique_tile_features(model, smp, slide)  # this round's tiles only, then dropped
        samples.append(smp)
        feats.append(f)
        logits.append(round_logits(model, smp, f))
        total += n
    return concat_samples(samples), np.concatenate(feats)


def _rule(
    model: SlideClassifier, sample: SlideSample, target_halfwidth: float | None, max_draws: int
) -> tuple[float | None, float | None, int] | None:
    """``(target_halfwidth, threshold, max_draws)`` of the rule that may extend ``sample``'s draws:
    the target half-width when one is given, else the spec's ``predict.decision_max_draws`` rule;
    ``None`` when neither allows more draws than ``sample`` has."""
    predict = model.config.predict
    if target_halfwidth is not None:
        rule = (target_halfwidth, None, max_draws)
    else:
        rule = (None, predict.threshold, predict.decision_max_draws)
    return rule if rule[2] > sample.indices.shape[0] else None


def needs_more_draws(
    model: SlideClassifier,
    sample: SlideSample,
    features: np.ndarray,
    target_halfwidth: float | None = None,
    max_draws: int = MAX_DRAWS,
) -> bool:
    """Whether :func:`extend_draws` would draw beyond the first round (``sample``, ``features``),
    so that the slide must be open: a rule applies, its cap is not reached and the first round's
    interval has not :func:`settled`."""
    rule = _rule(model, sample, target_halfwidth, max_draws)
    if rule is None:
        return False
    return not settled(round_logits(model, sample, features), rule[0], rule[1])


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
    rule = _rule(model, sample, target_halfwidth, max_draws)
    if rule is None:
        return sample, features
    target, threshold, cap = rule
    return draw_until(model, view, sample, features, slide, target, cap, seed, threshold)
