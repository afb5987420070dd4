"""``wsi-ats train --manifest M --pipeline P --out RUN [--resume | --overwrite] [--epochs N]``."""

from __future__ import annotations

import argparse
from pathlib import Path

from wsi_ats.cli.common import add_device_argument, non_negative_int, positive_int


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train",
        help="train a slide classifier by attention sampling",
        description="Train on the 'train' rows of a manifest; validation AUC each epoch on 'val' rows "
        "(or a held-out share of 'train'); the best checkpoint is RUN/model.pt. A RUN that holds a "
        "run is refused unless --resume (continue it, with its own settings: a pipeline that "
        "differs is refused, naming the fields) or --overwrite (start afresh).",
    )
    p.add_argument("--manifest", required=True, type=Path, help="CSV slide_id,path,label,split")
    p.add_argument(
        "--pipeline",
        type=Path,
        help="pipeline TOML (default with --resume: the run's own; required otherwise)",
    )
    p.add_argument("--out", required=True, type=Path, help="run folder")
    mode = p.add_mutually_exclusive_group()
    mode.add_argument("--resume", action="store_true", help="continue from RUN/last.pt")
    mode.add_argument(
        "--overwrite",
        action="store_true",
        help="replace the run in RUN (once the inputs check out)",
    )
    p.add_argument(
        "--epochs",
        type=non_negative_int,
        help="total epochs (default: the pipeline's train.epochs)",
    )
    p.add_argument(
        "--threads",
        type=positive_int,
        help="torch CPU threads (default: 1 on <= 2 cores, else torch's choice)",
    )
    p.add_argument(
        "--quiet",
        action="store_true",
        help="no progress (without a terminal, progress is one line every few seconds)",
    )
    add_device_argument(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from wsi_ats.cli.common import fail, set_threads, use_device
    from wsi_ats.cohort.manifest import ManifestError
    from wsi_ats.models import CheckpointError, ConfigError, load_config
    from wsi_ats.slides import SlideError
    from wsi_ats.training import read_cohort, train

    if args.pipeline is None and not args.resume:
        return fail("train", "--pipeline is required (unless --resume)")
    try:
        device = use_device(args.device)
        config = load_config(args.pipeline) if args.pipeline else None
        read_cohort(args.manifest)  # every row labelled and readable, before anything runs
        set_threads(args.threads)
        result = train(
            args.manifest,
            config,
            args.out,
            resume=args.resume,
            epochs=args.epochs,
            progress=not args.quiet,
            overwrite=args.overwrite,
            device=device,
        )
    except (ConfigError, CheckpointError, ManifestError, SlideError, ValueError) as exc:
        return fail("train", exc)
    print(
        f"best epoch {result.best_epoch} (validation AUC {result.best_val_auc:.3f}); "
        f"model: {result.model_path}"
    )
    return 0
