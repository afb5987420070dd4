"""``wsi-ats convert SRC DST``: stream a slide into an OME-Zarr pyramid."""

from __future__ import annotations

import argparse
import sys


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
    p.add_argument("--chunk-size", type=int, default=512, help="chunk side in pixels (default 512)")
    p.add_argument(
        "--ngff-version",
        choices=("0.4", "0.5"),
        default="0.4",
        help="0.4 writes zarr v2, 0.5 zarr v3 (default 0.4)",
    )
    p.add_argument("--codec", choices=("zstd", "blosc", "none"), default="zstd")
    p.add_argument(
        "--levels", type=int, default=None, help="pyramid levels (default: down to <=1024 px)"
    )
    p.add_argument("--threads", type=int, default=4, help="reader/writer threads (default 4)")
    p.add_argument("--overwrite", action="store_true", help="replace DST if it exists")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    """Convert ``args.src`` to ``args.dst``; returns the exit status (2 on a slide or argument error)."""
    from wsi_ats.slides import SlideError, convert_to_ome_zarr

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
        print(f"wsi-ats convert: error: {exc}", file=sys.stderr)
        return 2
    print(out)
    return 0
