"""Stratum logits of the attention (``attention.stratum_scale``): the contrast statistics, the
module that adds them, and their place in training and checkpoints."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from test_training import CFG, cohort  # noqa: F401  (the tiny cohort fixture)

from wsi_ats.core import cell_descriptors, fit_appearance_strata
from wsi_ats.models import ConfigError, StratumAttention, build_model, load_model, save_checkpoint
from wsi_ats.models.attention import AttentionNet
from wsi_ats.training import train
from wsi_ats.training.contrast import StratumContrast

STRATA = 5


def _feed(contrast: StratumContrast, slides: int, witness_lift: float, seed: int) -> None:
    """``slides`` slides, labels alternating, 64 tiles each over 5 strata uniformly; probabilities
    0.5 + N(0, 0.05), positive slides +0.1 on every tile (what a classifier learns of a whole
    slide) and +``witness_lift`` on 30% of their stratum-2 tiles; importance weights in [0.5, 2]."""
    gen = torch.Generator().manual_seed(seed)
    for i in range(slides):
        label = i % 2
        strata = torch.randint(STRATA, (64,), generator=gen)
        p = 0.5 + 0.05 * torch.randn(64, generator=gen) + 0.1 * label
        witness = (strata == 2) & (torch.rand(64, generator=gen) < 0.3)
        p = p + witness_lift * witness * label
        w = 0.5 + 1.5 * torch.rand(64, generator=gen)
        contrast.update(strata, p, w, label)


def test_contrast_estimates_the_excess_of_positive_slides_within_each_stratum() -> None:
    """With no decay and z = 0 the contrast of stratum 2 estimates its population value: lift 0.3
    on 30% of its tiles (0.09), less what that adds to the slide's mean (0.09 / 5). Over 40 runs
    the mean estimate is within 4 standard errors of it; the slide-wide offset of positive slides
    leaves the other strata at 0 (their excess is -0.018)."""
    truth = 0.09 - 0.09 / STRATA
    values = []
    for seed in range(40):
        contrast = StratumContrast(STRATA, decay=1.0, z=0.0)
        _feed(contrast, 200, 0.3, seed)
        c = contrast.contrast()
        assert torch.count_nonzero(c) == 1 and c[2] > 0
        values.append(float(c[2]))
    mean = sum(values) / len(values)
    se = (sum((v - mean) ** 2 for v in values) / (len(values) - 1) / len(values)) ** 0.5
    assert abs(mean - truth) < 4 * se + 1e-3, (mean, truth, se)


#: one-sided rate of a N(0, 1) above z = 2, and a bound on the false contrasts of 500 null strata:
#: that rate plus four binomial standard errors
NOMINAL = 0.5 * math.erfc(2 / math.sqrt(2))
FALSE_BOUND = 500 * NOMINAL + 4 * math.sqrt(500 * NOMINAL * (1 - NOMINAL))


def _feed_skewed(contrast: StratumContrast, slides: int, lift: float, seed: int) -> int:
    """As :func:`_feed`, with importance weights spread over two orders of magnitude
    (``exp(2 N(0, 1))``: a proposal far from uniform within each stratum). Returns the number of
    positive slides' tiles in stratum 2."""
    gen = torch.Generator().manual_seed(seed)
    count = 0
    for i in range(slides):
        label = i % 2
        strata = torch.randint(STRATA, (64,), generator=gen)
        p = 0.5 + 0.05 * torch.randn(64, generator=gen) + 0.1 * label
        p = p + lift * label * ((strata == 2) & (torch.rand(64, generator=gen) < 0.3))
        contrast.update(strata, p, torch.exp(2.0 * torch.randn(64, generator=gen)), label)
        count += int(((strata == 2) & (label == 1)).sum())
    return count


@pytest.mark.parametrize("weighting", ["importance", "tiles"])
def test_contrast_without_a_finding_is_rare_at_its_nominal_rate(weighting: str) -> None:
    """No lift: over 100 runs x 5 strata, with mild or skewed importance weights, a stratum gets a
    contrast at about the rate of z = 2 (2.3%): at most that plus four binomial standard errors.
    The standard error is clustered by slide: a slide's tiles share its centring."""
    for feed in (_feed, _feed_skewed):
        false = 0
        for seed in range(100):
            contrast = StratumContrast(STRATA, decay=0.99, weighting=weighting)
            feed(contrast, 60, 0.0, seed)
            false += int(torch.count_nonzero(contrast.contrast()))
        assert false <= FALSE_BOUND, (feed.__name__, false, FALSE_BOUND)


