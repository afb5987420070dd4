"""One optimiser step of attention sampling over a batch of slides, with tile reads overlapped.

Exactness of the prefetch. The weights change only at the optimiser step, after every slide of the
batch. So, at the start of a step, the attention of every slide of the batch is computed (no grad),
its ``N`` cells are drawn (:func:`wsi_ats.core.draw`, from the attention or its mixture with the
exploration measure: even over the slide's appearance strata, or uniform over tissue) and their tile reads are submitted to the background pool at once. Then, slide
by slide, the attention is recomputed *with* gradients (same weights, same input: the same
distribution the cells were drawn from) and :func:`wsi_ats.core.estimate` gathers it at the drawn
cells and forms the unbiased estimate; the tiles are awaited and the feature net, the head and the
losses run. Reads of slides ``j+1..B`` therefore overlap the compute of slide ``j``, and no stale
weights are ever used to draw. Each slide is its own forward pass (low-res views differ in size);
gradients are accumulated over the batch (loss / B each).

The loss of a slide (weights in ``[train]`` of the pipeline spec):

* BCE of the slide logit ``head(estimate)`` against the label, minus ``entropy_coef`` x the
  attention's entropy; the attention gradient uses the control variate ``control_variate``;
* ``instance_coef`` x the top-``k`` instance loss on the sampled tiles' logits
  ``instance_head(f_i)`` (``k = 0``: every tile carries the slide's label); with
  ``instance_memory > 0`` instead, once a step, the naive-MIL loss on a minibatch of recent slides'
  tiles (:class:`~wsi_ats.training.replay.TileMemory`);
* ``distill_coef`` x attention distillation towards the (stop-gradient) evidence of the sampled
  tiles (:func:`wsi_ats.core.instance_evidence`): ``"distribution"`` fits the softmax over every
  cell to where evidence was found (:func:`wsi_ats.core.evidence_likelihood_loss`, weights
  ``1 / (K q)``); ``"odds"`` fits each sampled cell's logit by BCE. The attention learns which
  low-res appearance is worth reading.
"""

from __future__ import annotations

from concurrent.futures import Future
from dataclasses import dataclass

import numpy as np
import torch

from wsi_ats.core import (
    Draw,
    attention_distillation_loss,
    draw,
    estimate,
    evidence_likelihood_loss,
    exploration_proposal,
    instance_evidence,
    multinomial_entropy,
    topk_instance_loss,
)
from wsi_ats.models import SlideClassifier, StratumAttention
from wsi_ats.models.features import tile_keys
from wsi_ats.stages import (
    SlideView,
    cells_to_locations,
    effective_replace,
    tiles_to_tensor,
    view_out_size,
    view_tensors,
    view_tile_size,
)
from wsi_ats.training.augment import augment_tiles
from wsi_ats.training.contrast import StratumContrast
from wsi_ats.training.data import LabelledSlide, SlideStore
from wsi_ats.training.replay import TileMemory


@dataclass
class SlidePlan:
    """Cells drawn for one slide and the pending read of their tiles."""

    slide: LabelledSlide
    view: SlideView
    drawn: Draw  # indices [1, N] into the flattened attention map, their proposal probabilities
    tiles: Future  # Future[uint8[N, h, w, 3]]
    exploration: torch.Tensor  # [1, N] the exploration measure at the drawn cells
    tile_keys: list | None = None  # one cache key per tile (features.cache_tiles), else None
    strata: torch.Tensor | None = None  # [1, mh * mw] each cell's stratum (StratumAttention)


@dataclass
class StepStats:
    loss: float  # mean classification loss (BCE) over the batch
    entropy: float  # mean attention entropy (nats)
    tiles: int  # tiles pushed through the feature net
    probabilities: list[float]
    labels: list[int]
    instance_loss: float = 0.0  # mean top-k instance loss (0 when off)
    distill_loss: float = 0.0  # mean attention-distillation loss (0 when off)


