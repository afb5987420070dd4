"""The opening line and the ending of a benchmark script's verbatim output."""

from __future__ import annotations

import sys
from datetime import datetime, timezone
from pathlib import Path


def command_line(script: str) -> str:
    """``# benchmarks/<script> <its arguments>  (<UTC time>)``: the output's first line."""
    now = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return f"# benchmarks/{script} {' '.join(sys.argv[1:])}  ({now})"


def emit(lines: list[str], out: Path | None) -> int:
    """Print ``lines`` and, with ``out``, write them there too; 0 (the script's exit status)."""
    text = "\n".join(lines)
    print(text)
    if out:
        out.write_text(text + "\n")
    return 0
