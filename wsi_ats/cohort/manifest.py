"""Cohort manifests: a CSV with columns ``slide_id,path[,label][,split]``, checked before any compute.

Every problem is collected, with its line number in the CSV (the header is line 1), and raised together
as one :class:`ManifestError`. Relative paths are resolved against the manifest's folder. Remote URLs
(``http``, ``https``, ``s3``, ``gs``) are kept as they are and not checked here; ``file://`` is a local
path; any other ``scheme://`` is a problem of its line (:mod:`wsi_ats.slides.locations`).

Missing or unreadable slide files are a special case: ``on_missing="error-row"`` (the default) keeps
such a slide in the manifest with :attr:`SlideEntry.problem` set, so that the cohort run reports it as a
row with ``status=error`` while the other slides are computed; ``on_missing="fail"`` makes it a
manifest problem like the others.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from wsi_ats.slides.locations import is_url, local_path, location_problem

from .paths import slide_dir_name

REQUIRED_COLUMNS = ("slide_id", "path")
OPTIONAL_COLUMNS = ("label", "split", "mpp")
OnMissing = Literal["error-row", "fail"]
#: more bad labels than this are reported as one problem (string labels: every row is wrong)
MAX_LABEL_LINES = 3


@dataclass(frozen=True)
class ManifestProblem:
    """One problem of a manifest: ``line`` is the CSV line number (1 = header, None = whole file)."""

    line: int | None
    message: str

    def __str__(self) -> str:
        return f"line {self.line}: {self.message}" if self.line is not None else self.message


class ManifestError(ValueError):
    """A manifest cannot be used; ``problems`` lists every problem found, with line numbers."""

    def __init__(self, path: str | Path, problems: list[ManifestProblem]) -> None:
        self.path = Path(path)
        self.problems = list(problems)
        lines = "\n".join(f"  {p}" for p in self.problems)
        n = len(self.problems)
        if n == 1:
            super().__init__(f"manifest {self.path}: {self.problems[0]}")
        else:
            super().__init__(f"manifest {self.path} has {n} problems:\n{lines}")


@dataclass(frozen=True)
class SlideEntry:
    """One row of a manifest. ``path`` is absolute (or a URL); ``problem`` says why it cannot be read."""

    slide_id: str
    path: str
    line: int
    label: int | None = None
    split: str | None = None
    problem: str | None = None
    mpp: float | None = None  # um/px of level 0 from an ``mpp`` column (overrides the slide's)


@dataclass(frozen=True)
class Manifest:
    """A validated manifest: its file and its rows in file order."""

    path: Path
    entries: list[SlideEntry] = field(default_factory=list)
    columns: tuple[str, ...] = REQUIRED_COLUMNS  # the columns of the CSV header (known ones)

    def __len__(self) -> int:
        return len(self.entries)

    def __iter__(self) -> Iterator[SlideEntry]:
        return iter(self.entries)

    @property
    def slide_ids(self) -> list[str]:
        return [e.slide_id for e in self.entries]

    def select_split(self, split: str) -> Manifest:
        """The rows whose ``split`` is ``split`` (case-insensitive); :class:`ManifestError` when
        none is."""
        if "split" not in self.columns:
            raise ManifestError(
                self.path, [ManifestProblem(1, f"no split column for --split {split}")]
            )
        wanted = split.strip().lower()
        rows = [e for e in self.entries if (e.split or "").strip().lower() == wanted]
        if not rows:
            found = sorted({(e.split or "").strip().lower() for e in self.entries} - {""})
            raise ManifestError(
                self.path,
                [
                    ManifestProblem(
                        None,
                        f"no rows with split {split!r}; splits found: {', '.join(found) or 'none'}",
                    )
                ],
            )
        return Manifest(self.path, rows, self.columns)


def resolve_slide_path(path: str, base: Path) -> str:
    """``path`` as an absolute path (relative ones against ``base``; ``file://`` prefix removed), or
    unchanged if it is a remote URL."""
    if is_url(path):
        return path
    p = Path(local_path(path)).expanduser()
    return str(p if p.is_absolute() else (base / p).resolve())


def path_problem(path: str) -> str | None:
    """Why the local slide at ``path`` cannot be read (missing, not readable), or None."""
    if is_url(path):
        return None
    p = Path(path)
    if not p.exists():
        return f"slide file not found: {path}"
    mode = os.R_OK | (os.X_OK if p.is_dir() else 0)
    if not os.access(p, mode):
        return f"slide file not readable: {path}"
    return None


def parse_label(text: str) -> int:
    """A binary label from its CSV text (``0``/``1``, also ``0.0``/``1.0``); ``ValueError`` otherwise."""
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"label must be 0 or 1, got {text!r}") from None
    if value not in (0.0, 1.0):
        raise ValueError(f"label must be 0 or 1, got {text!r}")
    return int(value)


def _read_rows(path: Path) -> Iterator[tuple[int, list[str]]]:
    """``(line number where the record starts, fields)`` for each CSV record, header included."""
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        start = 1
        for fields in reader:
            yield start, fields
            start = reader.line_num + 1


def load_manifest(
    path: str | Path,
    *,
    require_label: bool = False,
    on_missing: OnMissing = "error-row",
) -> Manifest:
    """Read and validate the manifest at ``path``; raises :class:`ManifestError` listing all problems.

    Checks: required columns (``slide_id``, ``path``, and ``label`` if ``require_label``), one value per
    column on each row, non-empty and unique ``slide_id``s, non-empty paths, labels 0/1 (empty allowed
    unless ``require_label``), and that local slide paths exist and are readable (see ``on_missing``).
    """
    if on_missing not in ("error-row", "fail"):
        raise ValueError(f"on_missing must be 'error-row' or 'fail', got {on_missing!r}")
    path = Path(path)
    try:
        rows = list(_read_rows(path))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise ManifestError(path, [ManifestProblem(None, f"cannot read: {exc}")]) from exc
    if not rows:
        raise ManifestError(path, [ManifestProblem(None, "empty file (no header)")])

    header_line, header = rows[0]
    header = [h.strip() for h in header]
    required = REQUIRED_COLUMNS + (("label",) if require_label else ())
    missing_cols = [c for c in required if c not in header]
    dup_cols = sorted({c for c in header if header.count(c) > 1 and c})
    problems: list[ManifestProblem] = []
    if missing_cols:
        found = ", ".join(h for h in header if h) or "none"
        problems.append(
            ManifestProblem(
                header_line,
                f"missing column(s): {', '.join(missing_cols)} (columns found: {found}); "
                "the header must name slide_id,path[,label][,split]",
            )
        )
    if dup_cols:
        problems.append(ManifestProblem(header_line, f"duplicate column(s): {', '.join(dup_cols)}"))
    if problems:
        raise ManifestError(path, problems)

    col = {
        name: header.index(name) for name in REQUIRED_COLUMNS + OPTIONAL_COLUMNS if name in header
    }
    base = path.resolve().parent
    bad_labels: list[tuple[int, str]] = []  # (line, text): reported once, not once per row
    first_line: dict[str, int] = {}
    folder_owner: dict[str, tuple[str, int]] = {}  # case-folded output folder -> (id, line)
    entries: list[SlideEntry] = []
    for line, fields in rows[1:]:
        if not any(f.strip() for f in fields):
            continue  # blank line
        if len(fields) != len(header):
            problems.append(
                ManifestProblem(line, f"expected {len(header)} fields, found {len(fields)}")
            )
            continue
        slide_id = fields[col["slide_id"]].strip()
        raw_path = fields[col["path"]].strip()
        row_problems: list[str] = []
        if not slide_id:
            row_problems.append("empty slide_id")
        elif slide_id in first_line:
            row_problems.append(
                f"duplicate slide_id {slide_id!r} (first on line {first_line[slide_id]})"
            )
        else:
            first_line[slide_id] = line
            folder = slide_dir_name(slide_id).casefold()
            owner = folder_owner.setdefault(folder, (slide_id, line))
            if owner[0] != slide_id:  # case-only difference: one folder on macOS / Windows
                row_problems.append(
                    f"slide_id {slide_id!r} differs from {owner[0]!r} (line {owner[1]}) only in "
                    "case; their output folders would collide on case-insensitive filesystems"
                )
        label: int | None = None
        label_text = fields[col["label"]].strip() if "label" in col else ""
        if label_text:
            try:
                label = parse_label(label_text)
            except ValueError as exc:
                bad_labels.append((line, label_text))
                row_problems.append(str(exc))
        elif require_label:
            row_problems.append("empty label")
        split = fields[col["split"]].strip() or None if "split" in col else None
        mpp: float | None = None
        mpp_text = fields[col["mpp"]].strip() if "mpp" in col else ""
        if mpp_text:
            try:
                mpp = float(mpp_text)
            except ValueError:
                mpp = -1.0
            if not 0.05 <= mpp <= 20.0:  # slides.resolution.PLAUSIBLE_MPP
                row_problems.append(
                    f"mpp must be a resolution in um/px between 0.05 and 20, got {mpp_text!r}"
                )
        problem = None
        if not raw_path:
            row_problems.append("empty path")
            resolved = ""
        elif (scheme_problem := location_problem(raw_path)) is not None:
            row_problems.append(scheme_problem)
            resolved = ""
        else:
            resolved = resolve_slide_path(raw_path, base)
            problem = path_problem(resolved)
            if problem is not None and on_missing == "fail":
                row_problems.append(problem)
        problems.extend(ManifestProblem(line, f"{slide_id or '?'}: {m}") for m in row_problems)
        if not row_problems:
            entries.append(SlideEntry(slide_id, resolved, line, label, split, problem, mpp))
    if len(bad_labels) > MAX_LABEL_LINES:  # one line for them all, not one per row
        problems = [p for p in problems if "label must be 0 or 1" not in p.message]
        problems.append(_label_problem(bad_labels))
    if problems:
        raise ManifestError(path, problems)
    if not entries:
        raise ManifestError(path, [ManifestProblem(None, "no slides listed")])
    known = tuple(c for c in REQUIRED_COLUMNS + OPTIONAL_COLUMNS if c in col)
    return Manifest(path, entries, known)


def _label_problem(bad: list[tuple[int, str]]) -> ManifestProblem:
    """One problem for every label that is not 0 or 1: the lines and the distinct values."""
    values = sorted({text for _, text in bad})
    shown = ", ".join(repr(v) for v in values[:5]) + (", ..." if len(values) > 5 else "")
    lines = [line for line, _ in bad]
    return ManifestProblem(
        None,
        f"label must be 0 or 1 on {len(bad)} rows (lines {lines[0]}-{lines[-1]}), got {shown}; "
        "map the labels to 0/1 (e.g. normal -> 0, tumor -> 1)",
    )
