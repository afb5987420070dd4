"""Draw cells from the attention (optionally mixed with uniform exploration), then estimate
``sum_k a_k f_k`` from the features of the drawn cells.

The two halves are separate so that a caller can draw with the current weights, read the tiles in
the background, and only then recompute the attention with gradients and estimate (the slide
training step does this). ``AttentionSampling.forward`` chains them.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor

from wsi_ats.core.expectation import expectation
from wsi_ats.core.sampling import sample

__all__ = ["Draw", "draw", "estimate", "exploration_proposal"]


class Draw(NamedTuple):
    """``N`` cells drawn per item and the probabilities they were drawn with."""

    indices: Tensor  # [B, N] into the flattened attention map, in sampling order
    proposal: Tensor  # [B, N] probability of each drawn cell under the proposal (no gradient)
    replace: bool  # drawn with replacement (i.i.d.) or without (Gumbel top-k)


def exploration_proposal(
    attention: Tensor,
    explore: float,
    support: Tensor | None = None,
    exploration: Tensor | None = None,
) -> Tensor:
    """``(1 - explore) a + explore e`` ``[B, K]`` (no gradient).

    ``attention`` is ``[B, K]`` or ``[B, *grid]``. ``e`` is ``exploration`` (a distribution of the
    same shape, e.g. :func:`wsi_ats.core.stratified_proposal`) or, by default, uniform over
    ``support`` (same shape, bool; default the cells with nonzero attention: the tissue, for a
    masked attention). ``explore`` in ``[0, 1]``.
    """
    if not 0.0 <= explore <= 1.0:
        raise ValueError(f"explore must be in [0, 1], got {explore}")
    flat = attention.detach().reshape(attention.shape[0], -1)
    if explore == 0.0:
        return flat
    if exploration is not None:
        e = exploration.detach().reshape(flat.shape).to(device=flat.device, dtype=flat.dtype)
        e = e / e.sum(dim=1, keepdim=True).clamp_min(torch.finfo(e.dtype).tiny)
    else:
        keep = (flat > 0) if support is None else support.reshape(flat.shape).to(flat.device)
        e = keep.to(flat.dtype) / keep.sum(dim=1, keepdim=True).clamp_min(1).to(flat.dtype)
    return (1.0 - explore) * flat + explore * e


def draw(
    attention: Tensor,
    n: int,
    replace: bool = False,
    generator: torch.Generator | None = None,
    explore: float = 0.0,
    support: Tensor | None = None,
    exploration: Tensor | None = None,
) -> Draw:
    """Draw ``n`` cells per item from the attention, or from its mixture with uniform exploration.

    With ``explore > 0`` a share ``explore`` of the probability mass follows ``exploration`` (default:
    uniform over ``support``, itself by default the cells with nonzero attention), so that cells the
    attention neglects are still visited; :func:`estimate` reweights the draws so the estimate
    stays unbiased. ``exploration`` must be positive wherever the attention is.
    """
    proposal = exploration_proposal(attention, explore, support, exploration)
    with torch.no_grad():
        indices, _ = sample(proposal, n, replace=replace, generator=generator)
        return Draw(indices, proposal.gather(1, indices), bool(replace))


def estimate(
    attention: Tensor,
    drawn: Draw,
    features: Tensor,
    control_variate: str = "none",
    baseline: Tensor | None = None,
) -> Tensor:
    """Unbiased ``sum_k a_k f_k`` ``[B, D]`` from the features ``[B, N, D]`` of the drawn cells.

    ``attention`` ``[B, K]`` or ``[B, *grid]`` is gathered at the drawn cells, so gradients reach
    it (and the attention network); see :func:`wsi_ats.core.expectation` for ``control_variate``
    and ``baseline``.
    """
    sampled = attention.reshape(attention.shape[0], -1).gather(
        1, drawn.indices.to(attention.device)
    )
    return expectation(
        sampled,
        features,
        drawn.replace,
        drawn.proposal.to(sampled.device),
        control_variate,
        baseline,
    )
