"""Cell -> high-res offset mapping and padded patch extraction, against hand-computed values."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from wsi_ats.core import cell_offsets, extract_patches


def _reference_offset(idx, map_size, low, high, patch, rf):
    """Plain-Python transcription of the paper's formula (Python's round halves to even too)."""
    out = []
    for cell, m, lo, hi, p in zip(idx, map_size, low, high, patch, strict=True):
        s = hi / lo
        step = (lo - rf) * s / m
        out.append(round(rf / 2 * s + cell * step + step / 2 - p / 2))
    return out


def test_integer_scale_cell_centres() -> None:
    # 4x4 map on a 4x4 low-res view of a 16x16 image: step 4, patch 4 -> top-left = 4 * cell.
    indices = torch.tensor([[0, 5, 15], [3, 12, 6]])
    offsets = cell_offsets(indices, (4, 4), (4, 4), (16, 16), 4)
    expected = torch.tensor([[[0, 0], [4, 4], [12, 12]], [[0, 12], [12, 0], [4, 8]]])
    assert offsets.dtype == torch.long
    assert torch.equal(offsets, expected)


def test_non_integer_ratios() -> None:
    # s = (25/10, 30/8) = (2.5, 3.75); step = (2.5, 3.75); cell (3, 5), patch (5, 6):
    # y = 3 * 2.5 + 1.25 - 2.5 = 6.25 -> 6, x = 5 * 3.75 + 1.875 - 3 = 17.625 -> 18.
    offsets = cell_offsets(torch.tensor([[3 * 8 + 5]]), (10, 8), (10, 8), (25, 30), (5, 6))
    assert offsets.tolist() == [[[6, 18]]]
    # A map coarser than the low-res view (stride 2) with a non-integer scale.
    # s = 33/20 = 1.65, step = 20 * 1.65 / 10 = 3.3; cell 9: 9 * 3.3 + 1.65 - 4 = 27.35 -> 27.
    offsets = cell_offsets(torch.tensor([[9 * 10 + 9]]), (10, 10), (20, 20), (33, 33), 8)
    assert offsets.tolist() == [[[27, 27]]]


def test_receptive_field_margin() -> None:
    # low 20, map 16 (a net losing 4 low-res pixels), high 40 (s = 2): step = 16 * 2 / 16 = 2,
    # top-left = 4 / 2 * 2 + 2 * cell + 1 - 3 = 2 * cell + 2 for a 6-pixel patch.
    indices = torch.tensor([[0, 15, 16 * 15 + 7]])
    offsets = cell_offsets(indices, (16, 16), (20, 20), (40, 40), 6, receptive_field=4)
    assert offsets.tolist() == [[[2, 2], [2, 32], [32, 16]]]
    # Patch centre = high-res position of the centre of the low-res pixel the cell is centred on.
    centre_low = 2 + 0 + 0.5  # cell 0 sees low-res pixels 0..4, centred on pixel 2
    assert offsets[0, 0, 0].item() + 3 == centre_low * 2


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_reference_formula_on_random_settings(seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    map_size = tuple(torch.randint(3, 12, (2,), generator=g).tolist())
    rf = int(torch.randint(0, 5, (1,), generator=g))
    low = tuple(m + rf + int(torch.randint(0, 9, (1,), generator=g)) for m in map_size)
    high = [tuple(torch.randint(20, 400, (2,), generator=g).tolist()) for _ in range(3)]
    patch = tuple(torch.randint(1, 30, (2,), generator=g).tolist())
    indices = torch.randint(0, map_size[0] * map_size[1], (3, 7), generator=g)
    offsets = cell_offsets(indices, map_size, low, torch.tensor(high), patch, rf)
    for b in range(3):
        for i in range(7):
            cell = divmod(int(indices[b, i]), map_size[1])
            ref = _reference_offset(cell, map_size, low, high[b], patch, rf)
            assert offsets[b, i].tolist() == ref


def _padded_reference(image: np.ndarray, y: int, x: int, ph: int, pw: int, pad: float):
    margin = max(ph, pw) + abs(y) + abs(x)
    padded = np.pad(image, ((0, 0), (margin, margin), (margin, margin)), constant_values=pad)
    return padded[:, y + margin : y + margin + ph, x + margin : x + margin + pw]


def test_extract_patches_exact_pixels_and_padding() -> None:
    images = torch.arange(2 * 3 * 5 * 6, dtype=torch.float32).view(2, 3, 5, 6)
    offsets = torch.tensor(
        [
            [[0, 0], [-1, -2], [3, 4], [2, 1]],  # inside, top-left corner, bottom-right corner
            [[-10, 0], [4, -3], [1, 1], [5, 6]],  # fully outside, left border, inside, just outside
        ]
    )
    patches = extract_patches(images, offsets, (3, 4), pad_value=-7.0)
    assert patches.shape == (2, 4, 3, 3, 4)
    for b in range(2):
        for i in range(4):
            y, x = offsets[b, i].tolist()
            ref = _padded_reference(images[b].numpy(), y, x, 3, 4, -7.0)
            np.testing.assert_array_equal(patches[b, i].numpy(), ref)
    # Hand-checked corner: offset (-1, -2) keeps only rows 0..1 of column 0..1 of the image.
    corner = patches[0, 1, 0]
    assert corner[0].tolist() == [-7.0] * 4
    assert corner[1].tolist() == [-7.0, -7.0, 0.0, 1.0]
    assert corner[2].tolist() == [-7.0, -7.0, 6.0, 7.0]
    assert (patches[1, 0] == -7.0).all()


def test_border_cells_are_padded_white() -> None:
    # A 2x2 map over an 8x8 image with 6-pixel patches: cell centres at 2 and 6, so the
    # top-left cell's patch starts at (-1, -1) and the bottom-right one runs one pixel past.
    image = torch.rand(1, 1, 8, 8)
    offsets = cell_offsets(torch.tensor([[0, 3]]), (2, 2), (2, 2), (8, 8), 6)
    assert offsets.tolist() == [[[-1, -1], [3, 3]]]
    patches = extract_patches(image, offsets, 6, pad_value=1.0)
    assert (patches[0, 0, 0, 0, :] == 1).all() and (patches[0, 0, 0, :, 0] == 1).all()
    assert torch.equal(patches[0, 0, 0, 1:, 1:], image[0, 0, :5, :5])
    assert (patches[0, 1, 0, 5, :] == 1).all() and (patches[0, 1, 0, :, 5] == 1).all()
    assert torch.equal(patches[0, 1, 0, :5, :5], image[0, 0, 3:, 3:])


def test_rejects_bad_shapes() -> None:
    with pytest.raises(ValueError):
        cell_offsets(torch.tensor([1, 2]), (2, 2), (2, 2), (8, 8), 4)
    with pytest.raises(ValueError):
        extract_patches(torch.rand(1, 8, 8), torch.zeros(1, 1, 2, dtype=torch.long), 4)
    with pytest.raises(ValueError):
        extract_patches(torch.rand(2, 1, 8, 8), torch.zeros(1, 1, 2, dtype=torch.long), 4)