@dataclass
class StepSettings:
    """What varies from epoch to epoch: the number of tiles drawn, the exploration share and
    whether the attention network is updated (not during ``train.attention_warmup``)."""

    n_patches: int
    explore: float = 0.0
    learn_attention: bool = True


class RunningMean:
    """Exponential running mean of the pooled slide features (no gradient): the ``"mean"``
    baseline of the attention gradient, independent of the draws it is used with."""

    def __init__(self, momentum: float = 0.9) -> None:
        self.momentum = momentum
        self.value: torch.Tensor | None = None

    def update(self, pooled: torch.Tensor) -> None:
        x = pooled.detach().reshape(-1).float().cpu()
        self.value = (
            x if self.value is None else self.momentum * self.value + (1 - self.momentum) * x
        )

    def state(self) -> torch.Tensor | None:
        return None if self.value is None else self.value.clone()

    def load(self, value: torch.Tensor | None) -> None:
        self.value = None if value is None else value.detach().float().cpu().clone()


class TileScores:
    """The instance logits of the last ``size`` tiles read on slides of one label (no gradient),
    with their importance weights: the reference of a tile's evidence.

    Why a high quantile (0.999 by default), not 0.95: the distribution fit puts attention mass in
    proportion to the evidence summed over cells, and tissue has ~1000 times more cells than the
    findings; 5% of tissue tiles as weak false evidence outweighed the lesions and flattened an
    attention that had found them (dev cohort, seeds 1 and 2, epochs 9-10).

    A tile counts as evidence (:func:`wsi_ats.core.instance_evidence`) only where its odds exceed
    :meth:`reference`, a high quantile of these: what slides without the finding already show. With
    the fixed prior odds 1/2 instead, an instance head whose bias sits above 0 (half the random
    initialisations) calls every tile evidence, and distillation then pulls the attention towards
    whatever the head happens to score highest before it has learnt anything.

    The tiles were drawn from the training proposal, which follows the attention: once the
    attention has found the lesions' look-alikes, most tiles read on negative slides are
    look-alikes, and a quantile of them says what the look-alikes score, not what the slides
    show (a biased reference whose bias follows the attention). So each logit carries its
    importance weight ``u / q`` (``u`` uniform over the slide's tissue, ``q`` the proposal it was
    drawn from) and the reference is the weighted quantile: what a uniform look at negative slides
    would show."""

    def __init__(self, size: int = 4096) -> None:
        self.size = size
        self.values = torch.empty(0)
        self.weights = torch.empty(0)

    def update(self, instance_logits: torch.Tensor, weights: torch.Tensor | None = None) -> None:
        """Keep ``instance_logits`` (any shape) with their importance ``weights`` (same shape;
        default 1), dropping the oldest beyond ``size``."""
        x = instance_logits.detach().reshape(-1).float().cpu()
        w = torch.ones_like(x) if weights is None else weights.detach().reshape(-1).float().cpu()
        if w.shape != x.shape:
            raise ValueError(f"weights {tuple(w.shape)} do not match the logits {tuple(x.shape)}")
        self.values = torch.cat([self.values, x])[-self.size :]
        self.weights = torch.cat([self.weights, w])[-self.size :]

    def reference(self, quantile: float, minimum: int = 64) -> float | None:
        """The weighted ``quantile`` of the stored logits (the smallest value whose share of the
        weight at or below it reaches ``quantile``); ``None`` while fewer than ``minimum`` are held."""
        held = self._sorted(minimum)
        if held is None:
            return None
        values, weights = held
        cumulative = torch.cumsum(weights, 0)
        i = int(torch.searchsorted(cumulative, quantile * cumulative[-1]))
        return float(values[min(i, len(values) - 1)])

    def tail_share(self, logits: torch.Tensor, minimum: int = 64) -> torch.Tensor | None:
        """The weighted share of the stored logits at or above each of ``logits`` (any shape):
        what share of a uniform look at the slides scores that high; ``None`` while fewer than
        ``minimum`` are held."""
        held = self._sorted(minimum)
        if held is None:
            return None
        values, weights = held
        above = torch.flip(torch.cumsum(torch.flip(weights, [0]), 0), [0])
        above = torch.cat([above, above.new_zeros(1)]) / above[0]  # share at or above values[i]
        i = torch.searchsorted(values, logits.detach().reshape(-1).float().cpu(), side="left")
        return above[i].reshape(logits.shape).to(logits.device, torch.float32)

    def _sorted(self, minimum: int) -> tuple[torch.Tensor, torch.Tensor] | None:
        """The stored logits in ascending order and their weights (float64); ``None`` while
        fewer than ``minimum`` are held."""
        if self.values.numel() < minimum:
            return None
        order = torch.argsort(self.values)
        return self.values[order], self.weights[order].double()

    def state(self) -> torch.Tensor:
        """``[2, n]``: the logits and their weights."""
        return torch.stack([self.values, self.weights]).clone()

    def load(self, state: torch.Tensor | None) -> None:
        """Restore :meth:`state` (a 1-D tensor, as saved before the weights: weights 1)."""
        if state is None:
            state = torch.empty(0)
        state = state.detach().float().cpu()
        if state.dim() == 1:
            state = torch.stack([state, torch.ones_like(state)])
        self.values, self.weights = state[0].clone(), state[1].clone()


