"""``wsi-ats export geojson OUT``: a ``predict`` output folder's tiles and attention as GeoJSON."""

from __future__ import annotations

import argparse
from pathlib import Path

from wsi_ats.cli.common import Parser


def _ratio(text: str) -> float:
    """argparse type: a number in ``[0, 1]``."""
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be in [0, 1], got {text}")
    return value


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``export`` (with its one format, ``geojson``) on the ``wsi-ats`` parser."""
    p = subparsers.add_parser(
        "export",
        help="export a predict output folder for other tools (geojson: QuPath)",
        description="Export the outputs of `wsi-ats predict` in another tool's format.",
    )
    formats = p.add_subparsers(dest="format", metavar="FORMAT", parser_class=Parser)
    formats.required = True
    g = formats.add_parser(
        "geojson",
        help="sampled tiles and attention cells per slide, level-0 pixels (QuPath)",
        description=(
            "Write OUT/slides/<folder>/<folder>.geojson for every finished slide of the predict "
            "output folder OUT: a FeatureCollection in level-0 pixel coordinates that QuPath "
            "imports (File > Import objects): one Polygon annotation per sampled tile "
            "(classification 'sampled tile'; draw, rank, cell, attention) and one Polygon "
            "detection per attention cell whose attention is at least --min-ratio times the "
            "slide's peak (classification 'attention cell'; attention)."
        ),
    )
    g.add_argument("out", type=Path, metavar="OUT", help="output folder of `wsi-ats predict`")
    g.add_argument(
        "--min-ratio",
        type=_ratio,
        default=1e-3,
        help="cells exported: attention >= this x the slide's peak (1e-3: the cells the heatmap "
        "colours; 0: every cell with nonzero attention)",
    )
    g.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from wsi_ats.cli.common import fail
    from wsi_ats.inference.export import export_geojson

    try:
        written = export_geojson(args.out, min_ratio=args.min_ratio)
    except (OSError, ValueError) as exc:  # ExportError, an unreadable file
        return fail("export geojson", exc)
    print(f"{len(written)} GeoJSON file(s) under {args.out / 'slides'}")
    return 0
