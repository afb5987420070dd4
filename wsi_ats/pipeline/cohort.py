"""``predict_cohort``: every slide of a manifest through the Dask graph, resumable and fault tolerant.

At most ``max_in_flight`` slides are in the graph at any time (new ones are submitted as others finish,
with ``distributed.as_completed``), so memory stays flat however long the manifest is. A slide whose
``prediction.json`` exists is skipped; an error in any stage of a slide becomes ``error.json`` and a
row with ``status=error``, never a crash of the cohort. ``predictions.csv`` is rebuilt from the
per-slide files at the end.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
from distributed import Client, Future, as_completed

from wsi_ats.cohort.manifest import Manifest, OnMissing, SlideEntry, load_manifest
from wsi_ats.inference.adaptive import MAX_DRAWS
from wsi_ats.pipeline.cluster import open_client, total_threads, workers_have_gpu
from wsi_ats.pipeline.graph import RunParams, SlideTasks, submit_batch, submit_slide
from wsi_ats.pipeline.state import (
    append_log,
    atomic_write_json,
    collect_predictions,
    is_finished,
    write_error,
    write_predictions_csv,
)
from wsi_ats.pipeline.tasks import ModelRef

RUN_FILE = "run.json"


@dataclass(frozen=True)
class ProgressEvent:
    """Reported after each slide of a run: its outcome and the run's counts so far."""

    slide_id: str
    status: str  # "ok" or "error"
    n_tiles: int  # tiles read and featurised for this slide (0 on error)
    done: int  # slides finished by this run, ok or error
    failed: int  # of which errors
    total: int  # slides this run computes (skipped ones excluded)
    skipped: int  # slides already finished before this run
    error: str = ""


class RunSettingsError(ValueError):
    """``out`` holds results computed with other settings; resuming would mix them."""


def format_error(exc: BaseException, path: str) -> str:
    """``Type: message``, with the slide's path appended when the message does not name it."""
    text = f"{type(exc).__name__}: {exc}".strip()
    return text if path in text else f"{text} ({path})"


def _missing_error(entry: SlideEntry) -> str:
    problem = entry.problem or ""
    kind = "FileNotFoundError" if "not found" in problem else "PermissionError"
    return f"{kind}: {problem} (manifest line {entry.line})"


def _scattered_model(model: Any, client: Client) -> tuple[Any, str, Any]:
    """(task argument, token for keys and run.json, the model's config) of an in-memory model."""
    future = client.scatter(model, broadcast=True, hash=False)
    return future, f"object:{future.key}", model.config


