"""Per appearance stratum: how much higher the instance classifier scores positive slides' tiles.

:class:`StratumContrast` feeds :class:`wsi_ats.models.StratumAttention`. For every sampled tile of
a training slide it records the tile's instance probability minus the slide's mean (importance
weighted ``u / q``, so each estimate follows the tissue, not the proposal), by cohort stratum and
slide label, in exponentially decayed sums (the classifier keeps learning). Centring per slide
cancels whatever the classifier learnt about a whole slide (its brightness, say): what is left is
the stratum's excess over the rest of its own slide.

A stratum's contrast is ``mean_pos - mean_neg`` less ``z`` standard errors (0 below that, or
while either label has fewer than ``min_tiles`` effective tiles in it): tissue that both labels
show scores alike on both, and a stratum that holds findings only on positive slides stands out,
however rare it is on each slide. Its logit is ``log(1 + contrast / scale)``.

The tile classifier can also learn what tells its own training slides apart (their identity, not a
finding), and that shows as contrast too. So the contrast is measured on *check* slides only
(:meth:`StratumContrast.choose_checks`: half the training slides of each label, chosen by a hash
of their ids), whose tiles the instance loss never trains on.
"""

from __future__ import annotations

import hashlib

import torch
from torch import Tensor

__all__ = ["StratumContrast"]


class StratumContrast:
    """Decayed, weighted first and second moments of slide-centred instance probabilities, per
    ``(label, stratum)``. ``decay`` multiplies every sum once per :meth:`update`, i.e. per check
    slide read (0.99: a half-life of about 70 of them); ``z`` and ``min_tiles`` guard against
    noise."""

    def __init__(
        self, n_strata: int, decay: float = 0.99, z: float = 2.0, min_tiles: float = 20.0
    ) -> None:
        if n_strata < 1 or not 0 < decay <= 1:
            raise ValueError(f"need n_strata >= 1 and 0 < decay <= 1, got {n_strata}, {decay}")
        self.decay, self.z, self.min_tiles = float(decay), float(z), float(min_tiles)
        # [label, moment, stratum]; moments: sum w, sum w^2, sum w x, sum w x^2
        self.sums = torch.zeros(2, 4, n_strata, dtype=torch.float64)
        self.check_ids: set[str] = set()

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
        self.sums.mul_(self.decay)
        if not bool(keep.any()):
            return
        s, p, w = s[keep], p[keep], w[keep]
        w = w / w.mean()  # each tile counts about once, whatever the proposal's scale
        x = p - (w * p).sum() / w.sum()  # the slide's own level removed
        moments = torch.stack([w, w * w, w * x, w * x * x])  # [4, n]
        self.sums[int(int(label) > 0)].index_add_(1, s, moments)

    def moments(self) -> tuple[Tensor, Tensor, Tensor]:
        """``(mean [2, S], n_eff [2, S], se [S])``: per label (0: negative, 1: positive) and
        stratum the weighted mean of the slide-centred probabilities and the effective number of
        tiles behind it, and the standard error of ``mean_pos - mean_neg``."""
        w, w2, wx, wx2 = self.sums.unbind(1)  # each [2, S]
        safe = w.clamp_min(1e-12)
        mean = wx / safe
        var = (wx2 / safe - mean * mean).clamp_min(0)
        n_eff = w * w / w2.clamp_min(1e-12)
        se = (var / n_eff.clamp_min(1)).sum(0).sqrt()
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
