"""Appearance-stratified exploration (``wsi_ats.core.exploration``): the strata, the proposal's
mass per stratum, and that drawing from its mixture with the attention keeps ``estimate`` unbiased
(statistical test in the style of ``test_core_expectation.py``)."""

from __future__ import annotations

import pytest
import torch
from torch import Tensor

from wsi_ats.core import (
    Draw,
    appearance_strata,
    cell_descriptors,
    draw,
    estimate,
    exploration_proposal,
    fit_appearance_strata,
    nearest_stratum,
    stratified_proposal,
)

# --- stratified_proposal ------------------------------------------------------------------------

STRATA = torch.tensor(
    [
        [0, 0, 0, 0, 0, 0, 1, 1, 2, -1, -1, 0],  # strata 0 (7 cells), 1 (2), 2 (1); two off tissue
        [3, -1, 3, 5, 5, 5, 3, 3, -1, -1, 5, 5],  # strata 3 (4) and 5 (5): ids need not be dense
    ]
)


def test_rarity_one_gives_every_stratum_present_the_same_mass() -> None:
    q = stratified_proposal(STRATA, rarity=1.0)
    torch.testing.assert_close(q.sum(1), torch.ones(2))
    for b, present in ((0, (0, 1, 2)), (1, (3, 5))):
        for s in present:
            cells = STRATA[b] == s
            assert q[b, cells].sum().item() == pytest.approx(1 / len(present), rel=1e-6)
            # spread evenly over the stratum's cells
            assert torch.allclose(q[b, cells], q[b, cells][0].expand(int(cells.sum())))
    assert q[0, 8].item() == pytest.approx(1 / 3)  # the single cell of stratum 2 gets its share
    assert torch.equal(q[STRATA < 0], torch.zeros(int((STRATA < 0).sum())))


def test_rarity_zero_is_uniform_over_the_cells_on_tissue() -> None:
    q = stratified_proposal(STRATA, rarity=0.0)
    on = STRATA >= 0
    expected = on.float() / on.sum(1, keepdim=True)
    torch.testing.assert_close(q, expected)


def test_rarity_above_one_favours_rare_strata() -> None:
    q = stratified_proposal(STRATA, rarity=2.0)
    torch.testing.assert_close(q.sum(1), torch.ones(2))
    # mass of stratum s ~ count_s^(1 - rarity): 7^-1 : 2^-1 : 1 for item 0
    mass = torch.tensor([q[0, STRATA[0] == s].sum() for s in (0, 1, 2)])
    raw = torch.tensor([1 / 7, 1 / 2, 1.0])
    torch.testing.assert_close(mass, raw / raw.sum())
    assert mass[2] > mass[1] > mass[0]


def test_proposal_of_an_item_without_tissue_is_zero_and_rarity_must_be_non_negative() -> None:
    q = stratified_proposal(torch.full((1, 5), -1))
    assert torch.equal(q, torch.zeros(1, 5))
    with pytest.raises(ValueError, match="rarity"):
        stratified_proposal(STRATA, rarity=-0.5)


# --- descriptors and strata ---------------------------------------------------------------------


def test_cell_descriptors_are_mean_and_std_per_cell() -> None:
    x = torch.rand(2, 3, 8, 12, generator=torch.Generator().manual_seed(0))
    desc = cell_descriptors(x, (2, 3))
    assert desc.shape == (2, 6, 6)
    # cell (1, 2): rows 4..7, columns 8..11, row-major index 5
    block = x[1, :, 4:8, 8:12].reshape(3, -1)
    expected = torch.cat([block.mean(1), block.std(1, unbiased=False)])
    torch.testing.assert_close(desc[1, 5], expected, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match=r"\[B, C, h, w\]"):
        cell_descriptors(x[0], (2, 3))


