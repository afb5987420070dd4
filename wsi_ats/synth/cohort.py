"""Synthetic cohorts: many slides, a manifest CSV, ground truth, and a parameter file for caching.

Layout of ``out_dir``::

    manifest.csv        slide_id,path,label,split  (paths relative to out_dir, e.g. slides/slide_0000.tiff)
    ground_truth.json   {"params": ..., "slides": {slide_id: {label, width, height, spots: [...]}}}
    cohort.json         the parameters; a later call with the same ones reuses the cohort
    slides/             slide_0000.tiff ... (or .zarr folders with fmt="zarr")

Per-slide seeds come from ``(seed, index)``; labels are an exact ``round(n * positive_fraction)``
positives, shuffled; splits are cut from an order that interleaves the classes, so each split has
about the cohort's positive fraction.
"""

from __future__ import annotations

import csv
import json
import math
import os
import shutil
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor, as_completed
from multiprocessing import get_context
from pathlib import Path

import numpy as np

from wsi_ats.atomic import atomic_path, atomic_write_text
from wsi_ats.synth.layout import check_variant
from wsi_ats.synth.render import level_shapes
from wsi_ats.synth.slide import DEFAULT_MPP, slide_layout, write_synthetic_slide

GENERATOR_VERSION = 3  # bump when the pixels change, to invalidate cached cohorts
MANIFEST = "manifest.csv"
GROUND_TRUTH = "ground_truth.json"
PARAMS = "cohort.json"
FORMATS = ("tiff", "zarr")
Splits = Sequence[tuple[str, float]] | Sequence[tuple[str, int]]


def slide_seed(seed: int, index: int) -> int:
    """The seed of slide ``index`` of a cohort seeded with ``seed``."""
    return int(np.random.SeedSequence([seed, index]).generate_state(1)[0])


def assign_labels(n: int, positive_fraction: float, seed: int) -> np.ndarray:
    """int ``[n]``: exactly ``round(n * positive_fraction)`` ones, in a seeded random order."""
    if not 0.0 <= positive_fraction <= 1.0:
        raise ValueError(f"positive_fraction must be in [0, 1], got {positive_fraction}")
    labels = np.zeros(n, dtype=int)
    labels[: round(n * positive_fraction)] = 1
    np.random.default_rng(np.random.SeedSequence([seed, 0x1ABE1])).shuffle(labels)
    return labels


def split_counts(n: int, splits: Splits) -> list[int]:
    """Slides per split: integer counts as given (must sum to ``n``), or fractions by largest
    remainder."""
    values = [v for _, v in splits]
    if all(isinstance(v, int | np.integer) for v in values):
        if sum(values) != n:
            raise ValueError(f"split counts {values} do not sum to n_slides={n}")
        return [int(v) for v in values]
    total = float(sum(values))
    if total <= 0 or any(v < 0 for v in values):
        raise ValueError(f"split fractions must be >= 0 with a positive sum, got {values}")
    exact = [n * v / total for v in values]
    counts = [int(np.floor(e)) for e in exact]
    for i in sorted(range(len(exact)), key=lambda i: counts[i] - exact[i])[: n - sum(counts)]:
        counts[i] += 1
    return counts


def assign_splits(labels: np.ndarray, splits: Splits) -> list[str]:
    """Split name of each slide: classes interleaved evenly, then cut in consecutive runs."""
    n = len(labels)
    rank = np.empty(n)
    for c in (0, 1):
        idx = np.flatnonzero(labels == c)
        rank[idx] = (np.arange(len(idx)) + 0.5) / max(len(idx), 1)
    order = np.argsort(rank, kind="stable")
    names = [""] * n
    start = 0
    for (name, _), count in zip(splits, split_counts(n, splits), strict=True):
        for i in order[start : start + count]:
            names[i] = name
        start += count
    return names


def _write_one(job: dict, tile_callback: Callable[[int], None] | None = None) -> dict:
    """Write one slide (maybe in a worker process); returns its ground truth dict."""
    out: Path = job["out"]
    job["kwargs"]["tile_callback"] = tile_callback
    if job["fmt"] == "zarr":
        from wsi_ats.slides import convert_to_ome_zarr

        tiff = out.with_suffix(".tiff.part")
        truth = write_synthetic_slide(tiff, **job["kwargs"])
        tmp_zarr = out.with_name(out.name + ".tmp")
        shutil.rmtree(tmp_zarr, ignore_errors=True)
        w, h = job["kwargs"]["size"]
        convert_to_ome_zarr(tiff, tmp_zarr, levels=len(level_shapes(w, h)), threads=1)
        os.replace(tmp_zarr, out)
        tiff.unlink()
    else:
        truth = write_synthetic_slide(out, **job["kwargs"])
    return truth.to_dict()


