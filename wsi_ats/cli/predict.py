"""``wsi-ats predict``: a cohort manifest through a trained model, on a local or existing Dask cluster."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from wsi_ats.cli.common import add_device_argument, positive_float, positive_int


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Register ``predict`` on the ``wsi-ats`` parser."""
    p = subparsers.add_parser(
        "predict",
        help="predict every slide of a manifest (resumable; local or dask-distributed cluster)",
        description=(
            "Predict every slide of a cohort manifest (CSV: slide_id,path[,label][,split]) and write "
            "OUT/predictions.csv plus per-slide outputs under OUT/slides/. Slides already finished "
            "in OUT are skipped, so rerunning the same command resumes an interrupted run. "
            "predictions.csv keeps the manifest's label and split columns and has a warnings "
            "column (slide smaller than a tile, too little tissue, size or resolution far from "
            "the training slides); with labels, AUC and accuracy are printed. Exit status: 0 all "
            "slides ok, 1 some slide failed, 2 unusable manifest/model/settings (checked before "
            "any cluster starts or folder is made)."
        ),
    )
    p.add_argument("--manifest", required=True, type=Path, help="cohort manifest CSV")
    p.add_argument("--model", required=True, type=Path, help="checkpoint RUN/model.pt (or RUN)")
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.add_argument(
        "--split",
        default=None,
        metavar="NAME",
        help="predict only the manifest rows of this split, e.g. test (default: every row)",
    )
    p.add_argument(
        "--scheduler",
        default=None,
        metavar="tcp://HOST:PORT",
        help="run on this existing dask-distributed scheduler (default: a local cluster)",
    )
    p.add_argument(
        "--connect-timeout",
        type=float,
        default=60.0,
        metavar="SECONDS",
        help="how long to try reaching --scheduler",
    )
    p.add_argument(
        "--workers",
        type=positive_int,
        default=None,
        help="local cluster: worker processes (default: one per core)",
    )
    p.add_argument(
        "--threads-per-worker",
        type=positive_int,
        default=1,
        help="local cluster: threads per worker",
    )
    p.add_argument(
        "--max-in-flight",
        type=positive_int,
        default=None,
        metavar="K",
        help="slides in the graph at once (default: 8 per worker thread)",
    )
    p.add_argument(
        "--batch-slides",
        type=positive_int,
        default=4,
        help="slides whose tiles share one feature pass",
    )
    p.add_argument(
        "--n-draws",
        type=positive_int,
        default=None,
        help="draws per slide in the first round (default: the model's); the model's "
        "predict.decision_max_draws adds rounds while the 95%% interval contains the threshold",
    )
    p.add_argument(
        "--target-halfwidth",
        type=positive_float,
        default=None,
        metavar="W",
        help="keep drawing rounds of --n-draws per slide until the probability's 95%% interval "
        "(ci_low, ci_high) has a half-width below W, or --max-draws are used (default: no "
        "target; one round, or the model's decision rule)",
    )
    p.add_argument(
        "--max-draws",
        type=positive_int,
        default=64,
        help="with --target-halfwidth: at most this many draws per slide (default 64)",
    )
    p.add_argument("--seed", type=int, default=None, help="run seed (default: the model's)")
    p.add_argument("--retries", type=int, default=2, help="retries of a failed task")
    p.add_argument(
        "--on-missing",
        choices=["error-row", "fail"],
        default="error-row",
        help="a manifest path that does not exist: an error row (default) or refuse the manifest",
    )
    p.add_argument(
        "--save-features",
        action="store_true",
        help="also write each slide's sampled tile features (features.npy, float32 [T*N, D], "
        "rows in coords.csv order)",
    )
    p.add_argument(
        "--no-progress",
        action="store_true",
        help="no progress (without a terminal, progress is one line every few seconds)",
    )
    add_device_argument(p)
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    """Validate everything, start or join the cluster, predict, print a summary; the exit status."""
    from wsi_ats.cli.common import fail, use_device
    from wsi_ats.cohort.manifest import ManifestError, load_manifest
    from wsi_ats.models import CheckpointError, load_model
    from wsi_ats.models.accel import DeviceError
    from wsi_ats.pipeline.cluster import dashboard_link, open_client
    from wsi_ats.pipeline.cohort import (
        ProgressEvent,
        RunSettingsError,
        evaluation_line,
        predict_cohort,
        preflight,
        summary_line,
    )
    from wsi_ats.progress import Progress

    # every cheap check first: no cluster is started and no folder made for a run that cannot go
    try:
        use_device(args.device)  # workers of a local cluster inherit it
        manifest = load_manifest(args.manifest, on_missing=args.on_missing)
        if args.split is not None:
            manifest = manifest.select_split(args.split)
        load_model(args.model)  # a readable checkpoint whose weights fit its architecture
        preflight(
            args.model, args.out, n_draws=args.n_draws, seed=args.seed,
            save_features=args.save_features, target_halfwidth=args.target_halfwidth,
            max_draws=args.max_draws,
        )  # fmt: skip
    except (ManifestError, CheckpointError, RunSettingsError, DeviceError) as exc:
        return fail("predict", exc)
    for entry in manifest:
        if entry.problem:
            print(f"warning: line {entry.line}: {entry.problem} (reported as an error row)",
                  file=sys.stderr)  # fmt: skip

    bar: Progress | None = None
    start = time.time()
    tiles = 0
    started = False  # connected to the cluster

    def on_progress(event: ProgressEvent) -> None:
        nonlocal bar, tiles
        if args.no_progress:
            return
        if bar is None:
            bar = Progress(total=event.total, unit="slide", desc="predict", file=sys.stderr)
        tiles += event.n_tiles
        rate = tiles / max(time.time() - start, 1e-9)
        bar.set_postfix(done=event.done, failed=event.failed, tiles_s=f"{rate:.0f}", refresh=False)
        bar.update(1)

    try:
        with open_client(
            args.scheduler,
            n_workers=args.workers,
            threads_per_worker=args.threads_per_worker,
            timeout=f"{args.connect_timeout}s",
        ) as client:
            started = True
            link = dashboard_link(client)
            print(f"dask dashboard: {link or 'not available (install bokeh)'}", file=sys.stderr)
            start = time.time()
            df = predict_cohort(
                manifest,
                args.model,
                args.out,
                client=client,
                n_draws=args.n_draws,
                seed=args.seed,
                max_in_flight=args.max_in_flight,
                batch_slides=args.batch_slides,
                retries=args.retries,
                progress=on_progress,
                save_features=args.save_features,
                target_halfwidth=args.target_halfwidth,
                max_draws=args.max_draws,
            )
    except (CheckpointError, RunSettingsError) as exc:
        return fail("predict", exc)
    except (OSError, TimeoutError) as exc:
        if args.scheduler and not started:
            return fail("predict", f"cannot reach scheduler {args.scheduler}: {exc}")
        raise
    finally:
        if bar is not None:
            bar.close()
    print(summary_line(df) + f" -> {args.out / 'predictions.csv'}")
    evaluation = evaluation_line(df)
    if evaluation:
        print(evaluation)
    return 0 if (df["status"] == "ok").all() else 1
