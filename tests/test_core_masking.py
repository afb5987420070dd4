"""The one mask rule of the package: tissue mask -> attention grid, masked softmax."""

from __future__ import annotations

import pytest
import torch

from wsi_ats.core import mask_to_map, masked_logits, masked_softmax


def test_mask_is_max_pooled_onto_the_map() -> None:
    fine = torch.zeros(2, 16, 16)
    fine[:, 13, 6] = 1  # one pixel keeps map cell (3, 1) of a 4 x 4 map
    keep = mask_to_map(fine, (4, 4))
    assert keep.dtype == torch.bool and keep.shape == (2, 4, 4)
    assert keep.sum() == 2 and bool(keep[:, 3, 1].all())
    same = torch.rand(1, 5, 7) > 0.5
    assert torch.equal(mask_to_map(same, (5, 7)), same)  # same size: unchanged


def test_masked_softmax_is_zero_off_the_mask_and_sums_to_one() -> None:
    logits = torch.randn(2, 1, 6, 6, requires_grad=True)
    mask = torch.zeros(2, 6, 6, dtype=torch.bool)
    mask[0, :2] = True
    mask[1, 4, 4] = True
    a = masked_softmax(logits, mask)
    assert a.shape == (2, 6, 6)
    torch.testing.assert_close(a.sum(dim=(1, 2)), torch.ones(2), rtol=0, atol=1e-6)
    assert float(a.detach()[~mask].abs().sum()) == 0.0 and bool((a[mask] > 0).all())
    assert float(a.detach()[1, 4, 4]) == pytest.approx(1.0)
    (a * torch.arange(72.0).view(2, 6, 6)).sum().backward()
    assert torch.isfinite(logits.grad).all()
    assert float(logits.grad[0, 0, 3:].abs().sum()) == 0.0  # no gradient to masked cells
    z = masked_logits(logits, mask)
    assert bool(torch.isneginf(z[~mask]).all()) and torch.equal(z[mask], logits[:, 0][mask])


def test_empty_mask_falls_back_to_every_cell_or_raises() -> None:
    logits = torch.zeros(2, 3, 3)
    mask = torch.zeros(2, 3, 3, dtype=torch.bool)
    mask[0, 1, 1] = True
    a = masked_softmax(logits, mask)
    torch.testing.assert_close(a[1], torch.full((3, 3), 1 / 9))
    with pytest.raises(ValueError, match="every cell"):
        masked_softmax(logits, mask, empty="raise")
    assert torch.equal(masked_softmax(logits, None), torch.full((2, 3, 3), 1 / 9))


def test_rejects_bad_shapes() -> None:
    with pytest.raises(ValueError, match="logits"):
        masked_softmax(torch.zeros(2, 2, 3, 3))
    with pytest.raises(ValueError, match="mask"):
        mask_to_map(torch.zeros(3, 3), (3, 3))
