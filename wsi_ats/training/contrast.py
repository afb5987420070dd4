"""Per appearance stratum: how much higher the instance classifier scores positive slides' tiles.

:class:`StratumContrast` feeds :class:`wsi_ats.models.StratumAttention`. For every sampled tile of
a training slide it records the tile's instance probability minus the slide's mean (importance
weighted ``u / q``, so each estimate follows the tissue, not the proposal), by cohort stratum and
slide label, in exponentially decayed sums (the classifier keeps learning). Centring per slide
cancels whatever the classifier learnt about a whole slide (its brightness, say): what is left is
the stratum's excess over the rest of its own slide.

``weighting = "importance"`` weights each tile in the stratum sums by ``u / q`` too (a mean over the
stratum's tissue); ``"tiles"`` counts every sampled tile once (a mean over the tiles sampled in
the stratum, which follows the proposal within it): when the proposal is far from uniform inside a
stratum, the importance weights leave few effective tiles behind each mean.

A stratum's contrast is ``mean_pos - mean_neg`` less ``z`` standard errors (0 below that, or
while either label has fewer than ``min_tiles`` effective tiles in it). The standard error is
clustered by slide (a sandwich estimator over the slides' sums): a slide's tiles share its
centring and its lesion load, so counting them as independent draws would understate it. Tissue
that both labels show scores alike on both, and a stratum that holds findings only on positive
slides stands out, however rare it is on each slide. Its logit is ``log(1 + contrast / scale)``.

The tile classifier can also learn what tells its own training slides apart (their identity, not a
finding), and that shows as contrast too. So the contrast is measured on *check* slides only
(:meth:`StratumContrast.choose_checks`: half the training slides of each label, chosen by a hash
of their ids), whose tiles the instance loss never trains on.
"""

from __future__ import annotations

import hashlib

import torch
from torch import Tensor

from wsi_ats.models.config import CONTRAST_WEIGHTINGS, TrainConfig

__all__ = ["StratumContrast"]

_DEFAULTS = TrainConfig()  # the contrast_* defaults of a run, kept in one place


