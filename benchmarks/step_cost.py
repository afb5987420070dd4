"""What one training step costs on the demo's spec, before and after two changes that leave its
gradients as they were:

- the slides' own tiles ran through the feature network with autograd (the graph kept) even
  where no loss trains through them (``train.slide_to_features = 0`` with the tile memory on);
  a slide-loss weight of 1e-12 on the features keeps the graph with the same work;
- each slide's cell strata (the stratum logits) were computed in every step, two to three times;
  a store that does not keep them computes them once a slide and step (less than before).

Steps on every pairing of a negative with a positive slide of a small demo cohort (4 slides: steps
with and without check slides, whose tiles train nothing), the weights held still (SGD, lr 0), the
variants interleaved, one thread; the median seconds per step and the ratios to today's, at the
demo's first and last numbers of tiles per slide.

    python benchmarks/step_cost.py --out benchmarks/results/step_cost.txt
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch
from report import command_line, emit

from wsi_ats.cli.demo import demo_config
from wsi_ats.models import build_model
from wsi_ats.stages import attention_map_size
from wsi_ats.synth import make_cohort
from wsi_ats.training import SlideStore, read_cohort
from wsi_ats.training.step import StepSettings, StepState, train_step

#: variant: (slide-loss weight on the features, whether the store keeps the cell strata)
VARIANTS = {
    "graph kept, strata each step": (1e-12, False),
    "strata each step": (0.0, False),
    "today": (0.0, True),
}


class StrataEachStep(SlideStore):
    """A store that computes a slide's cell strata whenever they are asked for."""

    def cell_strata(self, slide: object, compute: Callable[[], torch.Tensor | None]) -> object:
        return compute()


def time_steps(manifest: Path, n_patches: int, reps: int) -> dict[str, float]:
    """Median seconds per step of each variant at ``n_patches`` tiles per slide."""
    slides = read_cohort(manifest)
    runs = {}
    for name, (weight, keep_strata) in VARIANTS.items():
        config = demo_config().replace(train={"slide_to_features": weight})
        model = build_model(config, seed=0)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
        state = StepState.for_model(model)
        store = (SlideStore if keep_strata else StrataEachStep)(config, 2)
        # as training does: the cohort strata (exploration, stratum logits) and the check slides
        strata = store.fit_strata(slides, lambda view, m=model: attention_map_size(m, view))
        model.attention_net.set_strata(strata)
        state.contrast.choose_checks([(s.slide_id, s.label) for s in slides])
        runs[name] = (model, optimizer, state, store)
    # every pairing of a negative with a positive slide: steps with and without check slides
    # (their tiles train nothing), as a run's batches mix them
    batches = [[n, p] for n in slides if n.label == 0 for p in slides if p.label == 1]
    times: dict[str, list[float]] = {name: [] for name in VARIANTS}
    gen = torch.Generator().manual_seed(0)
    try:
        for rep in range(reps + 1):  # the first round warms up (reads, the tile memory)
            for name, (model, optimizer, state, store) in runs.items():
                t0 = time.perf_counter()
                for batch in batches:
                    settings = StepSettings(n_patches, 0.5)
                    train_step(model, optimizer, store, batch, gen, settings, state)
                if rep:
                    times[name].append((time.perf_counter() - t0) / len(batches))
    finally:
        for *_, store in runs.values():
            store.close()
    return {name: sorted(v)[len(v) // 2] for name, v in times.items()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--cohort", type=Path, help="a manifest (default: 4 demo slides, synthesised)")
    ap.add_argument("--reps", type=int, default=20)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        manifest = args.cohort or make_cohort(
            Path(tmp) / "cohort", 4, 4096, seed=0, spot_diameter=0.03 * 4096,
            splits=(("train", 1.0),),
        )  # fmt: skip
        config = demo_config()
        lines = [
            command_line("step_cost.py"),
            f"# pipelines/demo.toml, 2 slides a step (one per label, every pairing), "
            f"{args.reps} interleaved repetitions, median ms per step (ratio to today's)",
            f"# machine: {platform.machine()}, torch {torch.__version__}, 1 thread",
            "tiles a slide  " + "".join(f"{name:>38}" for name in VARIANTS),
        ]
        for n in (config.train.n_patches_start, config.sampling.n_patches):
            med = time_steps(manifest, n, args.reps)
            cells = [f"{t * 1000:.0f} ms ({t / med['today']:.2f}x)" for t in med.values()]
            lines.append(f"{n:13d}  " + "".join(f"{c:>38}" for c in cells))
    return emit(lines, args.out)


if __name__ == "__main__":
    sys.exit(main())
