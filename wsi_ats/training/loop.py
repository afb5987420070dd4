"""The training loop: epochs of attention-sampling steps, validation AUC, checkpoints, resume.

Run folder layout: ``model.pt`` (best validation AUC so far), ``last.pt`` (latest epoch, with the
optimiser state, for ``--resume``), ``config.json`` and ``history.csv`` (one row per epoch).
"""

from __future__ import annotations

import csv
import hashlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

from wsi_ats.atomic import atomic_path
from wsi_ats.models import (
    CheckpointError,
    PipelineConfig,
    SlideClassifier,
    build_model,
    read_checkpoint,
    save_checkpoint,
)
from wsi_ats.models.accel import grad_scaler, resolve_device
from wsi_ats.models.checkpoint import check_state_dict
from wsi_ats.models.config import ConfigError
from wsi_ats.progress import Progress as tqdm
from wsi_ats.stages import (
    aggregate_slide,
    attention_map_size,
    sample_slide,
    tile_features,
)
from wsi_ats.training.data import LabelledSlide, SlideStore, read_cohort, split_cohort
from wsi_ats.training.step import (
    StepSettings,
    StepState,
    build_optimizer,
    train_step,
)

HISTORY_FIELDS = [
    "epoch",
    "train_loss",
    "train_auc",
    "val_loss",
    "val_auc",
    "tiles_per_s",
    "seconds",
    "n_patches",
    "explore",
    "instance_loss",
    "distill_loss",
]


#: files of a run folder; any of the first two means a run is there
RUN_FILES = ("model.pt", "last.pt", "history.csv", "config.json")
#: fields a resumed run may change: they do not alter what the epochs already run have learned
RESUMABLE_FIELDS = ("train.epochs", "train.read_workers")


class RunExistsError(ValueError):
    """``out_dir`` holds a run and neither ``resume`` nor ``overwrite`` was asked for."""


@dataclass
class TrainResult:
    run_dir: Path
    model_path: Path  # best checkpoint
    best_epoch: int
    best_val_auc: float
    epochs_done: int
    history: list[dict] = field(default_factory=list)


