"""Confidence intervals for a slide's Monte-Carlo prediction.

Each draw's aggregated feature is an unbiased estimate of the attention-weighted mean of the
features over all cells, ``sum_k a_k f_k``. With a linear head (``head.hidden == 0``, the default)
each draw's slide *logit* is therefore an unbiased estimate of the exact (dense) logit
``head(sum_k a_k f_k)``, and the ``T`` draws are independent. The interval is a Student-t interval
on the mean of the ``T`` per-draw logits (``mean +- t_{T-1} * sd / sqrt(T)``), its ends mapped
through the sigmoid: the sigmoid is monotone, so it covers the exact probability as often as the
logit interval covers the exact logit. The point estimate is ``sigmoid(mean logit)``, always
inside the interval. With ``T == 1`` the interval is undefined (NaN ends). With a hidden-layer
head the per-draw logit is biased (the head is not linear), so the interval is approximate.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import stats

LEVEL = 0.95  # nominal coverage of the reported intervals


def sigmoid(x: float) -> float:
    """The logistic function, safe for large ``|x|`` (NaN stays NaN)."""
    if math.isnan(x):
        return math.nan
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    e = math.exp(x)
    return e / (1.0 + e)


def logit_interval(logits: np.ndarray, level: float = LEVEL) -> tuple[float, float, float]:
    """``(mean, low, high)``: the mean of per-draw ``logits`` and a Student-t ``level`` interval
    for their expectation (NaN ends when there is a single draw)."""
    x = np.asarray(logits, dtype=np.float64).reshape(-1)
    t = len(x)
    if t == 0:
        raise ValueError("no draws")
    mean = float(x.mean())
    if t < 2:
        return mean, math.nan, math.nan
    se = float(x.std(ddof=1)) / math.sqrt(t)
    q = float(stats.t.ppf(0.5 + level / 2, df=t - 1))
    return mean, mean - q * se, mean + q * se


def probability_interval(logits: np.ndarray, level: float = LEVEL) -> tuple[float, float, float]:
    """``(probability, ci_low, ci_high)``: ``sigmoid`` of :func:`logit_interval`'s three values."""
    mean, low, high = logit_interval(logits, level)
    return sigmoid(mean), sigmoid(low), sigmoid(high)


def halfwidth(probability: float, low: float, high: float) -> float:
    """The larger side of the interval on the probability scale (``inf`` when undefined)."""
    if math.isnan(low) or math.isnan(high):
        return math.inf
    return max(probability - low, high - probability)
