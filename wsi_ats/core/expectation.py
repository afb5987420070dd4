"""Unbiased Monte-Carlo estimate of ``sum_k a_k f_k`` and of its gradients from sampled cells.

Cells are drawn from a proposal ``q`` (the attention itself, ``q = a``, or a mixture with
exploration, see :func:`wsi_ats.core.draw`); ``q`` is treated as a constant (no gradient flows
through it). ``a`` is the attention, ``f`` the features, ``g`` the upstream gradient.

Value. With replacement, ``(1/N) sum_i (a_i / q_i) f_i`` (importance sampling; ``(1/N) sum_i f_i``
when ``q = a``). Without replacement, in sampling order, term ``i`` given the earlier draws is
``sum_{j<i} a_j f_j + (1 - Q_{i-1}) (a_i / q_i) f_i`` with ``Q_{i-1} = sum_{j<i} q_j``: the draw is
from ``q`` restricted to the cells not drawn yet, so the second part is unbiased for the attention
mass still unseen; the estimate is the mean of the ``N`` terms (``(1 - S_{i-1}) f_i`` when ``q = a``).

Why the gradients are unbiased. The draws' distribution does not depend on ``a`` (``q`` is a
constant), so the exact derivative of a conditionally unbiased term is an unbiased gradient:
``dF/da_k = g.f_k`` for every cell in expectation. With replacement each draw gives
``g.f_q / (N q_q)`` at its cell; without replacement term ``i`` gives the exact ``g.f_j`` to each
earlier draw and ``(1 - Q_{i-1}) g.f_i / q_i`` to the current one. Summed over the terms, position
``i`` gets ``(N - 1 - i + (1 - Q_{i-1}) / q_i) g.f_i / N`` (0-based ``i``). The original Keras
library differentiates a different expression and is biased here. Features: the estimate is linear
in ``f`` and the draws do not depend on the feature network, so its exact derivative is unbiased.

Control variates. The attention comes out of a softmax, whose Jacobian maps any constant vector
``c 1`` to zero (``sum_k a_k = 1``). So a term may estimate ``g.f_k - c`` instead of ``g.f_k`` for every
cell, for any ``c`` that does not depend on that term's own draw, and the gradient with respect to the
attention *logits* stays unbiased while its variance falls when ``c`` is close to ``g.f`` of the
cells drawn (the REINFORCE baseline; Williams 1992, Kool et al. 2019). Available ``c``:

* ``control_variate="loo"``, with replacement: leave one out, ``c_i`` = the importance-weighted mean
  of ``g.f_j`` over the other draws ``j != i`` (independent of draw ``i``);
* ``control_variate="loo"``, without replacement: ``c_i`` = an estimate of ``g.F`` from the earlier
  draws ``j < i`` only: ``sum_{j<i} a_j g.f_j + (1 - sum_{j<i} a_j)`` x their importance-weighted mean;
* ``baseline`` (a feature vector ``b`` that does not depend on these draws, e.g. a running mean of
  pooled features): ``c = g.b`` where no draw is left to lean on (the first draw without
  replacement, ``N = 1`` with replacement), or everywhere with ``control_variate="none"``.

The value and the feature gradients never change; only the attention gradient's variance does. The
gradient with respect to ``a`` itself is shifted by constants; only the logits' gradient is unbiased.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

__all__ = ["CONTROL_VARIATES", "expectation"]

CONTROL_VARIATES = ("none", "loo")


def _value_weights(a: Tensor, q: Tensor, replace: bool) -> tuple[Tensor, Tensor]:
    """``(value_w, remaining)`` ``[B, N]``: the estimate is ``sum_i value_w_i f_i``; ``remaining_i =
    1 - Q_{i-1}``, the proposal mass left at draw ``i`` (all ones with replacement)."""
    n = a.shape[1]
    ratio = a / q
    if replace:
        return ratio / n, torch.ones_like(a)
    remaining = (1 - (torch.cumsum(q, dim=1) - q)).clamp_min(0)
    later = torch.arange(n - 1, -1, -1, device=a.device, dtype=a.dtype)  # N-1-i
    return (later * a + remaining * ratio) / n, remaining


def _loo_baseline(g_f: Tensor, a: Tensor, q: Tensor, replace: bool, external: Tensor) -> Tensor:
    """Per-position control variate ``c`` ``[B, N]`` (see the module docstring); ``external``
    ``[B]`` is used where no other draw is available."""
    n = a.shape[1]
    w = a / q  # importance weights (1 when q = a)
    if replace:
        if n == 1:
            return external[:, None].expand_as(g_f)
        total = (w * g_f).sum(dim=1, keepdim=True)
        return (total - w * g_f) / (n - 1)
    # without replacement: only the draws before i
    seen_a = torch.cumsum(a, dim=1) - a  # sum_{j<i} a_j
    seen_ag = torch.cumsum(a * g_f, dim=1) - a * g_f  # sum_{j<i} a_j g.f_j
    seen_w = torch.cumsum(w, dim=1) - w
    seen_wg = torch.cumsum(w * g_f, dim=1) - w * g_f
    mean_seen = seen_wg / seen_w.clamp_min(torch.finfo(w.dtype).tiny)
    c = seen_ag + (1 - seen_a).clamp_min(0) * mean_seen
    c[:, 0] = external
    return c


class _Expectation(torch.autograd.Function):
    """``forward(a, f, q, replace, control_variate, baseline) -> [B, D]`` with custom gradients."""

    @staticmethod
    def forward(
        ctx: Any,
        sampled_attention: Tensor,
        features: Tensor,
        sampled_proposal: Tensor,
        replace: bool,
        control_variate: str,
        baseline: Tensor | None,
    ) -> Tensor:
        a = sampled_attention.to(features.dtype)
        q = sampled_proposal.to(features.dtype)
        value_w, remaining = _value_weights(a, q, replace)
        ctx.replace = replace
        ctx.control_variate = control_variate
        ctx.has_baseline = baseline is not None
        ctx.attention_dtype = sampled_attention.dtype
        b = baseline if baseline is not None else features.new_zeros(())
        ctx.save_for_backward(a, features, q, value_w, remaining, b)
        return torch.einsum("bn,bnd->bd", value_w, features)

    @staticmethod
    def backward(
        ctx: Any, grad: Tensor
    ) -> tuple[Tensor | None, Tensor | None, None, None, None, None]:
        a, features, q, value_w, remaining, b = ctx.saved_tensors
        n = a.shape[1]
        grad_a = grad_f = None
        if ctx.needs_input_grad[0]:
            g_f = torch.einsum("bd,bnd->bn", grad, features)  # g . f_{q_i}
            external = (
                torch.einsum("bd,bd->b", grad, b.expand_as(grad))
                if ctx.has_baseline
                else g_f.new_zeros(g_f.shape[0])
            )
            if ctx.control_variate == "loo":
                c = _loo_baseline(g_f, a, q, ctx.replace, external)
            else:
                c = external[:, None].expand_as(g_f)
            if ctx.replace:
                grad_a = (g_f - c) / (n * q)
            else:
                # term i: (1 - Q_{i-1}) (g.f_i - c_i) / q_i for the current draw; each later term t
                # gives the exact (g.f_i - c_t) to position i
                later_c = torch.flip(torch.cumsum(torch.flip(c, [1]), 1), [1]) - c  # sum_{t>i} c_t
                later = torch.arange(n - 1, -1, -1, device=a.device, dtype=a.dtype)
                grad_a = (remaining * (g_f - c) / q + later * g_f - later_c) / n
            grad_a = grad_a.to(ctx.attention_dtype)
        if ctx.needs_input_grad[1]:
            grad_f = value_w.unsqueeze(-1) * grad.unsqueeze(1)
        return grad_a, grad_f, None, None, None, None


def expectation(
    sampled_attention: Tensor,
    features: Tensor,
    replace: bool,
    sampled_proposal: Tensor | None = None,
    control_variate: str = "none",
    baseline: Tensor | None = None,
) -> Tensor:
    """Unbiased estimate of ``sum_k a_k f_k`` from ``N`` sampled cells.

    Args:
        sampled_attention: ``[B, N]`` attention of the sampled cells (as returned by ``sample`` or
            gathered from the attention, in sampling order when ``replace=False``).
        features: ``[B, N, D]`` features of the sampled cells.
        replace: whether the cells were drawn with replacement.
        sampled_proposal: ``[B, N]`` probabilities of the sampled cells under the distribution they
            were drawn from (no gradient); default: the attention itself.
        control_variate: ``"none"`` or ``"loo"`` (see the module docstring).
        baseline: optional ``[B, D]`` or ``[D]`` feature vector independent of these draws; its
            ``g.b`` is the control variate where ``"loo"`` has no other draw (or everywhere with
            ``"none"``).

    Returns:
        ``[B, D]``. With ``q = a``: with replacement ``(1/N) sum_i f_{q_i}``; without, ``(1/N)
        sum_i [sum_{j<i} a_{q_j} f_{q_j} + (1 - sum_{j<i} a_{q_j}) f_{q_i}]``. The backward gives
        unbiased gradients for the attention's logits (through the gather in ``sample``) and exact
        derivatives of the estimate with respect to ``features``.
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
    if control_variate not in CONTROL_VARIATES:
        raise ValueError(
            f"control_variate must be one of {CONTROL_VARIATES}, got {control_variate!r}"
        )
    if sampled_proposal is None:
        sampled_proposal = sampled_attention
    if sampled_proposal.shape != sampled_attention.shape:
        raise ValueError(
            f"sampled_proposal {tuple(sampled_proposal.shape)} does not match sampled_attention "
            f"{tuple(sampled_attention.shape)}"
        )
    if baseline is not None:
        baseline = baseline.detach().to(features.dtype)
        if baseline.dim() == 1:
            baseline = baseline.expand(features.shape[0], -1)
        if baseline.shape != (features.shape[0], features.shape[2]):
            raise ValueError(
                f"baseline must be [D] or [B, D] = {[features.shape[0], features.shape[2]]}, got "
                f"{tuple(baseline.shape)}"
            )
    return _Expectation.apply(
        sampled_attention,
        features,
        sampled_proposal.detach(),
        bool(replace),
        control_variate,
        baseline,
    )
