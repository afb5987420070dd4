"""``SlidePatchSource``: the core's PatchSource over slides, offsets in read-level pixels."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from slide_factory import test_image, write_pyramidal_tiff

from wsi_ats.core import cell_offsets
from wsi_ats.slides import SlidePatchSource, convert_to_ome_zarr, low_res_view, open_slide


def test_patches_match_slide_reads(tmp_path):
    tiff = write_pyramidal_tiff(tmp_path / "a.tiff", test_image(512, 640), tile=128, levels=2)
    zarr_path = convert_to_ome_zarr(tiff, tmp_path / "a.zarr", chunk_size=128, levels=2)
    with open_slide(tiff) as a, open_slide(zarr_path) as b:
        source = SlidePatchSource([a, b], level=1)
        assert source.high_size(0) == (256, 320) and source.high_size(1) == (256, 320)
        offsets = torch.tensor([[0, 0], [100, 37], [-10, -20], [250, 300]])
        for i, slide in enumerate((a, b)):
            patches = source.read_patches(i, offsets, (24, 32))
            assert patches.shape == (4, 3, 24, 32) and patches.dtype == torch.float32
            assert patches.min() >= 0.0 and patches.max() <= 1.0
            for k, (y, x) in enumerate(offsets.tolist()):
                tile = slide.read_region((2 * x, 2 * y), 1, (32, 24))
                np.testing.assert_allclose(
                    patches[k].permute(1, 2, 0).numpy(), tile / 255.0, rtol=0, atol=1e-6
                )
        corner = source.read_patches(0, torch.tensor([[-30, -40]]), (10, 10))
        assert torch.all(corner == 1.0)  # outside the slide: white


def test_cells_of_a_streamed_view_map_to_the_region_they_cover(tmp_path):
    """A single-level 1000 x 1000 slide streamed by k = 48 gives a 21 x 21 view spanning 1008 px:
    with ``views`` the attention cells map to their own 48 px squares (centre (i + 0.5) * 48)."""
    path = write_pyramidal_tiff(tmp_path / "flat.tiff", test_image(1000, 1000), levels=1)
    with open_slide(path) as slide:
        view = low_res_view(slide, target_size=21)
        assert view.level is None and view.image.shape[:2] == (21, 21) and view.scale == (48, 48)
        plain, with_view = SlidePatchSource([slide]), SlidePatchSource([slide], views=[view])
        assert plain.high_size(0) == (1000, 1000) and with_view.high_size(0) == (1008, 1008)
        idx = torch.tensor([[0, 20, 20 * 21 + 20, 10 * 21 + 5]])
        rows, cols = (idx[0] // 21).numpy(), (idx[0] % 21).numpy()
        for source, worst in ((with_view, 1.0), (plain, 8.0)):
            top_left = cell_offsets(idx, (21, 21), (21, 21), source.high_size(0), 16)[0].numpy()
            centre = top_left + 8
            err = np.abs(centre - np.stack([(rows + 0.5) * 48, (cols + 0.5) * 48], axis=1))
            assert err.max() <= worst and (
                source is with_view or err.max() > 7
            )  # 20.5 * (48 - 1000 / 21)
    with pytest.raises(ValueError, match="2 views for 1 slides"):
        SlidePatchSource([slide], views=[view, view])
