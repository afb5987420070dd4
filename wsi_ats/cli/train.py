"""``wsi-ats train --manifest M --pipeline P --out RUN [--resume] [--epochs N]``."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train",
        help="train a slide classifier by attention sampling",
        description="Train on the 'train' rows of a manifest; validation AUC each epoch on 'val' rows "
        "(or a held-out share of 'train'); the best checkpoint is RUN/model.pt.",
    )
    p.add_argument("--manifest", required=True, type=Path, help="CSV slide_id,path,label,split")
    p.add_argument("--pipeline", type=Path, help="pipeline TOML (required unless --resume)")
    p.add_argument("--out", required=True, type=Path, help="run folder")
    p.add_argument("--resume", action="store_true", help="continue from RUN/last.pt")
    p.add_argument("--epochs", type=int, help="total epochs (default: the pipeline's train.epochs)")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from wsi_ats.cohort.manifest import ManifestError
    from wsi_ats.models import CheckpointError, ConfigError, load_config
    from wsi_ats.slides import SlideError
    from wsi_ats.training import train

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.pipeline is None and not args.resume:
        print("wsi-ats train: --pipeline is required (unless --resume)", file=sys.stderr)
        return 2
    try:
        config = load_config(args.pipeline) if args.pipeline else None
        result = train(
            args.manifest,
            config,
            args.out,
            resume=args.resume,
            epochs=args.epochs,
            progress=not args.quiet,
        )
    except (ConfigError, CheckpointError, ManifestError, SlideError, ValueError) as exc:
        print(f"wsi-ats train: {exc}", file=sys.stderr)
        return 2
    print(
        f"best epoch {result.best_epoch} (validation AUC {result.best_val_auc:.3f}); "
        f"model: {result.model_path}"
    )
    return 0
