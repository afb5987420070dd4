"""Where to explore before the attention knows anything: appearance strata of the low-res views.

A uniform proposal over tissue visits a structure in proportion to its area, so a lesion covering
0.1% of the tissue is read once in a thousand draws. Stratified exploration groups the cells of a
cohort's low-res views by how they *look* (k-means on each cell's mean colour and its contrast with
the cells around it, or its mean and spread of pixel values; per slide, or fitted on the training
cohort so that an appearance that is rare in every slide but recurs across slides gets a stratum of
its own) and spreads the exploration mass over a slide's strata in
proportion to ``count ** -rarity`` per cell: ``rarity = 1`` gives every stratum present the same
mass, ``rarity > 1`` favours the rarest ones (count-based exploration). It encodes no rule about
which appearance matters (colour, darkness, texture): the attention learns that from what the
sampled tiles show, and the importance weights of :func:`wsi_ats.core.estimate` keep every
estimate unbiased.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "AppearanceStrata",
    "appearance_strata",
    "cell_descriptors",
    "fit_appearance_strata",
    "nearest_stratum",
    "stratified_proposal",
]


def cell_descriptors(x_low: Tensor, map_size: tuple[int, int], context: int = 0) -> Tensor:
    """``[B, K, 2C]`` descriptors of each attention cell (``K = mh * mw``, row-major) of the view
    ``x_low`` ``[B, C, h, w]``.

    ``context = 0``: the mean and standard deviation of each channel over the cell's low-res pixels.
    ``context = k > 0`` (odd): the mean, and the mean minus the mean of the ``k x k`` cells around it
    (edges replicated): how a cell differs from its surroundings (local contrast), so that a small
    structure unlike the tissue around it stands apart from the bulk of the same colours elsewhere
    on the slide. Neither says which appearance matters.
    """
    if x_low.dim() != 4:
        raise ValueError(f"x_low must be [B, C, h, w], got shape {tuple(x_low.shape)}")
    if context < 0 or (context > 0 and context % 2 == 0):
        raise ValueError(f"context must be 0 or an odd number of cells, got {context}")
    x = x_low.detach().float()
    mean = F.adaptive_avg_pool2d(x, tuple(map_size))
    if context > 0:
        pad = context // 2
        around = F.avg_pool2d(F.pad(mean, (pad,) * 4, mode="replicate"), context, stride=1)
        desc = torch.cat([mean, mean - around], dim=1)  # [B, 2C, mh, mw]
    else:
        square = F.adaptive_avg_pool2d(x * x, tuple(map_size))
        std = (square - mean * mean).clamp_min(0).sqrt()
        desc = torch.cat([mean, std], dim=1)
    return desc.flatten(2).transpose(1, 2)


def _kmeans(x: Tensor, k: int, iters: int, generator: torch.Generator, restarts: int = 1) -> Tensor:
    """Labels ``[n]`` of k-means on ``x`` ``[n, d]``: ``restarts`` runs (k-means++ seeding, up to
    ``iters`` Lloyd steps each), the one with the lowest inertia kept."""
    best, best_inertia = None, float("inf")
    for _ in range(max(1, restarts)):
        labels, centres = _lloyd(x, _kmeans_pp(x, min(k, x.shape[0]), generator), iters)
        if restarts <= 1:
            return labels
        inertia = float(((x - centres[labels]) ** 2).sum())
        if inertia < best_inertia:
            best, best_inertia = labels, inertia
    return best


def _kmeans_pp(x: Tensor, k: int, generator: torch.Generator) -> Tensor:
    """k-means++ seeding: ``[<= k, d]`` initial centres drawn from the rows of ``x``."""
    first = int(torch.randint(x.shape[0], (1,), generator=generator, device=x.device))
    centres = [x[first]]
    d2 = ((x - x[first]) ** 2).sum(1)
    for _ in range(k - 1):
        total = d2.sum()
        if float(total) <= 0:  # fewer distinct points than k
            break
        i = int(torch.multinomial(d2 / total, 1, generator=generator))
        centres.append(x[i])
        d2 = torch.minimum(d2, ((x - x[i]) ** 2).sum(1))
    return torch.stack(centres)


def _lloyd(x: Tensor, c: Tensor, iters: int) -> tuple[Tensor, Tensor]:
    """Up to ``iters`` Lloyd steps from centres ``c``; ``(labels [n], centres [k, d])``."""
    c = c.clone()
    labels = torch.cdist(x, c).argmin(1)
    for _ in range(iters):
        sums = torch.zeros_like(c).index_add_(0, labels, x)
        counts = torch.bincount(labels, minlength=c.shape[0]).to(x.dtype)
        moved = counts > 0
        c[moved] = sums[moved] / counts[moved, None]
        new = torch.cdist(x, c).argmin(1)
        if torch.equal(new, labels):
            break
        labels = new
    return labels, c


#: Lloyd steps of each k-means run of a cohort fit with restarts: runs stopped early have inertias
#: too far from their optimum to rank them (one run keeps the 20 it always had)
RESTARTED_LLOYD_STEPS = 100


def lloyd_steps(restarts: int) -> int:
    """Lloyd steps per k-means run of :func:`fit_appearance_strata` by default: 20 for a single
    run, :data:`RESTARTED_LLOYD_STEPS` for each of several."""
    return RESTARTED_LLOYD_STEPS if restarts > 1 else 20


class AppearanceStrata(NamedTuple):
    """Strata fitted on a cohort: descriptors are standardised with ``mean``/``std`` ``[d]`` and
    assigned to the nearest of ``centres`` ``[S, d]``."""

    mean: Tensor
    std: Tensor
    centres: Tensor


def fit_appearance_strata(
    descriptors: Tensor,
    n_strata: int,
    iters: int | None = None,
    seed: int = 0,
    max_points: int = 200_000,
    restarts: int = 1,
) -> AppearanceStrata:
    """k-means (k-means++ seeding) on standardised cell descriptors ``[M, d]`` pooled over the
    training slides' tissue cells (a seeded subsample of ``max_points`` when there are more); of
    ``restarts`` runs the one with the lowest inertia is kept, as scikit-learn's ``n_init``;
    ``iters`` Lloyd steps per run at most (``None``: :func:`lloyd_steps`).

    One run lands in a poor local optimum often enough to matter: on the distractors development
    cohort 5 of 12 seeds of a single run put the lesion cells into a large stratum, and exploration
    then drew about ten times fewer lesion tiles; the lowest inertia of 8 runs of up to 100 steps
    kept them apart at 12 seeds of 12 (BENCHMARKS.md, seventh round)."""
    if descriptors.dim() != 2 or descriptors.shape[0] == 0:
        raise ValueError(f"descriptors must be a non-empty [M, d], got {tuple(descriptors.shape)}")
    if n_strata < 1:
        raise ValueError(f"n_strata must be >= 1, got {n_strata}")
    x = descriptors.detach().float()
    gen = torch.Generator(device=x.device).manual_seed(seed)
    if x.shape[0] > max_points:
        x = x[torch.randperm(x.shape[0], generator=gen, device=x.device)[:max_points]]
    mean, std = x.mean(0), x.std(0, unbiased=False).clamp_min(1e-6)
    z = (x - mean) / std
    steps = lloyd_steps(restarts) if iters is None else iters
    labels = _kmeans(z, n_strata, steps, gen, restarts)
    centres = torch.stack([z[labels == j].mean(0) for j in torch.unique(labels)])
    return AppearanceStrata(mean, std, centres)


def nearest_stratum(descriptors: Tensor, strata: AppearanceStrata) -> Tensor:
    """``LongTensor[...]``: the stratum of each descriptor ``[..., d]``, the nearest of the fitted
    ``strata``' centres once standardised with their ``mean`` and ``std``."""
    z = (descriptors.float() - strata.mean.to(descriptors.device)) / strata.std.to(
        descriptors.device
    )
    centres = strata.centres.to(z)
    return torch.cdist(z, centres.expand(*z.shape[:-2], *centres.shape)).argmin(-1)