def test_cell_descriptors_with_context_are_mean_and_contrast_with_the_cells_around() -> None:
    x = torch.rand(1, 3, 10, 10, generator=torch.Generator().manual_seed(1))
    desc = cell_descriptors(x, (5, 5), context=3)
    assert desc.shape == (1, 25, 6)
    means = x[0].reshape(3, 5, 2, 5, 2).mean(dim=(2, 4))  # [3, 5, 5] cell means
    # an inner cell (2, 3): its 3 x 3 neighbourhood is rows 1..3, columns 2..4
    around = means[:, 1:4, 2:5].reshape(3, -1).mean(1)
    expected = torch.cat([means[:, 2, 3], means[:, 2, 3] - around])
    torch.testing.assert_close(desc[0, 2 * 5 + 3], expected, rtol=1e-5, atol=1e-6)
    # a corner cell (0, 0): the edge is replicated, so rows/columns -1 repeat 0
    padded = torch.nn.functional.pad(means[None], (1, 1, 1, 1), mode="replicate")[0]
    around = padded[:, 0:3, 0:3].reshape(3, -1).mean(1)
    torch.testing.assert_close(desc[0, 0, 3:], means[:, 0, 0] - around, rtol=1e-5, atol=1e-6)
    for bad in (-1, 2, 4):
        with pytest.raises(ValueError, match="context"):
            cell_descriptors(x, (5, 5), context=bad)


def test_contrast_descriptors_give_a_small_odd_structure_its_own_stratum() -> None:
    """A 2 x 2-cell patch that has the colour of the tissue border (a stripe at the view's edge)
    shares the border's stratum on colour and spread alone, and gets its own with contrast."""
    x = torch.full((1, 3, 64, 64), 0.8)
    x[..., :, :4] = 0.6  # a border stripe, 2 cells wide, of the patch's colour
    x[..., 30:34, 30:34] = 0.6  # the small structure: 2 x 2 cells in the middle
    support = torch.ones(1, 32 * 32, dtype=torch.bool)
    patch = [i * 32 + j for i in (15, 16) for j in (15, 16)]
    stripe = [i * 32 + j for i in range(32) for j in (0, 1)]
    for context, separate in ((0, False), (7, True)):
        ids = appearance_strata(cell_descriptors(x, (32, 32), context), support, n_strata=4)[0]
        assert len(set(ids[patch].tolist())) == 1
        own = int(ids[patch[0]])
        assert (own not in set(ids[stripe].tolist())) is separate, context
        assert (int((ids == own).sum()) == len(patch)) is separate, context


