"""The ``wsi-ats`` command line: one module per subcommand, each with ``add_parser``."""

from __future__ import annotations

import argparse
import importlib
import sys

# subcommand name -> module that defines ``add_parser(subparsers)`` and sets ``func`` on it
SUBCOMMANDS = {
    "demo": "wsi_ats.cli.demo",
    "synth": "wsi_ats.cli.synth",
    "convert": "wsi_ats.cli.convert",
    "train": "wsi_ats.cli.train",
    "predict": "wsi_ats.cli.predict",
    "heatmap": "wsi_ats.cli.heatmap",
}


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with every subcommand."""
    parser = argparse.ArgumentParser(
        prog="wsi-ats",
        description="Slide-level predictions on whole-slide images by attention sampling.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for module in SUBCOMMANDS.values():
        importlib.import_module(module).add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``wsi-ats`` script; returns the exit status."""
    args = build_parser().parse_args(argv)
    status = args.func(args)
    return int(status or 0)


if __name__ == "__main__":
    sys.exit(main())
