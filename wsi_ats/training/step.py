"""One optimiser step of attention sampling over a batch of slides, with tile reads overlapped.

Exactness of the prefetch. The weights change only at the optimiser step, after every slide of the
batch. So, at the start of a step, the attention of every slide of the batch is computed (no grad),
its ``N`` cells are drawn and their tile reads are submitted to the background pool at once. Then,
slide by slide, the attention is recomputed *with* gradients (same weights, same input: the same
distribution the cells were drawn from), the attention of the drawn cells is gathered from it, the
tiles are awaited and the feature net, the estimator and the loss run. Reads of slides ``j+1..B``
therefore overlap the compute of slide ``j``, and the estimator is exactly the unbiased one of
``core.expectation``: no stale weights are ever used to draw. Each slide is its own forward pass
(low-res views differ in size), gradients are accumulated over the batch (loss / B each). The
low-res views and tissue masks of the *next* batch do not depend on the weights, so the loop
(``loop._run_epoch``) has the pool compute them while this batch trains; they stay cached.
"""

from __future__ import annotations

from concurrent.futures import Future
from dataclasses import dataclass

import numpy as np
import torch

from wsi_ats.core import expectation, multinomial_entropy, sample
from wsi_ats.models import SlideClassifier
from wsi_ats.stages import (
    SlideView,
    cells_to_locations,
    effective_replace,
    tiles_to_tensor,
    view_tensors,
)
from wsi_ats.training.data import LabelledSlide, SlideStore


@dataclass
class SlidePlan:
    """Cells drawn for one slide and the pending read of their tiles."""

    slide: LabelledSlide
    view: SlideView
    indices: torch.Tensor  # [1, N] into the flattened attention map
    replace: bool
    tiles: Future  # Future[uint8[N, h, w, 3]]


@dataclass
class StepStats:
    loss: float  # mean classification loss (BCE) over the batch
    entropy: float  # mean attention entropy (nats)
    tiles: int  # tiles pushed through the feature net
    probabilities: list[float]
    labels: list[int]


def plan_batch(
    model: SlideClassifier,
    store: SlideStore,
    slides: list[LabelledSlide],
    generator: torch.Generator,
) -> list[SlidePlan]:
    """Draw the cells of every slide with the current weights and submit their tile reads."""
    cfg = model.config
    n = cfg.sampling.n_patches
    size = (cfg.slide.patch_size, cfg.slide.patch_size)
    plans = []
    with torch.no_grad():
        for s in slides:
            view = store.view(s)
            x, m = view_tensors(view, model.device)
            att = model.attention(x, m)
            replace = effective_replace(att, n, cfg.sampling.replace)
            idx, _ = sample(att.reshape(1, -1), n, replace=replace, generator=generator)
            locs = cells_to_locations(idx, tuple(att.shape[1:]), view, cfg)[0]
            fut = store.submit_tiles(view.path, locs, view.read_level, size)
            plans.append(SlidePlan(s, view, idx, replace, fut))
    return plans


def train_step(
    model: SlideClassifier,
    optimizer: torch.optim.Optimizer,
    store: SlideStore,
    slides: list[LabelledSlide],
    generator: torch.Generator,
) -> StepStats:
    """One optimiser step on ``slides`` (BCE - entropy_coef * entropy, accumulated, clipped)."""
    cfg = model.config.train
    device = model.device
    plans = plan_batch(model, store, slides, generator)
    optimizer.zero_grad(set_to_none=True)
    losses, entropies, probs, labels = [], [], [], []
    n_tiles = 0
    for plan in plans:
        x, m = view_tensors(plan.view, device)
        att = model.attention(x, m)  # same weights and input as when drawing: same distribution
        flat = att.reshape(1, -1)
        sampled = flat.gather(1, plan.indices.to(device))
        tiles = tiles_to_tensor(plan.tiles.result(), device)
        feats = model.features(tiles)[None]  # [1, N, D]
        logit = model.classify(expectation(sampled, feats, plan.replace))  # [1]
        target = torch.tensor([float(plan.slide.label)], device=device)
        bce = torch.nn.functional.binary_cross_entropy_with_logits(logit, target)
        entropy = multinomial_entropy(flat).mean()
        ((bce - cfg.entropy_coef * entropy) / len(plans)).backward()
        losses.append(float(bce.detach()))
        entropies.append(float(entropy.detach()))
        probs.append(float(torch.sigmoid(logit.detach())[0]))
        labels.append(plan.slide.label)
        n_tiles += int(tiles.shape[0])
    if cfg.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
    optimizer.step()
    return StepStats(float(np.mean(losses)), float(np.mean(entropies)), n_tiles, probs, labels)
