"""A CLAM-style baseline: a frozen feature network over EVERY tissue tile, then gated-attention MIL.

    python benchmarks/clam_style.py --manifest M [--pipeline P] [--encoder random|tile-supervised]
        [--ground-truth GT] [--epochs E] [--cache DIR]

What users pick instead of attention sampling (Lu et al. 2021, "CLAM"; the head is the gated
attention MIL of Ilse, Tomczak & Welling 2018):

1. tile the tissue densely: a regular grid of non-overlapping tiles (``slide.patch_size`` px of
   ``slide.read_level``, spaced by the tile size) whose centre lies on the tissue mask;
2. run a FROZEN feature network over every one of those tiles (a bag of ``K`` feature vectors);
3. train a small gated-attention MIL head on the bags (one bag per step), keep the epoch with the
   best validation AUC, report the test AUC.

Encoders (no download anywhere; no pretrained ImageNet or pathology weights are available
offline): ``random`` is a seeded, randomly initialised :class:`CompactCNN`; ``tile-supervised`` is
a :class:`CompactCNN` trained on tile labels drawn from the ground-truth lesion boxes of the TRAIN
slides, a stand-in for a strong pretrained pathology encoder (see :func:`tile_supervised_encoder`).

The split comes from the manifest (``train`` / ``val`` / ``test``). The printed seconds per slide
are end to end: open the slide, low-res view and tissue mask, grid, read and encode every tissue
tile, then the MIL head.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score
from torch import nn

from wsi_ats.models import PipelineConfig
from wsi_ats.models.features import CompactCNN
from wsi_ats.slides import Slide, open_slide
from wsi_ats.stages import (
    SlideView,
    read_tiles,
    tiles_to_tensor,
    view_out_size,
    view_slide,
    view_tile_size,
)
from wsi_ats.synth.lesions import lesion_boxes, tile_hits
from wsi_ats.training.data import LabelledSlide, read_cohort

ROOT = Path(__file__).resolve().parents[1]
PIPELINE = ROOT / "pipelines" / "baselines.toml"
ENCODERS = ("random", "tile-supervised")
READ_CHUNK = 1024  # tiles read from the slide at a time (row-major, so stored tiles decode once)


# ------------------------------------------------------------------------------------------------
# the dense tissue grid
def tile_size_level0(config: PipelineConfig, view: SlideView) -> tuple[int, int]:
    """``(w, h)`` level-0 px covered by one tile: its size at the read level
    (:func:`~wsi_ats.stages.view_tile_size`) x the read level's downsample."""
    w, h = view_tile_size(view, config)
    return round(w * view.read_downsample), round(h * view.read_downsample)


def read_view_tiles(
    handle: Slide, view: SlideView, config: PipelineConfig, locations: np.ndarray
) -> np.ndarray:
    """Tiles at level-0 ``locations`` read as the pipeline reads them: at the view's read level,
    :func:`~wsi_ats.stages.view_tile_size` px, resized to the spec's tile size where the level's
    resolution differs (physical specs)."""
    size = view_tile_size(view, config)
    return read_tiles(handle, locations, view.read_level, size, view_out_size(view))


def tissue_tile_grid(view: SlideView, tile_size_level0: tuple[int, int]) -> np.ndarray:
    """``int64[K, 2]`` level-0 ``(x, y)`` top-left corners, row-major, of the non-overlapping tiles
    of a grid starting at 0 with step = the tile size, that lie wholly in the slide and whose
    centre is tissue in ``view.mask`` (mapped with ``view.scale``)."""
    tw, th = (int(v) for v in tile_size_level0)
    h0, w0 = view.level0_size
    sy, sx = view.scale
    mh, mw = view.mask.shape
    xs = np.arange(0, w0 - tw + 1, tw, dtype=np.int64)
    ys = np.arange(0, h0 - th + 1, th, dtype=np.int64)
    yy, xx = np.meshgrid(ys, xs, indexing="ij")  # row-major: y outer, x inner
    rows = np.floor((yy + th / 2) / sy).astype(np.int64)
    cols = np.floor((xx + tw / 2) / sx).astype(np.int64)
    inside = (rows >= 0) & (rows < mh) & (cols >= 0) & (cols < mw)
    keep = np.zeros_like(inside)
    keep[inside] = view.mask[rows[inside], cols[inside]]
    return np.stack([xx[keep], yy[keep]], axis=1).astype(np.int64).reshape(-1, 2)


