"""Models: attention net, feature nets, classifier head, ``SlideClassifier``, config, checkpoints."""

from wsi_ats.models.attention import AttentionNet
from wsi_ats.models.checkpoint import (
    CheckpointError,
    load_model,
    read_checkpoint,
    save_checkpoint,
)
from wsi_ats.models.classifier import SlideClassifier, build_model
from wsi_ats.models.config import ConfigError, PipelineConfig, load_config
from wsi_ats.models.features import CompactCNN, build_feature_net, timm_backbone
from wsi_ats.models.head import ClassifierHead
from wsi_ats.models.stratum_attention import StratumAttention

__all__ = [
    "AttentionNet",
    "CheckpointError",
    "ClassifierHead",
    "CompactCNN",
    "ConfigError",
    "PipelineConfig",
    "SlideClassifier",
    "StratumAttention",
    "build_feature_net",
    "build_model",
    "load_config",
    "load_model",
    "read_checkpoint",
    "save_checkpoint",
    "timm_backbone",
]
