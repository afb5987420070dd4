"""The attention network: a small CNN from the low-res view to one logit per attention cell."""

from __future__ import annotations

import torch
from torch import nn

from wsi_ats.models.config import AttentionConfig


class AttentionNet(nn.Module):
    """Low-res view ``[B, 3, h, w]`` (float in ``[0, 1]``) -> logits ``[B, 1, mh, mw]``.

    ``depth`` 3x3 convolutions with "same" padding; the first ``log2(map_stride)`` of them have
    stride 2 (downsampling early keeps the cost low), so ``mh = ceil(h / map_stride)``. Each attention cell covers ``map_stride`` low-res pixels along each
    axis, uniformly (the offset mapping's receptive-field margin is 0). :attr:`trunk` (everything but
    the last 1x1 scoring layer) is reused by the low-resolution-only baseline.

    ``prior > 0`` adds ``prior * darkness`` (``1 - mean RGB`` of the cell, in ``[0, 1]``) to the
    logits: a fixed stain-density prior, so that exploration starts on dense, dark structures instead
    of uniformly over tissue. The learned logits are added to it; ``prior = 0`` is the plain network.
    """

    def __init__(
        self,
        width: int = 16,
        depth: int = 3,
        map_stride: int = 2,
        prior: float = 0.0,
        activation: str = "leaky_relu",
    ) -> None:
        super().__init__()
        self.prior = float(prior)
        n_down = {1: 0, 2: 1, 4: 2, 8: 3}[map_stride]
        depth = max(depth, n_down)
        layers: list[nn.Module] = []
        channels = 3
        for i in range(depth):
            stride = 2 if i < n_down else 1
            layers += [
                nn.Conv2d(channels, width, 3, stride=stride, padding=1),
                nn.LeakyReLU(0.1, inplace=True)
                if activation == "leaky_relu"
                else nn.ReLU(inplace=True),
            ]
            channels = width
        self.trunk = nn.Sequential(*layers)
        self.score = nn.Conv2d(width, 1, 1)
        self.width = width
        self.map_stride = map_stride

    @classmethod
    def from_config(cls, cfg: AttentionConfig) -> AttentionNet:
        return cls(
            width=cfg.width,
            depth=cfg.depth,
            map_stride=cfg.map_stride,
            prior=cfg.prior,
            activation=cfg.activation,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.score(self.trunk((x - 0.5) * 4.0))
        if self.prior:
            # stain-density prior: darker cells (1 - mean RGB, averaged over the cell) start favoured
            s = self.map_stride
            dark = nn.functional.avg_pool2d(1.0 - x.mean(dim=1, keepdim=True), s, s, ceil_mode=True)
            logits = logits + self.prior * dark[..., : logits.shape[-2], : logits.shape[-1]]
        return logits
