"""Map sampled attention cells to top-left pixel offsets of high-resolution patches."""

from __future__ import annotations

import numbers
from collections.abc import Sequence

import torch
from torch import Tensor

__all__ = ["cell_boxes", "cell_offsets"]


def _pair(value: int | Sequence[int], name: str) -> tuple[int, int]:
    if isinstance(value, numbers.Integral):  # int, numpy and other integer scalars
        return int(value), int(value)
    pair = tuple(int(v) for v in value)
    if len(pair) != 2:
        raise ValueError(f"{name} must be an int or a (y, x) pair, got {value!r}")
    return pair  # type: ignore[return-value]


def cell_offsets(
    indices: Tensor,
    map_size: tuple[int, int],
    low_size: tuple[int, int],
    high_size: tuple[int, int] | Sequence[tuple[int, int]] | Tensor,
    patch_size: int | tuple[int, int],
    receptive_field: int | tuple[int, int] = 0,
) -> Tensor:
    """Top-left ``(y, x)`` high-res pixel offsets of the patches centred on sampled cells.

    As in the paper's implementation, per axis: ``s = high_size / low_size`` (non-integer
    allowed), ``step = (low_size - receptive_field) * s / map_size`` high-res pixels per cell,
    and the top-left is ``round(receptive_field / 2 * s + idx * step + step / 2 - patch / 2)``
    (``round`` halves to even, as ``tf.round``).

    Args:
        indices: ``[B, n]`` LongTensor into the row-major flattened ``map_size`` grid.
        map_size: ``(mh, mw)`` cells of the attention map.
        low_size: ``(h, w)`` pixels of the low-res input the attention net saw.
        high_size: ``(H, W)`` high-res pixels, one pair for all items or ``[B, 2]`` per item.
        patch_size: ``ph`` or ``(ph, pw)`` high-res pixels.
        receptive_field: low-res pixels lost at the borders by the attention net (total per axis).

    Returns:
        LongTensor ``[B, n, 2]`` on ``indices.device``; may be negative or run past the image
        (the patch extraction pads there).
    """
    if indices.dim() != 2:
        raise ValueError(f"indices must be [B, n], got shape {tuple(indices.shape)}")
    origin, step, cells = _cell_grid(indices, map_size, low_size, high_size, receptive_field)
    ph, pw = _pair(patch_size, "patch_size")
    patch = torch.tensor([ph, pw], dtype=origin.dtype, device=origin.device)
    top_left = origin + cells * step + step / 2 - patch / 2
    return torch.round(top_left).long()


def cell_boxes(
    indices: Tensor,
    map_size: tuple[int, int],
    low_size: tuple[int, int],
    high_size: tuple[int, int] | Sequence[tuple[int, int]] | Tensor,
    receptive_field: int | tuple[int, int] = 0,
) -> Tensor:
    """High-res extent ``(y0, x0, y1, x1)`` (float64 ``[B, n, 4]``, not rounded) of the attention
    cells ``indices``: the rule of :func:`cell_offsets`, whose patches are centred on these boxes
    (``y0 = receptive_field / 2 * s + idx * step``, ``y1 = y0 + step``; same for x). Arguments
    as in :func:`cell_offsets`."""
    if indices.dim() != 2:
        raise ValueError(f"indices must be [B, n], got shape {tuple(indices.shape)}")
    origin, step, cells = _cell_grid(indices, map_size, low_size, high_size, receptive_field)
    start = origin + cells * step
    return torch.cat((start, start + step), dim=-1)


def _cell_grid(
    indices: Tensor,
    map_size: tuple[int, int],
    low_size: tuple[int, int],
    high_size: tuple[int, int] | Sequence[tuple[int, int]] | Tensor,
    receptive_field: int | tuple[int, int],
) -> tuple[Tensor, Tensor, Tensor]:
    """``origin [B, 1, 2]``, ``step [B, 1, 2]`` (high-res pixels, (y, x)) and the cells' ``(row,
    col)`` ``[B, n, 2]``, float64: cell ``c`` spans ``origin + c * step`` to one step further."""
    device = indices.device
    dtype = torch.float64
    mh, mw = _pair(map_size, "map_size")
    rf = torch.tensor(_pair(receptive_field, "receptive_field"), dtype=dtype, device=device)
    low = torch.tensor(_pair(low_size, "low_size"), dtype=dtype, device=device)
    high = torch.as_tensor(high_size, dtype=dtype, device=device)
    if high.dim() == 1:
        high = high.expand(indices.shape[0], 2)
    if high.shape != (indices.shape[0], 2):
        raise ValueError(f"high_size must be (H, W) or [B, 2], got shape {tuple(high.shape)}")
    scale = high / low  # [B, 2]
    step = (low - rf) * scale / torch.tensor([mh, mw], dtype=dtype, device=device)  # [B, 2]
    cells = torch.stack((indices // mw, indices % mw), dim=-1).to(dtype)  # [B, n, 2]
    return (rf / 2 * scale).unsqueeze(1), step.unsqueeze(1), cells
