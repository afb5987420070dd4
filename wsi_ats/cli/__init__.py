"""The ``wsi-ats`` command line: one module per subcommand, each with ``add_parser``."""

from __future__ import annotations

import argparse
import importlib
import sys

from wsi_ats.cli.common import Parser, fail

# subcommand name -> module that defines ``add_parser(subparsers)`` and sets ``func`` on it
SUBCOMMANDS = {
    "demo": "wsi_ats.cli.demo",
    "synth": "wsi_ats.cli.synth",
    "convert": "wsi_ats.cli.convert",
    "train": "wsi_ats.cli.train",
    "predict": "wsi_ats.cli.predict",
    "heatmap": "wsi_ats.cli.heatmap",
    "export": "wsi_ats.cli.export",
    "view": "wsi_ats.cli.view",
}


def build_parser() -> argparse.ArgumentParser:
    """The top-level parser with every subcommand."""
    from wsi_ats import __version__

    parser = Parser(
        prog="wsi-ats",
        description="Slide-level predictions on whole-slide images by attention sampling.",
    )
    parser.add_argument("--version", action="version", version=f"wsi-ats {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    sub.required = True
    for module in SUBCOMMANDS.values():
        importlib.import_module(module).add_parser(sub)
    return parser


def user_errors() -> tuple[type[BaseException], ...]:
    """Exception types that mean bad input (a file, a field, an option), never a bug."""
    from wsi_ats.cohort.manifest import ManifestError
    from wsi_ats.models import CheckpointError, ConfigError
    from wsi_ats.slides import SlideError

    return (ManifestError, CheckpointError, ConfigError, SlideError)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``wsi-ats`` script; returns the exit status.

    Subcommands report their users' mistakes themselves (one line, exit 2); any that slips through
    as a typed input error is reported the same way here rather than as a traceback.
    """
    args = build_parser().parse_args(argv)
    try:
        status = args.func(args)
    except user_errors() as exc:
        return fail(args.command, exc)
    except KeyboardInterrupt:
        print(f"wsi-ats {args.command}: interrupted", file=sys.stderr)
        return 130
    return int(status or 0)


if __name__ == "__main__":
    sys.exit(main())
