"""The attention-sampling module: attention on a low-res view, features from sampled high-res patches."""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple, Protocol, runtime_checkable

import torch
from torch import Tensor, nn

from wsi_ats.core.draws import draw, estimate
from wsi_ats.core.masking import masked_softmax
from wsi_ats.core.offsets import _pair, cell_offsets
from wsi_ats.core.patches import extract_patches
from wsi_ats.core.regularizers import multinomial_entropy

__all__ = ["AttentionSampling", "AttentionSamplingOutput", "PatchSource", "attention_sampling"]

Regularizer = Callable[[Tensor], Tensor]


@runtime_checkable
class PatchSource(Protocol):
    """A batch of high-res images that patches are read from lazily (e.g. slides)."""

    def high_size(self, batch_index: int) -> tuple[int, int]:
        """``(H, W)`` of item ``batch_index``, in the pixels that offsets are expressed in."""
        ...

    def read_patches(self, batch_index: int, offsets: Tensor, size: tuple[int, int]) -> Tensor:
        """Patches ``[n, C, h, w]`` (float32) with top-left ``offsets`` ``[n, 2]`` ``(y, x)``,
        ``size = (h, w)``; pixels outside the image take the pad value (white for slides)."""
        ...


class AttentionSamplingOutput(NamedTuple):
    """Result of ``AttentionSampling.forward`` (``N`` = ``n_patches``)."""

    features: Tensor  # [B, D] unbiased estimate of sum_k a_k f_k
    attention: Tensor  # [B, mh, mw], sums to 1 per item
    patches: Tensor  # [B, N, C, ph, pw]
    offsets: Tensor  # [B, N, 2] high-res (y, x) top-left
    indices: Tensor  # [B, N] into the flattened map, in sampling order
    sampled_attention: Tensor  # [B, N]
    regularization: Tensor  # scalar, add it to the loss; 0 without a regulariser


