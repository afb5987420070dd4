"""``predict_slide``: one slide, end to end (view -> sample -> read -> features -> aggregate)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from wsi_ats.inference.adaptive import MAX_DRAWS, extend_draws
from wsi_ats.models import SlideClassifier, load_model
from wsi_ats.slides import Slide, open_slide
from wsi_ats.stages import (
    SlidePrediction,
    SlideSample,
    SlideView,
    aggregate_slide,
    sample_slide,
    unique_tile_features,
    view_of,
    view_slide,
)


def predict_slide(
    slide_or_path: Slide | str | Path,
    model: SlideClassifier | str | Path,
    n_draws: int | None = None,
    seed: int | None = None,
    slide_id: str | None = None,
    return_view: bool = False,
    target_halfwidth: float | None = None,
    max_draws: int = MAX_DRAWS,
    mpp: float | None = None,
) -> SlidePrediction | tuple[SlidePrediction, SlideView]:
    """Predict one slide by attention sampling.

    Args:
        slide_or_path: an open :class:`~wsi_ats.slides.Slide` (left open) or a path/URL.
        model: a :class:`~wsi_ats.models.SlideClassifier` or the path of a ``model.pt``/run folder.
        n_draws: independent draws of ``N`` tiles (default ``config.predict.n_draws``); the
            probability is their mean and ``std`` their spread.
        seed: run seed (default ``config.predict.seed``); the draws depend on ``(seed, slide_id)``
            only, so the result is reproducible and independent of batching or order.
        slide_id: id used for seeding and outputs (default: the file name without extension).
        return_view: also return the :class:`SlideView` (for heatmaps and outputs).
        target_halfwidth: keep drawing rounds of ``n_draws`` until the 95% interval of the
            probability (``ci_low, ci_high``, see :mod:`wsi_ats.intervals`) has a half-width below
            it, or ``max_draws`` draws are used (:func:`~wsi_ats.inference.adaptive.draw_until`).
            Without it, a spec's ``predict.decision_max_draws`` above ``n_draws`` adds rounds
            while the interval contains ``predict.threshold``, up to that many draws.
        mpp: the slide's level-0 um/px, overriding its own (physical geometry, ``slide.tile_mpp``;
            as a manifest's ``mpp`` column).

    Only ``n_draws * N`` tiles (fewer when draws repeat) are read from the slide's high-res level.
    """
    if not isinstance(model, SlideClassifier):
        model = load_model(model)
    if isinstance(slide_or_path, Slide):
        slide = slide_or_path
        view = view_of(slide, model.config, slide_id or Path(str(slide.path)).stem, mpp)
        smp, feats = _sample_and_features(
            model, view, slide, n_draws, seed, target_halfwidth, max_draws
        )
    else:
        view = view_slide(slide_or_path, model.config, slide_id, mpp)
        with open_slide(view.path) as slide:
            smp, feats = _sample_and_features(
                model, view, slide, n_draws, seed, target_halfwidth, max_draws
            )
    pred = aggregate_slide(model, smp, feats)
    return (pred, view) if return_view else pred


def _sample_and_features(
    model: SlideClassifier,
    view: SlideView,
    slide: Slide,
    n_draws: int | None,
    seed: int | None,
    target_halfwidth: float | None,
    max_draws: int,
) -> tuple[SlideSample, np.ndarray]:
    smp = sample_slide(view, model, n_draws, seed)
    feats = unique_tile_features(model, smp, slide)
    return extend_draws(model, view, smp, feats, slide, target_halfwidth, max_draws, seed)
