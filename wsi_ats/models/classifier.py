"""``SlideClassifier``: the attention net, the feature net, the head and the config they came from."""

from __future__ import annotations

import torch
from torch import nn

from wsi_ats.core import masked_logits, masked_softmax
from wsi_ats.models.accel import run_feature_net
from wsi_ats.models.attention import AttentionNet
from wsi_ats.models.config import PipelineConfig
from wsi_ats.models.data_range import DataRange
from wsi_ats.models.features import TileKey, build_feature_net, cached_embed
from wsi_ats.models.head import ClassifierHead
from wsi_ats.models.stratum_attention import StratumAttention


class SlideClassifier(nn.Module):
    """Holds the three networks of attention sampling and the :class:`PipelineConfig`.

    - ``attention_net``: low-res view ``[B, 3, h, w]`` in ``[0, 1]`` -> logits ``[B, 1, mh, mw]``;
    - ``feature_net``: tiles ``[n, 3, p, p]`` in ``[0, 1]`` -> ``[n, D]``;
    - ``head``: aggregated feature ``[B, D]`` -> logits ``[B]``.

    Any ``nn.Module`` obeying these shapes may be passed in place of the built-in ones; the stages in
    :mod:`wsi_ats.stages` and the training loop only use these three calls. ``pretrained``: load
    ``features.weights`` into the backbone (a fresh model); ``False`` when a checkpoint follows.
    """

    def __init__(
        self,
        config: PipelineConfig,
        attention_net: nn.Module | None = None,
        feature_net: nn.Module | None = None,
        head: nn.Module | None = None,
        pretrained: bool = True,
    ) -> None:
        super().__init__()
        self.config = config
        self.attention_net = attention_net or AttentionNet.from_config(config.attention)
        if attention_net is None and config.attention.stratum_scale > 0:
            tc = config.train
            self.attention_net = StratumAttention(
                self.attention_net, tc.explore_strata, tc.explore_context
            )
        # pretrained=False: the backbone's weights file is not read (a checkpoint holds them all)
        self.feature_net = feature_net or build_feature_net(config.features, pretrained)
        self.head = head or ClassifierHead.from_config(config.features.dim, config.head)
        # tile-level classifier of the instance losses (training); its own weights, so that the
        # slide head's calibration and the tiles' evidence do not pull on each other
        self.instance_head = nn.Linear(config.features.dim, 1)
        # the slides it was trained on (set by training, kept in checkpoints); None: unknown
        self.data_range: DataRange | None = None

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def attention_logits(
        self,
        view: torch.Tensor,
        mask: torch.Tensor | None = None,
        strata: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Attention logits ``[B, mh, mw]`` of views ``[B, 3, h, w]``, ``-inf`` off tissue (a slide
        whose mask is empty keeps every cell). ``strata``: :meth:`cell_strata` of ``view``, kept
        from an earlier call (``None``: computed when needed)."""
        return masked_logits(self._attention_net(view, strata), mask)

    def attention(
        self,
        view: torch.Tensor,
        mask: torch.Tensor | None = None,
        strata: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Attention distribution ``[B, mh, mw]`` (sums to 1, zero off tissue) of views
        ``[B, 3, h, w]``; ``strata`` as in :meth:`attention_logits`."""
        return masked_softmax(self._attention_net(view, strata), mask)

    def cell_strata(self, view: torch.Tensor) -> torch.Tensor | None:
        """The cohort appearance stratum of each attention cell of ``view`` ``[B, mh * mw]``
        (:class:`StratumAttention`); ``None`` for an attention net without strata. They depend
        only on the view and the fitted strata, so a caller may keep them for the run."""
        if isinstance(self.attention_net, StratumAttention):
            return self.attention_net.cell_strata(view)
        return None

    def _attention_net(self, view: torch.Tensor, strata: torch.Tensor | None) -> torch.Tensor:
        if strata is None:
            return self.attention_net(view)
        return self.attention_net(view, strata)

    def features(self, tiles: torch.Tensor, keys: list[TileKey] | None = None) -> torch.Tensor:
        """Tile features ``[n, D]`` of tiles ``[n, 3, p, p]`` in ``[0, 1]`` (float32; on CUDA run
        in mixed precision and channels-last, see :mod:`wsi_ats.models.accel`).

        ``keys`` (:func:`~wsi_ats.models.features.tile_keys`, one per tile) let a fully frozen
        backbone with ``features.cache_tiles > 0`` reuse the outputs of tiles it has seen."""
        net = self.feature_net
        if keys is not None and getattr(net, "tile_cache", None) is not None:
            h = cached_embed(net, tiles, keys, lambda x: run_feature_net(net, x, call=net.embed))
            if h is not None:
                return net.project(h)
        return run_feature_net(net, tiles)

    def instance_logits(self, features: torch.Tensor) -> torch.Tensor:
        """Tile logits ``[n]`` of tile features ``[n, D]``: how much a tile looks like what only
        positive slides show (trained by the instance loss, read by attention distillation);
        ``train.instance_scale`` x the instance head's output."""
        return self.config.train.instance_scale * self.instance_head(features)[..., 0]

    def classify(self, aggregated: torch.Tensor) -> torch.Tensor:
        """Slide logits ``[B]`` of aggregated features ``[B, D]``: ``head.logit_scale`` x the
        head's output."""
        return self.config.head.logit_scale * self.head(aggregated)


def build_model(
    config: PipelineConfig, seed: int | None = None, pretrained: bool = True
) -> SlideClassifier:
    """A freshly initialised :class:`SlideClassifier` for ``config`` (seeded when ``seed`` is given;
    the backbone's ``features.weights`` loaded when ``pretrained``)."""
    if seed is None:
        return SlideClassifier(config, pretrained=pretrained)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return SlideClassifier(config, pretrained=pretrained)