class AttentionSampling(nn.Module):
    """Attention sampling (Katharopoulos & Fleuret, ICML 2019); see ``attention_sampling``."""

    def __init__(
        self,
        attention_net: nn.Module,
        feature_net: nn.Module,
        patch_size: int | tuple[int, int],
        n_patches: int,
        replace: bool = False,
        attention_regularizer: float | Regularizer | None = None,
        receptive_field: int | tuple[int, int] = 0,
        pad_value: float = 1.0,
        explore: float = 0.0,
        control_variate: str = "none",
    ) -> None:
        super().__init__()
        if n_patches < 1:
            raise ValueError(f"n_patches must be >= 1, got {n_patches}")
        self.attention_net = attention_net
        self.feature_net = feature_net
        self.patch_size = _pair(patch_size, "patch_size")
        self.n_patches = int(n_patches)
        self.replace = bool(replace)
        self.attention_regularizer = attention_regularizer
        self.receptive_field = _pair(receptive_field, "receptive_field")
        self.pad_value = float(pad_value)
        self.explore = float(explore)
        self.control_variate = control_variate

    def compute_attention(self, x_low: Tensor, mask: Tensor | None = None) -> Tensor:
        """Attention ``[B, mh, mw]`` (softmax over all cells; masked cells exactly 0)."""
        return masked_softmax(self.attention_net(x_low), mask, empty="raise")

    def forward(
        self,
        x_low: Tensor,
        x_high: Tensor | PatchSource,
        mask: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> AttentionSamplingOutput:
        """Run the model on a batch.

        Args:
            x_low: ``[B, C, h, w]`` low-res view.
            x_high: ``[B, C, H, W]`` high-res tensor or a ``PatchSource``.
            mask: optional ``[B, h, w]`` or ``[B, mh, mw]`` bool/{0,1}; cells outside get attention 0.
            generator: ``torch.Generator`` on ``x_low``'s device for reproducible draws.
        """
        b, _, h, w = x_low.shape
        attention = self.compute_attention(x_low, mask)
        mh, mw = attention.shape[1:]
        explore = self.explore if self.training else 0.0
        drawn = draw(attention, self.n_patches, self.replace, generator, explore)
        indices = drawn.indices

        with torch.no_grad():
            if isinstance(x_high, Tensor):
                if x_high.dim() != 4 or x_high.shape[0] != b:
                    raise ValueError(
                        f"x_high must be [B={b}, C, H, W], got shape {tuple(x_high.shape)}"
                    )
                high_size: Tensor | tuple[int, int] = tuple(x_high.shape[-2:])
            else:
                high_size = torch.tensor([tuple(x_high.high_size(i)) for i in range(b)])
            offsets = cell_offsets(
                indices, (mh, mw), (h, w), high_size, self.patch_size, self.receptive_field
            )
            if isinstance(x_high, Tensor):
                patches = extract_patches(x_high, offsets, self.patch_size, self.pad_value)
            else:
                patches = torch.stack(
                    [x_high.read_patches(i, offsets[i].cpu(), self.patch_size) for i in range(b)]
                )
            dtype = x_low.dtype if x_low.is_floating_point() else torch.float32
            patches = patches.to(device=x_low.device, dtype=dtype)

        n, (ph, pw) = self.n_patches, self.patch_size
        flat_features = self.feature_net(patches.reshape(b * n, patches.shape[2], ph, pw))
        if flat_features.dim() != 2 or flat_features.shape[0] != b * n:
            raise ValueError(
                f"feature_net must map [B*N={b * n}, C, ph, pw] patches to [B*N, D], "
                f"got {tuple(flat_features.shape)}"
            )
        features = flat_features.reshape(b, n, -1)
        pooled = estimate(attention, drawn, features, self.control_variate)
        return AttentionSamplingOutput(
            features=pooled,
            attention=attention,
            patches=patches,
            offsets=offsets,
            indices=indices,
            sampled_attention=attention.reshape(b, -1).gather(1, indices),
            regularization=self._regularization(attention),
        )

    def _regularization(self, attention: Tensor) -> Tensor:
        reg = self.attention_regularizer
        if reg is None:
            return attention.new_zeros(())
        value = (
            -float(reg) * multinomial_entropy(attention)
            if isinstance(reg, (int, float))
            else reg(attention)
        )
        return value.mean()


def attention_sampling(
    attention_net: nn.Module,
    feature_net: nn.Module,
    patch_size: int | tuple[int, int],
    n_patches: int,
    replace: bool = False,
    attention_regularizer: float | Regularizer | None = None,
    receptive_field: int | tuple[int, int] = 0,
    pad_value: float = 1.0,
    explore: float = 0.0,
    control_variate: str = "none",
) -> AttentionSampling:
    """Build an ``AttentionSampling`` module.

    Args:
        attention_net: low-res ``[B, C, h, w]`` -> logits ``[B, 1, mh, mw]`` or ``[B, mh, mw]``.
        feature_net: patches ``[B*N, C, ph, pw]`` -> features ``[B*N, D]``.
        patch_size: ``ph`` or ``(ph, pw)`` high-res pixels.
        n_patches: ``N`` cells drawn per item.
        replace: draw with replacement (i.i.d.) or without (Gumbel top-k, in sampling order).
        attention_regularizer: ``None``; a float ``coef`` giving ``-coef * mean entropy`` of the
            attention (maximises entropy when added to the loss); or a callable
            ``attention [B, mh, mw] -> [B] or scalar`` (averaged over the batch).
        receptive_field: low-res pixels the attention net loses at the borders (per axis total).
        pad_value: value of high-res pixels outside the image (1.0 = white).
        explore: in training mode, draw from ``(1 - explore) a + explore * uniform`` over the
            cells with nonzero attention (importance-weighted, so still unbiased); 0 = off.
        control_variate: ``"none"`` or ``"loo"``: a leave-one-out baseline for the attention
            gradient (same expectation, lower variance; see ``expectation``).

    The returned ``regularization`` must be added to the training loss by the caller.
    """
    return AttentionSampling(
        attention_net,
        feature_net,
        patch_size,
        n_patches,
        replace=replace,
        attention_regularizer=attention_regularizer,
        receptive_field=receptive_field,
        pad_value=pad_value,
        explore=explore,
        control_variate=control_variate,
    )