@dataclass
class StepState:
    """What training carries from step to step besides the weights and the optimiser state.

    - ``running_mean``: the control variate's running mean of the pooled features;
    - ``negatives``: the reference of the tiles' evidence (``train.evidence_quantile``), updated with
      the negative slides' tiles; ``positives`` (``train.evidence = "tails"`` only): the second
      reference, updated with the positive slides' tiles;
    - ``memory`` (``train.instance_memory``): every step's tiles join it, and the instance loss
      trains on a mixed minibatch of it instead of on the step's own tiles;
    - ``contrast`` (``attention.stratum_scale``): the tiles of its check slides train no instance
      loss and give it their instance probabilities by stratum; after each step it sets the
      attention's stratum logits.
    """

    running_mean: RunningMean | None = None
    negatives: TileScores | None = None
    positives: TileScores | None = None
    memory: TileMemory | None = None
    contrast: StratumContrast | None = None

    @classmethod
    def for_model(cls, model: SlideClassifier) -> StepState:
        """The state a fresh run of ``model`` starts from (what its config asks for)."""
        tc = model.config.train
        return cls(
            running_mean=RunningMean(),
            negatives=TileScores(),
            positives=TileScores() if tc.evidence == "tails" else None,
            memory=TileMemory(tc.instance_memory) if tc.instance_memory > 0 else None,
            contrast=(
                StratumContrast.for_config(model.attention_net.n_strata, tc)
                if isinstance(model.attention_net, StratumAttention)
                else None
            ),
        )

    def checkpoint(self) -> dict:
        """The entries of ``last.pt`` that restore it."""
        out = {}
        if self.memory is not None:
            out["tile_memory"] = self.memory.state()
        if self.running_mean is not None and self.running_mean.value is not None:
            out["running_mean"] = self.running_mean.state()
        if self.negatives is not None:
            out["negative_scores"] = self.negatives.state()
        if self.positives is not None:
            out["positive_scores"] = self.positives.state()
        if self.contrast is not None:
            out["stratum_contrast"] = self.contrast.state()
        return out

    def restore(self, saved: dict) -> None:
        """Load :meth:`checkpoint`'s entries from a ``last.pt`` dict (missing ones, such as the
        tile memory of a file written before it was saved: left as are). ``ValueError`` when an
        entry does not fit."""
        if self.memory is not None and saved.get("tile_memory") is not None:
            self.memory.load(saved["tile_memory"])
        if self.running_mean is not None:
            self.running_mean.load(saved.get("running_mean"))
        if self.negatives is not None:
            self.negatives.load(saved.get("negative_scores"))
        if self.positives is not None:
            self.positives.load(saved.get("positive_scores"))
        if self.contrast is not None:
            self.contrast.load(saved.get("stratum_contrast"))


