"""``wsi-ats convert SRC DST``: stream a slide into an OME-Zarr pyramid."""

from __future__ import annotations

import argparse
from pathlib import Path

from wsi_ats.cli.common import positive_int


def add_parser(subparsers: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """Add the ``convert`` subcommand."""
    p = subparsers.add_parser(
        "convert",
        help="convert a slide (any OpenSlide format or OME-Zarr) to an OME-Zarr pyramid",
        description="Stream a slide into an OME-Zarr (NGFF multiscales) pyramid, chunk by chunk; "
        "level 0 is pixel-exact, lower levels are 2x2 area means.",
    )
    p.add_argument("src", help="source slide: a file OpenSlide reads, an OME-Zarr folder or URL")
    p.add_argument("dst", help="output OME-Zarr folder (e.g. slide.ome.zarr)")
    p.add_argument(
        "--chunk-size", type=positive_int, default=512, help="chunk side in pixels (even)"
    )
    p.add_argument(
        "--ngff-version",
        choices=("0.4", "0.5"),
        default="0.4",
        help="0.4 writes zarr v2, 0.5 zarr v3",
    )
    p.add_argument(
        "--codec",
        choices=("zstd", "blosc", "none"),
        default="zstd",
        help="chunk compression: zstd, blosc (zstd inside Blosc) or none",
    )
    p.add_argument(
        "--levels",
        type=positive_int,
        default=None,
        help="pyramid levels (default: down to <=1024 px)",
    )
    p.add_argument("--threads", type=positive_int, default=4, help="reader/writer threads")
    p.add_argument("--overwrite", action="store_true", help="replace DST if it exists")
    p.add_argument(
        "--quiet",
        action="store_true",
        help="no progress (without a terminal, progress is one line every few seconds)",
    )
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    """Convert ``args.src`` to ``args.dst``; returns the exit status (2 on a slide or argument error)."""
    from wsi_ats.cli.common import fail
    from wsi_ats.slides import SlideError, convert_to_ome_zarr

    dst = Path(args.dst)
    if dst.exists() and not args.overwrite:
        return fail(
            "convert", f"{dst} exists; add --overwrite to replace it, or choose another DST"
        )
    if args.chunk_size % 2:
        return fail("convert", f"--chunk-size must be even, got {args.chunk_size}")
    try:
        out = convert_to_ome_zarr(
            args.src,
            args.dst,
            chunk_size=args.chunk_size,
            codec=args.codec,
            levels=args.levels,
            ngff_version=args.ngff_version,
            overwrite=args.overwrite,
            threads=args.threads,
            progress=not args.quiet,
        )
    except (SlideError, FileExistsError, ValueError) as exc:
        return fail("convert", exc)
    print(out)
    return 0
