"""Instance-level signals on the sampled tiles, beside the slide-level estimate.

* :func:`topk_instance_loss` (multiple-instance learning in the style of Campanella et al. 2019):
  the tiles of a bag that score highest for the bag's label are trained towards that label, so one
  sampled lesion tile trains the feature network at full strength, not ``1/N`` of it.
* :func:`attention_distillation_loss`: the attention logits of the sampled cells are trained towards
  the (stop-gradient) instance scores of their tiles, so the attention network learns which
  low-resolution appearance is worth reading from what the feature network found there.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "attention_distillation_loss",
    "evidence_likelihood_loss",
    "instance_evidence",
    "topk_instance_loss",
]


def topk_instance_loss(
    instance_logits: Tensor, labels: Tensor, k: int = 1, negatives: str = "all"
) -> Tensor:
    """Mean over bags of the loss of each bag's top-``k`` instances against the bag's label.

    Args:
        instance_logits: ``[B, N]`` (binary: one logit per tile) or ``[B, N, C]`` (``C`` classes).
        labels: ``[B]``: 0/1 (binary) or class indices.
        k: instances per bag that carry the label (the ``k`` highest-scoring for it; ``min(k, N)``).
            ``k = 0``: every instance carries its bag's label (naive MIL); the instance classifier
            then estimates the odds that a tile comes from a bag of that label, which a tile seen
            only in such bags (a lesion) pushes towards certainty, and a tile seen in every kind of
            bag (stroma) leaves at the prior: the density ratio :func:`instance_evidence` reads.
        negatives: binary only: ``"all"`` trains every instance of a negative bag towards 0 (none of
            them may be positive), ``"topk"`` only its ``k`` highest-scoring ones, ``"both"`` the
            mean of the two (every tile held at 0, the highest-scoring ones at full strength).

    Binary: positive bags: BCE(top-``k`` logits, 1); negative bags: BCE(logits, 0). Multi-class: the
    ``k`` instances with the highest logit for the bag's class, cross-entropy towards that class.
    """
    if negatives not in ("all", "topk", "both"):
        raise ValueError(f"negatives must be 'all', 'topk' or 'both', got {negatives!r}")
    if instance_logits.dim() not in (2, 3) or labels.shape != instance_logits.shape[:1]:
        raise ValueError(
            f"expected instance_logits [B, N] or [B, N, C] and labels [B], got "
            f"{tuple(instance_logits.shape)} and {tuple(labels.shape)}"
        )
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    n = instance_logits.shape[1]
    k = n if k == 0 else min(int(k), n)
    if instance_logits.dim() == 3:
        b, _, c = instance_logits.shape
        y = labels.long()
        for_label = instance_logits.gather(2, y.view(b, 1, 1).expand(b, n, 1))[..., 0]
        top = for_label.topk(k, dim=1).indices  # [B, k]
        chosen = instance_logits.gather(1, top[..., None].expand(b, k, c))
        return F.cross_entropy(chosen.reshape(b * k, c), y.repeat_interleave(k))
    y = labels.to(instance_logits.dtype)
    top = instance_logits.topk(k, dim=1).values  # [B, k]
    pos = F.binary_cross_entropy_with_logits(top, torch.ones_like(top), reduction="none").mean(1)
    pushed_down = {"all": [instance_logits], "topk": [top], "both": [instance_logits, top]}
    neg = torch.stack(
        [
            F.binary_cross_entropy_with_logits(x, torch.zeros_like(x), reduction="none").mean(1)
            for x in pushed_down[negatives]
        ]
    ).mean(0)
    return torch.where(y > 0.5, pos, neg).mean()


def instance_evidence(
    instance_logits: Tensor,
    labels: Tensor | None = None,
    prior: float | None = None,
    reference_logit: float | None = None,
) -> Tensor:
    """Stop-gradient evidence ``[B, N]`` in ``[0, 1)``: how sure a tile is to show what its label
    needs, beyond what tiles of every kind of bag show.

    The instance classifier gives odds ``o`` that a tile belongs to a bag of the class (binary:
    the positive class, whatever the bag's label, i.e. where a positive would show; multi-class
    ``[B, N, C]`` logits: the bag's class ``labels`` ``[B]``). Divided by the prior odds (``prior``
    of the class; default 1/2, or 1/C) they estimate the density ratio ``r`` of such tiles in bags
    of the class against the others, and ``1 - 1/r`` (0 when ``r <= 1``) is the share of such tiles
    that only bags of the class have: ~1 for a lesion, 0 for tissue every slide has.

    Binary: ``reference_logit`` replaces the prior's log-odds, e.g. a high quantile of the logits
    of tiles from negative bags (what bags without the finding already show).
    """
    with torch.no_grad():
        if instance_logits.dim() == 2:
            if reference_logit is None:
                p0 = 0.5 if prior is None else prior
                reference_logit = math.log(p0 / (1 - p0))
            log_r = instance_logits.float() - reference_logit
        else:
            if labels is None:
                raise ValueError("multi-class instance evidence needs the bag labels")
            b, n, c = instance_logits.shape
            logp = torch.log_softmax(instance_logits.float(), dim=-1)
            logp_y = logp.gather(2, labels.long().view(b, 1, 1).expand(b, n, 1))[..., 0]
            log_odds = logp_y - torch.log1p(-logp_y.exp().clamp_max(1 - 1e-6))
            p0 = 1.0 / c if prior is None else prior
            log_r = log_odds - math.log(p0 / (1 - p0))
        return (1 - torch.exp(-log_r.clamp_min(0))).to(instance_logits.dtype)


def attention_distillation_loss(
    sampled_logits: Tensor, evidence: Tensor, weights: Tensor | None = None
) -> Tensor:
    """BCE between ``sigmoid(attention logit)`` of the sampled cells ``[B, N]`` and the evidence
    ``[B, N]`` found in their tiles (no gradient to the evidence), averaged with ``weights``.

    The attention logit of a cell then estimates the log-odds that its tile shows evidence, so the
    softmax over cells puts mass in proportion to those odds. The cells were drawn from a proposal
    ``q``: unweighted, a cell drawn often would be fitted more than one drawn rarely, and exploring a
    structure (evidence 0 while nothing is learnt yet) would teach the attention to avoid it. Pass
    ``weights = u / q`` (``u`` the measure the fit should follow, e.g. uniform over tissue): each
    bag's loss is the ``weights``-normalised mean (self-normalised importance sampling).
    """
    if sampled_logits.shape != evidence.shape:
        raise ValueError(
            f"sampled_logits {tuple(sampled_logits.shape)} and evidence {tuple(evidence.shape)} differ"
        )
    target = evidence.detach().to(sampled_logits)
    loss = F.binary_cross_entropy_with_logits(sampled_logits, target, reduction="none")
    if weights is None:
        return loss.mean()
    w = weights.detach().to(loss)
    if w.shape != loss.shape:
        raise ValueError(f"weights {tuple(w.shape)} do not match the logits {tuple(loss.shape)}")
    w = w / w.sum(dim=1, keepdim=True).clamp_min(torch.finfo(w.dtype).tiny)
    return (w * loss).sum(dim=1).mean()


def evidence_likelihood_loss(
    sampled_log_attention: Tensor, evidence: Tensor, weights: Tensor | None = None
) -> Tensor:
    """``-(1/N) sum_i w_i e_i log a_i`` per bag, averaged: the attention, as a distribution over all
    cells, is fitted to where evidence was found (``a_k`` proportional to the evidence of cell
    ``k`` at the optimum, under the measure the ``weights`` correct to).

    ``sampled_log_attention`` ``[B, N]`` is ``log_softmax`` over every cell, gathered at the drawn
    cells, so the gradient raises the cells with evidence and lowers every other cell in proportion
    to its attention. ``weights`` ``[B, N]``: ``u / q`` for draws from a proposal ``q`` (``u`` the
    measure, e.g. uniform over tissue: ``1 / (K q)``). Bags with no evidence contribute nothing.
    """
    if sampled_log_attention.shape != evidence.shape:
        raise ValueError(
            f"sampled_log_attention {tuple(sampled_log_attention.shape)} and evidence "
            f"{tuple(evidence.shape)} differ"
        )
    target = evidence.detach().to(sampled_log_attention)
    if weights is not None:
        target = target * weights.detach().to(target)
    return -(target * sampled_log_attention).mean(dim=1).mean()
