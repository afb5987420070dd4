"""Instance-level signals on the sampled tiles, beside the slide-level estimate.

* :func:`topk_instance_loss` (multiple-instance learning in the style of Campanella et al. 2019):
  the tiles of a bag that score highest for the bag's label are trained towards that label, so one
  sampled lesion tile trains the feature network at full strength, not ``1/N`` of it.
* :func:`attention_distillation_loss`: the attention logits of the sampled cells are trained towards
  the (stop-gradient) instance scores of their tiles, so the attention network learns which
  low-resolution appearance is worth reading from what the feature network found there.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["attention_distillation_loss", "instance_evidence", "topk_instance_loss"]


def topk_instance_loss(
    instance_logits: Tensor, labels: Tensor, k: int = 1, negatives: str = "all"
) -> Tensor:
    """Mean over bags of the loss of each bag's top-``k`` instances against the bag's label.

    Args:
        instance_logits: ``[B, N]`` (binary: one logit per tile) or ``[B, N, C]`` (``C`` classes).
        labels: ``[B]``: 0/1 (binary) or class indices.
        k: instances per bag that carry the label (the ``k`` highest-scoring for it; ``min(k, N)``).
        negatives: binary only: ``"all"`` trains every instance of a negative bag towards 0 (none of
            them may be positive), ``"topk"`` only its ``k`` highest-scoring ones.

    Binary: positive bags: BCE(top-``k`` logits, 1); negative bags: BCE(logits, 0). Multi-class: the
    ``k`` instances with the highest logit for the bag's class, cross-entropy towards that class.
    """
    if negatives not in ("all", "topk"):
        raise ValueError(f"negatives must be 'all' or 'topk', got {negatives!r}")
    if instance_logits.dim() not in (2, 3) or labels.shape != instance_logits.shape[:1]:
        raise ValueError(
            f"expected instance_logits [B, N] or [B, N, C] and labels [B], got "
            f"{tuple(instance_logits.shape)} and {tuple(labels.shape)}"
        )
    k = max(1, min(int(k), instance_logits.shape[1]))
    if instance_logits.dim() == 3:
        b, n, c = instance_logits.shape
        y = labels.long()
        for_label = instance_logits.gather(2, y.view(b, 1, 1).expand(b, n, 1))[..., 0]
        top = for_label.topk(k, dim=1).indices  # [B, k]
        chosen = instance_logits.gather(1, top[..., None].expand(b, k, c))
        return F.cross_entropy(chosen.reshape(b * k, c), y.repeat_interleave(k))
    y = labels.to(instance_logits.dtype)
    top = instance_logits.topk(k, dim=1).values  # [B, k]
    pos = F.binary_cross_entropy_with_logits(top, torch.ones_like(top), reduction="none").mean(1)
    neg_logits = instance_logits if negatives == "all" else top
    neg = F.binary_cross_entropy_with_logits(
        neg_logits, torch.zeros_like(neg_logits), reduction="none"
    ).mean(1)
    return torch.where(y > 0.5, pos, neg).mean()


def instance_evidence(instance_logits: Tensor, labels: Tensor | None = None) -> Tensor:
    """Stop-gradient evidence ``[B, N]`` in ``[0, 1]`` of each tile: binary ``[B, N]`` logits give
    the positive-class probability (whatever the bag's label: where a positive would show);
    multi-class ``[B, N, C]`` logits give the probability of the bag's class ``labels`` ``[B]``."""
    with torch.no_grad():
        if instance_logits.dim() == 2:
            return torch.sigmoid(instance_logits)
        if labels is None:
            raise ValueError("multi-class instance evidence needs the bag labels")
        p = torch.softmax(instance_logits, dim=-1)
        b, n, _ = p.shape
        return p.gather(2, labels.long().view(b, 1, 1).expand(b, n, 1))[..., 0]


def attention_distillation_loss(sampled_logits: Tensor, evidence: Tensor) -> Tensor:
    """BCE between ``sigmoid(attention logit)`` of the sampled cells ``[B, N]`` and the evidence
    ``[B, N]`` found in their tiles (no gradient to the evidence).

    The attention logit of a cell then estimates the log-odds that its tile shows evidence, so the
    softmax over cells puts mass in proportion to those odds. Non-finite logits (masked cells, never
    drawn) are not allowed.
    """
    if sampled_logits.shape != evidence.shape:
        raise ValueError(
            f"sampled_logits {tuple(sampled_logits.shape)} and evidence {tuple(evidence.shape)} differ"
        )
    return F.binary_cross_entropy_with_logits(sampled_logits, evidence.detach().to(sampled_logits))
