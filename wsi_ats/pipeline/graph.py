"""The per-slide task chain and the shared feature batches, submitted as Dask futures.

For one slide (keys hash the slide id, the run seed and the model, so they are stable)::

    view-<id>  ->  sample-<id>  ->  tiles-<id>  ->  features-<batch>  ->  finish-<id>
    (open, low-res    (attention,      (read each      (tiles of several    (aggregate, predict,
     view, mask)       T draws of N)    distinct tile)  slides, one pass)     atomic write)

Later stages get a higher priority so that slides in flight finish before new ones start, and every
task is submitted with ``retries`` so a transient failure is retried (a task lost with a killed worker
is rescheduled by the scheduler itself). The feature stage carries the annotation
``resources={"GPU": 1}`` (``Client.submit``'s ``resources=``, the same annotation ``dask.annotate``
sets) when some worker of the cluster declares a ``GPU`` resource.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from dask.base import tokenize
from distributed import Client, Future

from wsi_ats.cohort.manifest import SlideEntry
from wsi_ats.pipeline import tasks

STAGES = ("view", "sample", "tiles", "features", "finish")
PRIORITY = {stage: i for i, stage in enumerate(STAGES)}


@dataclass(frozen=True)
class RunParams:
    """What every slide of a run shares. ``model`` is a ``ModelRef`` or a scattered model future."""

    model: Any
    model_token: str
    out: str
    n_draws: int
    seed: int
    tile_batch_size: int = 128
    retries: int = 2
    gpu: bool = False
    save_features: bool = False
    target_halfwidth: float | None = None  # adaptive draws (finish task), None = a single round
    max_draws: int = 64


@dataclass
class SlideTasks:
    """The futures of one slide in flight, in stage order (later ones set when submitted)."""

    entry: SlideEntry
    view: Future
    sample: Future
    tiles: Future
    features: Future | None = None
    finish: Future | None = None

    def futures(self) -> list[tuple[str, Future]]:
        chain = [("view", self.view), ("sample", self.sample), ("tiles", self.tiles)]
        chain += [(s, f) for s, f in (("features", self.features), ("finish", self.finish)) if f]
        return chain

    def failed_stage(self) -> tuple[str, Future] | None:
        """The first stage whose future ended in error (or was cancelled), if any."""
        for stage, fut in self.futures():
            if fut.status in ("error", "cancelled"):
                return stage, fut
        return None


def slide_key(stage: str, entry: SlideEntry, params: RunParams) -> str:
    """``<stage>-<token>``, the token a hash of the slide id, its path and the run settings.

    The id itself stays out of the key so that Dask groups tasks by stage (``key_split`` would keep
    words of ids such as ``TCGA-...`` and make one task prefix, with its metrics, per slide).
    """
    # ``out`` and ``save_features`` too: the finish task writes there, and two runs into different
    # folders on one cluster must not share (and so skip) each other's tasks
    token = tokenize(
        entry.slide_id,
        entry.path,
        entry.mpp,
        params.seed,
        params.n_draws,
        params.model_token,
        params.out,
        params.save_features,
        params.target_halfwidth,
        params.max_draws,
    )
    return f"{stage}-{token}"


def submit_slide(client: Client, entry: SlideEntry, params: RunParams) -> SlideTasks:
    """Submit the view -> sample -> tiles chain of one slide."""
    opts = {"retries": params.retries, "pure": True}
    view = client.submit(
        tasks.view_task,
        entry.path,
        entry.slide_id,
        params.model,
        entry.mpp,
        key=slide_key("view", entry, params),
        priority=PRIORITY["view"],
        **opts,
    )
    sample = client.submit(
        tasks.sample_task,
        view,
        params.model,
        params.n_draws,
        params.seed,  # the run seed: sample_slide derives the slide's from (seed, slide_id)
        key=slide_key("sample", entry, params),
        priority=PRIORITY["sample"],
        **opts,
    )
    tiles = client.submit(
        tasks.read_task,
        sample,
        key=slide_key("tiles", entry, params),
        priority=PRIORITY["tiles"],
        **opts,
    )
    return SlideTasks(entry, view, sample, tiles)


def submit_batch(client: Client, slides: list[SlideTasks], params: RunParams) -> Future:
    """One feature task over the tiles of ``slides``, then each slide's finish task."""
    keys = [s.tiles.key for s in slides]  # order matters: it is the split order
    features = client.submit(
        tasks.features_task,
        params.model,
        params.tile_batch_size,
        *[s.tiles for s in slides],
        key=f"features-{tokenize(keys)[:16]}",
        priority=PRIORITY["features"],
        resources={"GPU": 1} if params.gpu else None,
        retries=params.retries,
        pure=True,
    )
    for index, s in enumerate(slides):
        s.features = features
        s.finish = client.submit(
            tasks.finish_task,
            params.model,
            s.view,
            s.sample,
            features,
            index,
            params.out,
            params.save_features,
            params.target_halfwidth,
            params.max_draws,
            params.seed,
            key=slide_key("finish", s.entry, params),
            priority=PRIORITY["finish"],
            retries=params.retries,
            pure=True,
        )
    return features
