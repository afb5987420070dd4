"""``wsi-ats convert SRC DST``: stream a slide into an OME-Zarr pyramid."""

from __future__ import annotations

import argparse
from pathlib import Path

from wsi_ats.cli.common import positive_int

# wsi_ats.slides.convert's defaults, repeated so that building the parser imports no zarr (a test
# checks that they agree)
DEFAULT_CHUNK, DEFAULT_INNER_CHUNK, DEFAULT_SHARD = 512, 64, 1024


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
        "--chunk-size",
        type=positive_int,
        default=None,
        help=f"chunk side in pixels, even (default: {DEFAULT_CHUNK}; with --shard, the inner chunk: "
        f"{DEFAULT_INNER_CHUNK})",
    )
    p.add_argument(
        "--shard",
        type=positive_int,
        nargs="?",
        const=DEFAULT_SHARD,
        default=None,
        metavar="PX",
        help="write zarr v3 shards of PX x PX pixels (default PX when given alone: "
        f"{DEFAULT_SHARD}; a multiple of the chunk size) holding small inner chunks, so that a "
        "tile read fetches only the inner chunks it needs, by byte range (remote stores); "
        "implies --ngff-version 0.5 (default: no sharding, one file per chunk)",
    )
    p.add_argument(
        "--ngff-version",
        choices=("0.4", "0.5"),
        default=None,
        help="0.4 writes zarr v2, 0.5 zarr v3 (default: 0.4, or 0.5 with --shard)",
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
    if args.shard is not None and args.ngff_version == "0.4":
        return fail("convert", "--shard writes zarr v3: use --ngff-version 0.5 (or leave it out)")
    chunk = args.chunk_size
    if chunk is None:
        chunk = DEFAULT_CHUNK if args.shard is None else DEFAULT_INNER_CHUNK
    if chunk % 2:
        return fail("convert", f"--chunk-size must be even, got {chunk}")
    if args.shard is not None and args.shard % chunk:
        return fail(
            "convert",
            f"--shard {args.shard} must be a multiple of the chunk size {chunk} "
            "(choose --shard or --chunk-size accordingly)",
        )
    version = args.ngff_version or ("0.4" if args.shard is None else "0.5")
    try:
        out = convert_to_ome_zarr(
            args.src,
            args.dst,
            chunk_size=chunk,
            codec=args.codec,
            levels=args.levels,
            ngff_version=version,
            overwrite=args.overwrite,
            threads=args.threads,
            progress=not args.quiet,
            shard_size=args.shard,
        )
    except (SlideError, FileExistsError, ValueError) as exc:
        return fail("convert", exc)
    print(out)
    return 0
