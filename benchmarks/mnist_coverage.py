"""Where a Megapixel MNIST model's error comes from: which digits its sampled patches see, and how
its attention mass is split between the 5 digits of a canvas.

The label is the majority of 5 digits (3 of the label class, 2 distractors of two other classes),
and the model predicts from ``sum_k a_k f_k``: a canvas is read right when the patches see the
label digits and the attention does not weigh one digit far above the others. For each canvas,
one draw of ``n`` patches (as ``test_error`` draws them) gives:

- ``label_digits_seen`` / ``other_digits_seen``: distinct label / distractor digits that some
  sampled patch overlaps (0-3 / 0-2);
- ``top_digit_mass``: the largest share of the attention mass over the cells whose patch overlaps
  a digit that one digit holds (0.2 when the 5 digits weigh alike, 1.0 when one takes it all);
- ``patch_accuracy``: sampled patches holding more than half of a digit, classified by
  ``argmax head(f)`` as that digit's class;
- the error for each (label digits seen, distractors seen) pair, and by canvas label;
- the soft-vote error: the class of the estimated attention-weighted mean of the patches' class
  probabilities ``softmax(s head(f_i))``, ``s`` the run's ``logit_scale`` (the same unbiased estimator, over probabilities instead
  of features: every patch's say is bounded), beside the model's ``argmax head(estimate of f)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from mnist_data import (
    DIGIT_SIZE,
    N_LABEL_DIGITS,  # the first digits of a CanvasSpec, of the label class
    CanvasPatchSource,
    CanvasSpec,
    MegapixelMNIST,
)
from torch import Tensor

from wsi_ats.core import cell_offsets, expectation


def overlapped_digit(
    offsets: Tensor, spec: CanvasSpec, patch: int
) -> tuple[np.ndarray, np.ndarray]:
    """For patches at top-left ``offsets`` ``[n, 2]``: the index of the digit each overlaps most
    (``-1``: none) and the share of that digit's 28 x 28 box inside the patch."""
    top_left = offsets.numpy()[:, None, :]  # [n, 1, 2]
    lo = np.maximum(top_left, spec.digit_pos[None])
    hi = np.minimum(top_left + patch, spec.digit_pos[None] + DIGIT_SIZE)
    overlap = np.clip(hi - lo, 0, None).prod(-1)  # [n, 5] pixels in common
    best = overlap.argmax(1)
    return np.where(overlap.max(1) > 0, best, -1), overlap.max(1) / DIGIT_SIZE**2


@dataclass
class CanvasCoverage:
    """One canvas's draw (see the module docstring)."""

    correct: bool
    correct_vote: bool  # argmax of the estimated mean patch class probability is the label
    label_digits_seen: int
    other_digits_seen: int
    patches_on_digits: int
    top_digit_mass: float
    patches_judged: int  # sampled patches holding more than half of a digit
    patches_right: int  # of those, classified as the digit's class
    label: int  # the canvas label (class of its first N_LABEL_DIGITS digits)
    top_digit_is_label: bool  # the most-weighted digit is one of the label digits


@torch.no_grad()
def canvas_coverage(
    model,
    dataset: MegapixelMNIST,
    n_patches: int = 10,
    limit: int | None = None,
    seed: int = 1234,
    *,
    logit_scale: float,
) -> list[CanvasCoverage]:
    """:class:`CanvasCoverage` of the first ``limit`` canvases of ``dataset``: one draw each, the
    model's own forward pass (so the same draws as ``test_error`` with the same seed).
    ``logit_scale`` is the training run's (``Remedies.logit_scale``): patch logits are that x
    ``head(f)``, which sets the soft vote's class probabilities."""
    model.eval()
    ats, patch = model.ats, model.ats.patch_size
    gen = torch.Generator().manual_seed(seed)
    size = (dataset.canvas_size, dataset.canvas_size)
    total = len(dataset) if limit is None else min(limit, len(dataset))
    rows: list[CanvasCoverage] = []
    every_offset: Tensor | None = None  # every cell's patch: the same grid for all canvases
    kept_n, ats.n_patches = ats.n_patches, n_patches
    try:
        for b0 in range(0, total, 50):
            x_low, y, specs = dataset.batch(range(b0, min(b0 + 50, total)))
            out = ats(x_low, CanvasPatchSource(dataset, specs), generator=gen)
            flat = out.attention.reshape(len(y), -1)
            if every_offset is None:
                grid, low = tuple(out.attention.shape[1:]), tuple(x_low.shape[-2:])
                every = torch.arange(flat.shape[1])[None]
                every_offset = cell_offsets(every, grid, low, size, patch, ats.receptive_field)[0]
            predicted = model.head(out.features).argmax(1)
            b, n = out.patches.shape[:2]
            feats = ats.feature_net(out.patches.reshape(b * n, *out.patches.shape[2:]))
            patch_logits = model.head(feats).reshape(b, n, -1)
            patch_class = patch_logits.argmax(-1).numpy()
            probs = torch.softmax(logit_scale * patch_logits, -1)
            voted = expectation(out.sampled_attention, probs, ats.replace).argmax(1)
            rows += [
                _coverage(spec, out.offsets[i], every_offset, flat[i], patch_class[i], patch[0])
                | {"correct": bool(predicted[i] == y[i]), "correct_vote": bool(voted[i] == y[i])}
                for i, spec in enumerate(specs)
            ]
    finally:
        ats.n_patches = kept_n
    return [CanvasCoverage(**row) for row in rows]


