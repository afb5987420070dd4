"""Attention sampling (Katharopoulos & Fleuret, ICML 2019): pure torch, no I/O."""

from wsi_ats.core.attention_sampling import (
    AttentionSampling,
    AttentionSamplingOutput,
    PatchSource,
    attention_sampling,
)
from wsi_ats.core.expectation import expectation
from wsi_ats.core.offsets import cell_offsets
from wsi_ats.core.patches import extract_patches
from wsi_ats.core.regularizers import multinomial_entropy
from wsi_ats.core.sampling import sample

__all__ = [
    "AttentionSampling",
    "AttentionSamplingOutput",
    "PatchSource",
    "attention_sampling",
    "cell_offsets",
    "expectation",
    "extract_patches",
    "multinomial_entropy",
    "sample",
]
