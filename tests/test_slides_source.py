"""``SlidePatchSource``: the core's PatchSource over slides, offsets in read-level pixels."""

from __future__ import annotations

import numpy as np
import torch
from slide_factory import test_image, write_pyramidal_tiff

from wsi_ats.slides import SlidePatchSource, convert_to_ome_zarr, open_slide


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
