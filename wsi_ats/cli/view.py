"""``wsi-ats view OUT``: browse a ``predict`` output folder in a web browser (or ``wsi-ats view
SLIDE --model M``: predict one slide into a temporary folder and browse that)."""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from wsi_ats.cli.common import Parser


def _port(text: str) -> int:
    """argparse type: a TCP port, 0 to 65535 (0: any free port)."""
    value = int(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be in 0..65535, got {text}")
    return value


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register ``view`` on the ``wsi-ats`` parser."""
    p: Parser = subparsers.add_parser(
        "view",
        help="web viewer of a predict output folder: cohort table, slides with attention",
        description=(
            "Serve the predict output folder OUT as a local web app and print its URL: the "
            "predictions table (sort, filter), and per slide a deep-zoom viewer with the attention, "
            "the sampled tiles and the tissue mask over the slide, and the sampled tiles at full "
            "resolution. Only the slides OUT names are served. With --model, OUT is one slide "
            "(a file, an OME-Zarr folder or URL): it is predicted into a temporary folder first. "
            "Ctrl-C stops it."
        ),
    )
    p.add_argument(
        "out",
        metavar="OUT",
        help="output folder of `wsi-ats predict` (or, with --model, one slide)",
    )
    p.add_argument(
        "--model",
        type=Path,
        default=None,
        help="RUN/model.pt: OUT is one slide, predicted first (default: none, OUT is a folder)",
    )
    p.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to bind (127.0.0.1: this machine only; 0.0.0.0 exposes every slide of OUT "
        "to the network, without authentication)",
    )
    p.add_argument("--port", type=_port, default=0, help="TCP port (0: any free port)")
    p.add_argument(
        "--manifest",
        type=Path,
        default=None,
        help="the run's manifest, for output folders from a predict that did not record slide "
        "paths (default: none, the paths in OUT)",
    )
    p.add_argument("--log", action="store_true", help="print one line per request")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from wsi_ats.cli.common import fail

    if args.model is None:
        return _serve(args, Path(args.out))
    from wsi_ats.models import CheckpointError
    from wsi_ats.slides import SlideError
    from wsi_ats.viewer.single import predict_into

    with tempfile.TemporaryDirectory(prefix="wsi-ats-view-") as tmp:
        try:
            out = predict_into(args.out, args.model, Path(tmp) / "out")
        except (CheckpointError, SlideError, OSError) as exc:
            return fail("view", exc)
        return _serve(args, out)


def _serve(args: argparse.Namespace, out: Path) -> int:
    from wsi_ats.cli.common import fail
    from wsi_ats.viewer import ViewerError, make_server, serve

    try:
        server = make_server(out, args.host, args.port, args.manifest, quiet=not args.log)
    except ViewerError as exc:
        hint = "" if args.model else " (to view one slide, give --model RUN/model.pt)"
        return fail("view", f"{exc}{hint}")
    except (OSError, ValueError) as exc:  # ManifestError, a port in use, a bad address
        return fail("view", exc)
    print(f"wsi-ats view: {args.out} at {server.url} (Ctrl-C to stop)", flush=True)
    serve(server)
    return 0
