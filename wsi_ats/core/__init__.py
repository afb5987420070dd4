"""Attention sampling (Katharopoulos & Fleuret, ICML 2019): pure torch, no I/O."""

from wsi_ats.core.attention_sampling import (
    AttentionSampling,
    AttentionSamplingOutput,
    PatchSource,
    attention_sampling,
)
from wsi_ats.core.draws import Draw, draw, estimate, exploration_proposal
from wsi_ats.core.expectation import CONTROL_VARIATES, expectation
from wsi_ats.core.exploration import (
    AppearanceStrata,
    appearance_strata,
    cell_descriptors,
    fit_appearance_strata,
    nearest_stratum,
    stratified_proposal,
)
from wsi_ats.core.instance import (
    attention_distillation_loss,
    evidence_likelihood_loss,
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
    "AppearanceStrata",
    "AttentionSampling",
    "AttentionSamplingOutput",
    "appearance_strata",
    "cell_descriptors",
    "Draw",
    "PatchSource",
    "attention_distillation_loss",
    "attention_sampling",
    "cell_offsets",
    "draw",
    "estimate",
    "evidence_likelihood_loss",
    "expectation",
    "exploration_proposal",
    "extract_patches",
    "fit_appearance_strata",
    "nearest_stratum",
    "instance_evidence",
    "mask_to_map",
    "masked_logits",
    "masked_softmax",
    "multinomial_entropy",
    "sample",
    "stratified_proposal",
    "topk_instance_loss",
]