def _coverage(
    spec: CanvasSpec,
    offsets: Tensor,
    every_offset: Tensor,
    attention: Tensor,
    patch_class: np.ndarray,
    patch: int,
) -> dict:
    """The :class:`CanvasCoverage` fields but ``correct`` of one canvas: its drawn patches'
    ``offsets`` ``[n, 2]`` and classes ``[n]``, its flat ``attention`` over the cells whose
    patches are at ``every_offset``."""
    digit, held = overlapped_digit(offsets, spec, patch)
    cell_digit, _ = overlapped_digit(every_offset, spec, patch)
    mass = np.array([float(attention[torch.from_numpy(cell_digit == k)].sum()) for k in range(5)])
    seen = set(digit[digit >= 0].tolist())
    judged = held > 0.5
    truth = spec.digit_classes[np.maximum(digit, 0)]
    return {
        "label_digits_seen": len(seen & set(range(N_LABEL_DIGITS))),
        "other_digits_seen": len(seen - set(range(N_LABEL_DIGITS))),
        "patches_on_digits": int((digit >= 0).sum()),
        "top_digit_mass": float(mass.max() / max(mass.sum(), 1e-12)),
        "label": int(spec.digit_classes[0]),
        "top_digit_is_label": bool(mass.argmax() < N_LABEL_DIGITS),
        "patches_judged": int(judged.sum()),
        "patches_right": int((patch_class[judged] == truth[judged]).sum()),
    }


def coverage_report(rows: list[CanvasCoverage], n_patches: int) -> list[str]:
    """Text lines: the averages over ``rows`` and the error per (label, distractor) digits seen."""
    judged = sum(r.patches_judged for r in rows)
    lines = [
        f"canvases {len(rows)}, one draw of N={n_patches} each: error "
        f"{100 * (1 - np.mean([r.correct for r in rows])):.1f}% (soft vote: "
        f"{100 * (1 - np.mean([r.correct_vote for r in rows])):.1f}%)",
        f"  sampled patches on a digit: {np.mean([r.patches_on_digits for r in rows]):.2f} of "
        f"{n_patches}; distinct digits seen: label {np.mean([r.label_digits_seen for r in rows]):.2f}"
        f" of 3, distractors {np.mean([r.other_digits_seen for r in rows]):.2f} of 2",
        f"  attention mass of the most-weighted digit, share of the 5 digits' mass: mean "
        f"{np.mean([r.top_digit_mass for r in rows]):.2f} (0.20 = alike); it is a label digit "
        f"on {100 * np.mean([r.top_digit_is_label for r in rows]):.0f}% of canvases (60% = blind "
        "to the class)",
        f"  patches holding > half a digit classified as its class: "
        f"{100 * sum(r.patches_right for r in rows) / max(judged, 1):.1f}% of {judged}",
        "  error by (label digits seen, distractors seen): canvases, error",
    ]
    groups: dict[tuple[int, int], list[bool]] = {}
    for r in rows:
        groups.setdefault((r.label_digits_seen, r.other_digits_seen), []).append(r.correct)
    for (seen_label, seen_other), correct in sorted(groups.items()):
        lines.append(
            f"    {seen_label} label, {seen_other} distractors: {len(correct):4d} canvases, "
            f"error {100 * (1 - np.mean(correct)):5.1f}%"
        )
    by_label: dict[int, list[CanvasCoverage]] = {}
    for r in rows:
        by_label.setdefault(r.label, []).append(r)
    lines.append("  by canvas label: canvases, error, top-digit mass, top digit a label digit")
    for label, group in sorted(by_label.items()):
        lines.append(
            f"    {label}: {len(group):4d} canvases, error "
            f"{100 * (1 - np.mean([r.correct for r in group])):5.1f}%, mass "
            f"{np.mean([r.top_digit_mass for r in group]):.2f}, label on top "
            f"{100 * np.mean([r.top_digit_is_label for r in group]):3.0f}%"
        )
    return lines