def _three_appearances(counts: tuple[int, int, int], seed: int) -> Tensor:
    """Descriptors ``[n, 2]`` of three well-separated appearances (``counts`` cells each),
    in a shuffled order."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.tensor([[0.8, 0.05], [0.5, 0.2], [0.2, 0.05]])
    parts = [
        c + 0.01 * torch.randn(n, 2, generator=g) for c, n in zip(centres, counts, strict=True)
    ]
    x = torch.cat(parts)
    return x[torch.randperm(len(x), generator=g)]


def _kind(x: Tensor) -> Tensor:
    """Which of the three appearances each descriptor row ``[n, 2]`` comes from (nearest centre)."""
    centres = torch.tensor([[0.8, 0.05], [0.5, 0.2], [0.2, 0.05]])
    return torch.cdist(x, centres).argmin(1)


def test_per_item_strata_recover_the_appearances_and_skip_the_unsupported() -> None:
    x = _three_appearances((40, 15, 3), seed=1)
    support = torch.ones(1, len(x), dtype=torch.bool)
    support[0, :5] = False
    ids = appearance_strata(x[None], support, n_strata=3, seed=0)
    assert bool((ids[0, :5] == -1).all())
    kinds = _kind(x[5:])
    got = ids[0, 5:]
    # one stratum per appearance: the partitions coincide (up to naming)
    for k in range(3):
        assert got[kinds == k].unique().numel() == 1
    assert got.unique().numel() == 3
    # deterministic in the seed
    assert torch.equal(ids, appearance_strata(x[None], support, n_strata=3, seed=0))
    # rarity 1: the rare appearance (3 cells) gets a third of the mass, like the common one
    q = stratified_proposal(ids)
    rare = torch.zeros_like(support)
    rare[0, 5:] = kinds == 2
    assert q[rare].sum().item() == pytest.approx(1 / 3, rel=1e-5)


def test_cohort_strata_assign_the_same_appearance_the_same_stratum_across_slides() -> None:
    slides = [_three_appearances(c, seed=s) for s, c in enumerate([(60, 20, 2), (30, 40, 4)])]
    strata = fit_appearance_strata(torch.cat(slides), n_strata=3, seed=0)
    assert strata.centres.shape == (3, 2)
    batch = torch.stack([slides[0][:60], slides[1][:60]])
    support = torch.ones(2, 60, dtype=torch.bool)
    ids = appearance_strata(batch, support, strata=strata)
    kinds = torch.stack([_kind(batch[0]), _kind(batch[1])])
    for k in range(3):
        assert ids[kinds == k].unique().numel() == 1, f"appearance {k} split across strata"
    assert ids.unique().numel() == 3
    # a descriptor seen in one slide gets the same stratum in another
    twin = torch.stack([batch[0], batch[0].flip(0)])
    twin_ids = appearance_strata(twin, support, strata=strata)
    assert torch.equal(twin_ids[0], twin_ids[1].flip(0))
    # and the fit is reproducible
    again = fit_appearance_strata(torch.cat(slides), n_strata=3, seed=0)
    torch.testing.assert_close(again.centres, strata.centres)


def _grid_and_a_rare_appearance(seed: int) -> Tensor:
    """Nine common appearances on a 3 x 3 grid (200 cells each) and a rare one (30 cells) between
    four of them: k-means++ seeding often spends two centres on a common one and none on it."""
    g = torch.Generator().manual_seed(seed)
    common = [
        torch.randn(200, 2, generator=g) + torch.tensor([16.0 * i, 16.0 * j])
        for i in range(3)
        for j in range(3)
    ]
    rare = torch.randn(30, 2, generator=g) * 0.3 + torch.tensor([8.0, 8.0])
    return torch.cat([*common, rare])


def _rare_has_its_own_stratum(x: Tensor, strata) -> bool:
    ids = nearest_stratum(x, strata)
    rare = ids[-30:]
    return rare.unique().numel() == 1 and not bool((ids[:-30] == rare[0]).any())


def test_cohort_strata_keep_the_lowest_inertia_of_their_restarts() -> None:
    seeds = range(20)
    single = [
        _rare_has_its_own_stratum(x, fit_appearance_strata(x, 10, seed=s, restarts=1))
        for s, x in ((s, _grid_and_a_rare_appearance(s)) for s in seeds)
    ]
    restarted = [
        _rare_has_its_own_stratum(x, fit_appearance_strata(x, 10, seed=s, restarts=8))
        for s, x in ((s, _grid_and_a_rare_appearance(s)) for s in seeds)
    ]
    assert sum(single) <= 17, f"the trap caught {20 - sum(single)} of 20 single runs (at least 3)"
    assert all(restarted), (
        f"{restarted.count(False)} of 20 restarted fits merged the rare appearance"
    )


def test_strata_reject_bad_shapes() -> None:
    with pytest.raises(ValueError, match="descriptors"):
        appearance_strata(torch.zeros(4, 2), torch.ones(1, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="n_strata"):
        appearance_strata(torch.zeros(1, 4, 2), torch.ones(1, 4, dtype=torch.bool), n_strata=0)
    with pytest.raises(ValueError, match="non-empty"):
        fit_appearance_strata(torch.zeros(0, 2), 3)


# --- unbiasedness with stratified exploration ---------------------------------------------------

K, D = 10, 3
DRAWS = 20_000
Z_MAX = 4.0


def _problem() -> dict[str, Tensor]:
    g = torch.Generator().manual_seed(3)
    kw = {"generator": g, "dtype": torch.float64}
    theta = torch.randn(K, **kw) * 1.5
    on = torch.ones(K, dtype=torch.bool)
    on[[2, 7]] = False  # off tissue: zero attention and zero exploration
    strata = torch.tensor([0, 0, -1, 0, 0, 0, 1, -1, 1, 2])  # stratum 2: one rare cell
    return {
        "theta": theta,
        "on": on,
        "strata": strata,
        "f": torch.randn(K, D, **kw),  # features of each cell
        "w_out": torch.randn(D, **kw),  # loss = w_out . estimate
    }


def _attention(theta: Tensor, on: Tensor) -> Tensor:
    return torch.softmax(theta.masked_fill(~on, float("-inf")), dim=-1)


def _exact(pb: dict[str, Tensor]) -> dict[str, Tensor]:
    theta = pb["theta"].clone().requires_grad_()
    value = _attention(theta, pb["on"]) @ pb["f"]
    (value @ pb["w_out"]).backward()
    return {"value": value.detach(), "theta": theta.grad}


def _per_draw(
    pb: dict[str, Tensor], n: int, replace: bool, explore: float, seed: int, weighted: bool = True
) -> dict[str, Tensor]:
    theta = pb["theta"].expand(DRAWS, K).clone().requires_grad_()
    a = _attention(theta, pb["on"])
    e = stratified_proposal(pb["strata"][None]).double().expand(DRAWS, K)
    drawn = draw(a, n, replace, torch.Generator().manual_seed(seed), explore, exploration=e)
    if not weighted:  # as if the cells came from the attention itself: no importance weights
        drawn = Draw(drawn.indices, a.detach().gather(1, drawn.indices), replace)
    value = estimate(a, drawn, pb["f"][drawn.indices], "loo")
    (value @ pb["w_out"]).sum().backward()
    return {"value": value.detach(), "theta": theta.grad}


def _z(per_draw: dict[str, Tensor], exact: dict[str, Tensor]) -> dict[str, Tensor]:
    out = {}
    for name, draws in per_draw.items():
        mean, se = draws.mean(0), draws.std(0) / DRAWS**0.5
        out[name] = (mean - exact[name]).abs() / (se + 1e-9 * (1 + exact[name].abs()))
    return out


def test_stratified_mixture_is_the_proposal_drawn_from() -> None:
    pb = _problem()
    a = _attention(pb["theta"], pb["on"])[None]
    e = stratified_proposal(pb["strata"][None]).double()
    q = exploration_proposal(a, 0.6, exploration=e)
    torch.testing.assert_close(q, 0.4 * a + 0.6 * e)
    drawn = draw(a, 4, False, torch.Generator().manual_seed(0), 0.6, exploration=e)
    torch.testing.assert_close(drawn.proposal, q.gather(1, drawn.indices))
    assert bool(pb["on"][drawn.indices].all())  # never off tissue


@pytest.mark.parametrize(
    ("replace", "n", "explore"),
    [(True, 1, 0.5), (True, 4, 0.9), (False, 1, 0.9), (False, 3, 0.5), (False, 5, 0.9)],
)
def test_stratified_exploration_keeps_the_estimate_unbiased(
    replace: bool, n: int, explore: float
) -> None:
    pb = _problem()
    seed = 500 + 10 * n + int(10 * explore) + int(replace)
    z = _z(_per_draw(pb, n, replace, explore, seed), _exact(pb))
    for name, scores in z.items():
        assert scores.max() < Z_MAX, f"{name}: z-scores {scores.flatten().tolist()}"


def test_check_rejects_draws_without_importance_weights() -> None:
    """Power: the same draws estimated as if they came from the attention are biased."""
    pb = _problem()
    z = _z(_per_draw(pb, 3, True, 0.9, seed=600, weighted=False), _exact(pb))
    assert z["value"].max() > 2 * Z_MAX
