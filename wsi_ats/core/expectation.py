"""Unbiased Monte-Carlo estimate of ``sum_k a_k f_k`` and of its gradients from sampled cells.

Why the gradients are unbiased. The target is ``F(a, f) = sum_k a_k f_k``; its gradient with
respect to the full attention vector is ``dF/da_k = g.f_k`` (``g`` the upstream gradient), and
the attention logits get theirs through the (linear) softmax Jacobian, so an estimate ``G_k``
with ``E[G_k] = g.f_k`` for every cell ``k`` is all we need. ``sample`` gathers ``a`` at the
drawn cells, so ``G_k`` is the sum of the per-position gradients at positions with ``q_i = k``.

* With replacement: each draw gives ``g.f_q / (N a_q)`` at its cell ``q``;
  ``E[sum_i 1{q_i=k} g.f_k / (N a_k)] = N * a_k * g.f_k / (N a_k) = g.f_k``.
* Without replacement, term ``i`` given the earlier draws (``S = sum_{j<i} a_{q_j}``): the earlier
  cells get their exact gradient ``g.f_{q_j}``; the current draw gets ``(1 - S) g.f_{q_i} / a_{q_i}``
  with ``1 - S`` held constant. A cell ``k`` not drawn yet is drawn now with probability
  ``a_k / (1 - S)``, so its expected gradient is ``g.f_k``; drawn cells get ``g.f_k`` exactly.
  Every term is conditionally unbiased for every ``k``, hence so is their mean. Summed over the
  terms, position ``i`` gets ``(N - 1 - i + (1 - S_{i-1}) / a_{q_i}) g.f_{q_i} / N`` (0-based ``i``).
  The original Keras library differentiates a different expression and is biased here.
* Features: the estimate is linear in ``f`` and the draws do not depend on the feature network,
  so the exact derivative of the estimate is an unbiased gradient.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

__all__ = ["expectation"]


def _without_replacement_weights(a: Tensor) -> tuple[Tensor, Tensor]:
    """Per-position weights for draws in sampling order.

    ``a``: ``[B, N]`` attention of the draws in order. Returns ``(value_w, remaining)``:
    ``value_w[i]`` multiplies ``f_{q_i}`` in the estimate ``(1/N) sum_i [sum_{j<i} a_j f_j +
    (1 - S_{i-1}) f_i]``, i.e. ``((N-1-i) a_i + (1 - S_{i-1})) / N``, and ``remaining[i] =
    1 - S_{i-1}`` is the probability mass still available at draw ``i``.
    """
    n = a.shape[1]
    remaining = (1 - (torch.cumsum(a, dim=1) - a)).clamp_min(0)
    later = torch.arange(n - 1, -1, -1, device=a.device, dtype=a.dtype)  # N-1-i
    value_w = (later * a + remaining) / n
    return value_w, remaining


class _Expectation(torch.autograd.Function):
    """``forward(a [B,N], f [B,N,D], replace) -> [B,D]`` with unbiased custom gradients."""

    @staticmethod
    def forward(ctx: Any, sampled_attention: Tensor, features: Tensor, replace: bool) -> Tensor:
        n = sampled_attention.shape[1]
        a = sampled_attention.to(features.dtype)
        if replace:
            value_w = torch.full_like(a, 1.0 / n)
            remaining = None
        else:
            value_w, remaining = _without_replacement_weights(a)
        ctx.replace = replace
        ctx.attention_dtype = sampled_attention.dtype
        ctx.save_for_backward(a, features, value_w, remaining if remaining is not None else a)
        return torch.einsum("bn,bnd->bd", value_w, features)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, Tensor | None, None]:
        a, features, value_w, remaining = ctx.saved_tensors
        n = a.shape[1]
        g_f = torch.einsum("bd,bnd->bn", grad, features)  # g . f_{q_i}
        grad_a = grad_f = None
        if ctx.needs_input_grad[0]:
            if ctx.replace:
                # Score-function weight: E[1{q=k} / (N a_k)] summed over N draws is 1.
                grad_a = g_f / (n * a)
            else:
                # Term i: exact gradient g.f_j for each earlier draw j < i, plus
                # (1 - S_{i-1}) g.f_i / a_i for the current draw, (1 - S_{i-1}) held constant.
                # Position i is "earlier" in the N-1-i later terms.
                later = torch.arange(n - 1, -1, -1, device=a.device, dtype=a.dtype)
                grad_a = g_f * (later + remaining / a) / n
            grad_a = grad_a.to(ctx.attention_dtype)
        if ctx.needs_input_grad[1]:
            grad_f = value_w.unsqueeze(-1) * grad.unsqueeze(1)
        return grad_a, grad_f, None


def expectation(sampled_attention: Tensor, features: Tensor, replace: bool) -> Tensor:
    """Unbiased estimate of ``sum_k a_k f_k`` from ``N`` sampled cells.

    Args:
        sampled_attention: ``[B, N]`` attention of the sampled cells (as returned by ``sample``,
            in sampling order when ``replace=False``).
        features: ``[B, N, D]`` features of the sampled cells.
        replace: whether the cells were drawn with replacement.

    Returns:
        ``[B, D]``. With replacement ``(1/N) sum_i f_{q_i}``; without, ``(1/N) sum_i
        [sum_{j<i} a_{q_j} f_{q_j} + (1 - sum_{j<i} a_{q_j}) f_{q_i}]``. The backward gives
        unbiased estimates of the gradient of ``sum_k a_k f_k`` with respect to the full attention
        (through the gather in ``sample``) and exact derivatives of the estimate with respect to
        ``features``.
    """
    if sampled_attention.dim() != 2 or features.dim() != 3:
        raise ValueError(
            "expected sampled_attention [B, N] and features [B, N, D], got "
            f"{tuple(sampled_attention.shape)} and {tuple(features.shape)}"
        )
    if features.shape[:2] != sampled_attention.shape:
        raise ValueError(
            f"features {tuple(features.shape)} do not match sampled_attention "
            f"{tuple(sampled_attention.shape)} in [B, N]"
        )
    return _Expectation.apply(sampled_attention, features, bool(replace))