def epoch_seed(seed: int, epoch: int) -> int:
    """Seed of epoch ``epoch``'s shuffling and sampling (so a resumed run draws what it would have)."""
    digest = hashlib.sha256(f"train\x00{seed}\x00{epoch}".encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def epoch_settings(config: PipelineConfig, epoch: int) -> StepSettings:
    """Tiles per slide and exploration share of training epoch ``epoch`` (1-based).

    ``N`` goes geometrically from ``train.n_patches_start`` at epoch 1 to ``sampling.n_patches`` at
    epoch ``1 + train.anneal_epochs`` (more tiles while the attention knows nothing yet); ``explore``
    falls linearly from ``train.explore`` to 0 over ``train.explore_epochs`` (constant when 0); the
    attention network is only updated after the first ``train.attention_warmup`` epochs.
    """
    tc = config.train
    n, explore = exploration_schedule(
        epoch, config.sampling.n_patches, tc.n_patches_start, tc.anneal_epochs, tc.explore,
        tc.explore_epochs,
    )  # fmt: skip
    return StepSettings(n, explore, epoch > tc.attention_warmup)


def exploration_schedule(
    epoch: int,
    n_patches: int,
    n_patches_start: int,
    anneal_epochs: float,
    explore: float,
    explore_epochs: float,
) -> tuple[int, float]:
    """``(N, explore)`` of training epoch ``epoch`` (1-based): ``N`` geometric from
    ``n_patches_start`` to ``n_patches`` over ``anneal_epochs`` (no anneal when either is 0), the
    exploration share linear from ``explore`` to 0 over ``explore_epochs`` (constant when 0)."""
    n = n_patches
    if n_patches_start > 0 and anneal_epochs > 0:
        t = min(max(epoch - 1, 0) / anneal_epochs, 1.0)
        n = max(1, round(n_patches_start * (n_patches / n_patches_start) ** t))
    if explore_epochs > 0:
        explore *= max(0.0, 1.0 - max(epoch - 1, 0) / explore_epochs)
    return n, explore


def safe_auc(labels: list[int], probs: list[float]) -> float:
    """ROC AUC, or NaN when only one class is present."""
    if len(set(labels)) < 2:
        return float("nan")
    return float(roc_auc_score(labels, probs))


def bce(labels: list[int], probs: list[float]) -> float:
    p = np.clip(np.asarray(probs, dtype=np.float64), 1e-7, 1 - 1e-7)
    y = np.asarray(labels, dtype=np.float64)
    return float(-(y * np.log(p) + (1 - y) * np.log(1 - p)).mean()) if len(y) else float("nan")


def evaluate(
    model: SlideClassifier, store: SlideStore, slides: list[LabelledSlide], n_draws: int, seed: int
) -> tuple[list[float], list[int]]:
    """Probability (sigmoid of the mean logit) over ``n_draws`` draws of every slide (reads of all
    slides submitted first)."""
    cfg = model.config
    samples = [sample_slide(store.view(s), model, n_draws, seed) for s in slides]
    futures = [
        store.submit_tiles(
            smp.path, smp.locations.reshape(-1, 2), smp.read_level, smp.tile_size, smp.out_size
        )
        for smp in samples
    ]
    probs = []
    for smp, fut in zip(samples, futures, strict=True):
        feats = tile_features(model, fut.result(), cfg.predict.tile_batch_size)
        probs.append(aggregate_slide(model, smp, feats).probability)
    return probs, [s.label for s in slides]


def _better(auc: float, loss: float, best: tuple[float, float] | None) -> bool:
    score = (auc if math.isfinite(auc) else -math.inf, -loss)
    return best is None or score > best


def train(
    manifest: str | Path,
    config: PipelineConfig | None,
    out_dir: str | Path,
    resume: bool = False,
    epochs: int | None = None,
    progress: bool = True,
    overwrite: bool = False,
    device: str | torch.device | None = None,
    model: SlideClassifier | None = None,
    on_epoch: Callable[[SlideClassifier, dict], None] | None = None,
) -> TrainResult:
    """Train a :class:`SlideClassifier` on the ``train`` rows of ``manifest``; returns the result.

    Args:
        manifest: CSV ``slide_id,path,label,split``; ``val`` rows (or a held-out share of ``train``,
            see ``train.val_fraction``) give the validation AUC each epoch; ``test`` rows are unused.
        config: the pipeline; with ``resume`` it may be ``None`` (the checkpoint's is used) and must
            otherwise match the checkpoint's architecture.
        out_dir: run folder (``model.pt`` = best validation AUC, ``last.pt``, ``config.json``,
            ``history.csv``).
        resume: continue from ``out_dir/last.pt``: epochs are numbered on from where it stopped and
            the same seeds are used as an uninterrupted run. A ``config`` that differs from the
            run's in anything but :data:`RESUMABLE_FIELDS` is refused (:class:`CheckpointError`
            naming the fields), so the recorded settings are always those used.
        overwrite: start afresh in an ``out_dir`` that holds a run (its run files are removed once
            the inputs are checked); without it (or ``resume``) such a folder is refused with
            :class:`RunExistsError`.
        epochs: total number of epochs of the run (default ``config.train.epochs``); on resume, only
            the epochs after the last finished one are run.
        model: a freshly built model to train instead of ``build_model(config)`` (custom networks;
            its ``config`` replaces ``config``).
        on_epoch: called after each epoch with the model and the epoch's history row (benchmarks
            use it to follow where the attention looks); it may add keys to the row.
    """
    out_dir = Path(out_dir)
    device = resolve_device(device)  # None: $WSI_ATS_DEVICE, else cuda when there is one
    if model is not None:
        config = model.config
    if out_dir.exists() and not out_dir.is_dir():
        raise RunExistsError(f"{out_dir} is a file; --out must be a run folder")
    state = None
    if resume:
        state, config = _resume_state(out_dir / "last.pt", config)
    elif not overwrite and any((out_dir / n).exists() for n in RUN_FILES[:2]):
        raise RunExistsError(
            f"{out_dir} already holds a run (model.pt/last.pt); add --resume to continue it, "
            "--overwrite to replace it, or choose another --out"
        )
    if config is None:
        raise ValueError("a pipeline config is needed (or resume=True with an existing run)")
    tc = config.train
    total_epochs = tc.epochs if epochs is None else int(epochs)

    # on resume last.pt holds every weight: the backbone's weights file is not read
    model = (model or build_model(config, seed=tc.seed, pretrained=state is None)).to(device)
    optimizer = build_optimizer(model)
    scaler = grad_scaler(device)  # float16 autocast only (CUDA without bfloat16)
    carried = StepState.for_model(model)
    contrast = carried.contrast  # attention.stratum_scale > 0: the strata's logits follow it
    start_epoch, history, best = 1, [], None
    best_epoch, best_auc = 0, float("nan")
    if state is not None:
        last = out_dir / "last.pt"
        check_state_dict(last, model, state["state_dict"])
        model.load_state_dict(state["state_dict"])
        _restore_optimizer(last, optimizer, state.get("optimizer"))
        try:
            carried.restore(state)
        except ValueError as exc:
            raise CheckpointError(last, f"cannot restore the training state: {exc}") from None
        if scaler is not None and state.get("grad_scaler"):  # float16: the loss scale it reached
            scaler.load_state_dict(state["grad_scaler"])
        start_epoch = int(state["epoch"]) + 1
        history = list(_read_history(out_dir / "history.csv"))
        best_epoch = int(state.get("best_epoch", 0))
        best_auc = float(state.get("best_val_auc", float("nan")))
        best_loss = float(state.get("best_val_loss", math.inf))
        best = (best_auc if math.isfinite(best_auc) else -math.inf, -best_loss)

    slides = read_cohort(manifest)
    train_set, val_set = split_cohort(slides, tc.val_fraction, tc.seed)
    if overwrite and not resume:  # every input is valid: only now does the old run go
        for name in RUN_FILES:
            (out_dir / name).unlink(missing_ok=True)
    out_dir.mkdir(parents=True, exist_ok=True)
    with SlideStore(config, tc.read_workers) as store:
        if (
            tc.explore_strata > 0
            and tc.explore_scope == "cohort"
            and (tc.explore > 0 or contrast is not None)
        ):
            strata = store.fit_strata(train_set, lambda view: attention_map_size(model, view))
            if contrast is not None and state is None:  # resumed: last.pt holds them (same fit)
                model.attention_net.set_strata(strata)
        if contrast is not None:
            contrast.choose_checks([(s.slide_id, s.label) for s in train_set])
        epochs_bar = tqdm(
            total=total_epochs, initial=start_epoch - 1, desc="train", unit="epoch",
            disable=not progress,
        )  # fmt: skip
        for epoch in range(start_epoch, total_epochs + 1):
            t0 = time.perf_counter()
            row = _run_epoch(
                model, optimizer, store, train_set, val_set, epoch, total_epochs, progress,
                carried, scaler,
            )  # fmt: skip
            val_probs, val_labels = evaluate(model, store, val_set, tc.val_draws, tc.seed)
            row["val_auc"] = safe_auc(val_labels, val_probs)
            row["val_loss"] = bce(val_labels, val_probs)
            row["seconds"] = time.perf_counter() - t0
            if model.data_range is None:  # every training view is cached after an epoch
                model.data_range = store.data_range(train_set)
            if on_epoch is not None:
                on_epoch(model, row)
            history.append(row)
            epochs_bar.update(1)
            epochs_bar.set_postfix(
                loss=f"{row['train_loss']:.3f}", val_auc=f"{row['val_auc']:.3f}",
                tiles_s=f"{row['tiles_per_s']:.0f}",
            )  # fmt: skip
            if progress:
                tqdm.write(
                    f"epoch {epoch}/{total_epochs}: loss {row['train_loss']:.4f}  "
                    f"val AUC {row['val_auc']:.3f}  val loss {row['val_loss']:.4f}  "
                    f"{row['tiles_per_s']:.0f} tiles/s  {row['seconds']:.1f}s"
                )
            if _better(row["val_auc"], row["val_loss"], best):
                best = (
                    row["val_auc"] if math.isfinite(row["val_auc"]) else -math.inf,
                    -row["val_loss"],
                )
                best_epoch, best_auc = epoch, row["val_auc"]
                save_checkpoint(out_dir / "model.pt", model, epoch, val_auc=row["val_auc"])
            save_checkpoint(
                out_dir / "last.pt",
                model,
                epoch,
                optimizer=optimizer.state_dict(),
                best_epoch=best_epoch,
                best_val_auc=best_auc,
                best_val_loss=-best[1],
                **carried.checkpoint(),
                **({} if scaler is None else {"grad_scaler": scaler.state_dict()}),
            )
            _write_history(out_dir / "history.csv", history)
        epochs_bar.close()
    if not (out_dir / "model.pt").exists():  # zero epochs: keep the initial weights
        save_checkpoint(out_dir / "model.pt", model, start_epoch - 1)
    return TrainResult(
        out_dir,
        out_dir / "model.pt",
        best_epoch,
        best_auc,
        max(start_epoch - 1, total_epochs),
        history,
    )


def _resume_state(last: Path, config: PipelineConfig | None) -> tuple[dict, PipelineConfig]:
    """The checkpoint ``last`` and the config to continue with: the run's own, with only
    :data:`RESUMABLE_FIELDS` taken from ``config``; any other difference is refused."""
    if not last.is_file():
        raise CheckpointError(last, "no last.pt to resume from; run without --resume to start")
    state = read_checkpoint(last)
    try:
        saved = PipelineConfig.from_saved(state["config"])
    except ConfigError as exc:
        raise CheckpointError(last, f"its config is not valid here: {exc}") from None
    if config is None:
        return state, saved
    diff = [name for name in saved.diff(config) if name not in RESUMABLE_FIELDS]
    if diff:
        details = ", ".join(f"{n} (run {saved.get(n)!r}, pipeline {config.get(n)!r})" for n in diff)
        raise CheckpointError(
            last,
            f"incompatible config for --resume: {details}; resume with the run's settings "
            "(omit --pipeline) or start a new run (another --out, or --overwrite)",
        )
    return state, config


def _restore_optimizer(last: Path, optimizer: torch.optim.Optimizer, saved: dict | None) -> None:
    """Load the optimiser state of ``last``; its learning rates must be the config's."""
    if saved is None:
        raise CheckpointError(last, "no optimizer state to resume from")
    wanted = [group["lr"] for group in optimizer.param_groups]
    try:
        optimizer.load_state_dict(saved)
    except ValueError as exc:  # e.g. a run saved before the attention had its own group
        raise CheckpointError(last, f"its optimizer state does not fit: {exc}") from None
    restored = [group["lr"] for group in optimizer.param_groups]
    if restored != wanted:  # written by a version that resumed with other settings
        raise CheckpointError(
            last, f"its optimizer learning rates {restored} differ from its config's {wanted}; "
            "start a new run",
        )  # fmt: skip


def interleaved_order(labels: list[int], rng: np.random.Generator) -> np.ndarray:
    """A shuffled order of the slides in which every label is spread evenly: each class shuffled on
    its own, its ``j``-th of ``n`` slides placed at ``(j + 0.5) / n`` (ties broken at random). Every
    batch then holds the classes in about their cohort proportions (balanced cohort, batches of 2:
    one of each).

    Why: a step whose slides share one label pushes every tile's instance logit the same way; the
    swing of the head's bias from step to step then drowns the few tiles that tell the classes
    apart (on the distractors development cohort the tile classifier learnt nothing in 10 epochs;
    with mixed batches the same loss separates lesion tiles)."""
    labels = np.asarray(labels)
    keys = np.empty(len(labels))
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        n = len(members)
        keys[rng.permutation(members)] = (np.arange(n) + 0.5) / n
    return np.lexsort((rng.random(len(labels)), keys))


def _run_epoch(
    model: SlideClassifier,
    optimizer: torch.optim.Optimizer,
    store: SlideStore,
    train_set: list[LabelledSlide],
    val_set: list[LabelledSlide],
    epoch: int,
    total_epochs: int,
    progress: bool,
    carried: StepState | None = None,
    scaler: torch.amp.GradScaler | None = None,
) -> dict:
    tc = model.config.train
    settings = epoch_settings(model.config, epoch)
    seed = epoch_seed(tc.seed, epoch)
    rng = np.random.default_rng(seed)
    if tc.balanced_batches:
        order = interleaved_order([s.label for s in train_set], rng)
    else:
        order = rng.permutation(len(train_set))
    generator = torch.Generator(device=model.device)
    generator.manual_seed(seed)
    model.train()
    losses, probs, labels, tiles, inst, dist = [], [], [], 0, [], []
    t0 = time.perf_counter()
    bar = tqdm(
        total=len(order),
        desc=f"epoch {epoch}/{total_epochs}",
        unit="slide",
        disable=not progress,
        leave=False,
    )
    batches = [
        [train_set[i] for i in order[start : start + tc.batch_size]]
        for start in range(0, len(order), tc.batch_size)
    ]
    store.prefetch_views(batches[0] if batches else [])
    for k, batch in enumerate(batches):
        # views of the next batch (no weights involved) are computed while this one trains
        store.prefetch_views(batches[k + 1] if k + 1 < len(batches) else val_set)
        stats = train_step(
            model, optimizer, store, batch, generator, settings, carried, scaler
        )  # fmt: skip
        losses.extend([stats.loss] * len(batch))
        inst.append(stats.instance_loss)
        dist.append(stats.distill_loss)
        probs.extend(stats.probabilities)
        labels.extend(stats.labels)
        tiles += stats.tiles
        rate = tiles / max(time.perf_counter() - t0, 1e-9)
        bar.update(len(batch))
        bar.set_postfix(loss=f"{np.mean(losses):.3f}", tiles_s=f"{rate:.0f}")
    bar.close()
    return {
        "epoch": epoch,
        "train_loss": float(np.mean(losses)),
        "train_auc": safe_auc(labels, probs),
        "tiles_per_s": tiles / max(time.perf_counter() - t0, 1e-9),
        "n_patches": settings.n_patches,
        "explore": settings.explore,
        "instance_loss": float(np.mean(inst)) if inst else 0.0,
        "distill_loss": float(np.mean(dist)) if dist else 0.0,
    }


def _write_history(path: Path, history: list[dict]) -> None:
    with atomic_path(path) as tmp, tmp.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=HISTORY_FIELDS)
        writer.writeheader()
        for row in history:
            writer.writerow({k: row.get(k, "") for k in HISTORY_FIELDS})


def _read_history(path: Path) -> list[dict]:
    if not path.exists():
        return []
    with path.open() as fh:
        return [
            {
                k: (int(v) if k in ("epoch", "n_patches") else float(v))
                for k, v in row.items()
                if v != ""
            }
            for row in csv.DictReader(fh)
        ]