def tile_evidence(
    instance_logits: torch.Tensor,
    quantile: float,
    negatives: TileScores | None,
    positives: TileScores | None = None,
) -> torch.Tensor:
    """Stop-gradient evidence of the sampled tiles: odds against the prior 1/2 (``quantile`` 0), or
    against the ``quantile`` of recent negative slides' tiles (none yet: no evidence).

    With ``positives`` (``train.evidence = "tails"``) instead: ``1 - T_neg(s) / T_pos(s)``, ``T``
    the weighted share of negative or positive slides' tiles scoring ``s`` or more. Of the
    positive slides' tissue that scores at least as high as the tile, the share that negative
    slides do not show: ~1 above every negative tile, ~0 where both labels' tiles score alike,
    whatever the instance head's bias and scale."""
    if positives is not None and negatives is not None:
        t_neg = negatives.tail_share(instance_logits)
        t_pos = positives.tail_share(instance_logits)
        if t_neg is None or t_pos is None:
            return torch.zeros_like(instance_logits).detach()
        ratio = t_neg / t_pos.clamp_min(torch.finfo(torch.float32).tiny)
        return (1 - ratio).clamp_min(0).where(t_pos > 0, 0.0).to(instance_logits.dtype)
    if quantile <= 0 or negatives is None:
        return instance_evidence(instance_logits)
    ref = negatives.reference(quantile)
    if ref is None:
        return torch.zeros_like(instance_logits).detach()
    return instance_evidence(instance_logits, reference_logit=ref)


def plan_batch(
    model: SlideClassifier,
    store: SlideStore,
    slides: list[LabelledSlide],
    generator: torch.Generator,
    settings: StepSettings | None = None,
) -> list[SlidePlan]:
    """Draw the cells of every slide with the current weights and submit their tile reads."""
    cfg = model.config
    settings = settings or StepSettings(cfg.sampling.n_patches)
    n = settings.n_patches
    plans = []
    with torch.no_grad():
        for s in slides:
            view = store.view(s)
            x, m = view_tensors(view, model.device)
            strata = store.cell_strata(s, lambda x=x: model.cell_strata(x))
            att = model.attention(x, m, strata)
            replace = effective_replace(att, n, cfg.sampling.replace)
            exploration = None
            if cfg.train.explore_strata > 0:
                e = store.exploration(s, tuple(att.shape[1:]))
                exploration = torch.from_numpy(e).to(model.device)[None]
            drawn = draw(att, n, replace, generator, settings.explore, exploration=exploration)
            e = exploration_proposal(att, 1.0, exploration=exploration)  # the measure alone
            locs = cells_to_locations(drawn.indices, tuple(att.shape[1:]), view, cfg, generator)[0]
            size, out_size = view_tile_size(view, cfg), view_out_size(view)
            fut = store.submit_tiles(view.path, locs, view.read_level, size, out_size)
            keys = None
            if cfg.features.cache_tiles > 0:  # a frozen backbone's outputs kept across steps
                keys = tile_keys(view.path, view.read_level, size + (out_size or ()), locs)
            plans.append(SlidePlan(s, view, drawn, fut, e.gather(1, drawn.indices), keys, strata))
    return plans


def parameter_groups(model: SlideClassifier) -> list[dict]:
    """Adam parameter groups: the attention network, then the feature network and the head, each
    with its own learning rate (``train.attention_lr``, ``train.lr``)."""
    tc = model.config.train
    attention = list(model.attention_net.parameters())
    ids = {id(p) for p in attention}
    rest = [p for p in model.parameters() if id(p) not in ids]
    return [
        {"params": attention, "lr": tc.attention_lr, "name": "attention"},
        {"params": rest, "lr": tc.lr, "name": "features_head"},
    ]


def build_optimizer(model: SlideClassifier) -> torch.optim.Optimizer:
    """Adam over :func:`parameter_groups` with ``train.weight_decay``."""
    return torch.optim.Adam(parameter_groups(model), weight_decay=model.config.train.weight_decay)


