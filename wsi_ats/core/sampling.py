"""Drawing cells from an attention distribution, with or without replacement."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["sample"]

# torch.multinomial refuses more categories than this; larger grids use an inverse-CDF draw.
MULTINOMIAL_MAX_CATEGORIES = 2**24


def _gumbel_keys(log_p: Tensor, generator: torch.Generator | None) -> Tensor:
    """Perturbed keys ``log p + Gumbel(0, 1)``; ``-inf`` stays ``-inf`` (zero-probability cells)."""
    exp_noise = torch.empty_like(log_p).exponential_(generator=generator)
    # Gumbel(0, 1) = -log(Exp(1)); the clamp guards against an exact zero draw.
    return log_p - torch.log(exp_noise.clamp_min(torch.finfo(log_p.dtype).tiny))


def _inverse_cdf(probs: Tensor, n: int, generator: torch.Generator | None) -> Tensor:
    """I.i.d. draws ``[B, n]`` by inverting the float64 CDF; zero-probability cells are never hit."""
    cdf = torch.cumsum(probs.to(torch.float64), dim=1)
    u = (
        torch.rand(probs.shape[0], n, generator=generator, dtype=torch.float64, device=probs.device)
        * cdf[:, -1:]
    )
    indices = torch.searchsorted(cdf, u, right=True)
    # Rounding can put u on the total; fall back to the last nonzero cell of the row.
    last_nonzero = probs.shape[1] - 1 - torch.argmax((probs.flip(1) > 0).to(torch.uint8), dim=1)
    return torch.minimum(indices, last_nonzero.unsqueeze(1))


def sample(
    attention: Tensor,
    n: int,
    replace: bool = False,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor]:
    """Draw ``n`` cells per batch item from the attention distribution.

    Args:
        attention: ``[B, K]`` or ``[B, *grid]`` non-negative weights, each row summing to 1
            (grids are flattened in row-major order). Cells with attention 0 are never drawn.
        n: number of cells to draw per item.
        replace: ``True`` for i.i.d. draws (multinomial); ``False`` for draws without replacement
            (Gumbel top-k), returned in sampling order (the order a sequential draw would give).
        generator: optional ``torch.Generator`` on the same device as ``attention``; the draws
            are a deterministic function of its state.

    Returns:
        ``indices`` LongTensor ``[B, n]`` into the flattened grid, and ``sampled_attention``
        ``[B, n]`` gathered from ``attention`` (gradients flow back to ``attention``).

    Raises:
        ValueError: on a malformed shape, ``n < 1``, or, without replacement, ``n`` larger than
            the number of nonzero cells of some row.
    """
    if attention.dim() < 2:
        raise ValueError(
            f"attention must be [B, K] or [B, *grid], got shape {tuple(attention.shape)}"
        )
    if not attention.is_floating_point():
        raise ValueError(f"attention must be a floating-point tensor, got {attention.dtype}")
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    flat = attention.reshape(attention.shape[0], -1)
    with torch.no_grad():
        probs = flat.detach()
        if not bool(((probs >= 0) & torch.isfinite(probs)).all() and (probs.sum(1) > 0).all()):
            raise ValueError(
                "attention must be finite and non-negative with a positive sum per row"
            )
        if replace and probs.shape[1] <= MULTINOMIAL_MAX_CATEGORIES:
            indices = torch.multinomial(probs, n, replacement=True, generator=generator)
        elif replace:
            indices = _inverse_cdf(probs, n, generator)
        else:
            nonzero = int((probs > 0).sum(dim=1).min().item()) if probs.shape[0] else n
            if n > nonzero:
                raise ValueError(
                    f"cannot draw n={n} cells without replacement: some batch item has only "
                    f"{nonzero} cells with nonzero attention (of {probs.shape[1]})"
                )
            keys = _gumbel_keys(torch.log(probs), generator)
            # Sorting the perturbed keys in descending order gives the sequential sampling order.
            indices = torch.topk(keys, n, dim=1, largest=True, sorted=True).indices
    return indices, flat.gather(1, indices)