def test_contrast_needs_enough_tiles_and_sets_the_bias() -> None:
    """Lift but fewer effective tiles than min_tiles per label and stratum: 0; the bias is
    log(1 + c / scale); a restored state gives the same contrast."""
    few = StratumContrast(STRATA, decay=1.0, min_tiles=1000)
    _feed(few, 20, 0.3, 0)
    assert torch.count_nonzero(few.contrast()) == 0
    some = StratumContrast(STRATA, decay=0.99)
    _feed(some, 200, 0.3, 0)
    c = some.contrast()
    assert c[2] > 0
    torch.testing.assert_close(some.bias(0.01), torch.log1p(c / 0.01))
    restored = StratumContrast(STRATA)
    restored.load(some.state())
    torch.testing.assert_close(restored.contrast(), c)


def test_tiles_weighting_counts_every_tile_once_and_finds_the_lift() -> None:
    """``weighting = "tiles"`` under skewed importance weights: the effective number of tiles is
    the tile count (no decay), and a lift of 0.3 on 30% of stratum 2's tiles is found in at least
    95 of 100 runs of 60 slides."""
    found = 0
    for seed in range(100):
        contrast = StratumContrast(STRATA, decay=1.0, weighting="tiles")
        count = _feed_skewed(contrast, 60, 0.3, seed)
        assert float(contrast.moments()[1][1, 2]) == pytest.approx(count)
        c = contrast.contrast()
        found += int(c[2] > 0)
    assert found >= 95, found
    with pytest.raises(ValueError, match="weighting"):
        StratumContrast(STRATA, weighting="uniform")


def _two_colour_view() -> torch.Tensor:
    """``[1, 3, 32, 32]``: left half pink, right half lavender."""
    view = torch.empty(1, 3, 32, 32)
    view[..., :16] = torch.tensor([0.92, 0.69, 0.82])[:, None, None]
    view[..., 16:] = torch.tensor([0.80, 0.80, 0.88])[:, None, None]
    return view


def test_stratum_attention_adds_each_cells_stratum_logit() -> None:
    torch.manual_seed(0)
    net = AttentionNet(width=4, depth=2, map_stride=4)
    module = StratumAttention(net, n_strata=4, context=0)
    view = _two_colour_view()
    torch.testing.assert_close(module(view), net(view))  # nothing fitted: the net alone
    desc = cell_descriptors(view, (8, 8))[0]
    module.set_strata(fit_appearance_strata(desc, 2, seed=0))
    strata = module.strata_of(view, (8, 8)).reshape(8, 8)
    left, right = int(strata[0, 0]), int(strata[0, -1])
    assert left != right and (strata[:, :4] == left).all() and (strata[:, 4:] == right).all()
    bias = torch.zeros(4)
    bias[right] = 1.5
    module.set_bias(bias)
    diff = (module(view) - net(view))[0, 0]
    torch.testing.assert_close(diff[:, 4:], torch.full((8, 4), 1.5))
    torch.testing.assert_close(diff[:, :4], torch.zeros(8, 4))
    # strata kept from an earlier call give the same logits; other strata move them
    kept = module.cell_strata(view)
    assert torch.equal(kept.reshape(8, 8), strata)
    assert torch.equal(module(view, kept), module(view))
    assert not torch.equal(module(view, torch.full_like(kept, right)), module(view))


def test_stratum_logits_travel_in_checkpoints(tmp_path: Path) -> None:
    cfg = CFG.replace(
        attention={"stratum_scale": 0.01, "map_stride": 4},
        train={"explore_scope": "cohort", "explore_strata": 4, "explore_context": 0},
    )
    model = build_model(cfg, seed=0)
    assert isinstance(model.attention_net, StratumAttention)
    view = _two_colour_view()
    desc = cell_descriptors(view, (8, 8))[0]
    model.attention_net.set_strata(fit_appearance_strata(desc, 2, seed=0))
    model.attention_net.set_bias(torch.tensor([0.5, 2.0, 0.0, 0.0]))
    save_checkpoint(tmp_path / "model.pt", model, 1)
    loaded = load_model(tmp_path / "model.pt")
    with torch.no_grad():
        torch.testing.assert_close(loaded.attention(view), model.attention(view))


def test_stratum_scale_needs_the_cohorts_strata() -> None:
    with pytest.raises(ConfigError, match="stratum_scale"):
        CFG.replace(attention={"stratum_scale": 0.01}, train={"explore_scope": "slide"})


