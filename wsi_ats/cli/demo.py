"""``wsi-ats demo [--out DIR]``: synthesise a cohort, train, evaluate on held-out slides, predict.

:func:`demo` is the whole story in one call (the CLI and the tests use it): a synthetic cohort of
tiled pyramidal TIFFs (cached in ``OUT/cohort``), training with ``pipelines/demo.toml`` (``OUT/run``),
prediction of the held-out ``test`` slides with per-slide outputs and heatmaps
(``OUT/predictions``), and a short table.
"""

from __future__ import annotations

import argparse
import csv
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

DEFAULT_OUT = Path("wsi-ats-demo")
REPO_PIPELINE = Path(__file__).resolve().parents[2] / "pipelines" / "demo.toml"
# the same values as pipelines/demo.toml, for installs without the repository's pipelines/ folder
DEMO_PIPELINE = {
    "slide": {"lowres_size": 512, "read_level": 0, "patch_size": 64},
    "attention": {"width": 16, "depth": 3, "map_stride": 8, "prior": 0.0},
    "features": {"backbone": "compact", "width": 16, "dim": 32, "normalize": True},
    "sampling": {"n_patches": 32, "replace": False, "receptive_field": 0},
    "head": {"hidden": 0, "dropout": 0.0},
    "train": {
        "epochs": 10, "batch_size": 2, "lr": 0.001, "weight_decay": 0.0, "entropy_coef": 0.0001,
        "grad_clip": 1.0, "seed": 0, "read_workers": 4, "val_fraction": 0.2, "val_draws": 2,
        "explore_restarts": 1,
    },
    "predict": {"n_draws": 8, "seed": 0, "tile_batch_size": 128, "threshold": 0.5},
}  # fmt: skip
SPLITS = (("train", 0.5), ("val", 0.15), ("test", 0.35))
#: the columns of ``wsi-ats predict`` (``wsi_ats.pipeline.state.COLUMNS``), then the demo's own
DEMO_COLUMNS = ["label", "split", "n_tiles_read", "tissue_tiles", "seconds", "lesion_hits"]


@dataclass
class DemoResult:
    out_dir: Path
    manifest: Path
    model_path: Path
    predictions_csv: Path
    heatmaps: list[Path]
    auc: float
    accuracy: float
    tiles_read_per_slide: float  # distinct tiles read per test slide (all draws)
    tissue_tiles_per_slide: float  # tiles of the same size covering the tissue
    seconds_per_slide: float  # predict_slide wall time per test slide
    lesion_hit_share: float  # share of sampled tiles on malignant spots, positive test slides
    n_test: int
    timings: dict = field(default_factory=dict)  # seconds per phase
    best_epoch: int = 0  # the epoch whose weights model.pt holds (best validation AUC)
    epochs: int = 0  # epochs trained
    best_val_auc: float = float("nan")


def demo_config():  # noqa: ANN201 - PipelineConfig, imported lazily
    """``pipelines/demo.toml`` when the repository is at hand, else the same built-in values."""
    from wsi_ats.models import PipelineConfig

    if REPO_PIPELINE.exists():
        return PipelineConfig.from_toml(REPO_PIPELINE)
    return PipelineConfig.from_dict(DEMO_PIPELINE)


