"""Regularisers on the attention distribution."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["multinomial_entropy"]


def multinomial_entropy(attention: Tensor) -> Tensor:
    """Entropy (nats) of each row of ``attention`` ``[B, K]`` or ``[B, *grid]``; returns ``[B]``.

    Safe at zeros (``0 log 0 = 0``, finite gradient), so masked cells do not poison the softmax
    backward. As a regulariser add ``-coef * multinomial_entropy(a).mean()`` to the loss (what
    ``attention_sampling(..., attention_regularizer=coef)`` does) to keep attention from
    collapsing early in training.
    """
    flat = attention.reshape(attention.shape[0], -1)
    log_a = torch.log(flat.clamp_min(torch.finfo(flat.dtype).tiny))
    return -(flat * log_a).sum(dim=1)
