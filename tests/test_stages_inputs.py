"""Bad per-call arguments fail with a clear ValueError, not a torch traceback."""

from __future__ import annotations

import numpy as np
import pytest

from wsi_ats.models import PipelineConfig, build_model
from wsi_ats.stages import SlideView, sample_slide


@pytest.mark.parametrize("n_draws", [0, -2])
def test_sample_slide_rejects_non_positive_n_draws(n_draws: int) -> None:
    model = build_model(PipelineConfig(), seed=0)
    rng = np.random.default_rng(0)
    view = SlideView(
        slide_id="s",
        path="s.tif",
        image=rng.integers(0, 256, (40, 50, 3), dtype=np.uint8),
        mask=np.ones((40, 50), bool),
        scale=(10.0, 10.0),
        level0_size=(400, 500),
        read_level=0,
        read_downsample=1.0,
    )
    with pytest.raises(ValueError, match="n_draws"):
        sample_slide(view, model, n_draws=n_draws)


def test_cell_offsets_accepts_numpy_integer_sizes() -> None:
    import torch

    from wsi_ats.core import cell_offsets

    idx = torch.tensor([[0, 5, 11]])
    expected = cell_offsets(idx, (3, 4), (6, 8), (60, 80), 10, 0)
    got = cell_offsets(idx, (3, 4), (6, 8), (60, 80), np.int64(10), np.int64(0))
    torch.testing.assert_close(got, expected)
