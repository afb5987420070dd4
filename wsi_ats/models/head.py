"""The classifier head: aggregated feature ``[B, D]`` -> one logit per slide ``[B]``."""

from __future__ import annotations

import torch
from torch import nn

from wsi_ats.models.config import HeadConfig


class ClassifierHead(nn.Module):
    """``[B, D]`` -> logits ``[B]`` (a linear layer, or one hidden ReLU layer when ``hidden > 0``)."""

    def __init__(self, dim: int, hidden: int = 0, dropout: float = 0.0) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        if hidden > 0:
            layers += [nn.Linear(dim, hidden), nn.ReLU(inplace=True)]
            dim = hidden
        layers.append(nn.Dropout(dropout))  # always present: keeps state-dict keys stable
        layers.append(nn.Linear(dim, 1))
        self.net = nn.Sequential(*layers)

    @classmethod
    def from_config(cls, dim: int, cfg: HeadConfig) -> ClassifierHead:
        return cls(dim, cfg.hidden, cfg.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)[:, 0]
