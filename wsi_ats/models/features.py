"""Feature networks for high-res tiles: a built-in compact CNN, optional timm backbones, any module.

A feature network maps tiles ``[n, 3, p, p]`` (float in ``[0, 1]``) to features ``[n, D]``. Any
``nn.Module`` with that contract can be plugged into :class:`~wsi_ats.models.SlideClassifier`.
"""

from __future__ import annotations

import importlib

import torch
from torch import nn

from wsi_ats.models.config import FeatureConfig


class CompactCNN(nn.Module):
    """Tiles ``[n, 3, p, p]`` in ``[0, 1]`` -> ``[n, dim]``.

    A 3x3 convolution at full tile resolution (fine textures survive), then three stride-2 stages
    doubling the width, global average and max pooling, and a linear layer. No batch statistics, so
    a tile's feature never depends on the other tiles of its batch.
    """

    def __init__(self, width: int = 16, dim: int = 32, normalize: bool = False) -> None:
        super().__init__()
        w = width
        self.body = nn.Sequential(
            nn.Conv2d(3, w, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(w, w, 3, stride=2, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(w, 2 * w, 3, stride=2, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(2 * w, 2 * w, 3, stride=2, padding=1),
            nn.ReLU(inplace=True),
        )
        self.proj = nn.Linear(4 * w, dim)
        self.normalize = normalize
        self.dim = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.body((x - 0.5) * 4.0)  # pixels roughly zero-mean, unit-scale
        pooled = torch.cat([h.mean(dim=(2, 3)), h.amax(dim=(2, 3))], dim=1)
        f = self.proj(pooled)
        return nn.functional.normalize(f, dim=1) if self.normalize else f


def timm_backbone(name: str, dim: int, normalize: bool = False) -> nn.Module:
    """A timm model (random init, never downloads weights) with a linear projection to ``dim``.

    Needs the optional ``timm`` extra (``pip install 'wsi-ats[timm]'``); raises ``ImportError``
    saying so otherwise.
    """
    try:
        timm = importlib.import_module("timm")
    except ModuleNotFoundError as exc:
        raise ImportError(
            f"features.backbone = 'timm:{name}' needs timm: pip install 'wsi-ats[timm]'"
        ) from exc
    body = timm.create_model(name, pretrained=False, num_classes=0)
    return _Projected(body, int(body.num_features), dim, normalize)


class _Projected(nn.Module):
    def __init__(self, body: nn.Module, in_dim: int, dim: int, normalize: bool) -> None:
        super().__init__()
        self.body = body
        self.proj = nn.Linear(in_dim, dim)
        self.normalize = normalize

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.proj(self.body(x))
        return nn.functional.normalize(f, dim=1) if self.normalize else f


def build_feature_net(cfg: FeatureConfig) -> nn.Module:
    """The feature network that ``cfg.backbone`` names."""
    if cfg.backbone == "compact":
        return CompactCNN(cfg.width, cfg.dim, cfg.normalize)
    if cfg.backbone.startswith("timm:"):
        return timm_backbone(cfg.backbone[len("timm:") :], cfg.dim, cfg.normalize)
    raise ValueError(f"unknown feature backbone {cfg.backbone!r}")
