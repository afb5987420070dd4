"""Typed slide errors: every failure names the slide and the cause, never a raw backend traceback."""

from __future__ import annotations

import os


class SlideError(Exception):
    """Base class of every slide error; ``path`` is the slide's path or URL."""

    def __init__(self, path: str | os.PathLike[str], reason: str) -> None:
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


class SlideOpenError(SlideError):
    """The slide cannot be opened (missing, not a slide, unsupported or broken metadata)."""


class SlideReadError(SlideError):
    """A region of an opened slide could not be read (truncated file, corrupt chunk, I/O error)."""


def describe(exc: BaseException) -> str:
    """A one-line cause for an error message: ``TypeName: message``."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
