"""Vectorised extraction of fixed-size patches from image tensors, padded outside the image."""

from __future__ import annotations

import torch
from torch import Tensor

from wsi_ats.core.offsets import _pair

__all__ = ["extract_patches"]


def extract_patches(
    images: Tensor,
    offsets: Tensor,
    patch_size: int | tuple[int, int],
    pad_value: float = 1.0,
) -> Tensor:
    """Cut ``n`` patches per image at the given top-left offsets.

    Args:
        images: ``[B, C, H, W]``.
        offsets: ``[B, n, 2]`` integer top-left ``(y, x)`` in pixels of ``images``; may lie partly
            or wholly outside the image.
        patch_size: ``ph`` or ``(ph, pw)`` pixels.
        pad_value: value of the pixels outside the image (1.0 = white for ``[0, 1]`` images).

    Returns:
        ``[B, n, C, ph, pw]`` with the dtype and device of ``images``.
    """
    if images.dim() != 4 or offsets.dim() != 3 or offsets.shape[-1] != 2:
        raise ValueError(
            "expected images [B, C, H, W] and offsets [B, n, 2], got "
            f"{tuple(images.shape)} and {tuple(offsets.shape)}"
        )
    if offsets.shape[0] != images.shape[0]:
        raise ValueError(
            f"batch sizes differ: images {images.shape[0]}, offsets {offsets.shape[0]}"
        )
    b, _, h, w = images.shape
    ph, pw = _pair(patch_size, "patch_size")
    offsets = offsets.to(device=images.device, dtype=torch.long)
    rows = offsets[..., 0:1] + torch.arange(ph, device=images.device)  # [B, n, ph]
    cols = offsets[..., 1:2] + torch.arange(pw, device=images.device)  # [B, n, pw]
    inside = ((rows >= 0) & (rows < h)).unsqueeze(-1) & ((cols >= 0) & (cols < w)).unsqueeze(-2)
    batch = torch.arange(b, device=images.device).view(b, 1, 1, 1)
    pixels = images.permute(0, 2, 3, 1)[  # [B, n, ph, pw, C]
        batch,
        rows.clamp(0, h - 1).unsqueeze(-1),
        cols.clamp(0, w - 1).unsqueeze(-2),
    ]
    pad = torch.full((), pad_value, dtype=images.dtype, device=images.device)
    pixels = torch.where(inside.unsqueeze(-1), pixels, pad)
    return pixels.permute(0, 1, 4, 2, 3).contiguous()
