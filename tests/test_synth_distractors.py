"""The ``"distractors"`` synthetic variant: pale candidate spots, dark benign distractors, and a
stain-darkness prior that therefore looks in the wrong places."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from wsi_ats.models.attention import AttentionNet
from wsi_ats.synth import make_cohort, make_layout
from wsi_ats.synth.atlas import build_atlases
from wsi_ats.synth.layout import CANDIDATE_KINDS, Layout, spot_area
from wsi_ats.synth.lesions import lesion_boxes
from wsi_ats.synth.render import BACKGROUND, render_tile

SIZE = 4096
SEED = 5
DIAMETER = 160  # level-0 px: 10 px at downsample 16, 5 px at 32


@pytest.fixture(scope="module")
def layouts() -> tuple[Layout, Layout]:
    """The same distractors slide as label 0 and label 1."""
    return tuple(
        make_layout(SIZE, SIZE, SEED, label, DIAMETER, variant="distractors") for label in (0, 1)
    )


def render_level(layout: Layout, level: int) -> np.ndarray:
    """The whole of ``level`` (downsample ``2**level``) as uint8 ``[h, w, 3]``."""
    n = math.ceil(SIZE / 2**level / 256)
    blank = np.broadcast_to(BACKGROUND, (256, 256, 3))
    atlases = build_atlases(0)
    rows = []
    for r in range(n):
        tiles = [render_tile(layout, atlases, level, r, c) for c in range(n)]
        rows.append(np.concatenate([blank if t is None else t for t in tiles], axis=1))
    side = math.ceil(SIZE / 2**level)
    return np.concatenate(rows, axis=0)[:side, :side]


def centres(level: int) -> np.ndarray:
    """Level-0 coordinates of the pixel centres of ``level`` along one axis."""
    return (np.arange(math.ceil(SIZE / 2**level)) + 0.5) * 2**level


def disc_mask(
    layout: Layout, level: int, kinds: tuple[str, ...], shrink: float = 1.0
) -> np.ndarray:
    """Pixels of ``level`` whose centres lie within ``shrink * radius`` of a spot of ``kinds``."""
    c = centres(level)
    mask = np.zeros((len(c), len(c)), dtype=bool)
    for s in layout.spots:
        if s.kind in kinds:
            mask |= (c[None, :] - s.cx) ** 2 + (c[:, None] - s.cy) ** 2 <= (shrink * s.radius) ** 2
    return mask


def stroma_mask(layout: Layout, level: int) -> np.ndarray:
    """Tissue pixels of ``level`` outside every spot and distractor."""
    c = centres(level)
    tissue = layout.field_1d(c, c) >= layout.threshold
    return tissue & ~disc_mask(layout, level, ("benign", "malignant", "distractor"))


def darkness(pixels: np.ndarray) -> float:
    """Mean ``1 - mean(RGB) / 255`` of ``[..., 3]`` uint8 pixels."""
    return float(1.0 - pixels.astype(np.float64).mean() / 255.0)


def test_pale_atlas_no_darker_than_stroma_when_pooled() -> None:
    atlases = build_atlases(0)
    for k in range(3, 8):  # downsample 8 ... 128
        stroma = darkness(atlases.stroma.level(k))
        pale = darkness(atlases.pale_benign.level(k))
        dark = darkness(atlases.benign.level(k))
        assert pale <= stroma - 0.02 < dark - 0.2, (k, pale, stroma, dark)
        assert np.array_equal(atlases.pale_benign.level(k), atlases.pale_malignant.level(k))
    # the hue differs: pink stroma (red > blue) against lavender-grey spots (blue > red)
    s, p = (a.level(4).reshape(-1, 3).mean(0) for a in (atlases.stroma, atlases.pale_benign))
    assert s[0] - s[2] > 15 and p[2] - p[0] > 10
    assert not np.array_equal(atlases.pale_benign.level(0), atlases.pale_malignant.level(0))


@pytest.mark.parametrize("level", [4, 5])
def test_candidates_no_darker_than_stroma_and_distractors_darkest(layouts, level: int) -> None:
    """Rendered at downsample 16 and 32: candidates <= stroma < distractors, by clear margins."""
    layout = layouts[1]
    img = render_level(layout, level)
    candidate = darkness(img[disc_mask(layout, level, CANDIDATE_KINDS, 0.8)])
    distractor = darkness(img[disc_mask(layout, level, ("distractor",), 0.8)])
    stroma = darkness(img[stroma_mask(layout, level)])
    assert candidate <= stroma, (candidate, stroma)
    assert distractor > stroma + 0.15 and distractor > candidate + 0.15, (distractor, stroma)


def test_malignant_and_benign_identical_at_low_res(layouts) -> None:
    """Label 0 vs 1 of one seed: every pixel equal at downsample 8 and 16; not at level 0."""
    neg, pos = layouts
    assert "malignant" in {s.kind for s in pos.spots}
    for level in (3, 4):
        np.testing.assert_array_equal(render_level(neg, level), render_level(pos, level))
    spot = next(s for s in pos.spots if s.kind == "malignant")
    r, c = int(spot.cy) // 256, int(spot.cx) // 256
    atlases = build_atlases(0)
    assert not np.array_equal(
        render_tile(neg, atlases, 0, r, c), render_tile(pos, atlases, 0, r, c)
    )


def test_label_flips_only_candidate_kinds(layouts) -> None:
    neg, pos = layouts
    assert [(s.cx, s.cy, s.radius) for s in neg.spots] == [
        (s.cx, s.cy, s.radius) for s in pos.spots
    ]
    changed = {(a.kind, b.kind) for a, b in zip(neg.spots, pos.spots, strict=True) if a != b}
    assert changed == {("benign", "malignant")}
    assert [s for s in neg.spots if s.kind == "distractor"] == [
        s for s in pos.spots if s.kind == "distractor"
    ]
    # the candidate spots are those of the standard slide with the same seed and label
    for label, layout in enumerate(layouts):
        standard = make_layout(SIZE, SIZE, SEED, label, DIAMETER)
        assert tuple(s for s in layout.spots if s.kind != "distractor") == standard.spots
        assert layout.threshold == standard.threshold


def test_distractor_counts_sizes_and_placement() -> None:
    """Many layouts (cheap: no pixels): 4-10 distractors in tissue, clear of every other disc."""
    for seed in range(30):
        layout = make_layout(16384, 16384, seed, seed % 2, variant="distractors")
        candidates = [s for s in layout.spots if s.kind != "distractor"]
        distractors = [s for s in layout.spots if s.kind == "distractor"]
        assert 3 <= len(candidates) <= 8 and 4 <= len(distractors) <= 10
        radius = candidates[0].radius
        for d in distractors:
            assert 0.7 * radius <= d.radius <= 1.3 * radius
            angles = np.linspace(0, 2 * np.pi, 16, endpoint=False)
            xs = np.append(d.cx + d.radius * np.cos(angles), d.cx)
            ys = np.append(d.cy + d.radius * np.sin(angles), d.cy)
            assert (layout.field_at(xs, ys) >= layout.threshold).all()
            assert d.radius <= d.cx <= 16384 - d.radius and d.radius <= d.cy <= 16384 - d.radius
        spots = layout.spots
        for i, a in enumerate(spots):
            for b in spots[i + 1 :]:
                assert math.hypot(a.cx - b.cx, a.cy - b.cy) > a.radius + b.radius


def test_ground_truth_lists_kinds_and_fractions(layouts, tmp_path: Path) -> None:
    neg, pos = layouts
    truth = pos.truth(seed=SEED, mpp=0.5)
    assert truth["variant"] == "distractors"
    kinds = [s["kind"] for s in truth["spots"]]
    assert set(kinds) == {"benign", "malignant", "distractor"}
    tissue = pos.tissue_fraction * SIZE * SIZE
    want = spot_area(pos.spots, CANDIDATE_KINDS) / tissue
    assert truth["lesion_fraction_of_tissue"] == pytest.approx(want, abs=1e-6)
    want = spot_area(pos.spots, "distractor") / tissue
    assert truth["distractor_fraction_of_tissue"] == pytest.approx(want, abs=1e-6)
    assert truth["distractor_fraction_of_tissue"] > 0
    assert neg.truth()["malignant_fraction_of_tissue"] == 0
    gt = tmp_path / "ground_truth.json"
    gt.write_text(json.dumps({"slides": {"pos": truth, "neg": neg.truth()}}))
    boxes = lesion_boxes(gt)
    assert len(boxes["pos"]) == kinds.count("malignant") and len(boxes["neg"]) == 0
    assert len(lesion_boxes(gt, kinds=("distractor",))["neg"]) == kinds.count("distractor")


def _prior_attention(layout: Layout, level: int) -> np.ndarray:
    """Softmax attention over the tissue pixels of ``level`` of a darkness-prior-only
    ``AttentionNet`` (learned layers zeroed, so logits = 16 * darkness)."""
    net = AttentionNet(width=4, depth=1, map_stride=1, prior=16.0)
    with torch.no_grad():
        for p in net.parameters():
            p.zero_()
        view = torch.from_numpy(render_level(layout, level)).permute(2, 0, 1)[None] / 255.0
        logits = net(view.float())[0, 0]  # map_stride 1: one cell per view pixel
    c = centres(level)
    tissue = torch.from_numpy(layout.field_1d(c, c) >= layout.threshold)
    logits = logits.masked_fill(~tissue, float("-inf"))
    return torch.softmax(logits.flatten(), 0).view(logits.shape).numpy()


def test_darkness_prior_favours_distractors_not_lesions(layouts) -> None:
    """With logits = 16 * darkness, a distractor cell gets far more attention than a candidate-spot
    cell, and a candidate cell no more than a stroma cell; on the standard variant it is the
    other way round."""
    level = 4  # a 256 x 256 view of the 4096 px slide
    layout = layouts[1]
    att = _prior_attention(layout, level)
    distractor = att[disc_mask(layout, level, ("distractor",), 0.8)].mean()
    candidate = att[disc_mask(layout, level, CANDIDATE_KINDS, 0.8)].mean()
    malignant = att[disc_mask(layout, level, ("malignant",), 0.8)].mean()
    stroma = att[stroma_mask(layout, level)].mean()
    assert distractor > 20 * candidate, (distractor, candidate)
    assert candidate <= stroma and malignant <= stroma, (candidate, malignant, stroma)
    standard = make_layout(SIZE, SIZE, SEED, 1, DIAMETER)
    att = _prior_attention(standard, level)
    candidate = att[disc_mask(standard, level, CANDIDATE_KINDS, 0.8)].mean()
    assert candidate > 20 * att[stroma_mask(standard, level)].mean()


def test_cohort_records_the_variant_and_is_reused(tmp_path: Path) -> None:
    kwargs = {"n_slides": 4, "size": 1024, "seed": 2, "compression": "zlib", "workers": 1}
    manifest = make_cohort(tmp_path, variant="distractors", **kwargs)
    params = json.loads((tmp_path / "cohort.json").read_text())
    assert params["variant"] == "distractors"
    gt = json.loads((tmp_path / "ground_truth.json").read_text())
    for truth in gt["slides"].values():
        assert truth["variant"] == "distractors"
        kinds = [s["kind"] for s in truth["spots"]]
        assert 4 <= kinds.count("distractor") <= 10
        assert ("malignant" in kinds) == (truth["label"] == 1)
    slide = tmp_path / "slides" / "slide_0000.tiff"
    before = slide.stat().st_mtime_ns, manifest.stat().st_mtime_ns
    assert make_cohort(tmp_path, variant="distractors", **kwargs) == manifest
    assert (slide.stat().st_mtime_ns, manifest.stat().st_mtime_ns) == before
    pale = slide.read_bytes()
    make_cohort(tmp_path, **kwargs)  # standard: other parameters, so regenerated
    assert "variant" not in json.loads((tmp_path / "cohort.json").read_text())
    assert slide.read_bytes() != pale


def test_bad_variant_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="variant"):
        make_layout(1024, 1024, 0, 0, variant="pale")
    with pytest.raises(ValueError, match="variant"):
        make_cohort(tmp_path, 1, 512, variant="pale")
