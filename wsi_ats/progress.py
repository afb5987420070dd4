"""Progress bars: tqdm on a terminal; one plain line every few seconds when output goes to a file.

A redirected tqdm bar writes a carriage-return update many times a second (tens of KB per run in a
SLURM log). :class:`Progress` is a drop-in ``tqdm`` that, when its stream is not a terminal, prints
``desc: n/total ...`` as a whole line at most every :data:`PLAIN_INTERVAL` seconds, and once at the
end.
"""

from __future__ import annotations

import sys
import time
from typing import Any

from tqdm import tqdm

#: seconds between two plain progress lines (no terminal)
PLAIN_INTERVAL = 10.0


def is_terminal(stream: Any) -> bool:
    """True when ``stream`` is an interactive terminal."""
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty())
    except ValueError:  # closed stream
        return False


class Progress(tqdm):
    """``tqdm`` on a terminal; plain, rate-limited lines otherwise (same arguments and methods)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        stream = kwargs.get("file") or sys.stderr
        self._plain = not is_terminal(stream)
        self._last_line = -float("inf")
        self._closing = False
        if self._plain:
            kwargs.setdefault("mininterval", PLAIN_INTERVAL)
            kwargs.setdefault(
                "bar_format", "{desc}: {percentage:3.0f}%{r_bar}"
            )  # no bar characters in a log
            kwargs["dynamic_ncols"] = False
        super().__init__(*args, **kwargs)

    def display(self, msg: str | None = None, pos: int | None = None) -> bool | None:
        """Draw the bar (terminal), or print one line if the interval has passed (no terminal)."""
        if not getattr(self, "_plain", False):
            return super().display(msg, pos)
        if msg == "":  # tqdm clearing its line: nothing to clear in a log
            return True
        now = time.monotonic()
        if not self._closing and now - self._last_line < PLAIN_INTERVAL:
            return True
        self._last_line = now
        self.fp.write((msg if msg is not None else self.__str__()) + "\n")
        self.fp.flush()
        return True

    def close(self) -> None:
        """Close the bar; without a terminal, a bar that stays (``leave``) prints a last line."""
        if getattr(self, "_plain", False) and not self.disable and not self._closing:
            self._closing = True
            if self.leave is not False:
                self.display()
            self.fp = _Silent()  # tqdm's own closing newline / carriage return
        super().close()


class _Silent:
    """A stream that drops what it is given."""

    def write(self, text: str) -> int:
        return len(text)

    def flush(self) -> None:
        pass