def appearance_strata(
    descriptors: Tensor,
    support: Tensor,
    n_strata: int = 16,
    iters: int = 10,
    seed: int = 0,
    strata: AppearanceStrata | None = None,
) -> Tensor:
    """Stratum of each cell ``LongTensor[B, K]`` (``-1`` off ``support``).

    With ``strata`` (fitted on a cohort by :func:`fit_appearance_strata`) each ``support`` cell
    (``[B, K]`` bool, e.g. tissue) goes to its nearest centre; without, the descriptors ``[B, K, d]``
    of each item are standardised and clustered on their own into ``n_strata`` groups (k-means,
    deterministic in ``seed``).
    """
    if descriptors.dim() != 3 or support.shape != descriptors.shape[:2]:
        raise ValueError(
            f"expected descriptors [B, K, d] and support [B, K], got {tuple(descriptors.shape)} "
            f"and {tuple(support.shape)}"
        )
    if n_strata < 1:
        raise ValueError(f"n_strata must be >= 1, got {n_strata}")
    out = torch.full(support.shape, -1, dtype=torch.long, device=descriptors.device)
    for b in range(descriptors.shape[0]):
        keep = support[b].to(descriptors.device).bool()
        x = descriptors[b][keep].float()
        if x.shape[0] == 0:
            continue
        if strata is not None:
            out[b, keep] = nearest_stratum(x, strata)
            continue
        x = (x - x.mean(0)) / x.std(0, unbiased=False).clamp_min(1e-6)
        gen = torch.Generator(device=x.device).manual_seed(seed)
        out[b, keep] = _kmeans(x, n_strata, iters, gen)
    return out


def stratified_proposal(strata: Tensor, rarity: float = 1.0) -> Tensor:
    """``[B, K]``: cell ``k`` of stratum ``s`` gets mass proportional to ``count_s ** -rarity``
    (``count_s``: the item's cells in ``s``), normalised per item; cells with stratum ``-1`` get 0.

    ``rarity = 1``: every stratum present gets the same share, spread uniformly over its cells;
    ``rarity = 0``: uniform over the cells; ``rarity > 1``: the rarer a stratum, the more it gets.
    """
    if rarity < 0:
        raise ValueError(f"rarity must be >= 0, got {rarity}")
    strata = strata.long()
    out = torch.zeros(strata.shape, dtype=torch.float32, device=strata.device)
    for b in range(strata.shape[0]):
        keep = strata[b] >= 0
        if not bool(keep.any()):
            continue
        labels = strata[b][keep]
        counts = torch.bincount(labels).float()
        w = counts[labels] ** -rarity
        out[b, keep] = w / w.sum()
    return out