def demo(
    out_dir: str | Path = DEFAULT_OUT,
    n_slides: int = 120,
    size: int = 4096,
    seed: int = 0,
    spot_fraction: float = 0.03,
    config=None,  # noqa: ANN001 - PipelineConfig
    epochs: int | None = None,
    workers: int | None = None,
    progress: bool = True,
) -> DemoResult:
    """Synthesise ``n_slides`` slides of ``size``^2 px (cached), train, predict the test split.

    ``spot_fraction``: candidate-spot diameter as a fraction of the slide side (malignant spots then
    cover ~0.2-0.7% of the tissue). ``config`` defaults to :func:`demo_config`.
    """
    import numpy as np
    from sklearn.metrics import roc_auc_score

    from wsi_ats.inference import predict_slide, write_slide_outputs
    from wsi_ats.pipeline.state import COLUMNS, slide_row
    from wsi_ats.stages import tissue_tile_count
    from wsi_ats.synth import make_cohort
    from wsi_ats.synth.lesions import lesion_boxes, tile_hits
    from wsi_ats.training import read_cohort, train

    out_dir = Path(out_dir)
    config = config or demo_config()
    workers = workers or min(4, os.cpu_count() or 1)
    timings = {}

    t0 = time.perf_counter()
    manifest = make_cohort(
        out_dir / "cohort", n_slides, size, seed=seed, splits=SPLITS, workers=workers,
        spot_diameter=spot_fraction * size, progress=progress,
    )  # fmt: skip
    timings["cohort"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    # the demo's run is remade each time (the cohort is what is cached)
    result = train(
        manifest, config, out_dir / "run", epochs=epochs, progress=progress, overwrite=True
    )
    timings["train"] = time.perf_counter() - t0

    from wsi_ats.models import load_model

    model = load_model(result.model_path)
    boxes = lesion_boxes(manifest.parent / "ground_truth.json")
    test = [s for s in read_cohort(manifest) if s.split == "test"]
    pred_dir = out_dir / "predictions"
    rows, heatmaps = [], []
    t0 = time.perf_counter()
    for s in test:
        t1 = time.perf_counter()
        pred, view = predict_slide(s.path, model, slide_id=s.slide_id, return_view=True)
        seconds = time.perf_counter() - t1
        folder = write_slide_outputs(pred, view, pred_dir)
        heatmaps.append(folder / "heatmap.png")
        hits = tile_hits(
            pred.locations, pred.tile_size_level0, boxes.get(s.slide_id, np.zeros((0, 4)))
        )
        rows.append({
            **slide_row(pred_dir, s.slide_id), "label": s.label, "split": s.split,
            "n_tiles_read": pred.n_tiles_read,
            "tissue_tiles": round(tissue_tile_count(view, pred.tile_size_level0)),
            "seconds": seconds, "lesion_hits": int(hits.sum()),
        })  # fmt: skip
    timings["predict"] = time.perf_counter() - t0
    pred_dir.mkdir(parents=True, exist_ok=True)
    csv_path = pred_dir / "predictions.csv"
    with csv_path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=[*COLUMNS, *DEMO_COLUMNS])
        writer.writeheader()
        writer.writerows(rows)

    labels = [r["label"] for r in rows]
    probs = [r["probability"] for r in rows]
    positives = [r for r in rows if r["label"] == 1]
    n_sampled = config.predict.n_draws * config.sampling.n_patches
    return DemoResult(
        out_dir=out_dir,
        manifest=manifest,
        model_path=result.model_path,
        predictions_csv=csv_path,
        heatmaps=heatmaps,
        auc=float(roc_auc_score(labels, probs)) if len(set(labels)) == 2 else float("nan"),
        accuracy=float(np.mean([r["prediction"] == r["label"] for r in rows])),
        tiles_read_per_slide=float(np.mean([r["n_tiles_read"] for r in rows])),
        tissue_tiles_per_slide=float(np.mean([r["tissue_tiles"] for r in rows])),
        seconds_per_slide=float(np.mean([r["seconds"] for r in rows])),
        lesion_hit_share=float(
            sum(r["lesion_hits"] for r in positives) / max(1, n_sampled * len(positives))
        ),
        n_test=len(rows),
        timings=timings,
        best_epoch=result.best_epoch,
        epochs=result.epochs_done,
        best_val_auc=result.best_val_auc,
    )


def format_table(r: DemoResult) -> str:
    """The demo's summary table (plain text)."""
    lines = [
        f"held-out test slides      {r.n_test}",
        f"AUC                       {r.auc:.3f}",
        f"accuracy (p >= 0.5)       {r.accuracy:.3f}",
        f"tiles read per slide      {r.tiles_read_per_slide:.0f}  "
        f"(of {r.tissue_tiles_per_slide:.0f} tissue tiles: {100 * r.tiles_read_per_slide / max(r.tissue_tiles_per_slide, 1):.1f}%)",
        f"time per slide (predict)  {r.seconds_per_slide:.2f} s",
        f"sampled tiles on lesions  {100 * r.lesion_hit_share:.1f}% (positive slides)",
        "phases                    " + ", ".join(f"{k} {v:.0f} s" for k, v in r.timings.items()),
        f"predictions               {r.predictions_csv}",
        f"heatmaps                  {r.predictions_csv.parent / 'slides'}/<slide_id>/heatmap.png",
        f"model                     {r.model_path} (epoch {r.best_epoch} of {r.epochs}: "
        f"best validation AUC {r.best_val_auc:.3f})",
    ]
    return "\n".join(lines)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "demo",
        help="synthesise a small cohort, train, evaluate and predict (a few minutes on a CPU)",
        description="Synthesise a cohort (cached), train with pipelines/demo.toml, predict the "
        "held-out slides and print AUC, accuracy, tiles read and time per slide.",
    )
    p.add_argument(
        "--out", type=Path, default=DEFAULT_OUT, help="output folder (default: %(default)s)"
    )
    p.add_argument("--slides", type=int, default=120, help="cohort size (default: %(default)s)")
    p.add_argument("--size", type=int, default=4096, help="slide side, px (default: %(default)s)")
    p.add_argument("--epochs", type=int, help="training epochs (default: the pipeline's)")
    p.add_argument("--pipeline", type=Path, help="pipeline TOML (default: pipelines/demo.toml)")
    p.add_argument(
        "--threads",
        type=int,
        help="torch CPU threads (default: 1 on <= 2 cores, else torch's choice)",
    )
    p.add_argument(
        "--quiet",
        action="store_true",
        help="no progress (without a terminal, progress is one line every few seconds)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from wsi_ats.cli.common import fail, set_threads
    from wsi_ats.models import ConfigError, load_config

    try:
        config = load_config(args.pipeline) if args.pipeline else None
    except ConfigError as exc:
        return fail("demo", exc)
    set_threads(args.threads)
    t0 = time.perf_counter()
    result = demo(
        args.out, n_slides=args.slides, size=args.size, config=config, epochs=args.epochs,
        progress=not args.quiet,
    )  # fmt: skip
    print(format_table(result))
    print(f"total                     {time.perf_counter() - t0:.0f} s")
    return 0
