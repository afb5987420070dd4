"""``wsi-ats heatmap SLIDE --model RUN/model.pt --out PNG``: attention over the thumbnail."""

from __future__ import annotations

import argparse
from pathlib import Path

from wsi_ats.cli.common import positive_float, positive_int


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "heatmap",
        help="predict one slide and draw its attention heatmap",
        description="Attention over the slide's low-res view, sampled tiles outlined, as an image "
        "(PNG, JPEG or TIFF, from the name of --out).",
    )
    p.add_argument("slide", help="slide path or URL")
    p.add_argument("--model", required=True, type=Path, help="RUN/model.pt (or the run folder)")
    p.add_argument("--out", required=True, type=Path, help="image to write: .png, .jpg or .tif")
    p.add_argument(
        "--draws",
        type=positive_int,
        help="draws of N tiles in the first round (default: the model's n_draws; its "
        "predict.decision_max_draws adds rounds while the decision is open)",
    )
    p.add_argument("--seed", type=int, help="run seed (default: the model's predict.seed)")
    p.add_argument(
        "--target-halfwidth",
        type=positive_float,
        default=None,
        metavar="W",
        help="keep drawing rounds of --draws until the probability's 95%% interval has a "
        "half-width below W, or --max-draws are used (default: one round, no target)",
    )
    p.add_argument(
        "--max-draws",
        type=positive_int,
        default=64,
        help="with --target-halfwidth: at most this many draws (default 64)",
    )
    p.add_argument(
        "--mpp",
        type=positive_float,
        default=None,
        help="the slide's level-0 um/px, when it reports none or a wrong one (models whose tiles "
        "are placed in microns; default: the slide's own)",
    )
    p.add_argument(
        "--size",
        type=positive_int,
        default=1024,
        help="longest side of the map, px (title and colour bar are added around it)",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from wsi_ats.cli.common import fail
    from wsi_ats.inference import predict_slide
    from wsi_ats.inference.heatmap import heatmap_of, image_format, save_image
    from wsi_ats.models import CheckpointError, load_model
    from wsi_ats.slides import SlideError

    try:
        image_format(args.out)  # before any work: a folder or an unknown suffix is refused
        model = load_model(args.model)
        pred, view = predict_slide(
            args.slide, model, n_draws=args.draws, seed=args.seed, return_view=True,
            target_halfwidth=args.target_halfwidth, max_draws=args.max_draws, mpp=args.mpp,
        )  # fmt: skip
    except (CheckpointError, SlideError, ValueError) as exc:
        return fail("heatmap", exc)
    save_image(heatmap_of(pred, view, max_side=args.size), args.out)
    warnings = pred.extra.get("warnings")
    print(
        f"{pred.slide_id}: probability {pred.probability:.3f} "
        f"(95% CI {pred.ci_low:.3f}-{pred.ci_high:.3f}, {pred.n_draws} draws of "
        f"{pred.n_patches} tiles); heatmap: {args.out}"
        + (f"; warning: {warnings}" if warnings else "")
    )
    return 0