def model_reference(path: str | Path) -> tuple[ModelRef, str, Any]:
    """``(ModelRef, "sha256:<digest>", config)`` of the checkpoint at ``path`` (a ``model.pt`` or
    its run folder); :class:`~wsi_ats.models.CheckpointError` when it is not a usable checkpoint."""
    from wsi_ats.models import CheckpointError, ConfigError, PipelineConfig, read_checkpoint

    ckpt = read_checkpoint(path)
    ref = ModelRef.from_path(path)
    try:
        config = PipelineConfig.from_saved(ckpt["config"])
    except ConfigError as exc:
        raise CheckpointError(ref.path, f"its config is not valid here: {exc}") from None
    with open(ref.path, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()[:16]
    return ref, f"sha256:{digest}", config


def run_settings(
    model_token: str,
    config: Any,
    n_draws: int | None,
    seed: int | None,
    save_features: bool,
    target_halfwidth: float | None = None,
    max_draws: int = MAX_DRAWS,
) -> dict[str, Any]:
    """What ``run.json`` records of a run (the model's ``[predict]`` values fill the gaps)."""
    draws = int(n_draws if n_draws is not None else config.predict.n_draws)
    if target_halfwidth is not None and not target_halfwidth > 0:
        raise RunSettingsError(f"--target-halfwidth must be > 0, got {target_halfwidth}")
    if target_halfwidth is not None and max_draws < draws:
        raise RunSettingsError(f"--max-draws ({max_draws}) is below --n-draws ({draws})")
    return {
        "seed": int(seed if seed is not None else config.predict.seed),
        "n_draws": draws,
        "model": model_token,
        "save_features": bool(save_features),
        "target_halfwidth": None if target_halfwidth is None else float(target_halfwidth),
        "max_draws": None if target_halfwidth is None else int(max_draws),
    }


def check_output_folder(out: str | Path) -> Path:
    """``out`` as a path; :class:`RunSettingsError` when it exists and is not a folder."""
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise RunSettingsError(f"{out} is a file; --out must be a folder (new or of this run)")
    return out


def preflight(
    model: str | Path,
    out: str | Path,
    *,
    n_draws: int | None = None,
    seed: int | None = None,
    save_features: bool = False,
    target_halfwidth: float | None = None,
    max_draws: int = MAX_DRAWS,
) -> dict[str, Any]:
    """Every check of a run that needs no cluster: the checkpoint, the output folder and the
    settings of an earlier run into it. Returns the run's settings; writes nothing."""
    _, token, config = model_reference(model)
    return _checked_settings(
        check_output_folder(out), token, config, n_draws, seed, save_features, target_halfwidth,
        max_draws,
    )  # fmt: skip


def _checked_settings(out: Path, token: str, config: Any, *args: Any) -> dict[str, Any]:
    """:func:`run_settings` ``(token, config, *args)``, refused when ``out`` holds another run's."""
    settings = run_settings(token, config, *args)
    _check_run_settings(out, settings)
    return settings


def _check_run_settings(out: Path, settings: dict[str, Any]) -> None:
    """Refuse to resume into ``out`` when its ``run.json`` records other seed/draws/model."""
    path = out / RUN_FILE
    if path.is_file():
        try:
            old = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise RunSettingsError(
                f"{path} is unreadable ({exc}); use another output folder"
            ) from None
        both_files = all(
            str(m).startswith("sha256:") for m in (old.get("model"), settings["model"])
        )
        keys = ["seed", "n_draws", "save_features", "target_halfwidth", "max_draws"]
        keys += ["model"] if both_files else []
        # (an in-memory model's token is not comparable across runs; runs from before
        # save_features existed did not save them)
        defaults = {"save_features": False, "target_halfwidth": None, "max_draws": None}
        diff = [k for k in keys if old.get(k, defaults.get(k)) != settings[k]]
        if diff:
            details = ", ".join(f"{k}: {old.get(k)!r} -> {settings[k]!r}" for k in diff)
            raise RunSettingsError(
                f"{out} holds results of a run with other settings ({details}); "
                "use another output folder or the original settings"
            )


@contextmanager
def _client_for(client: Client | None) -> Iterator[Client]:
    if client is not None:
        yield client
    else:
        with open_client() as local:
            yield local


def predict_cohort(
    manifest: str | Path | Manifest,
    model: str | Path | Any,
    out: str | Path,
    client: Client | None = None,
    *,
    n_draws: int | None = None,
    seed: int | None = None,
    max_in_flight: int | None = None,
    batch_slides: int = 4,
    retries: int = 2,
    on_missing: OnMissing = "error-row",
    progress: Callable[[ProgressEvent], None] | None = None,
    save_features: bool = False,
    target_halfwidth: float | None = None,
    max_draws: int = MAX_DRAWS,
) -> pd.DataFrame:
    """Predict every slide of ``manifest`` into ``out``; returns the ``predictions.csv`` table.

    ``model`` is a checkpoint path (loaded once per worker) or a ``SlideClassifier`` (scattered once to
    every worker). ``client`` is an existing ``distributed.Client``; None starts a local cluster sized
    to the machine. ``n_draws``/``seed`` default to the model config's ``[predict]`` section; per-slide
    seeds derive from ``(seed, slide_id)``. ``max_in_flight`` (default: 8 per worker thread, at least
    ``4 * batch_slides``) bounds the slides in the graph; ``batch_slides`` slides share one feature
    pass. ``save_features`` also writes each slide's sampled tile features (``features.npy``,
    float32 ``[T*N, D]`` in ``coords.csv`` order), for cohort-level feature extraction.
    ``target_halfwidth`` keeps drawing rounds of ``n_draws`` per slide until its probability's 95%
    interval is narrower, or ``max_draws`` are used (:mod:`wsi_ats.intervals`). The
    manifest is validated first (:class:`~wsi_ats.cohort.manifest.ManifestError`).

    The returned frame has the columns of ``predictions.csv`` and ``attrs`` ``computed``, ``failed``
    and ``skipped`` (lists of slide ids of this run).
    """
    if not isinstance(manifest, Manifest):
        manifest = load_manifest(manifest, on_missing=on_missing)
    out = check_output_folder(out)
    run_args = (n_draws, seed, save_features, target_halfwidth, max_draws)
    # a checkpoint is read (and hashed) once, and checked before any cluster starts or folder is made
    reference = model_reference(model) if isinstance(model, str | Path) else None
    if reference is not None:
        _checked_settings(out, reference[1], reference[2], *run_args)
    out.mkdir(parents=True, exist_ok=True)
    with _client_for(client) as c:
        model_arg, model_token, config = reference or _scattered_model(model, c)
        settings = _checked_settings(out, model_token, config, *run_args)
        atomic_write_json(out / RUN_FILE, settings)
        n_draws, seed = settings["n_draws"], settings["seed"]
        params = RunParams(
            model=model_arg,
            model_token=model_token,
            out=str(out.resolve()),
            n_draws=n_draws,
            seed=seed,
            tile_batch_size=int(config.predict.tile_batch_size),
            retries=retries,
            gpu=workers_have_gpu(c),
            save_features=bool(save_features),
            target_halfwidth=settings["target_halfwidth"],
            max_draws=int(max_draws),
        )
        if max_in_flight is None:  # enough ready work to hide scheduling latency on each thread
            max_in_flight = max(4 * batch_slides, 8 * total_threads(c))
        runner = _Runner(c, params, max(1, max_in_flight), max(1, batch_slides), progress)
        runner.run(manifest)
    df = with_manifest_columns(collect_predictions(out, manifest.slide_ids), manifest)
    write_predictions_csv(df, out)
    df.attrs.update(computed=runner.computed, failed=runner.failed, skipped=runner.skipped)
    return df


def with_manifest_columns(df: pd.DataFrame, manifest: Manifest) -> pd.DataFrame:
    """``df`` (rows in manifest order) with the manifest's ``label`` and ``split`` columns, for
    those it has."""
    if "label" in manifest.columns:
        df["label"] = pd.array([e.label for e in manifest], dtype="Int64")
    if "split" in manifest.columns:
        df["split"] = [e.split or "" for e in manifest]
    return df


class _Runner:
    """The client-side loop: keeps at most ``max_in_flight`` slides in the graph."""

    def __init__(
        self,
        client: Client,
        params: RunParams,
        max_in_flight: int,
        batch_slides: int,
        progress: Callable[[ProgressEvent], None] | None,
    ) -> None:
        self.client = client
        self.params = params
        self.max_in_flight = max_in_flight
        self.batch_slides = batch_slides
        self.progress = progress
        self.out = Path(params.out)
        self.computed: list[str] = []
        self.failed: list[str] = []
        self.skipped: list[str] = []
        self.total = 0
        self.started = time.time()

    def run(self, manifest: Manifest) -> None:
        todo: deque[SlideEntry] = deque()
        for entry in manifest:
            if is_finished(self.out, entry.slide_id):
                self.skipped.append(entry.slide_id)
            else:
                todo.append(entry)
        self.total = len(todo)
        live: dict[str, SlideTasks] = {}
        owner: dict[str, str] = {}  # future key -> slide id
        reading: set[str] = set()  # slides whose tiles are not ready yet
        ready: list[str] = []  # slides whose tiles are ready, waiting for a feature batch
        pending = as_completed()

        def top_up() -> None:
            while todo and len(live) < self.max_in_flight:
                entry = todo.popleft()
                if entry.problem is not None:  # missing/unreadable file: an error row, no compute
                    self._record_error(entry, "view", _missing_error(entry))
                    continue
                st = submit_slide(self.client, entry, self.params)
                live[entry.slide_id] = st
                owner[st.tiles.key] = entry.slide_id
                reading.add(entry.slide_id)
                pending.add(st.tiles)

        def flush() -> None:
            batch, ready[:] = ready[: self.batch_slides], ready[self.batch_slides :]
            slides = [live[s] for s in batch]
            submit_batch(self.client, slides, self.params)
            for st in slides:
                owner[st.finish.key] = st.entry.slide_id
                pending.add(st.finish)

        top_up()
        for fut in pending:
            slide_id = owner.pop(fut.key)
            st = live[slide_id]
            if fut.key == st.tiles.key:
                reading.discard(slide_id)
                if fut.status == "finished":
                    ready.append(slide_id)
                else:
                    self._record_failure(st)
                    del live[slide_id]
            else:
                if fut.status == "finished":
                    self._record_ok(st.entry, fut)
                else:
                    self._record_failure(st)
                del live[slide_id]
            top_up()
            while len(ready) >= self.batch_slides or (ready and not reading):
                flush()

    # --- outcomes -----------------------------------------------------------------------------
    def _record_ok(self, entry: SlideEntry, fut: Future) -> None:
        summary = fut.result()
        self.computed.append(entry.slide_id)
        self._log(entry, "ok", n_tiles=summary["n_tiles"], probability=summary["probability"])
        self._report(entry.slide_id, "ok", summary["n_tiles"], "")

    def _record_failure(self, st: SlideTasks) -> None:
        failed = st.failed_stage()
        stage, fut = failed if failed else ("finish", st.finish)
        try:
            exc = fut.exception() if fut is not None else None
        except Exception as err:  # noqa: BLE001 - CancelledError and friends: report, don't crash
            exc = err
        message = format_error(exc, st.entry.path) if exc else f"{stage} cancelled"
        self._record_error(st.entry, stage, message)

    def _record_error(self, entry: SlideEntry, stage: str, message: str) -> None:
        write_error(self.out, entry.slide_id, message, stage=stage, path=entry.path)
        self.failed.append(entry.slide_id)
        self._log(entry, "error", stage=stage, error=message)
        self._report(entry.slide_id, "error", 0, message)

    def _log(self, entry: SlideEntry, status: str, **fields: Any) -> None:
        record = {"slide_id": entry.slide_id, "status": status, "time": time.time(), **fields}
        append_log(self.out, record)

    def _report(self, slide_id: str, status: str, n_tiles: int, error: str) -> None:
        if self.progress is None:
            return
        done = len(self.computed) + len(self.failed)
        self.progress(
            ProgressEvent(
                slide_id,
                status,
                n_tiles,
                done,
                len(self.failed),
                self.total,
                len(self.skipped),
                error,
            )
        )


def summary_line(df: pd.DataFrame) -> str:
    """One line: how many slides are ok / failed / pending, and how many this run computed."""
    counts = df["status"].value_counts()
    ok, err, pend = (int(counts.get(k, 0)) for k in ("ok", "error", "pending"))
    computed = len(df.attrs.get("computed", [])) + len(df.attrs.get("failed", []))
    skipped = len(df.attrs.get("skipped", []))
    text = f"{len(df)} slides: {ok} ok, {err} failed"
    if pend:
        text += f", {pend} pending"
    text += f" ({computed} computed by this run, {skipped} already finished)"
    if err:
        first = df.loc[df["status"] == "error"].iloc[0]
        text += f"; first failure {first['slide_id']}: {first['error']}"
    warned = int((df.get("warnings", pd.Series(dtype=str)).fillna("") != "").sum())
    if warned:
        text += f"; {warned} with warnings (see the warnings column)"
    return text


def evaluation_line(df: pd.DataFrame) -> str | None:
    """AUC and accuracy over the slides that have a label and a prediction, with their counts;
    None when no such slide."""
    from sklearn.metrics import roc_auc_score

    if "label" not in df.columns:
        return None
    rows = df[(df["status"] == "ok") & df["label"].notna()]
    if rows.empty:
        return None
    labels = rows["label"].astype(int).to_numpy()
    n_pos = int(labels.sum())
    n_neg = len(labels) - n_pos
    correct = int((rows["prediction"].astype(int).to_numpy() == labels).sum())
    auc = (
        f"AUC {roc_auc_score(labels, rows['probability'].to_numpy()):.3f}"
        if n_pos and n_neg
        else "AUC n/a (one class)"
    )
    return (
        f"evaluation on {len(labels)} labelled slides ({n_pos} positive, {n_neg} negative): "
        f"{auc}, accuracy {correct / len(labels):.3f} ({correct}/{len(labels)})"
    )