def test_training_fits_the_strata_and_keeps_the_contrast(cohort: Path, tmp_path: Path) -> None:  # noqa: F811
    """A run with ``stratum_scale`` puts the cohort's strata into the model and saves the
    contrast's sums (which have seen tiles of both labels) in ``last.pt``."""
    torch.set_num_threads(1)
    cfg = CFG.replace(
        attention={"stratum_scale": 0.01},
        train={"epochs": 2, "explore_scope": "cohort", "explore_strata": 4},
    )
    train(cohort, cfg, tmp_path / "run", progress=False)
    model = load_model(tmp_path / "run" / "model.pt")
    assert float(model.attention_net.centres.abs().max()) < 1e3  # fitted, not the placeholder
    sums = torch.load(tmp_path / "run" / "last.pt", weights_only=True)["stratum_contrast"]["sums"]
    assert (sums[:, 0].sum(1) > 0).all() and math.isfinite(float(sums.sum()))


def test_check_slides_are_half_of_each_label_whatever_the_order() -> None:
    slides = [(f"slide-{i}", i % 3 == 0) for i in range(30)]  # 10 positives, 20 negatives
    contrast = StratumContrast(STRATA)
    contrast.choose_checks(slides)
    chosen = {i for i, _ in slides if contrast.checks(i)}
    assert sum(lab for i, lab in slides if i in chosen) == 5
    assert sum(not lab for i, lab in slides if i in chosen) == 10
    again = StratumContrast(STRATA)
    again.choose_checks(slides[::-1])
    assert {i for i, _ in slides if again.checks(i)} == chosen


def test_check_slides_train_no_tile_classifier_and_feed_the_contrast(cohort: Path) -> None:  # noqa: F811
    """In a step, a check slide's tiles stay out of the tile memory and go to the contrast; the
    other slide's tiles join the memory and not the contrast."""
    from wsi_ats.training import SlideStore, read_cohort
    from wsi_ats.training.replay import TileMemory
    from wsi_ats.training.step import StepSettings, StepState, train_step

    cfg = CFG.replace(
        attention={"stratum_scale": 0.01},
        train={"explore_scope": "cohort", "explore_strata": 4, "instance_memory": 64},
    )
    slides = [s for s in read_cohort(cohort) if s.split == "train"]
    negative = next(s for s in slides if s.label == 0)
    positive = next(s for s in slides if s.label == 1)
    model = build_model(cfg, seed=0)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    memory, contrast = TileMemory(64), StratumContrast(4)
    contrast.check_ids = {positive.slide_id}
    with SlideStore(cfg, 2) as store:
        train_step(
            model, optimizer, store, [negative, positive], torch.Generator().manual_seed(0),
            StepSettings(8), StepState(memory=memory, contrast=contrast),
        )  # fmt: skip
    assert len(memory) == 8  # the negative slide's tiles only
    weights = contrast.sums[:, 0].sum(1)  # [label]: weight of the tiles each label gave
    assert weights[0] == 0 and weights[1] > 0


def test_the_store_keeps_each_slides_cell_strata_until_new_strata_are_fitted(
    cohort: Path,  # noqa: F811
) -> None:
    """``SlideStore.cell_strata`` computes a slide's cell strata once and keeps them until the
    store's strata are set again; the model's attention with them equals its attention without."""
    from wsi_ats.stages import attention_map_size, view_tensors
    from wsi_ats.training import SlideStore, read_cohort

    cfg = CFG.replace(
        attention={"stratum_scale": 0.01},
        train={"explore_scope": "cohort", "explore_strata": 4, "explore_context": 3},
    )
    model = build_model(cfg, seed=0)
    slides = [s for s in read_cohort(cohort) if s.split == "train"]
    calls = []

    def compute(x: torch.Tensor) -> torch.Tensor | None:
        calls.append(1)
        return model.cell_strata(x)

    with SlideStore(cfg, 2) as store:
        strata = store.fit_strata(slides, lambda view: attention_map_size(model, view))
        model.attention_net.set_strata(strata)
        model.attention_net.set_bias(torch.linspace(0.5, 2.0, 4))
        x, m = view_tensors(store.view(slides[0]), model.device)
        kept = store.cell_strata(slides[0], lambda: compute(x))
        assert store.cell_strata(slides[0], lambda: compute(x)) is kept and len(calls) == 1
        with torch.no_grad():
            assert torch.equal(model.attention(x, m, kept), model.attention(x, m))
        store.set_strata(strata)
        store.cell_strata(slides[0], lambda: compute(x))
        assert len(calls) == 2
