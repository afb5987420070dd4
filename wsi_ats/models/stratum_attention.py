"""An attention net plus one logit per cohort appearance stratum (``attention.stratum_scale``).

The attention CNN learns by gradient steps, a few hundred per training run, so it moves slowly
towards a structure that is rare on every slide. The appearance strata of exploration
(:func:`wsi_ats.core.fit_appearance_strata`, k-means on the training cohort's low-res cells) give
a faster, tabular route: training measures, per stratum, how much higher the instance classifier
scores its tiles on positive than on negative slides (:class:`wsi_ats.training.StratumContrast`),
and the stratum's logit rises with that contrast. The strata and their logits are buffers of the
model (saved in checkpoints), so prediction, dense evaluation and heat maps see the same attention
as training. Nothing in it says which appearance matters: the strata are unsupervised, and the
logits come from the labels through the instance classifier.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from wsi_ats.core import AppearanceStrata, cell_descriptors, nearest_stratum

__all__ = ["StratumAttention"]

_FAR = 1e4  # standardised distance of an unused centre: never the nearest one


class StratumAttention(nn.Module):
    """``net(view) + bias[stratum of each cell]``: ``net`` maps views ``[B, C, h, w]`` to logits
    ``[B, 1, mh, mw]`` (or ``[B, mh, mw]``); a cell's stratum is the nearest of ``n_strata`` centres
    to its descriptor (:func:`wsi_ats.core.cell_descriptors` with ``context``). Until
    :meth:`set_strata` and :meth:`set_bias` are called every bias is 0: the logits are ``net``'s."""

    def __init__(self, net: nn.Module, n_strata: int, context: int, channels: int = 3) -> None:
        super().__init__()
        if n_strata < 1:
            raise ValueError(f"n_strata must be >= 1, got {n_strata}")
        self.net = net
        self.context = int(context)
        d = 2 * channels
        self.register_buffer("mean", torch.zeros(d))
        self.register_buffer("std", torch.ones(d))
        self.register_buffer("centres", torch.full((n_strata, d), _FAR))
        self.register_buffer("bias", torch.zeros(n_strata))

    @property
    def n_strata(self) -> int:
        return int(self.bias.shape[0])

    def set_strata(self, strata: AppearanceStrata) -> None:
        """Use the cohort's fitted strata (fewer centres than ``n_strata`` leave the rest unused);
        the biases restart at 0."""
        k = strata.centres.shape[0]
        if k > self.n_strata or strata.centres.shape[1] != self.centres.shape[1]:
            raise ValueError(
                f"strata of shape {tuple(strata.centres.shape)} do not fit "
                f"{tuple(self.centres.shape)}"
            )
        with torch.no_grad():
            self.mean.copy_(strata.mean)
            self.std.copy_(strata.std)
            self.centres.fill_(_FAR)
            self.centres[:k].copy_(strata.centres)
            self.bias.zero_()

    def set_bias(self, bias: Tensor) -> None:
        """Set the per-stratum logits ``[n_strata]``."""
        with torch.no_grad():
            self.bias.copy_(bias.to(self.bias))

    def strata_of(self, view: Tensor, map_size: tuple[int, int]) -> Tensor:
        """``LongTensor[B, mh * mw]``: the stratum of each attention cell of ``view``."""
        desc = cell_descriptors(view, map_size, self.context)  # [B, K, d]
        return nearest_stratum(desc, AppearanceStrata(self.mean, self.std, self.centres))

    def cell_strata(self, view: Tensor) -> Tensor:
        """:meth:`strata_of` at the size of the map this module gives for ``view``."""
        with torch.no_grad():
            map_size = tuple(self.net(view).shape[-2:])
        return self.strata_of(view, map_size)

    def forward(self, view: Tensor, strata: Tensor | None = None) -> Tensor:
        """Logits of ``view``; ``strata`` (``[B, mh * mw]``, :meth:`cell_strata` of this view,
        e.g. kept from an earlier call) saves computing them again."""
        logits = self.net(view)
        if not bool(self.bias.any()):
            return logits
        if strata is None:
            strata = self.strata_of(view, tuple(logits.shape[-2:]))
        return logits + self.bias[strata].reshape(logits.shape).to(logits.dtype)
