"""Attention over tissue only: a mask on the low-res view mapped onto the attention grid, and the
masked softmax. The one implementation of both rules in the package."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["mask_to_map", "masked_logits", "masked_softmax"]


def mask_to_map(mask: Tensor, map_size: tuple[int, int]) -> Tensor:
    """Bool ``[B, mh, mw]``: ``mask`` ``[B, h, w]`` (bool or {0, 1}) on the low-res view, max-pooled
    onto an attention map of ``map_size`` (a cell is kept when any pixel it covers is nonzero)."""
    if mask.dim() != 3:
        raise ValueError(f"mask must be [B, h, w], got shape {tuple(mask.shape)}")
    keep = mask != 0
    if tuple(keep.shape[1:]) != tuple(map_size):
        keep = F.adaptive_max_pool2d(keep.float().unsqueeze(1), tuple(map_size)).squeeze(1) > 0
    return keep


def masked_logits(logits: Tensor, mask: Tensor | None, empty: str = "all") -> Tensor:
    """Logits ``[B, mh, mw]`` with the cells outside ``mask`` set to ``-inf``.

    ``logits`` is ``[B, 1, mh, mw]`` or ``[B, mh, mw]``; ``mask`` is ``[B, h, w]`` on the low-res view
    or ``[B, mh, mw]`` (see :func:`mask_to_map`), or ``None`` (every cell kept). A row whose mask keeps
    no cell falls back to every cell when ``empty="all"`` (the slide pipeline: a slide without
    detected tissue is still sampled), or raises ``ValueError`` when ``empty="raise"``.
    """
    if logits.dim() == 4 and logits.shape[1] == 1:
        logits = logits[:, 0]
    if logits.dim() != 3:
        raise ValueError(
            f"attention logits must be [B, 1, mh, mw] or [B, mh, mw], got {tuple(logits.shape)}"
        )
    if mask is None:
        return logits
    if empty not in ("all", "raise"):
        raise ValueError(f"empty must be 'all' or 'raise', got {empty!r}")
    keep = mask_to_map(mask.to(logits.device), tuple(logits.shape[1:]))
    none_kept = ~keep.flatten(1).any(dim=1)
    if bool(none_kept.any()):
        if empty == "raise":
            raise ValueError("mask removes every cell of some batch item; nothing to sample")
        keep = keep | none_kept[:, None, None]
    return logits.masked_fill(~keep, float("-inf"))


def masked_softmax(logits: Tensor, mask: Tensor | None = None, empty: str = "all") -> Tensor:
    """Attention ``[B, mh, mw]``: softmax over every cell kept by ``mask``, exactly 0 elsewhere.

    See :func:`masked_logits` for the shapes and ``empty``. The gradient is finite at masked cells.
    """
    z = masked_logits(logits, mask, empty)
    b, mh, mw = z.shape
    return torch.softmax(z.reshape(b, -1), dim=1).reshape(b, mh, mw)
