"""What every subcommand shares: one-line errors (exit 2), help that shows defaults, thread choice."""

from __future__ import annotations

import argparse
import os
import sys
from typing import NoReturn

#: exit status of a user mistake (bad file, field or option)
USAGE_ERROR = 2


def one_line(message: object) -> str:
    """``message`` on one line: a multi-line message (a manifest's problems) joined by ``; ``."""
    lines = [line.strip() for line in str(message).splitlines() if line.strip()]
    return "; ".join(lines) if lines else "unknown error"


def fail(command: str, message: object) -> int:
    """Print ``wsi-ats COMMAND: error: MESSAGE`` on one line to stderr; returns exit status 2."""
    print(f"wsi-ats {command}: error: {one_line(message)}", file=sys.stderr)
    return USAGE_ERROR


class Parser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are one line (no usage block) and whose help shows
    every option's default (subcommand parsers are of the same class)."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        kwargs.setdefault("formatter_class", DefaultsFormatter)
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]

    def error(self, message: str) -> NoReturn:
        print(f"{self.prog}: error: {message} (see {self.prog} --help)", file=sys.stderr)
        self.exit(USAGE_ERROR)


class DefaultsFormatter(argparse.HelpFormatter):
    """Appends ``(default: X)`` to an option's help unless it already says its default; flags
    (off unless given) and required options have none to show."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if (
            "default" in text
            or action.default is None
            or action.default is False
            or action.default == argparse.SUPPRESS
            or not action.option_strings
            or action.required
        ):
            return text
        return f"{text} (default: %(default)s)"


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {text}")
    return value


def positive_float(text: str) -> float:
    """argparse type: a finite number > 0."""
    value = float(text)
    if not (value > 0 and value != float("inf")):
        raise argparse.ArgumentTypeError(f"must be a number > 0, got {text}")
    return value


def non_negative_int(text: str) -> int:
    """argparse type: an integer >= 0."""
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def default_threads() -> int | None:
    """torch CPU threads when the user gives none: 1 on machines with <= 2 cores (torch's own
    choice there oversubscribes as soon as another process holds a core), else torch's choice."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return 1 if cores <= 2 else None


def set_threads(threads: int | None) -> int | None:
    """Set torch's CPU threads to ``threads`` or :func:`default_threads`; returns what was set."""
    chosen = threads or default_threads()
    if chosen:
        import torch

        torch.set_num_threads(chosen)
    return chosen


def add_device_argument(parser: argparse.ArgumentParser) -> None:
    """``--device auto|cpu|cuda`` (default: ``$WSI_ATS_DEVICE``, else auto)."""
    parser.add_argument(
        "--device",
        default=None,
        help="auto, cpu, cuda or cuda:N; auto = cuda when torch sees a GPU (default: "
        "$WSI_ATS_DEVICE, else auto; on an existing cluster set WSI_ATS_DEVICE on the workers)",
    )


def use_device(name: str | None) -> object:
    """Check the device ``name`` (``DeviceError``, a ``ValueError``, when it is not there), make it
    this process's default for later loads (``$WSI_ATS_DEVICE``, inherited by local workers), and
    return it as a ``torch.device``."""
    from wsi_ats.models.accel import DEVICE_ENV, resolve_device

    device = resolve_device(name)
    if name:
        os.environ[DEVICE_ENV] = str(device)
    return device
