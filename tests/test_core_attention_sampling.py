"""The AttentionSampling module: contracts, masking, PatchSource path, and a toy task it learns."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from wsi_ats.core import (
    AttentionSampling,
    AttentionSamplingOutput,
    PatchSource,
    attention_sampling,
    extract_patches,
    multinomial_entropy,
)


def _nets(channels: int = 1, dim: int = 8) -> tuple[nn.Module, nn.Module]:
    attention = nn.Conv2d(channels, 1, 3, padding=1)
    features = nn.Sequential(
        nn.Conv2d(channels, dim, 3), nn.ReLU(), nn.AdaptiveMaxPool2d(1), nn.Flatten()
    )
    return attention, features


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


class _TensorSource:
    """A PatchSource over an in-memory high-res batch, read one item at a time."""

    def __init__(self, images: Tensor, pad_value: float) -> None:
        self.images, self.pad_value, self.calls = images, pad_value, 0

    def high_size(self, batch_index: int) -> tuple[int, int]:
        return tuple(self.images.shape[-2:])

    def read_patches(self, batch_index: int, offsets: Tensor, size: tuple[int, int]) -> Tensor:
        self.calls += 1
        image = self.images[batch_index : batch_index + 1]
        return extract_patches(image, offsets[None], size, self.pad_value)[0]


def test_output_contract_and_gradients_reach_both_networks() -> None:
    with torch.random.fork_rng():
        torch.manual_seed(0)
        att, feat = _nets(channels=3)
    model = attention_sampling(att, feat, patch_size=(6, 5), n_patches=5)
    assert isinstance(model, AttentionSampling)
    x_high = torch.rand(2, 3, 48, 40)
    x_low = F.avg_pool2d(x_high, 4)
    out = model(x_low, x_high, generator=_gen(1))
    assert isinstance(out, AttentionSamplingOutput)
    assert out.features.shape == (2, 8)
    assert out.attention.shape == (2, 12, 10)
    assert torch.allclose(out.attention.sum((1, 2)), torch.ones(2))
    assert out.patches.shape == (2, 5, 3, 6, 5)
    assert out.offsets.shape == (2, 5, 2) and out.offsets.dtype == torch.long
    assert out.indices.shape == (2, 5) and out.sampled_attention.shape == (2, 5)
    assert out.regularization.shape == () and out.regularization.item() == 0.0
    assert torch.equal(out.patches, extract_patches(x_high, out.offsets, (6, 5), 1.0))
    out.features.sum().backward()
    for net in (att, feat):
        grads = [p.grad for p in net.parameters()]
        assert all(g is not None for g in grads)
        assert sum(g.abs().sum() for g in grads) > 0


def test_patch_source_matches_tensor_path() -> None:
    with torch.random.fork_rng():
        torch.manual_seed(2)
        att, feat = _nets()
    model = attention_sampling(att, feat, 7, 4, replace=True, pad_value=0.25, receptive_field=2)
    x_high = torch.rand(3, 1, 45, 39)
    x_low = F.interpolate(x_high, size=(15, 13), mode="area")
    source = _TensorSource(x_high, pad_value=0.25)
    assert isinstance(source, PatchSource)
    from_tensor = model(x_low, x_high, generator=_gen(3))
    from_source = model(x_low, source, generator=_gen(3))
    assert source.calls == 3
    for name, a, b in zip(from_tensor._fields, from_tensor, from_source, strict=True):
        assert torch.equal(a, b), name


def test_mask_zeroes_attention_and_restricts_draws() -> None:
    att, feat = _nets()
    model = attention_sampling(att, feat, 4, 3)
    x_high = torch.rand(2, 1, 32, 32)
    x_low = F.avg_pool2d(x_high, 2)  # 16x16 view; the map is 16x16 too
    mask = torch.zeros(2, 16, 16, dtype=torch.bool)
    mask[0, 2:5, 3:6] = True
    mask[1, 10, 10] = mask[1, 0, 15] = mask[1, 15, 0] = True
    out = model(x_low, x_high, mask=mask, generator=_gen(4))
    assert (out.attention[~mask] == 0).all() and (out.attention[mask] > 0).all()
    rows, cols = out.indices // 16, out.indices % 16
    assert mask[torch.arange(2)[:, None], rows, cols].all()
    # Fewer kept cells than n_patches without replacement is refused.
    mask[1] = False
    mask[1, 3, 3] = True
    with pytest.raises(ValueError, match="nonzero"):
        model(x_low, x_high, mask=mask)
    mask[1] = False
    with pytest.raises(ValueError, match="mask"):
        model(x_low, x_high, mask=mask)
    # (how a mask of another resolution maps onto the grid: tests/test_core_masking.py)


def test_regularizer_float_and_callable() -> None:
    att, feat = _nets()
    x_high = torch.rand(2, 1, 16, 16)
    x_low = F.avg_pool2d(x_high, 2)
    model = attention_sampling(att, feat, 4, 2, attention_regularizer=0.1)
    out = model(x_low, x_high, generator=_gen(6))
    expected = -0.1 * multinomial_entropy(out.attention).mean()
    assert torch.allclose(out.regularization, expected)
    out.regularization.backward()
    assert att.weight.grad is not None and att.weight.grad.abs().sum() > 0
    model = attention_sampling(att, feat, 4, 2, attention_regularizer=lambda a: a.amax((1, 2)))
    out = model(x_low, x_high, generator=_gen(6))
    assert torch.allclose(out.regularization, out.attention.amax((1, 2)).mean())


def test_generator_determinism() -> None:
    att, feat = _nets()
    model = attention_sampling(att, feat, 5, 6)
    x_high = torch.rand(2, 1, 40, 40)
    x_low = F.avg_pool2d(x_high, 4)
    first = model(x_low, x_high, generator=_gen(7))
    again = model(x_low, x_high, generator=_gen(7))
    assert torch.equal(first.indices, again.indices)
    assert torch.equal(first.features, again.features)


def _toy_marker_task(n: int, gen: torch.Generator) -> tuple[Tensor, Tensor, Tensor]:
    """64x64 images, black except a 16x16 marker: a 1-pixel checkerboard (label 1) or flat 0.5
    (label 0). The 4x-downsampled 16x16 view shows the marker as the same 0.5 blob in both
    classes, so the class is visible only at high resolution."""
    high = torch.zeros(n, 1, 64, 64)
    labels = torch.randint(0, 2, (n,), generator=gen)
    corners = torch.randint(0, 13, (n, 2), generator=gen) * 4
    yy, xx = torch.meshgrid(torch.arange(16), torch.arange(16), indexing="ij")
    checker = ((yy + xx) % 2).float()
    for i, (y, x) in enumerate(corners.tolist()):
        high[i, 0, y : y + 16, x : x + 16] = checker if labels[i] else 0.5
    return F.avg_pool2d(high, 4), high, labels.float()


def test_learns_toy_task_visible_only_at_high_resolution() -> None:
    gen = _gen(10)
    x_low, x_high, y = _toy_marker_task(256, gen)
    test_low, test_high, test_y = _toy_marker_task(200, gen)
    # The low-res view carries no information about the label.
    blob = torch.zeros(1, 1, 64, 64)
    blob[..., 8:24, 20:36] = 0.5
    checker = blob.clone()
    checker[..., 8:24, 20:36] = (torch.arange(16)[:, None] + torch.arange(16)).remainder(2).float()
    assert torch.equal(F.avg_pool2d(blob, 4), F.avg_pool2d(checker, 4))

    with torch.random.fork_rng():
        torch.manual_seed(0)
        att, feat = _nets()
        head = nn.Linear(8, 1)
    model = attention_sampling(att, feat, 8, 4, attention_regularizer=1e-3, pad_value=0.0)
    opt = torch.optim.Adam([*model.parameters(), *head.parameters()], lr=1e-2)
    for _ in range(150):
        batch = torch.randint(0, 256, (32,), generator=gen)
        out = model(x_low[batch], x_high[batch], generator=gen)
        logits = head(out.features)[:, 0]
        loss = F.binary_cross_entropy_with_logits(logits, y[batch]) + out.regularization
        opt.zero_grad()
        loss.backward()
        opt.step()

    with torch.no_grad():
        out = model(test_low, test_high, generator=gen)
        accuracy = ((head(out.features)[:, 0] > 0).float() == test_y).float().mean().item()
        # Attention has learnt where the marker is: most of its mass lies on the blob.
        on_marker = (test_low[:, 0] > 0).float()
        mass = (out.attention * on_marker).sum((1, 2)).mean().item()
    assert accuracy >= 0.85, accuracy
    assert mass > 0.5, mass