class StratumContrast:
    """Decayed, weighted sums of slide-centred instance probabilities per ``(label, stratum)``,
    over tiles and over slides (for a standard error clustered by slide). A slide read ``k`` check
    slides ago weighs ``decay^k`` (0.99: a half-life of about 70 of them); ``z`` and
    ``min_tiles`` guard against noise; ``weighting``: ``"importance"`` or ``"tiles"`` (module
    docstring)."""

    def __init__(
        self,
        n_strata: int,
        decay: float = _DEFAULTS.contrast_decay,
        z: float = _DEFAULTS.contrast_z,
        min_tiles: float = _DEFAULTS.contrast_min_tiles,
        weighting: str = _DEFAULTS.contrast_weighting,
    ) -> None:
        if n_strata < 1 or not 0 < decay <= 1:
            raise ValueError(f"need n_strata >= 1 and 0 < decay <= 1, got {n_strata}, {decay}")
        if weighting not in CONTRAST_WEIGHTINGS:
            raise ValueError(f"weighting must be one of {CONTRAST_WEIGHTINGS}, got {weighting!r}")
        self.decay, self.z, self.min_tiles = float(decay), float(z), float(min_tiles)
        self.weighting = weighting
        # [label, moment, stratum]; over tiles: sum w, sum w^2, sum w x; over slides, of each
        # slide's sums W and X of w and w x in the stratum: sum W^2, sum W X, sum X^2
        self.sums = torch.zeros(2, 6, n_strata, dtype=torch.float64)
        # a slide read k updates ago weighs decay^k: sums of its squares decay^(2k)
        d = self.decay
        self._decays = torch.tensor([d, d * d, d, d * d, d * d, d * d], dtype=torch.float64)[
            None, :, None
        ]
        self.check_ids: set[str] = set()

    @classmethod
    def for_config(cls, n_strata: int, train: TrainConfig) -> StratumContrast:
        """The contrast a run with the ``[train]`` settings ``train`` keeps (``contrast_*``)."""
        return cls(
            n_strata,
            train.contrast_decay,
            train.contrast_z,
            train.contrast_min_tiles,
            train.contrast_weighting,
        )

    def choose_checks(self, slides: list[tuple[str, int]]) -> None:
        """Make every other slide of each label, in the order of the SHA-256 of their ids, a check
        slide (``slides``: ``(slide_id, label)``): the same half whatever the order given."""
        self.check_ids = set()
        for label in {lab for _, lab in slides}:
            ids = sorted(
                (i for i, lab in slides if lab == label),
                key=lambda i: hashlib.sha256(i.encode()).hexdigest(),
            )
            self.check_ids.update(ids[1::2])

    def checks(self, slide_id: str) -> bool:
        """Whether ``slide_id`` is a check slide (none until :meth:`choose_checks`)."""
        return slide_id in self.check_ids

    def update(self, strata: Tensor, probs: Tensor, weights: Tensor, label: int) -> None:
        """Add one slide's sampled tiles: their strata ``[N]`` (-1: off tissue, skipped), instance
        probabilities ``[N]`` and importance weights ``u / q`` ``[N]``."""
        s = strata.reshape(-1).long().cpu()
        p = probs.detach().reshape(-1).double().cpu()
        w = weights.detach().reshape(-1).double().cpu()
        keep = (s >= 0) & torch.isfinite(w) & (w > 0)
        self.sums.mul_(self._decays)
        if not bool(keep.any()):
            return
        s, p, w = s[keep], p[keep], w[keep]
        w = w / w.mean()  # each tile counts about once, whatever the proposal's scale
        x = p - (w * p).sum() / w.sum()  # the slide's own level removed
        if self.weighting == "tiles":
            w = torch.ones_like(w)
        sums = self.sums[int(int(label) > 0)]
        sums[:3].index_add_(1, s, torch.stack([w, w * w, w * x]))
        slide_w = torch.zeros(sums.shape[-1], dtype=w.dtype).index_add_(0, s, w)
        slide_wx = torch.zeros_like(slide_w).index_add_(0, s, w * x)
        sums[3:] += torch.stack([slide_w * slide_w, slide_w * slide_wx, slide_wx * slide_wx])

    def moments(self) -> tuple[Tensor, Tensor, Tensor]:
        """``(mean [2, S], n_eff [2, S], se [S])``: per label (0: negative, 1: positive) and
        stratum the weighted mean of the slide-centred probabilities and the effective number of
        tiles behind it, and the standard error of ``mean_pos - mean_neg``: clustered by slide
        (a slide's tiles share its lesion load and its centring, so they are not independent)."""
        w, w2, wx, sw2, swx, sx2 = self.sums.unbind(1)  # each [2, S]
        safe = w.clamp_min(1e-12)
        mean = wx / safe
        # sandwich variance of the ratio sum(w x) / sum(w) over slides c:
        # sum_c (X_c - mean W_c)^2 / (sum w)^2, X_c and W_c the slide's sums in the stratum
        var = (sx2 - 2 * mean * swx + mean * mean * sw2).clamp_min(0) / (safe * safe)
        n_eff = w * w / w2.clamp_min(1e-12)
        se = var.sum(0).sqrt()
        return mean, n_eff, se

    def contrast(self) -> Tensor:
        """``float32[n_strata]``: ``max(0, mean_pos - mean_neg - z * se)``; 0 where either label
        has too few effective tiles."""
        mean, n_eff, se = self.moments()
        c = (mean[1] - mean[0] - self.z * se).clamp_min(0)
        enough = (n_eff >= self.min_tiles).all(0)
        return torch.where(enough, c, torch.zeros_like(c)).float()

    def bias(self, scale: float) -> Tensor:
        """The strata's attention logits ``log(1 + contrast / scale)`` ``[n_strata]``."""
        return torch.log1p(self.contrast() / scale)

    def state(self) -> dict:
        return {"sums": self.sums.clone()}

    def load(self, state: dict | None) -> None:
        if state is not None and state["sums"].shape == self.sums.shape:
            self.sums.copy_(state["sums"])
