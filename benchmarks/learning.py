"""Does the attention learn where to look without a prior? Side by side on one synthetic variant.

    python benchmarks/learning.py --variant standard      # -> results/learning_standard.txt
    python benchmarks/learning.py --variant distractors   # -> results/learning_distractors.txt
    python benchmarks/learning.py --variant standard --ablation   # dev cohort, each remedy off

Cohorts (cached under benchmarks/_cache, seeded): 200 slides of 16k x 16k px (train 120, val 20,
test 60), seed 0; the ablation uses a separate development cohort (seed 7, 60/20/20) on which the
defaults were chosen, so no knob is tuned on the cohort it is scored on. ``standard``: candidate
spots are the darkest structures (a stain-density prior is close to an oracle); ``distractors``:
dark benign discs in every slide, lesions on pale spots no darker than the stroma (the prior misleads).

Rows, every trained sampling row with the same budget (pipelines/baselines.toml: 10 epochs, N = 16
tiles per draw after annealing, 4 draws per test slide):

1. the default remedies, no prior; 2. the same + stain prior 24; 3. prior 24 only, attention frozen
(the untrained net + prior decides where to look); 4. plain attention sampling (paper settings, no
remedy, no prior); 5. uniform sampling over tissue (same N, feature net, losses); 6. low resolution
only; 7. the exact dense evaluation of model 1 (every tissue tile, full attention) on 20 test slides;
8-9. a CLAM-style pipeline: a frozen CompactCNN over every non-overlapping tissue tile plus a
gated-attention MIL head (Ilse et al. 2018) trained on the bags, with random frozen weights
(nothing trained) or weights trained to classify lesion tiles from the ground truth (tile labels, an
advantage no slide-level method has).

Lesion hits: the share of sampled test tiles whose centre lies in a malignant spot (positive test
slides); "x uniform" divides it by the exact uniform share (the share of the tissue-tile grid on
lesions). Speed: seconds per slide from the slide file to the probability, attention sampling and
CLAM-style extraction + head timed back to back on the same test slides.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from baselines import (
    Eval,
    UniformAttention,
    evaluate_dense,
    evaluate_sampling,
    log,
    pick_dense,
    train_lowres,
)
from clam_style import (
    bag_cache_path,
    build_encoder,
    encoder_tag,
    extract_bag,
    extract_bags,
    load_bag,
    predict_mil,
    tile_size_level0,
    tissue_tile_grid,
    train_mil,
)

from wsi_ats.inference import predict_slide
from wsi_ats.models import PipelineConfig, SlideClassifier, load_model
from wsi_ats.stages import view_slide
from wsi_ats.synth import make_cohort
from wsi_ats.synth.lesions import lesion_boxes, tile_hits
from wsi_ats.training import LabelledSlide, read_cohort, train

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / "benchmarks" / "_cache"
RESULTS = ROOT / "benchmarks" / "results"
PIPELINE = ROOT / "pipelines" / "baselines.toml"
PRIOR = 24.0
SIZE = 16384

#: (cache folder, n slides, seed, splits) of the scored cohort and of the development cohort
COHORTS = {
    ("standard", "score"): ("baselines_200x16384", 200, 0, (("train", 120), ("val", 20), ("test", 60))),
    ("distractors", "score"): ("distractors_200x16384", 200, 0, (("train", 120), ("val", 20), ("test", 60))),
    ("standard", "dev"): ("dev_standard_100x16384", 100, 7, (("train", 60), ("val", 20), ("test", 20))),
    ("distractors", "dev"): ("dev_distractors_100x16384", 100, 7, (("train", 60), ("val", 20), ("test", 20))),
}  # fmt: skip

#: every remedy off: the paper's attention sampling with this pipeline's geometry
PLAIN = {
    "attention": {"activation": "relu", "stratum_scale": 0.0},
    "features": {"normalize": False},
    "head": {"logit_scale": 1.0},
    "train": {
        "attention_lr": 1e-3, "control_variate": "none", "instance_coef": 0.0,
        "distill_coef": 0.0, "evidence_quantile": 0.0, "explore": 0.0, "n_patches_start": 0,
        "balanced_batches": False, "explore_scope": "slide", "instance_memory": 0,
        "slide_to_features": 1.0, "augment": False, "explore_restarts": 1,
        "contrast_weighting": "importance", "instance_scale": 1.0,
    },
}  # fmt: skip

#: the defaults before the contrast strata (found on the scored standard cohort, 10 epochs)
PREVIOUS = {
    "attention": {"activation": "relu", "stratum_scale": 0.0},
    "head": {"logit_scale": 1.0},
    "train": {
        "attention_lr": 3e-4, "distill_coef": 1.0, "explore": 0.9, "explore_epochs": 8,
        "explore_rarity": 1.0, "explore_context": 0, "evidence_quantile": 0.0,
        "balanced_batches": False, "explore_scope": "slide", "instance_memory": 0,
        "slide_to_features": 1.0, "augment": False, "explore_restarts": 1,
        "contrast_weighting": "importance", "instance_scale": 1.0,
    },
}  # fmt: skip

#: main table: row name -> overrides of the pipeline (None: a row that is not a plain train())
MAIN_ROWS = {
    "1. default remedies, no prior": {},
    "2. default remedies + prior 24": {"attention": {"prior": PRIOR}},
    "3. prior 24 only, attention frozen": {
        # frozen: as in the last round (no stratum logits either: they would move the attention)
        "attention": {"prior": PRIOR, "activation": "relu", "stratum_scale": 0.0},
        "head": {"logit_scale": 1.0},
        "train": {
            "attention_lr": 0.0,
            "distill_coef": 0.0,
            "explore": 0.0,
            "evidence_quantile": 0.0,
            "balanced_batches": False,
            "explore_scope": "slide",
            "instance_memory": 0,
            "slide_to_features": 1.0,
            "augment": False,
            "explore_restarts": 1,
            "contrast_weighting": "importance",
            "instance_scale": 1.0,
        },
    },
    "4. plain attention sampling, no prior": PLAIN,
}

#: ablation: one remedy off at a time (and all of them: the plain method); key -> (row, overrides)
ABLATION_ROWS = {
    "default": ("default (every remedy on)", {}),
    "instance": ("- instance loss (instance_coef 0)", {"train": {"instance_coef": 0.0}}),
    "distill": ("- attention distillation (distill_coef 0)", {"train": {"distill_coef": 0.0}}),
    "odds": ('- distillation "odds", not "distribution"', {"train": {"distill": "odds"}}),
    "explore": ("- exploration (explore 0)", {"train": {"explore": 0.0}}),
    "decay": ("exploration decaying to 0 over 8 epochs", {"train": {"explore_epochs": 8}}),
    "strata": ("- appearance strata (uniform exploration)", {"train": {"explore_strata": 0}}),
    "context": ("- contrast strata (explore_context 0)", {"train": {"explore_context": 0}}),
    "rarity": ("- rare strata favoured (explore_rarity 1)", {"train": {"explore_rarity": 1.0}}),
    "anneal": ("- N annealing (n_patches_start 0)", {"train": {"n_patches_start": 0}}),
    "cv": ('- control variate ("none")', {"train": {"control_variate": "none"}}),
    "distill1": ("distillation weight 1 (not 10)", {"train": {"distill_coef": 1.0}}),
    "lr": ("attention lr 3e-4 (not 1e-3)", {"train": {"attention_lr": 3e-4}}),
    "normalize": ("- feature normalisation", {"features": {"normalize": False}}),
    "relu": ("- leaky attention units (relu)", {"attention": {"activation": "relu"}}),
    "evidence": (
        "- evidence above negatives (prior odds 1/2)",
        {"train": {"evidence_quantile": 0.0}},
    ),
    "balanced": (
        "- label-mixed batches (balanced_batches false)",
        {"train": {"balanced_batches": False}},
    ),
    "topk": (
        "symmetric top-8 instance loss, N annealed over 8 epochs",
        {"train": {"instance_topk": 8, "instance_negatives": "topk", "anneal_epochs": 8}},
    ),
    "memory": (
        "tile memory, slide loss off the features",
        {"train": {"instance_memory": 4096, "slide_to_features": 0.0}},
    ),
    "tails": (
        "tile memory, slide loss off the features, tails evidence",
        {"train": {"instance_memory": 4096, "slide_to_features": 0.0, "evidence": "tails"}},
    ),
    "stratum": (
        "stratum logits, cohort strata, memory, augment",
        {
            "attention": {"stratum_scale": 0.001},
            "train": {
                "explore_scope": "cohort",
                "instance_memory": 4096,
                "slide_to_features": 0.0,
                "augment": True,
            },
        },
    ),
    "restarts": (
        "- k-means restarts (explore_restarts 1)",
        {"train": {"explore_restarts": 1}},
    ),
    "tiles": (
        '- check tiles counted once (contrast_weighting "importance")',
        {"train": {"contrast_weighting": "importance"}},
    ),
    "scale": ("- tile logit scale (instance_scale 1)", {"train": {"instance_scale": 1.0}}),
    "head_scale": ("- slide logit scale (head.logit_scale 1)", {"head": {"logit_scale": 1.0}}),
    "batch4": ("4 slides per optimiser step (not 8)", {"train": {"batch_size": 4}}),
    "replay1024": ("1024 replayed tiles a step (not 256)", {"train": {"instance_replay": 1024}}),
    "noaugment": ("- augmentation of replayed tiles", {"train": {"augment": False}}),
    "previous": ("previous defaults (first round)", PREVIOUS),
    "plain": ("plain (every remedy off)", PLAIN),
}


@dataclass
class RunSummary:
    """What a training run left behind, cached next to it (``summary.json``)."""

    model_path: str
    best_val_auc: float
    best_epoch: int
    seconds: float


def cohort(variant: str, which: str, workers: int) -> Path:
    """The manifest of the cached cohort (generated on first use)."""
    folder, n, seed, splits = COHORTS[(variant, which)]
    return make_cohort(
        CACHE / folder, n, SIZE, seed=seed, splits=splits, workers=workers, progress=True,
        variant=variant,
    )  # fmt: skip


def merge(config: PipelineConfig, overrides: dict) -> PipelineConfig:
    return config.replace(**overrides) if overrides else config


#: the package sources a training run depends on: a cached run trained by other sources is stale
TRAINED_BY = ("core", "models", "slides", "training", "stages.py")
#: ``--reuse-stale-runs``: reuse cached runs whatever sources trained them
REUSE_STALE = False


def source_digest(package: Path = ROOT / "wsi_ats") -> str:
    """sha256 (16 hex digits) of the sources in :data:`TRAINED_BY`: names and bytes."""
    files = []
    for name in TRAINED_BY:
        path = package / name
        files += sorted(path.rglob("*.py")) if path.is_dir() else [path]
    h = hashlib.sha256()
    for f in files:
        h.update(f.relative_to(package).as_posix().encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def trained(
    manifest: Path,
    config: PipelineConfig | None,
    run_dir: Path,
    model: SlideClassifier | None = None,
) -> RunSummary:
    """Train into ``run_dir`` unless a finished run with the same config, trained by the same
    sources (``source.txt``, :func:`source_digest`), is there already."""
    wanted = config or model.config
    want = json.dumps(asdict(wanted), sort_keys=True)
    digest = source_digest()
    for done in [run_dir, *sorted(run_dir.parent.glob("*"))]:  # same spec: same run, reused
        spec, summary, source = done / "spec.json", done / "summary.json", done / "source.txt"
        fresh = REUSE_STALE or (source.exists() and source.read_text().strip() == digest)
        if fresh and summary.exists() and spec.exists() and _same_spec(spec, wanted):
            return RunSummary(**json.loads(summary.read_text()))
    summary = run_dir / "summary.json"
    t0 = time.perf_counter()
    result = train(manifest, config, run_dir, progress=False, model=model, overwrite=True)
    out = RunSummary(
        str(result.model_path), result.best_val_auc, result.best_epoch, time.perf_counter() - t0
    )
    (run_dir / "spec.json").write_text(want)
    (run_dir / "source.txt").write_text(digest + "\n")
    summary.write_text(json.dumps(asdict(out)))
    return out


def _same_spec(spec: Path, config: PipelineConfig) -> bool:
    """Whether a cached run's ``spec.json`` is ``config`` (fields added since it was written take
    the values it was trained with, as when a checkpoint is loaded)."""
    return PipelineConfig.from_saved(json.loads(spec.read_text())) == config


def uniform_share(slides: list[LabelledSlide], config: PipelineConfig, boxes: dict) -> float:
    """Exact expected lesion-hit share of uniform sampling over tissue: the share of the tissue-tile
    grid whose centres lie in malignant spots, averaged over the positive slides."""
    shares = []
    for s in slides:
        if s.label != 1:
            continue
        view = view_slide(s.path, config, s.slide_id)
        size = tile_size_level0(config, view)
        grid = tissue_tile_grid(view, size)
        shares.append(float(tile_hits(grid, size, boxes[s.slide_id]).mean()))
    return float(np.mean(shares))


def row_line(name: str, ev: Eval, base: float, seconds: float | None = None) -> str:
    hits = ev.hit_share
    hit_s = "-" if not np.isfinite(hits) else f"{100 * hits:.2f}%"
    ratio = "-" if not np.isfinite(hits) else f"{hits / base:.0f}x"
    sec = np.mean(ev.seconds) if seconds is None else seconds
    return f"{name:<46} {ev.auc:>8.3f} {len(ev.labels):>6} {sec:>8.2f} {hit_s:>11} {ratio:>10}"


HEADER = f"{'method':<46} {'test AUC':>8} {'slides':>6} {'s/slide':>8} {'lesion hits':>11} {'x uniform':>10}"


def sampling_row(
    name: str,
    manifest: Path,
    config: PipelineConfig,
    runs: Path,
    test: list,
    boxes: dict,
    model: SlideClassifier | None = None,
    attention_net_factory=None,
) -> tuple[Eval, RunSummary, SlideClassifier]:
    """Train (cached) and evaluate one attention-sampling row on the test slides."""
    log(f"{name}: training")
    run = trained(manifest, None if model is not None else config, runs / _slug(name), model)
    extra = {} if attention_net_factory is None else {"attention_net": attention_net_factory()}
    loaded = load_model(run.model_path, **extra)
    ev = evaluate_sampling(loaded, test, boxes)
    log(f"{name}: test AUC {ev.auc:.3f}, lesion hits {100 * ev.hit_share:.2f}%")
    return ev, run, loaded


def _slug(name: str) -> str:
    """A folder name for ``name``: its words, cut to 60 characters; a cut one ends in 8 hex digits
    of its hash, so that names differing only in their tails (the seed) never share a folder."""
    keep = "".join(c if c.isalnum() else "_" for c in name.lower())
    slug = "_".join(p for p in keep.split("_") if p)
    if len(slug) <= 60:
        return slug
    return slug[:51] + "_" + hashlib.sha256(name.encode()).hexdigest()[:8]


def clam_row(
    kind: str, manifest: Path, config: PipelineConfig, slides: dict, cache: Path, seed: int = 0
) -> tuple[Eval, float, object]:
    """CLAM-style row: cached bags through the frozen ``kind`` encoder, gated-attention MIL head
    trained on train, selected on val; returns the test Eval, the val AUC and the encoder."""
    gt = manifest.parent / "ground_truth.json"
    tag = encoder_tag(kind, config, seed, [s.slide_id for s in slides["train"]], 4)
    log(f"CLAM-style ({kind}): encoder and bags")
    everything = [s for part in slides.values() for s in part]
    cached = all(load_bag(bag_cache_path(cache, s.slide_id, kind), s, tag) for s in everything)
    encoder = None if cached else build_encoder(kind, config, slides["train"], gt, seed, 4)
    bags = {k: extract_bags(v, config, encoder, cache, kind, tag) for k, v in slides.items()}
    model, val_auc, _ = train_mil(bags["train"], bags["val"], epochs=20, seed=seed)
    probs = predict_mil(model, bags["test"])
    labels = [b.label for b in bags["test"]]
    ev = Eval(probs, labels, [b.seconds for b in bags["test"]])
    log(f"CLAM-style ({kind}): test AUC {ev.auc:.3f}")
    return ev, val_auc, (encoder, model)  # encoder None: every bag was cached


def speed(ats: SlideClassifier, clam: tuple, config: PipelineConfig, slides: list) -> tuple:
    """Seconds per slide, attention sampling (before and after, averaged) and CLAM-style (fresh
    extraction + head) back to back on each slide."""
    encoder, head = clam
    if encoder is None:  # every bag came from the cache: rebuild the (seeded, untrained) encoder
        encoder = build_encoder("random", config, seed=0)
    ats_s, clam_s = [], []
    for s in slides:
        t0 = time.perf_counter()
        predict_slide(s.path, ats, slide_id=s.slide_id)
        t1 = time.perf_counter()
        bag = extract_bag(s, config, encoder, config.predict.tile_batch_size)
        predict_mil(head, [bag])
        t2 = time.perf_counter()
        predict_slide(s.path, ats, slide_id=s.slide_id)
        t3 = time.perf_counter()
        ats_s.append((t1 - t0 + t3 - t2) / 2)
        clam_s.append(t2 - t1)
        log(f"speed {s.slide_id}: sampling {ats_s[-1]:.2f} s, CLAM-style {clam_s[-1]:.2f} s")
    return float(np.mean(ats_s)), float(np.mean(clam_s))


def preamble(
    args: argparse.Namespace, config: PipelineConfig, manifest: Path, splits: dict
) -> list[str]:
    n = {k: len(v) for k, v in splits.items()}
    return [
        f"# benchmarks/learning.py {' '.join(sys.argv[1:])}"
        f"  ({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})",
        f"# cohort: {manifest.parent.name}: {sum(n.values())} synthetic slides of {SIZE} x {SIZE} px "
        f"(train {n['train']}, val {n['val']}, test {n['test']}), variant {args.variant}",
        f"# pipeline: pipelines/baselines.toml: low-res view {config.slide.lowres_size} px, tiles "
        f"{config.slide.patch_size} px at level {config.slide.read_level}, N = "
        f"{config.sampling.n_patches} per draw after annealing from {config.train.n_patches_start}, "
        f"{config.predict.n_draws} draws per test slide, {config.train.epochs} epochs, best "
        "validation epoch kept",
        f"# machine: {platform.machine()}, {os.cpu_count()} CPU cores (shared), torch threads "
        f"{torch.get_num_threads()}, torch {torch.__version__}",
        "",
    ]


@dataclass
class Setting:
    """A cohort ready to score: its manifest, splits, lesion boxes, run folder, uniform share."""

    manifest: Path
    splits: dict[str, list[LabelledSlide]]
    boxes: dict
    runs: Path
    base: float

    @property
    def test(self) -> list[LabelledSlide]:
        return self.splits["test"]

    def unpack(self) -> tuple:
        """``(manifest, splits, test, boxes, runs, base)``."""
        return self.manifest, self.splits, self.test, self.boxes, self.runs, self.base


def setting(args: argparse.Namespace, config: PipelineConfig, which: str) -> Setting:
    """The ``which`` ("score" or "dev") cohort of ``args.variant``, generated on first use."""
    manifest = cohort(args.variant, which, args.workers)
    slides = read_cohort(manifest)
    splits = {k: [s for s in slides if s.split == k] for k in ("train", "val", "test")}
    boxes = lesion_boxes(manifest.parent / "ground_truth.json")
    runs = CACHE / "learning_runs" / manifest.parent.name
    return Setting(manifest, splits, boxes, runs, uniform_share(splits["test"], config, boxes))


def main_table(args: argparse.Namespace, config: PipelineConfig) -> list[str]:
    st = setting(args, config, "score")
    manifest, splits, test, boxes, runs, base = st.unpack()
    lines = preamble(args, config, manifest, splits) + [HEADER]
    notes = []
    models, evals = {}, {}
    for name, overrides in MAIN_ROWS.items():
        ev, run, model = sampling_row(name, manifest, merge(config, overrides), runs, test, boxes)
        models[name], evals[name] = model, ev
        lines.append(row_line(name, ev, base))
        notes.append(f"{name}: best val AUC {run.best_val_auc:.3f} (epoch {run.best_epoch}), "
                     f"training {run.seconds:.0f} s")  # fmt: skip
    default = models["1. default remedies, no prior"]
    torch.manual_seed(config.train.seed)
    untrained = SlideClassifier(config).eval()
    init = evaluate_sampling(untrained, [s for s in test if s.label == 1], boxes).hit_share

    name = "5. uniform sampling over tissue, same N"
    uni_cfg = merge(  # the attention net is replaced: its activation is moot (last round's run)
        config,
        {"attention": {"activation": "relu"}, "train": {"explore": 0.0, "distill_coef": 0.0}},
    )
    torch.manual_seed(config.train.seed)
    stride = config.attention.map_stride
    uni_model = SlideClassifier(uni_cfg, attention_net=UniformAttention(stride))
    ev, run, _ = sampling_row(
        name, manifest, uni_cfg, runs, test, boxes, model=uni_model,
        attention_net_factory=lambda: UniformAttention(stride),
    )  # fmt: skip
    lines.append(row_line(name, ev, base))
    notes.append(f"{name}: best val AUC {run.best_val_auc:.3f} (epoch {run.best_epoch}), "
                 f"training {run.seconds:.0f} s")  # fmt: skip

    log("6. low resolution only")
    low, low_val = train_lowres(config, splits["train"], splits["val"], test, 20)
    lines.append(row_line("6. low resolution only (same backbone)", low, base))
    notes.append(f"6. low resolution only: best val AUC {low_val:.3f} (20 epochs)")

    log("7. dense evaluation")
    dense_slides = pick_dense(test, 20)
    dense, same, dense_tiles = evaluate_dense(default, dense_slides, boxes)
    lines.append(row_line("7. dense: model 1, every tissue tile", dense, base))
    lines.append(row_line("7'. model 1 sampled, same slides as 7", same, base))

    clam = {}
    for i, kind in enumerate(args.clam_encoders, start=8):
        cache = CACHE / f"clam_{manifest.parent.name.split('_')[0]}"
        ev, val_auc, parts = clam_row(kind, manifest, config, splits, cache)
        clam[kind] = (ev, parts)
        label = f"{i}. CLAM-style, frozen {kind} encoder"
        lines.append(row_line(label, ev, base))
        notes.append(f"{label}: best val AUC {val_auc:.3f}; s/slide as measured when its bags "
                     "were extracted (maybe another run)")  # fmt: skip

    speed_slides = pick_dense(test, args.speed_slides)
    ats_s, clam_s = speed(
        default, clam["random"][1], config, speed_slides
    )  # random: cheapest to rebuild
    best_clam = max(ev.auc for ev, _ in clam.values())
    first = evals["1. default remedies, no prior"]
    ats_ev_auc, times_uniform = first.auc, first.hit_share / base
    lines += [
        "",
        f"uniform lesion share (exact, tissue-tile grid of the positive test slides): {100 * base:.3f}%;"
        f" the untrained attention net (no prior) scores {100 * init:.2f}%",
        f"speed, back to back on {len(speed_slides)} test slides: attention sampling {ats_s:.2f} s/slide, "
        f"CLAM-style {clam_s:.2f} s/slide -> {clam_s / ats_s:.1f}x; dense reads {dense_tiles:.0f} "
        "tiles per slide",
        "",
        f"goals (default, no prior): AUC >= 0.95: {ats_ev_auc:.3f} -> {_ok(ats_ev_auc >= 0.95)}",
        f"  lesion hits >= 20x uniform: {times_uniform:.0f}x -> {_ok(times_uniform >= 20)}",
        f"  >= 20x faster than CLAM-style at AUC >= best CLAM - 0.02: {clam_s / ats_s:.1f}x, "
        f"{ats_ev_auc:.3f} vs {best_clam:.3f} -> {_ok(clam_s / ats_s >= 20 and ats_ev_auc >= best_clam - 0.02)}",
        "",
    ] + notes
    return lines


def ablation_table(args: argparse.Namespace, config: PipelineConfig) -> list[str]:
    st = setting(args, config, args.cohort)
    manifest, splits, test, boxes, runs, base = st.unpack()
    lines = preamble(args, config, manifest, splits)
    lines += [HEADER.replace("s/slide", "val AUC")]
    keys = args.rows or list(ABLATION_ROWS)
    for seed in args.seeds or [config.train.seed]:
        seeded = config.replace(train={"seed": seed})
        always = ["default", *keys] + ([] if args.without_plain else ["plain"])
        for key in dict.fromkeys(always):
            name, overrides = ABLATION_ROWS[key]
            name += f" (seed {seed})" if args.seeds else ""
            ev, run, _ = sampling_row(name, manifest, merge(seeded, overrides), runs, test, boxes)
            lines.append(row_line(name, ev, base, seconds=run.best_val_auc))
    lines += ["", f"uniform lesion share (exact): {100 * base:.3f}%"]
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--variant", choices=("standard", "distractors"), required=True)
    ap.add_argument("--ablation", action="store_true", help="each remedy off, one at a time")
    ap.add_argument(
        "--rows", nargs="+", choices=list(ABLATION_ROWS),
        help="ablation rows to run (default: all); the default row always runs, and the plain\n"
        "one unless --without-plain",
    )  # fmt: skip
    ap.add_argument(
        "--without-plain", action="store_true",
        help="ablation: leave out the plain row (when its earlier results still hold: say so)",
    )  # fmt: skip
    ap.add_argument(
        "--cohort", choices=("dev", "score"), default="dev",
        help="cohort of the ablation (default: the development cohort)",
    )  # fmt: skip
    ap.add_argument("--epochs", type=int, help="training epochs (default: the pipeline's 10)")
    ap.add_argument(
        "--seeds", type=int, nargs="+",
        help="ablation: run every row with each of these training seeds (default: the pipeline's)",
    )  # fmt: skip
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    ap.add_argument("--workers", type=int, default=2, help="processes writing a cohort")
    ap.add_argument(
        "--clam-encoders", nargs="+", default=["random", "tile-supervised"],
        choices=["random", "tile-supervised"], help="frozen encoders of the CLAM-style rows",
    )  # fmt: skip
    ap.add_argument("--speed-slides", type=int, default=10, help="slides timed back to back")
    ap.add_argument("--out", type=Path, help="results file (default benchmarks/results/...)")
    ap.add_argument(
        "--reuse-stale-runs", action="store_true",
        help="reuse cached training runs even when other package sources trained them",
    )  # fmt: skip
    args = ap.parse_args(argv)
    global REUSE_STALE
    REUSE_STALE = args.reuse_stale_runs
    torch.set_num_threads(args.threads)
    config = PipelineConfig.from_toml(PIPELINE)
    if args.epochs:
        config = config.replace(train={"epochs": args.epochs})
    t0 = time.perf_counter()
    lines = ablation_table(args, config) if args.ablation else main_table(args, config)
    lines.append(f"total wall time {time.perf_counter() - t0:.0f} s (cached runs are reused)")
    text = "\n".join(lines) + "\n"
    print(text)
    kind = f"learning_ablation_{args.cohort}" if args.ablation else "learning"
    kind += f"_{args.epochs}epochs" if args.epochs else ""
    kind += "_seeds" + "-".join(map(str, args.seeds)) if args.ablation and args.seeds else ""
    out = args.out or RESULTS / f"{kind}_{args.variant}.txt"
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, out)
    log(f"written {out}")
    return 0


def _ok(flag: bool) -> str:
    return "met" if flag else "NOT met"


if __name__ == "__main__":
    sys.exit(main())