def make_cohort(
    out_dir: str | os.PathLike,
    n_slides: int,
    size: int | tuple[int, int],
    seed: int = 0,
    positive_fraction: float = 0.5,
    splits: Splits = (("train", 0.6), ("val", 0.2), ("test", 0.2)),
    fmt: str = "tiff",
    compression: str = "jpeg",
    workers: int = 1,
    spot_diameter: float | None = None,
    mpp: float = DEFAULT_MPP,
    progress: bool | Callable[[int], None] = False,
    variant: str = "standard",
) -> Path:
    """Generate (or reuse) a cohort in ``out_dir``; returns the manifest path.

    ``size`` is the level-0 side in pixels (or ``(width, height)``); ``spot_diameter`` is in level-0
    pixels (default 1.5% of the shorter side). ``splits`` gives fractions or integer counts.
    ``workers > 1`` writes slides in that many processes. If ``cohort.json`` holds the same
    parameters and every slide exists, nothing is recomputed; slides already written by an
    interrupted call with the same parameters are kept. ``progress``: True for a tqdm bar (over
    tiles with one worker, over slides with several), or a callable called with 1 after each slide.
    ``variant``: ``"standard"`` or ``"distractors"`` (see :mod:`wsi_ats.synth`); recorded in
    ``cohort.json`` unless standard, so that standard cohorts written before it existed are reused.
    """
    if n_slides < 1:
        raise ValueError(f"n_slides must be >= 1, got {n_slides}")
    if fmt not in FORMATS:
        raise ValueError(f"fmt must be one of {FORMATS}, got {fmt!r}")
    check_variant(variant)
    out_dir = Path(out_dir)
    w, h = (size, size) if isinstance(size, int | np.integer) else size
    params = {
        "generator_version": GENERATOR_VERSION,
        "n_slides": int(n_slides),
        "size": [int(w), int(h)],
        "seed": int(seed),
        "positive_fraction": float(positive_fraction),
        "splits": [[name, v] for name, v in splits],
        "fmt": fmt,
        "compression": compression,
        "spot_diameter": None if spot_diameter is None else float(spot_diameter),
        "mpp": float(mpp),
    }
    if variant != "standard":  # absent for standard cohorts, as before variants existed
        params["variant"] = variant
    manifest = out_dir / MANIFEST
    params_path = out_dir / PARAMS
    same = params_path.exists() and json.loads(params_path.read_text()) == params
    labels = assign_labels(n_slides, positive_fraction, seed)
    split_names = assign_splits(labels, splits)
    ext = ".zarr" if fmt == "zarr" else ".tiff"
    rel_paths = [f"slides/slide_{i:04d}{ext}" for i in range(n_slides)]
    if same and manifest.exists() and all((out_dir / p).exists() for p in rel_paths):
        return manifest

    (out_dir / "slides").mkdir(parents=True, exist_ok=True)
    if not same:
        manifest.unlink(missing_ok=True)
        params_path.write_text(json.dumps(params, indent=1))
    truths: dict[str, dict] = {}
    jobs = []
    for i in range(n_slides):
        kwargs = {
            "size": (int(w), int(h)),
            "seed": slide_seed(seed, i),
            "label": int(labels[i]),
            "spot_diameter": spot_diameter,
            "mpp": float(mpp),
            "compression": compression,
            "texture_seed": int(seed),
            "variant": variant,
        }
        out = out_dir / rel_paths[i]
        if same and out.exists():  # finished by an interrupted run with these parameters
            layout = slide_layout(
                kwargs["size"], kwargs["seed"], kwargs["label"], spot_diameter, variant
            )
            truths[f"slide_{i:04d}"] = layout.truth(seed=kwargs["seed"], mpp=float(mpp))
        else:
            jobs.append({"id": f"slide_{i:04d}", "out": out, "fmt": fmt, "kwargs": kwargs})

    bar = None
    if progress is True and jobs:
        from wsi_ats.progress import Progress as tqdm

        if workers > 1:  # slides finish in other processes: count slides
            bar = tqdm(total=n_slides, initial=n_slides - len(jobs), unit="slide", desc="synth")
        else:  # one process: count tiles, so that a single large slide shows progress too
            per_slide = sum(
                math.ceil(lh / 256) * math.ceil(lw / 256) for lh, lw in level_shapes(w, h)
            )
            bar = tqdm(total=per_slide * len(jobs), unit="tile", unit_scale=True, desc="synth")
    tick = progress if callable(progress) else None
    try:
        if workers > 1 and len(jobs) > 1:
            with ProcessPoolExecutor(
                min(workers, len(jobs)), mp_context=get_context("spawn")
            ) as ex:
                futures = {ex.submit(_write_one, job): job["id"] for job in jobs}
                for fut in as_completed(futures):
                    truths[futures[fut]] = fut.result()
                    if bar is not None:
                        bar.update(1)
                    if tick:
                        tick(1)
        else:
            for job in jobs:
                truths[job["id"]] = _write_one(job, bar.update if bar is not None else None)
                if bar is not None:
                    bar.set_postfix_str(f"{job['id']} done")
                if tick:
                    tick(1)
    finally:
        if bar is not None:
            bar.close()

    ids = [f"slide_{i:04d}" for i in range(n_slides)]
    gt = {"params": params, "slides": {i: truths[i] for i in ids}}
    atomic_write_text(out_dir / GROUND_TRUTH, json.dumps(gt, indent=1))
    rows = [
        {"slide_id": i, "path": p, "label": int(lab), "split": s}
        for i, p, lab, s in zip(ids, rel_paths, labels, split_names, strict=True)
    ]
    with atomic_path(manifest) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["slide_id", "path", "label", "split"])
        writer.writeheader()
        writer.writerows(rows)
    return manifest