# ------------------------------------------------------------------------------------------------
# frozen encoders
class FrozenEncoder(nn.Module):
    """A feature network ``[n, 3, p, p]`` in ``[0, 1]`` -> ``[n, D]`` that is never trained again.

    ``kind`` names how it was made and ``tag`` fingerprints its weights' recipe (the bag cache
    checks it).
    """

    def __init__(self, net: nn.Module, kind: str, tag: str, dim: int) -> None:
        super().__init__()
        self.net = net
        self.kind = kind
        self.tag = tag
        self.dim = dim
        freeze(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def train(self, mode: bool = True) -> FrozenEncoder:
        """Always stays in eval mode (frozen)."""
        return super().train(False)


def freeze(module: nn.Module) -> nn.Module:
    """Eval mode and ``requires_grad_(False)`` on every parameter; returns ``module``."""
    module.requires_grad_(False)
    nn.Module.train(module, False)
    return module


def encoder_tag(
    kind: str, config: PipelineConfig, seed: int, train_ids: Sequence[str] = (), epochs: int = 0
) -> str:
    """A short string that changes whenever the encoder's recipe (and so its features) changes."""
    recipe = {
        "kind": kind,
        "features": [config.features.width, config.features.dim],
        "tiles": [config.slide.read_level, config.slide.patch_size, config.slide.lowres_size],
        "seed": seed,
    }
    if config.slide.physical:  # tiles placed in microns (pixel specs keep their cached bags)
        recipe["tiles"] += [config.slide.tile_mpp, config.slide.tile_size, config.slide.lowres_mpp]
    if kind == "tile-supervised":
        recipe.update(train=sorted(train_ids), epochs=epochs)
    digest = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()[:12]
    return f"{kind}-{digest}"


def seeded_cnn(config: PipelineConfig, seed: int) -> CompactCNN:
    """A :class:`CompactCNN` (``features.width``, ``features.dim``) initialised from ``seed`` only
    (the global torch RNG is left as it was)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return CompactCNN(config.features.width, config.features.dim)


def random_encoder(config: PipelineConfig, seed: int = 0) -> FrozenEncoder:
    """Random features: a :class:`CompactCNN` with seeded random weights, frozen as initialised.

    Weights: PyTorch's default initialisation under ``torch.manual_seed(seed)``; nothing trained,
    nothing downloaded.
    """
    net = seeded_cnn(config, seed)
    return FrozenEncoder(net, "random", encoder_tag("random", config, seed), config.features.dim)


def lesion_tile_set(
    slides: Sequence[LabelledSlide],
    config: PipelineConfig,
    boxes: dict[str, np.ndarray],
    benign: dict[str, np.ndarray],
    seed: int,
    per_box: int = 8,
    max_positives: int = 4096,
) -> tuple[np.ndarray, np.ndarray]:
    """Tiles ``uint8[n, p, p, 3]`` and labels ``float32[n]`` (1 = lesion) from ``slides``.

    Positives: every grid tile whose centre lies in a malignant box, plus ``per_box`` tiles centred
    in each box (its centre, then random points), so that lesions the grid straddles count too.
    Negatives, as many (at least 32): up to half centred in benign spots (hard negatives), the rest
    random tissue tiles of the grid off the lesions, spread evenly over the slides.
    """
    rng = np.random.default_rng(seed)
    empty = np.zeros((0, 4))
    parts = []  # (view, positives, benign-spot tiles, other tissue tiles) per slide
    for s in slides:
        view = view_slide(s.path, config, s.slide_id)
        size0 = tile_size_level0(config, view)
        grid = tissue_tile_grid(view, size0)
        mal = boxes.get(s.slide_id, empty)
        hit = tile_hits(grid, size0, mal)
        pos = np.concatenate([grid[hit], box_centred(mal, size0, view, rng, per_box)])
        ben = box_centred(benign.get(s.slide_id, empty), size0, view, rng, per_box)
        parts.append((view, pos, ben, grid[~hit]))
    n_pos = sum(len(p) for _, p, _, _ in parts)
    if n_pos == 0:
        raise ValueError("no lesion tiles in the training slides (check the ground truth)")
    keep_pos = min(1.0, max_positives / n_pos)
    n_neg = max(round(n_pos * keep_pos), 32)
    n_ben_all = sum(len(b) for _, _, b, _ in parts)
    keep_ben = min(n_neg // 2, n_ben_all) / max(n_ben_all, 1)
    per_slide_other = math.ceil((n_neg - round(n_ben_all * keep_ben)) / len(parts))
    tiles, labels = [], []
    for view, pos, ben, other in parts:
        pos = subsample(pos, round(len(pos) * keep_pos), rng)
        neg = np.concatenate(
            [
                subsample(ben, round(len(ben) * keep_ben), rng),
                subsample(other, per_slide_other, rng),
            ]
        )
        locs = np.concatenate([pos, neg]).astype(np.int64).reshape(-1, 2)
        if len(locs):
            with open_slide(view.path) as handle:
                tiles.append(read_view_tiles(handle, view, config, locs))
            labels.append(np.r_[np.ones(len(pos)), np.zeros(len(neg))].astype(np.float32))
    return np.concatenate(tiles), np.concatenate(labels)


def box_centred(
    boxes: np.ndarray,
    size0: tuple[int, int],
    view: SlideView,
    rng: np.random.Generator | None = None,
    per_box: int = 1,
) -> np.ndarray:
    """``int64[k * per_box, 2]`` top-left of tiles centred in each box ``(x, y, w, h)``, kept in the
    slide: the first on the box's centre, the others (with ``rng``) on uniform points of the box."""
    if boxes.size == 0:
        return np.zeros((0, 2), dtype=np.int64)
    h0, w0 = view.level0_size
    frac = np.full((len(boxes), per_box, 2), 0.5)
    if rng is not None and per_box > 1:
        frac[:, 1:] = rng.uniform(0.0, 1.0, size=(len(boxes), per_box - 1, 2))
    x = boxes[:, None, 0] + frac[..., 0] * boxes[:, None, 2] - size0[0] / 2
    y = boxes[:, None, 1] + frac[..., 1] * boxes[:, None, 3] - size0[1] / 2
    x = np.clip(np.round(x), 0, max(w0 - size0[0], 0))
    y = np.clip(np.round(y), 0, max(h0 - size0[1], 0))
    return np.stack([x, y], axis=-1).astype(np.int64).reshape(-1, 2)


def subsample(locs: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """At most ``n`` rows of ``locs``, drawn without replacement (all of them when fewer)."""
    if len(locs) <= n:
        return locs.reshape(-1, 2)
    return locs[np.sort(rng.choice(len(locs), size=n, replace=False))]


def augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """A random flip and 90-degree rotation of a batch ``[n, 3, p, p]`` (one draw per batch)."""
    k, flip = torch.randint(0, 4, (2,), generator=gen).tolist()
    x = torch.rot90(x, k, dims=(2, 3))
    return torch.flip(x, dims=(3,)) if flip % 2 else x


def fit_tile_classifier(
    net: nn.Module,
    tiles: np.ndarray,
    labels: np.ndarray,
    dim: int,
    epochs: int,
    seed: int,
    batch_size: int = 64,
    lr: float = 1e-3,
    min_steps: int = 25,
) -> list[float]:
    """Train ``net`` plus a temporary ``Linear(dim, 1)`` (Adam, BCE) on tiles with balanced batches
    (half lesion, half not, drawn with replacement, randomly flipped and rotated); an epoch is
    ``max(min_steps, n / batch_size)`` steps. Returns the mean loss of each epoch."""
    gen = torch.Generator().manual_seed(seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        probe = nn.Linear(dim, 1)
    params = list(net.parameters()) + list(probe.parameters())
    opt = torch.optim.Adam(params, lr=lr)
    pos = torch.from_numpy(np.flatnonzero(labels > 0.5))
    neg = torch.from_numpy(np.flatnonzero(labels <= 0.5))
    steps = max(min_steps, math.ceil(len(labels) / batch_size))
    half = batch_size // 2
    net.train()
    losses = []
    for _ in range(epochs):
        total = 0.0
        for _ in range(steps):
            idx = torch.cat(
                [
                    pos[torch.randint(len(pos), (half,), generator=gen)],
                    neg[torch.randint(len(neg), (batch_size - half,), generator=gen)],
                ]
            ).numpy()
            x = augment(tiles_to_tensor(tiles[idx], torch.device("cpu")), gen)
            y = torch.from_numpy(labels[idx])
            loss = nn.functional.binary_cross_entropy_with_logits(probe(net(x))[:, 0], y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item()
        losses.append(total / steps)
    return losses


def tile_supervised_encoder(
    config: PipelineConfig,
    train_slides: Sequence[LabelledSlide],
    ground_truth: str | Path,
    seed: int = 0,
    epochs: int = 4,
) -> FrozenEncoder:
    """A :class:`CompactCNN` trained to tell lesion tiles from others, then frozen.

    Weights: seeded random initialisation, then Adam on tiles of the TRAIN slides only, labelled
    from the ground-truth lesion boxes of a synthetic cohort (``ground_truth.json``): every lesion
    tile, and about as many non-lesion tissue tiles (some centred on benign spots), in balanced
    batches, through a temporary linear layer that is dropped afterwards. This stands in for a
    strong pretrained pathology encoder (none can be downloaded here): it has SEEN lesion
    annotations, which attention sampling never gets (it learns from slide labels only), so it is
    an optimistic, upper-bound baseline rather than a like-for-like one.
    """
    train_slides = [s for s in train_slides if s.split == "train"]
    if not train_slides:
        raise ValueError("the tile-supervised encoder needs slides of the 'train' split")
    boxes = lesion_boxes(ground_truth)
    benign = lesion_boxes(ground_truth, kinds=("benign",))
    tiles, labels = lesion_tile_set(train_slides, config, boxes, benign, seed)
    net = seeded_cnn(config, seed)
    fit_tile_classifier(net, tiles, labels, config.features.dim, epochs, seed)
    tag = encoder_tag(
        "tile-supervised", config, seed, [s.slide_id for s in train_slides], epochs=epochs
    )
    return FrozenEncoder(net, "tile-supervised", tag, config.features.dim)


def build_encoder(
    kind: str,
    config: PipelineConfig,
    train_slides: Sequence[LabelledSlide] = (),
    ground_truth: str | Path | None = None,
    seed: int = 0,
    epochs: int = 4,
) -> FrozenEncoder:
    """The frozen encoder ``kind`` (``"random"`` or ``"tile-supervised"``); the latter needs the
    train slides and the cohort's ``ground_truth.json``. No weights are downloaded."""
    if kind == "random":
        return random_encoder(config, seed)
    if kind == "tile-supervised":
        if ground_truth is None:
            raise ValueError("the tile-supervised encoder needs --ground-truth")
        return tile_supervised_encoder(config, train_slides, ground_truth, seed, epochs)
    raise ValueError(f"unknown encoder {kind!r}; expected one of {ENCODERS}")


# ------------------------------------------------------------------------------------------------
# bags of features
@dataclass
class Bag:
    """Every tissue tile of one slide through the frozen encoder."""

    slide_id: str
    label: int
    features: np.ndarray  # float32[K, D]
    locations: np.ndarray  # int64[K, 2] level-0 (x, y) top-left
    seconds: float  # wall time from the slide file to the features


def encode_tiles(encoder: nn.Module, tiles: np.ndarray, batch_size: int) -> np.ndarray:
    """``float32[n, D]`` features of ``uint8[n, p, p, 3]`` tiles, in batches, without gradients."""
    device = next(encoder.parameters()).device
    out = []
    with torch.no_grad():
        for start in range(0, len(tiles), batch_size):
            x = tiles_to_tensor(tiles[start : start + batch_size], device)
            out.append(encoder(x).float().cpu())
    return torch.cat(out).numpy() if out else np.zeros((0, 0), dtype=np.float32)


def extract_bag(
    slide: LabelledSlide, config: PipelineConfig, encoder: nn.Module, batch_size: int = 256
) -> Bag:
    """The slide's :class:`Bag`, end to end from the slide file (timed): low-res view and tissue
    mask, dense grid, tiles read in row-major chunks, encoded in batches."""
    t0 = time.perf_counter()
    view = view_slide(slide.path, config, slide.slide_id)
    locs = tissue_tile_grid(view, tile_size_level0(config, view))
    dim = int(getattr(encoder, "dim", config.features.dim))
    parts = []
    with open_slide(slide.path) as handle:
        for start in range(0, len(locs), READ_CHUNK):
            tiles = read_view_tiles(handle, view, config, locs[start : start + READ_CHUNK])
            parts.append(encode_tiles(encoder, tiles, batch_size))
    feats = np.concatenate(parts) if parts else np.zeros((0, dim), dtype=np.float32)
    seconds = time.perf_counter() - t0
    return Bag(slide.slide_id, slide.label, feats.astype(np.float32), locs, seconds)


def bag_cache_path(cache_dir: str | Path, slide_id: str, kind: str) -> Path:
    """Where the bag of ``slide_id`` through encoder ``kind`` is cached."""
    return Path(cache_dir) / f"{slide_id}.{kind}.npz"


def load_bag(path: Path, slide: LabelledSlide, tag: str) -> Bag | None:
    """The cached bag at ``path``, or ``None`` when absent or made by another encoder recipe."""
    if not path.exists():
        return None
    with np.load(path) as data:
        if str(data["tag"]) != tag:
            return None
        return Bag(
            slide.slide_id,
            slide.label,
            data["features"].astype(np.float32),
            data["locations"].astype(np.int64),
            float(data["seconds"]),
        )


def save_bag(path: Path, bag: Bag, tag: str) -> None:
    """Write ``bag`` to ``path`` (``.npz``: features, locations, seconds, tag), atomically."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(
        tmp,
        features=bag.features,
        locations=bag.locations,
        seconds=np.float64(bag.seconds),
        tag=np.str_(tag),
    )
    tmp.replace(path)


def extract_bags(
    slides: Sequence[LabelledSlide],
    config: PipelineConfig,
    encoder: FrozenEncoder | None,
    cache_dir: str | Path | None = None,
    kind: str | None = None,
    tag: str | None = None,
) -> list[Bag]:
    """Bags of ``slides``; with ``cache_dir``, each is read from / written to
    ``<slide_id>.<kind>.npz`` (reused only when its ``tag`` matches the encoder's). ``encoder`` may
    be ``None`` when every bag is cached (then ``kind`` and ``tag`` must be given)."""
    kind = kind or getattr(encoder, "kind", "encoder")
    tag = tag or getattr(encoder, "tag", kind)
    bags = []
    for s in slides:
        path = None if cache_dir is None else bag_cache_path(cache_dir, s.slide_id, kind)
        bag = None if path is None else load_bag(path, s, tag)
        if bag is None:
            if encoder is None:
                raise ValueError(f"bag of {s.slide_id!r} is not cached and no encoder was given")
            bag = extract_bag(s, config, encoder, config.predict.tile_batch_size)
            if path is not None:
                save_bag(path, bag, tag)
        bags.append(bag)
    return bags


# ------------------------------------------------------------------------------------------------
# the gated-attention MIL head
class GatedAttentionMIL(nn.Module):
    """Gated attention MIL (Ilse et al. 2018) as in CLAM's single-branch head.

    ``h_k = ReLU(W f_k)`` (dropout), ``a = softmax_k(w^T (tanh(V h_k) * sigmoid(U h_k)))``,
    ``z = sum_k a_k h_k``, logit ``= Linear(z)``.
    """

    def __init__(
        self, dim: int, hidden: int = 128, attention_dim: int = 128, dropout: float = 0.25
    ) -> None:
        super().__init__()
        self.embed = nn.Sequential(nn.Linear(dim, hidden), nn.ReLU(), nn.Dropout(dropout))
        self.attention_v = nn.Linear(hidden, attention_dim)
        self.attention_u = nn.Linear(hidden, attention_dim)
        self.attention_w = nn.Linear(attention_dim, 1)
        self.classifier = nn.Linear(hidden, 1)
        self.hidden = hidden

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``features [K, D]`` -> ``(logit [], attention [K])``; an empty bag gives ``z = 0``."""
        h = self.embed(features)  # [K, hidden]
        gate = torch.tanh(self.attention_v(h)) * torch.sigmoid(self.attention_u(h))
        scores = self.attention_w(gate)[:, 0]  # [K]
        if scores.numel() == 0:
            return self.classifier(h.new_zeros(self.hidden))[0], scores
        attention = torch.softmax(scores, dim=0)
        z = attention @ h  # [hidden]
        return self.classifier(z)[0], attention


def nan_safe_auc(labels: Sequence[int], probs: Sequence[float]) -> float:
    """ROC AUC, or NaN when only one class is present."""
    if len(set(int(v) for v in labels)) < 2:
        return float("nan")
    return float(roc_auc_score(labels, probs))


def bag_tensor(bag: Bag) -> torch.Tensor:
    """The bag's features as a float32 tensor ``[K, D]``."""
    return torch.from_numpy(np.ascontiguousarray(bag.features, dtype=np.float32))


def predict_mil(model: GatedAttentionMIL, bags: Sequence[Bag]) -> list[float]:
    """Positive-class probability of each bag (eval mode, no gradients)."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            return [float(torch.sigmoid(model(bag_tensor(b))[0])) for b in bags]
    finally:
        model.train(was_training)


def mean_bce(labels: Sequence[int], probs: Sequence[float]) -> float:
    """Mean binary cross-entropy of probabilities (clipped away from 0 and 1)."""
    p = np.clip(np.asarray(probs, dtype=np.float64), 1e-7, 1 - 1e-7)
    y = np.asarray(labels, dtype=np.float64)
    return float(-(y * np.log(p) + (1 - y) * np.log(1 - p)).mean()) if len(y) else float("nan")


def train_mil(
    train_bags: Sequence[Bag],
    val_bags: Sequence[Bag],
    epochs: int = 20,
    lr: float = 2e-4,
    weight_decay: float = 1e-5,
    seed: int = 0,
) -> tuple[GatedAttentionMIL, float, list[dict]]:
    """Train a :class:`GatedAttentionMIL` one bag per Adam step (bags shuffled each epoch, seeded),
    BCE with logits; returns the weights of the best validation AUC (ties: lower validation loss),
    that AUC, and one history row per epoch."""
    if not train_bags:
        raise ValueError("no training bags")
    dim = int(train_bags[0].features.shape[1])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = GatedAttentionMIL(dim)
        opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
        rng = np.random.default_rng(seed)
        xs = [bag_tensor(b) for b in train_bags]
        ys = [torch.tensor(float(b.label)) for b in train_bags]
        val_labels = [b.label for b in val_bags]
        best: tuple[float, float] | None = None
        best_auc, best_state, history = float("nan"), None, []
        for epoch in range(1, epochs + 1):
            model.train()
            total = 0.0
            for i in rng.permutation(len(xs)):
                logit, _ = model(xs[i])
                loss = nn.functional.binary_cross_entropy_with_logits(logit, ys[i])
                opt.zero_grad()
                loss.backward()
                opt.step()
                total += loss.item()
            probs = predict_mil(model, val_bags)
            auc, val_loss = nan_safe_auc(val_labels, probs), mean_bce(val_labels, probs)
            history.append(
                {
                    "epoch": epoch,
                    "train_loss": total / len(xs),
                    "val_auc": auc,
                    "val_loss": val_loss,
                }
            )
            score = (auc if math.isfinite(auc) else -math.inf, -val_loss)
            if best is None or score > best:
                best, best_auc = score, auc
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return model, best_auc, history


# ------------------------------------------------------------------------------------------------
# command line
def log(msg: str) -> None:
    """A timestamped progress line on stderr."""
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """The command-line options."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--manifest", type=Path, required=True, help="cohort manifest (train/val/test)")
    ap.add_argument("--pipeline", type=Path, default=PIPELINE, help="pipeline TOML (tiles, dims)")
    ap.add_argument("--encoder", choices=ENCODERS, default="random", help="frozen encoder")
    ap.add_argument("--ground-truth", type=Path, help="ground_truth.json (tile-supervised)")
    ap.add_argument("--epochs", type=int, default=20, help="MIL head epochs (default 20)")
    ap.add_argument("--encoder-epochs", type=int, default=4, help="tile-supervised epochs")
    ap.add_argument("--cache", type=Path, help="folder caching the bags (.npz)")
    ap.add_argument("--seed", type=int, default=0, help="seeds the encoder and the head")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    """Bags of every split, head trained on train and selected on val; prints the test figures."""
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    config = PipelineConfig.from_toml(args.pipeline)
    slides = read_cohort(args.manifest)
    splits = {name: [s for s in slides if s.split == name] for name in ("train", "val", "test")}
    if not splits["train"] or not splits["test"]:
        raise SystemExit("the manifest needs 'train' and 'test' rows ('val' selects the epoch)")
    gt = args.ground_truth
    if gt is None and (args.manifest.parent / "ground_truth.json").exists():
        gt = args.manifest.parent / "ground_truth.json"
    train_ids = [s.slide_id for s in splits["train"]]
    tag = encoder_tag(args.encoder, config, args.seed, train_ids, args.encoder_epochs)
    everything = splits["train"] + splits["val"] + splits["test"]
    cached = args.cache is not None and all(
        load_bag(bag_cache_path(args.cache, s.slide_id, args.encoder), s, tag) is not None
        for s in everything
    )
    t0 = time.perf_counter()
    encoder = None
    if not cached:
        log(f"building the {args.encoder} encoder")
        encoder = build_encoder(
            args.encoder, config, splits["train"], gt, args.seed, args.encoder_epochs
        )
    t_encoder = time.perf_counter() - t0
    bags = {}
    for name, part in splits.items():
        log(f"bags of {len(part)} {name} slides")
        bags[name] = extract_bags(part, config, encoder, args.cache, args.encoder, tag)
    model, val_auc, history = train_mil(
        bags["train"], bags["val"] or bags["train"], epochs=args.epochs, seed=args.seed
    )
    head_seconds, probs = [], []
    for bag in bags["test"]:
        t1 = time.perf_counter()
        probs.extend(predict_mil(model, [bag]))
        head_seconds.append(time.perf_counter() - t1)
    test = bags["test"]
    auc = nan_safe_auc([b.label for b in test], probs)
    extract_s = float(np.mean([b.seconds for b in test]))
    best_epoch = max(
        history,
        key=lambda r: (r["val_auc"] if math.isfinite(r["val_auc"]) else -math.inf, -r["val_loss"]),
    )["epoch"]
    p = config.slide.patch_size
    lines = [
        f"# benchmarks/clam_style.py --encoder {args.encoder} --manifest {args.manifest}",
        f"# pipeline {args.pipeline}: tiles {p} px at level {config.slide.read_level}, "
        f"non-overlapping grid over tissue; CompactCNN width {config.features.width}, "
        f"dim {config.features.dim}, frozen ({tag}); gated-attention MIL head, {args.epochs} "
        f"epochs, one bag per step",
        f"slides: train {len(bags['train'])}, val {len(bags['val'])}, test {len(test)}"
        + ("" if bags["val"] else " (no val rows: the epoch is selected on train)"),
        f"best validation AUC: {val_auc:.3f} (epoch {best_epoch})",
        f"test AUC: {auc:.3f}",
        f"seconds per slide (test, end to end): {extract_s + float(np.mean(head_seconds)):.3f} "
        f"(feature extraction {extract_s:.3f}, head {float(np.mean(head_seconds)):.4f})",
        f"tiles per slide (test): {float(np.mean([len(b.features) for b in test])):.1f}",
        "encoder: "
        + (
            "bags from cache (seconds as measured then)"
            if cached
            else f"built in {t_encoder:.1f} s"
        ),
    ]
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