def clip_gradients(model: SlideClassifier) -> None:
    """Clip the attention network's gradient norm and the rest's separately: the attention
    gradient is heavy-tailed and must not shrink the feature network's updates (or vice versa)."""
    tc = model.config.train
    groups = parameter_groups(model)
    for group, limit in zip(groups, (tc.attention_grad_clip, tc.grad_clip), strict=True):
        if limit > 0:
            torch.nn.utils.clip_grad_norm_(group["params"], limit)


def train_step(
    model: SlideClassifier,
    optimizer: torch.optim.Optimizer,
    store: SlideStore,
    slides: list[LabelledSlide],
    generator: torch.Generator,
    settings: StepSettings | None = None,
    state: StepState | None = None,
    scaler: torch.amp.GradScaler | None = None,
) -> StepStats:
    """One optimiser step on ``slides`` (the losses of the module docstring, accumulated, clipped).

    ``state``: what the run carries from step to step (:class:`StepState`; ``None``: nothing).
    ``scaler``: loss scaling for a feature network in float16 autocast (CUDA without bfloat16)."""
    state = state or StepState()
    running_mean, negatives, positives = state.running_mean, state.negatives, state.positives
    memory, contrast = state.memory, state.contrast
    tc = model.config.train
    device = model.device
    plans = plan_batch(model, store, slides, generator, settings)
    optimizer.zero_grad(set_to_none=True)
    losses, entropies, instance_losses, distill_losses, probs, labels = [], [], [], [], [], []
    n_tiles = 0
    for plan in plans:
        x, m = view_tensors(plan.view, device)
        logits = model.attention_logits(x, m, plan.strata)  # same weights and input as drawn
        att = torch.softmax(logits.reshape(1, -1), dim=1)
        read = plan.tiles.result()
        # attention.stratum_scale: half the slides check the tile classifier, never train it
        check = contrast is not None and contrast.checks(plan.slide.slide_id)
        if memory is not None and not check:
            memory.add(read, plan.slide.label)
        tiles = tiles_to_tensor(read, device)
        # the slide's own tiles train the feature net and the instance head only through the
        # slide loss (train.slide_to_features) or an instance loss on them; every other use of
        # their features is stop-gradient, so otherwise their feature pass runs without autograd
        # (the same gradients, without a backward pass through the feature net for zeros)
        own_instance_loss = tc.instance_coef > 0 and memory is None and not check
        with torch.set_grad_enabled(own_instance_loss or tc.slide_to_features != 0):
            feats = model.features(tiles, plan.tile_keys)  # [N, D]
        # the slide loss reaches the attention and the feature net scaled by
        # train.slide_to_attention and train.slide_to_features (same values forward)
        pooled = estimate(
            scale_gradient(att, tc.slide_to_attention),
            plan.drawn,
            scale_gradient(feats, tc.slide_to_features)[None],
            "loo" if tc.control_variate == "loo" else "none",
            _baseline(tc.control_variate, running_mean, device),
        )
        logit = model.classify(pooled)  # [1]
        target = torch.tensor([float(plan.slide.label)], device=device)
        bce = torch.nn.functional.binary_cross_entropy_with_logits(logit, target)
        entropy = multinomial_entropy(att).mean()
        loss = bce - tc.entropy_coef * entropy
        if tc.instance_coef > 0 or tc.distill_coef > 0:
            instance_logits = model.instance_logits(feats)[None]  # [1, N]
            tissue = int(torch.isfinite(logits).sum())
            uniform_over_q = 1.0 / (tissue * plan.drawn.proposal.to(device))  # u / q
            if check:
                cells = plan.drawn.indices.to(device)
                contrast.update(
                    plan.strata.gather(1, cells), torch.sigmoid(instance_logits), uniform_over_q,
                    plan.slide.label,
                )  # fmt: skip
            if own_instance_loss:
                inst = topk_instance_loss(
                    instance_logits, target, tc.instance_topk, tc.instance_negatives
                )
                loss = loss + tc.instance_coef * inst
                instance_losses.append(float(inst.detach()))
            if tc.distill_coef > 0:
                evidence = tile_evidence(
                    instance_logits, tc.evidence_quantile, negatives, positives
                )
                reference = negatives if plan.slide.label == 0 else positives
                if reference is not None:
                    reference.update(instance_logits, uniform_over_q)
                sampled_logits = logits.reshape(1, -1).gather(1, plan.drawn.indices.to(device))
                # fit the logits under the exploration measure e (uniform over tissue, or even
                # over appearance strata), not under the attention's own preferences: weight e / q
                weights = plan.exploration.to(device) / plan.drawn.proposal.to(device)
                if tc.distill == "odds":
                    dist = attention_distillation_loss(sampled_logits, evidence, weights)
                else:  # "distribution": the attention as a whole moves to where evidence was
                    # weights u / q, u uniform over tissue: estimates the mean of e_k log a_k
                    log_att = torch.log_softmax(logits.reshape(1, -1), dim=1)
                    sampled_log = log_att.gather(1, plan.drawn.indices.to(device))
                    dist = evidence_likelihood_loss(sampled_log, evidence, uniform_over_q)
                loss = loss + tc.distill_coef * dist
                distill_losses.append(float(dist.detach()))
        loss = loss / len(plans)
        (loss if scaler is None else scaler.scale(loss)).backward()
        if running_mean is not None:
            running_mean.update(pooled)
        losses.append(float(bce.detach()))
        entropies.append(float(entropy.detach()))
        probs.append(float(torch.sigmoid(logit.detach())[0]))
        labels.append(plan.slide.label)
        n_tiles += int(tiles.shape[0])
    if memory is not None and tc.instance_coef > 0:
        inst = replay_instance_loss(model, memory, generator)
        if inst is not None:
            weighted = tc.instance_coef * inst
            (weighted if scaler is None else scaler.scale(weighted)).backward()
            instance_losses.append(float(inst.detach()))
    if not settings.learn_attention:  # Adam skips parameters without a gradient
        for p in model.attention_net.parameters():
            p.grad = None
    if scaler is not None:
        scaler.unscale_(optimizer)  # clip the true gradients
    clip_gradients(model)
    if scaler is None:
        optimizer.step()
    else:
        scaler.step(optimizer)  # skipped when a gradient overflowed
        scaler.update()
    if contrast is not None:
        model.attention_net.set_bias(contrast.bias(model.config.attention.stratum_scale))
    return StepStats(
        float(np.mean(losses)),
        float(np.mean(entropies)),
        n_tiles,
        probs,
        labels,
        float(np.mean(instance_losses)) if instance_losses else 0.0,
        float(np.mean(distill_losses)) if distill_losses else 0.0,
    )


