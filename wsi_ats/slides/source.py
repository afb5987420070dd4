"""``SlidePatchSource``: the core's ``PatchSource`` over a batch of open slides, read at one level."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from .base import Slide
from .lowres import LowResView

if TYPE_CHECKING:
    import torch


class SlidePatchSource:
    """High-res patches of ``slides[b]`` at pyramid ``level``; offsets are ``(y, x)`` pixels of that level.

    ``scales[b] = (sy, sx)`` level-0 pixels per read-level pixel (default: the level's downsample, which
    is how the backends map level-0 locations to the level).

    ``views[b]``: the low-resolution view the attention ran on. Give it, so that attention cells map
    to the slide region they cover: ``high_size`` is then the view's extent in read-level pixels
    (a view streamed by a factor ``k`` overhangs the slide by up to ``k - 1`` level pixels, and
    mapping its cells over the level's own size would shift patches by up to ``k / 2``).
    """

    def __init__(
        self,
        slides: Sequence[Slide],
        level: int = 0,
        scales: Sequence[tuple[float, float]] | None = None,
        views: Sequence[LowResView] | None = None,
    ) -> None:
        self.slides = list(slides)
        self.level = level
        if scales is None:
            scales = [_level_scale(s, level) for s in self.slides]
        if len(scales) != len(self.slides):
            raise ValueError(f"{len(scales)} scales for {len(self.slides)} slides")
        self.scales = [(float(sy), float(sx)) for sy, sx in scales]
        if views is not None and len(views) != len(self.slides):
            raise ValueError(f"{len(views)} views for {len(self.slides)} slides")
        self.views = None if views is None else list(views)

    def high_size(self, batch_index: int) -> tuple[int, int]:
        """``(H, W)`` read-level pixels that the attention map spans for slide ``batch_index``: the
        view's extent when ``views`` were given, else the read level's size."""
        if self.views is not None:
            view = self.views[batch_index]
            sy, sx = self.scales[batch_index]
            vh, vw = view.image.shape[:2]
            return (round(vh * view.scale[0] / sy), round(vw * view.scale[1] / sx))
        w, h = self.slides[batch_index].level_dimensions[self.level]
        return (h, w)

    def read_patches(
        self, batch_index: int, offsets: torch.Tensor, size: tuple[int, int]
    ) -> torch.Tensor:
        """``float32[n, 3, h, w]`` in ``[0, 1]`` (white outside the slide) for ``offsets``
        ``LongTensor[n, 2]`` top-left ``(y, x)`` in read-level pixels and ``size=(h, w)``."""
        import torch  # imported here: slide I/O alone (e.g. ``wsi-ats convert``) never loads torch

        h, w = int(size[0]), int(size[1])
        sy, sx = self.scales[batch_index]
        yx = offsets.detach().to("cpu", torch.float64).numpy().reshape(-1, 2)
        # ceil: the smallest level-0 pixel whose floor(loc / ds) is the offset (round can land one
        # read-level pixel early at a non-integer downsample)
        locations = np.stack(
            [np.ceil(yx[:, 1] * sx - 1e-6), np.ceil(yx[:, 0] * sy - 1e-6)], axis=1
        ).astype(np.int64)
        tiles = self.slides[batch_index].read_regions(locations, self.level, (w, h))
        patches = torch.from_numpy(tiles).permute(0, 3, 1, 2).float().div_(255.0)
        return patches.to(offsets.device)


def _level_scale(slide: Slide, level: int) -> tuple[float, float]:
    ds = float(slide.level_downsamples[level])
    return (ds, ds)
