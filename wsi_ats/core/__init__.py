"""Attention sampling (Katharopoulos & Fleuret, ICML 2019): pure torch, no I/O."""

from wsi_ats.core.attention_sampling import (
    AttentionSampling,
    AttentionSamplingOutput,
    PatchSource,
    attention_sampling,
)
from wsi_ats.core.draws import Draw, draw, estimate, exploration_proposal
from wsi_ats.core.expectation import CONTROL_VARIATES, expectation
from wsi_ats.core.instance import (
    attention_distillation_loss,
    instance_evidence,
    topk_instance_loss,
)
from wsi_ats.core.masking import mask_to_map, masked_logits, masked_softmax
from wsi_ats.core.offsets import cell_offsets
from wsi_ats.core.patches import extract_patches
from wsi_ats.core.regularizers import multinomial_entropy
from wsi_ats.core.sampling import sample

__all__ = [
    "CONTROL_VARIATES",
    "AttentionSampling",
    "AttentionSamplingOutput",
    "Draw",
    "PatchSource",
    "attention_distillation_loss",
    "attention_sampling",
    "cell_offsets",
    "draw",
    "estimate",
    "expectation",
    "exploration_proposal",
    "extract_patches",
    "instance_evidence",
    "mask_to_map",
    "masked_logits",
    "masked_softmax",
    "multinomial_entropy",
    "sample",
    "topk_instance_loss",
]
