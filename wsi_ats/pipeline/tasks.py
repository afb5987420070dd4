"""The functions the cohort graph runs on workers: thin wrappers over ``wsi_ats.stages``.

Each is a pure function of its inputs (the slide's path, the model reference, the run seed), so
that a task lost with a killed worker can be recomputed anywhere. The model reaches a task either as
a :class:`ModelRef` (a checkpoint path, loaded once per worker process and cached) or as a future of
a model scattered to every worker with ``broadcast=True``; it is never pickled per task.
"""

from __future__ import annotations

import functools
import io
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from wsi_ats import stages
from wsi_ats.atomic import atomic_write_bytes
from wsi_ats.cohort.paths import slide_dir
from wsi_ats.inference.adaptive import MAX_DRAWS, extend_draws, needs_more_draws
from wsi_ats.inference.outputs import write_slide_outputs
from wsi_ats.pipeline.state import clear_error
from wsi_ats.slides import open_slide

FEATURES_FILE = "features.npy"  # optional per-slide output: sampled tile features


@dataclass(frozen=True)
class ModelRef:
    """A checkpoint on a filesystem the workers share; ``stamp`` (mtime_ns, size) busts the cache."""

    path: str
    stamp: tuple[int, int]

    @classmethod
    def from_path(cls, path: str | Path) -> ModelRef:
        p = Path(path)
        if p.is_dir():
            p = p / "model.pt"
        st = p.stat()
        return cls(str(p.resolve()), (st.st_mtime_ns, st.st_size))


def _worker_threads() -> int:
    """Task threads of the dask worker running this code (1 outside a worker)."""
    try:
        from distributed import get_worker

        return max(1, get_worker().state.nthreads)
    except ValueError:  # not in a worker
        return max(1, torch.get_num_threads())


@functools.lru_cache(maxsize=1)
def _set_torch_threads() -> int:
    """Once per process: torch intra-op threads = the worker's task threads (no oversubscription)."""
    n = _worker_threads()
    torch.set_num_threads(n)
    return n


@functools.lru_cache(maxsize=2)
def _load_cached(path: str, stamp: tuple[int, int]) -> torch.nn.Module:
    from wsi_ats.models import load_model

    _set_torch_threads()
    from wsi_ats.models.accel import resolve_device

    device = resolve_device()  # $WSI_ATS_DEVICE (set by --device), else cuda when there is one
    return load_model(path, map_location=device).eval()


def resolve_model(model: Any) -> Any:
    """The model object for a task: loads (once per process) a :class:`ModelRef`, passes others."""
    if isinstance(model, ModelRef):
        return _load_cached(model.path, model.stamp)
    _set_torch_threads()
    return model


def view_task(path: str, slide_id: str, model: Any, mpp: float | None = None) -> Any:
    """Open the slide, compute its low-res view and tissue mask, close it -> ``SlideView``
    (``mpp``: the manifest's um/px for the slide, if any)."""
    m = resolve_model(model)
    return stages.view_slide(path, m.config, slide_id=slide_id, mpp=mpp)


def sample_task(view: Any, model: Any, n_draws: int, seed: int) -> Any:
    """Attention map and ``n_draws`` draws of N cells -> ``SlideSample``.

    ``seed`` is the run seed; ``sample_slide`` seeds the draws from ``(seed, slide_id)``.
    """
    return stages.sample_slide(view, resolve_model(model), n_draws, seed)


def read_task(sample: Any) -> tuple[np.ndarray, np.ndarray]:
    """The distinct sampled tiles, uint8 ``[U, h, w, 3]`` at the sample's read level, and for each
    of the ``T*N`` draws its row in them (int64 ``[T*N]``): a tile drawn twice is read once."""
    flat = np.asarray(sample.locations, dtype=np.int64).reshape(-1, 2)
    unique, inverse = np.unique(flat, axis=0, return_inverse=True)
    with open_slide(sample.path) as slide:
        tiles = stages.read_tiles(
            slide, unique, sample.read_level, sample.tile_size, sample.out_size
        )
    return tiles, inverse.reshape(-1)


def features_task(
    model: Any, batch_size: int, *tiles: tuple[np.ndarray, np.ndarray]
) -> list[np.ndarray]:
    """Features of the distinct tiles of several slides, in shared batches -> float32 ``[T*N, D]``
    per slide (in draw order, as ``aggregate_slide`` expects)."""
    m = resolve_model(model)
    counts = [len(t) for t, _ in tiles]
    batch = np.concatenate([t for t, _ in tiles], axis=0)
    feats = np.asarray(stages.tile_features(m, batch, batch_size=batch_size))
    parts = np.split(feats, np.cumsum(counts)[:-1], axis=0)
    return [part[inverse] for part, (_, inverse) in zip(parts, tiles, strict=True)]


def finish_task(
    model: Any,
    view: Any,
    sample: Any,
    features: list[np.ndarray],
    index: int,
    out: str,
    save_features: bool = False,
    target_halfwidth: float | None = None,
    max_draws: int = MAX_DRAWS,
    seed: int | None = None,
) -> dict[str, Any]:
    """Aggregate, predict and write the slide's outputs atomically; returns a small summary.

    With ``target_halfwidth`` the first round of draws is extended here, round by round, until the
    probability's 95% interval is narrower (:func:`~wsi_ats.inference.adaptive.draw_until`, run
    ``seed``), reading the extra tiles itself; without it, while the interval contains the
    threshold when the spec's ``predict.decision_max_draws`` allows more draws
    (:func:`~wsi_ats.inference.adaptive.extend_draws`).

    With ``save_features`` the slide's sampled tile features are kept too, as ``features.npy``
    (float32 ``[T*N, D]``, rows in the order of ``coords.csv``), before ``prediction.json``.
    """
    m = resolve_model(model)
    feats = features[index]
    if needs_more_draws(m, sample, feats, target_halfwidth, max_draws):  # else: no reopening
        with open_slide(sample.path) as slide:
            sample, feats = extend_draws(
                m, view, sample, feats, slide, target_halfwidth, max_draws, seed
            )
    pred = stages.aggregate_slide(m, sample, feats)
    if save_features:
        buf = io.BytesIO()
        np.save(buf, np.asarray(feats, dtype=np.float32))
        atomic_write_bytes(slide_dir(out, pred.slide_id) / FEATURES_FILE, buf.getvalue())
    write_slide_outputs(pred, view, out)
    clear_error(out, pred.slide_id)
    return {
        "slide_id": pred.slide_id,
        "probability": float(pred.probability),
        "std": float(pred.std),
        "n_tiles": int(pred.n_tiles_read),
        "pid": os.getpid(),
    }
