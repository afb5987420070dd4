"""Read-level offsets survive the level-0 round trip at non-integer downsamples."""

from __future__ import annotations

import numpy as np
import torch

from wsi_ats.models import PipelineConfig
from wsi_ats.slides.base import level_origin
from wsi_ats.stages import SlideView, cells_to_locations


def test_cells_to_locations_round_trips_to_read_level_at_non_integer_downsample() -> None:
    ds = 4.016
    cfg = PipelineConfig()
    view = SlideView(
        slide_id="s",
        path="s.svs",
        image=np.zeros((64, 80, 3), np.uint8),
        mask=np.ones((64, 80), bool),
        scale=(64.0, 64.0),
        level0_size=(4096, 5120),
        read_level=1,
        read_downsample=ds,
    )
    map_size = (32, 40)
    idx = torch.arange(map_size[0] * map_size[1]).reshape(1, -1)
    from wsi_ats.core import cell_offsets

    yx = cell_offsets(
        idx,
        map_size,
        (64, 80),
        (64 * 64 / ds, 80 * 64 / ds),  # the view's extent in read-level pixels
        cfg.slide.patch_size,
        cfg.sampling.receptive_field,
    )[0].numpy()
    xy0 = cells_to_locations(idx, map_size, view, cfg)[0]
    back = np.array([level_origin((int(x), int(y)), (ds, ds)) for x, y in xy0])
    np.testing.assert_array_equal(back[:, ::-1], yx)


class _RecordingSlide:
    """Just enough of a Slide for SlidePatchSource: records the level-0 locations it is asked for."""

    path = "rec.svs"
    level_dimensions = ((5120, 4096), (1275, 1020))
    level_downsamples = (1.0, 4.016)

    def __init__(self) -> None:
        self.locations: np.ndarray | None = None

    def read_regions(self, locations: np.ndarray, level: int, size: tuple[int, int]) -> np.ndarray:
        self.locations = np.asarray(locations)
        w, h = size
        return np.zeros((len(locations), h, w, 3), np.uint8)


def test_slide_patch_source_locations_round_trip_to_read_level_offsets() -> None:
    from wsi_ats.slides.source import SlidePatchSource

    slide = _RecordingSlide()
    src = SlidePatchSource([slide], level=1)  # type: ignore[list-item]
    yx = torch.stack(torch.meshgrid(torch.arange(-3, 40), torch.arange(0, 43), indexing="ij"), -1)
    yx = yx.reshape(-1, 2)
    src.read_patches(0, yx, (4, 4))
    assert slide.locations is not None
    back = np.array([level_origin((int(x), int(y)), (4.016, 4.016)) for x, y in slide.locations])
    np.testing.assert_array_equal(back[:, ::-1], yx.numpy())


class _LevelArraySlide:
    """A two-level in-memory slide whose reads map level-0 locations as the zarr backend does."""

    path = "mem.zarr"

    def __init__(self, level1: np.ndarray, ds: float) -> None:
        self.level1 = level1
        self.ds = ds
        h, w = level1.shape[:2]
        self.level_dimensions = ((round(w * ds), round(h * ds)), (w, h))
        self.level_downsamples = (1.0, ds)
        self.level_count = 2

    def read_region(self, location: tuple[int, int], level: int, size: tuple[int, int]):
        assert level == 1
        ox, oy = level_origin(location, (self.ds, self.ds))
        w, h = size
        return self.level1[oy : oy + h, ox : ox + w]


def test_stream_reduce_reads_tiles_at_their_level_origin_at_non_integer_downsample(
    monkeypatch,
) -> None:
    from wsi_ats.slides import lowres

    monkeypatch.setattr(lowres, "STREAM_TILE", 8)
    rng = np.random.default_rng(0)
    level1 = rng.integers(0, 256, (37, 45, 3), dtype=np.uint8)
    slide = _LevelArraySlide(level1, 4.3)
    got = lowres.stream_reduce(slide, 1, 4)  # type: ignore[arg-type]
    np.testing.assert_array_equal(got, lowres.area_reduce(level1, 4))


def test_cells_to_locations_follow_the_view_scale_when_it_overhangs_the_slide() -> None:
    """A streamed view (ceil(h / k) pixels of k level pixels each) reaches past the slide's far
    edge; cell centres must map to level 0 through ``view.scale``, as the heatmap draws them."""
    cfg = PipelineConfig().replace(slide={"patch_size": 16})
    # level 0 of 1000 x 1000 px, reduced by k = 48 -> ceil(1000 / 48) = 21 px: scale 48, not 47.6
    view = SlideView(
        slide_id="s",
        path="s.tif",
        image=np.zeros((21, 21, 3), np.uint8),
        mask=np.ones((21, 21), bool),
        scale=(48.0, 48.0),
        level0_size=(1000, 1000),
        read_level=0,
        read_downsample=1.0,
    )
    idx = torch.tensor([[0, 20, 20 * 21 + 20, 10 * 21 + 5]])
    xy = cells_to_locations(idx, (21, 21), view, cfg)[0]
    rows, cols = (idx[0] // 21).numpy(), (idx[0] % 21).numpy()
    centre = xy + 8  # tile centre, level-0 px
    np.testing.assert_allclose(centre[:, 0], (cols + 0.5) * 48.0, atol=1)
    np.testing.assert_allclose(centre[:, 1], (rows + 0.5) * 48.0, atol=1)
