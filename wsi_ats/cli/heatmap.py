"""``wsi-ats heatmap SLIDE --model RUN/model.pt --out PNG``: attention over the thumbnail."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "heatmap",
        help="predict one slide and draw its attention heatmap",
        description="Attention over the slide's low-res view, sampled tiles outlined, as a PNG.",
    )
    p.add_argument("slide", help="slide path or URL")
    p.add_argument("--model", required=True, type=Path, help="RUN/model.pt (or the run folder)")
    p.add_argument("--out", required=True, type=Path, help="PNG to write")
    p.add_argument("--draws", type=int, help="draws of N tiles (default: the model's n_draws)")
    p.add_argument("--seed", type=int, help="run seed (default: the model's predict.seed)")
    p.add_argument("--size", type=int, default=1024, help="longest side of the PNG, pixels")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from wsi_ats.inference import predict_slide
    from wsi_ats.inference.heatmap import heatmap_of, save_png
    from wsi_ats.models import CheckpointError
    from wsi_ats.slides import SlideError

    try:
        pred, view = predict_slide(
            args.slide, args.model, n_draws=args.draws, seed=args.seed, return_view=True
        )
    except (CheckpointError, SlideError, ValueError) as exc:  # ValueError: e.g. --draws 0
        print(f"wsi-ats heatmap: {exc}", file=sys.stderr)
        return 2
    save_png(heatmap_of(pred, view, max_side=args.size), args.out)
    print(
        f"{pred.slide_id}: probability {pred.probability:.3f} ± {pred.std:.3f} "
        f"({pred.n_draws} draws of {pred.n_patches} tiles); heatmap: {args.out}"
    )
    return 0
