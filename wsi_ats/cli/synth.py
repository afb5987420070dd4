"""``wsi-ats synth``: write a synthetic cohort (pyramidal TIFFs, manifest, ground truth)."""

from __future__ import annotations

import argparse
import logging


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register the ``synth`` subcommand."""
    p = subparsers.add_parser(
        "synth",
        help="write a synthetic cohort of pyramidal slides with known lesions",
        description=(
            "Write N synthetic tiled pyramidal TIFF slides (tissue, candidate spots; positive "
            "slides have 1-2 malignant spots that only high resolution reveals) into OUT_DIR, "
            "with manifest.csv (paths relative to OUT_DIR) and ground_truth.json (lesion boxes in "
            "level-0 px). An existing cohort with the same parameters is reused. "
            "--variant distractors makes the candidate spots pale and adds dark benign "
            "distractors to every slide, so that a stain-darkness prior misleads."
        ),
    )
    p.add_argument("out_dir", metavar="OUT_DIR", help="output folder")
    p.add_argument("--n-slides", type=int, required=True, help="number of slides")
    p.add_argument("--size", type=int, required=True, help="level-0 side in pixels (square)")
    p.add_argument("--seed", type=int, default=0, help="cohort seed")
    p.add_argument("--positive-fraction", type=float, default=0.5, help="share of label-1 slides")
    p.add_argument("--format", choices=("tiff", "zarr"), default="tiff", help="slide format")
    p.add_argument("--compression", choices=("jpeg", "zlib"), default="jpeg", help="tile codec")
    p.add_argument("--workers", type=int, default=1, help="processes writing slides in parallel")
    p.add_argument(
        "--spot-diameter",
        type=float,
        default=None,
        metavar="PX",
        help="spot diameter in level-0 pixels (default 1.5%% of the side)",
    )
    p.add_argument("--mpp", type=float, default=0.5, help="level-0 microns per pixel")
    p.add_argument(
        "--variant",
        choices=("standard", "distractors"),
        default="standard",
        help=(
            "standard: dark candidate spots; distractors: pale candidate spots plus 4-10 dark "
            "benign distractors per slide (default: %(default)s)"
        ),
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Generate the cohort and print the manifest path."""
    from wsi_ats.cli.common import fail
    from wsi_ats.synth import make_cohort

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        manifest = make_cohort(
            args.out_dir,
            n_slides=args.n_slides,
            size=args.size,
            seed=args.seed,
            positive_fraction=args.positive_fraction,
            fmt=args.format,
            compression=args.compression,
            workers=args.workers,
            spot_diameter=args.spot_diameter,
            mpp=args.mpp,
            progress=True,
            variant=args.variant,
        )
    except ValueError as exc:  # bad parameters, or spots that do not fit (SynthError)
        return fail("synth", exc)
    print(manifest)
    return 0