def replay_instance_loss(
    model: SlideClassifier, memory: TileMemory, generator: torch.Generator
) -> torch.Tensor | None:
    """Naive-MIL instance loss on ``train.instance_replay`` tiles of the memory (every tile
    towards its slide's label, half of each label; augmented with ``train.augment``); ``None``
    until the memory holds both labels."""
    batch = memory.sample(model.config.train.instance_replay, generator)
    if batch is None:
        return None
    tiles, labels = batch
    x = tiles_to_tensor(tiles, model.device)
    if model.config.train.augment:
        x = augment_tiles(x, generator)
    logits = model.instance_logits(model.features(x))
    target = torch.from_numpy(labels).to(logits)
    return torch.nn.functional.binary_cross_entropy_with_logits(logits, target)


def scale_gradient(x: torch.Tensor, weight: float) -> torch.Tensor:
    """``x`` forward; its gradient times ``weight`` backward (1: unchanged, 0: none)."""
    return x if weight == 1.0 else x * weight + x.detach() * (1.0 - weight)


def _baseline(
    kind: str, running_mean: RunningMean | None, device: torch.device
) -> torch.Tensor | None:
    """The external baseline vector for ``kind`` ("mean" and "loo" use the running mean)."""
    if kind == "none" or running_mean is None or running_mean.value is None:
        return None
    return running_mean.value.to(device)
