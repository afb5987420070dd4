"""Attention sampling against three baselines, side by side, on one synthetic cohort.

    python benchmarks/baselines.py            # 200 slides of 16k x 16k (120 train, 20 val, 60 test)
    python benchmarks/baselines.py --quick    # 48 slides of 8k x 8k

1. attention sampling (pipelines/baselines.toml), trained end to end;
2. low resolution only: the attention net's backbone on the same low-res view, masked global
   average+max pooling, a linear head (no high-res tiles at all);
3. uniform sampling: the same N tiles per slide drawn uniformly over tissue (attention fixed to
   uniform on the tissue mask), same feature net, head, training and estimator;
4. dense evaluation of model 1 on >= 20 test slides: every tissue tile (one per attention cell)
   through the feature net, aggregated with the full attention, i.e. the exact sum that sampling
   estimates; AUC and wall time per slide against attention sampling on the same slides.

Also: the share of sampled test tiles whose centre lies in a malignant spot (positive slides),
attention against uniform. The cohort is cached under benchmarks/_cache; everything is seeded. The
table is printed and written to benchmarks/results/baselines.txt (--quick: baselines_quick.txt).
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from clam_style import read_view_tiles
from torch import nn

from wsi_ats.core import mask_to_map
from wsi_ats.inference import predict_slide
from wsi_ats.models import PipelineConfig, SlideClassifier, build_model, load_model
from wsi_ats.models.attention import AttentionNet
from wsi_ats.slides import open_slide
from wsi_ats.stages import (
    cells_to_locations,
    eval_mode,
    tile_features,
    tissue_tile_count,
    view_slide,
    view_tensors,
)
from wsi_ats.synth import make_cohort
from wsi_ats.synth.lesions import lesion_boxes, tile_hits
from wsi_ats.training import LabelledSlide, SlideStore, read_cohort, safe_auc, train

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / "benchmarks" / "_cache"
RESULTS = ROOT / "benchmarks" / "results"
PIPELINE = ROOT / "pipelines" / "baselines.toml"

SIZES = {
    "full": {"n_slides": 200, "size": 16384, "splits": (("train", 120), ("val", 20), ("test", 60)),
             "n_dense": 20},
    "quick": {"n_slides": 48, "size": 8192, "splits": (("train", 28), ("val", 6), ("test", 14)),
              "n_dense": 8},
}  # fmt: skip


ROW_4B = "4'. attention sampling, same slides as 4"


class UniformAttention(nn.Module):
    """Constant logits: with the tissue mask, attention is uniform over tissue cells."""

    def __init__(self, map_stride: int) -> None:
        super().__init__()
        self.map_stride = map_stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.map_stride
        return x.new_zeros(x.shape[0], 1, math.ceil(x.shape[2] / s), math.ceil(x.shape[3] / s))


class LowResClassifier(nn.Module):
    """The attention net's backbone on the low-res view, tissue-masked avg+max pooling, linear head."""

    def __init__(self, config: PipelineConfig) -> None:
        super().__init__()
        self.backbone = AttentionNet.from_config(config.attention)
        self.head = nn.Linear(2 * config.attention.width, 1)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        h = self.backbone.trunk((x - 0.5) * 4.0)  # [B, C, mh, mw]
        m = mask_to_map(mask, tuple(h.shape[-2:]))[:, None]  # [B, 1, mh, mw]
        m = m | ~m.flatten(1).any(1)[:, None, None, None]
        mean = (h * m).sum((2, 3)) / m.sum((2, 3)).clamp_min(1)
        peak = h.masked_fill(~m, float("-inf")).amax((2, 3))
        return self.head(torch.cat([mean, peak], 1))[:, 0]


@dataclass
class Eval:
    probs: list[float]
    labels: list[int]
    seconds: list[float]
    hit_share: float = float("nan")  # sampled tiles on malignant spots, positive slides

    @property
    def auc(self) -> float:
        return safe_auc(self.labels, self.probs)


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def evaluate_sampling(
    model: SlideClassifier, slides: list[LabelledSlide], boxes: dict[str, np.ndarray]
) -> Eval:
    """predict_slide on each slide (timed), plus the share of sampled tiles on malignant spots."""
    probs, seconds, hits, total = [], [], 0, 0
    for s in slides:
        t0 = time.perf_counter()
        pred = predict_slide(s.path, model, slide_id=s.slide_id)
        seconds.append(time.perf_counter() - t0)
        probs.append(pred.probability)
        if s.label == 1:
            hit = tile_hits(pred.locations, pred.tile_size_level0, boxes[s.slide_id])
            hits, total = hits + int(hit.sum()), total + hit.size
    return Eval(probs, [s.label for s in slides], seconds, hits / max(total, 1))


def dense_predict(model: SlideClassifier, slide: LabelledSlide) -> tuple[float, int]:
    """Exact ``sum_k a_k f_k`` over every tissue cell: all tissue tiles read and featurised.

    Returns the probability and the number of tiles. Tiles are read in row-major order in chunks
    (the backends decode each stored tile once per chunk) and featurised in batches.
    """
    cfg = model.config
    view = view_slide(slide.path, cfg, slide.slide_id)
    x, m = view_tensors(view, model.device)
    with torch.no_grad(), eval_mode(model):
        att = model.attention(x, m)[0]  # [mh, mw]
    flat = att.reshape(-1)
    idx = torch.nonzero(flat > 0)[:, 0]
    locs = cells_to_locations(idx[None], tuple(att.shape), view, cfg)[0]  # [K, 2] level-0 (x, y)
    agg = torch.zeros(cfg.features.dim)
    chunk = 1024
    with open_slide(slide.path) as handle:
        for start in range(0, len(idx), chunk):
            tiles = read_view_tiles(handle, view, cfg, locs[start : start + chunk])
            f = torch.from_numpy(tile_features(model, tiles, cfg.predict.tile_batch_size))
            agg += (flat[idx[start : start + chunk]].cpu()[:, None] * f).sum(0)
    with torch.no_grad(), eval_mode(model):
        logit = model.classify(agg[None].to(model.device))
    return float(torch.sigmoid(logit)[0]), len(idx)


def evaluate_dense(
    model: SlideClassifier, slides: list[LabelledSlide], boxes: dict[str, np.ndarray]
) -> tuple[Eval, Eval, float]:
    """Dense evaluation of each slide, timed back to back with attention sampling on it (before and
    after, averaged, so that neither gets the warmer file cache). Returns (dense, sampling, tiles)."""
    probs, seconds, tiles, ats_probs, ats_seconds = [], [], [], [], []
    for s in slides:
        before = evaluate_sampling(model, [s], boxes)
        t0 = time.perf_counter()
        p, n = dense_predict(model, s)
        seconds.append(time.perf_counter() - t0)
        after = evaluate_sampling(model, [s], boxes)
        probs.append(p)
        tiles.append(n)
        ats_probs.append(before.probs[0])
        ats_seconds.append((before.seconds[0] + after.seconds[0]) / 2)
        log(f"dense {s.slide_id}: p={p:.3f}, {n} tiles, {seconds[-1]:.1f} s; "
            f"sampling p={before.probs[0]:.3f}, {ats_seconds[-1]:.2f} s")  # fmt: skip
    labels = [s.label for s in slides]
    return Eval(probs, labels, seconds), Eval(ats_probs, labels, ats_seconds), float(np.mean(tiles))


def train_lowres(
    config: PipelineConfig,
    train_set: list[LabelledSlide],
    val_set: list[LabelledSlide],
    test_set: list[LabelledSlide],
    epochs: int,
) -> tuple[Eval, float]:
    """Train the low-res-only classifier (best validation AUC kept); returns test Eval, val AUC."""
    torch.manual_seed(config.train.seed)
    net = LowResClassifier(config)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    rng = np.random.default_rng(config.train.seed)
    with SlideStore(config, config.train.read_workers) as store:
        store.prefetch_views(train_set + val_set + test_set)

        def tensors(s: LabelledSlide) -> tuple[torch.Tensor, torch.Tensor]:
            return view_tensors(store.view(s), torch.device("cpu"))

        def predict(
            slides: list[LabelledSlide], fresh: bool = False
        ) -> tuple[list[float], list[float]]:
            """Probabilities and seconds per slide (``fresh``: the view is recomputed and timed)."""
            net.eval()
            probs, secs = [], []
            with torch.no_grad():
                for s in slides:
                    t0 = time.perf_counter()
                    if fresh:
                        view = view_slide(s.path, config, s.slide_id)
                        xm = view_tensors(view, torch.device("cpu"))
                    else:
                        xm = tensors(s)
                    probs.append(float(torch.sigmoid(net(*xm))[0]))
                    secs.append(time.perf_counter() - t0)
            return probs, secs

        best_auc, best_state = -1.0, None
        for epoch in range(1, epochs + 1):
            net.train()
            order = rng.permutation(len(train_set))
            for start in range(0, len(order), 8):
                opt.zero_grad()
                batch = [train_set[i] for i in order[start : start + 8]]
                for s in batch:
                    x, m = tensors(s)
                    y = torch.tensor([float(s.label)])
                    loss = nn.functional.binary_cross_entropy_with_logits(net(x, m), y)
                    (loss / len(batch)).backward()
                opt.step()
            val_auc = safe_auc([s.label for s in val_set], predict(val_set)[0])
            score = val_auc if math.isfinite(val_auc) else 0.0
            if score > best_auc:
                best_auc, best_state = score, {k: v.clone() for k, v in net.state_dict().items()}
            log(f"low-res epoch {epoch}: val AUC {val_auc:.3f}")
        net.load_state_dict(best_state)
        probs, secs = predict(test_set, fresh=True)
    return Eval(probs, [s.label for s in test_set], secs), best_auc


def pick_dense(test: list[LabelledSlide], n: int) -> list[LabelledSlide]:
    """``n`` test slides, half of each label (first in manifest order)."""
    pos = [s for s in test if s.label == 1][: n // 2]
    neg = [s for s in test if s.label == 0][: n - len(pos)]
    return sorted(pos + neg, key=lambda s: s.slide_id)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="48 slides of 8k x 8k")
    ap.add_argument("--epochs", type=int, help="training epochs (default: the pipeline's)")
    ap.add_argument("--lowres-epochs", type=int, default=20, help="low-res baseline epochs")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    ap.add_argument("--workers", type=int, default=2, help="processes writing the cohort")
    ap.add_argument("--out", type=Path, help="results file (default benchmarks/results/...)")
    ap.add_argument("--pipeline", type=Path, default=PIPELINE, help="pipeline TOML")
    ap.add_argument(
        "--prior", type=float, help="override [attention] prior (ablation: --prior 0 --out ...)"
    )
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    mode = "quick" if args.quick else "full"
    size = SIZES[mode]
    config = PipelineConfig.from_toml(args.pipeline)
    if args.prior is not None:
        config = config.replace(attention={"prior": args.prior})
    epochs = args.epochs or config.train.epochs
    t_start = time.perf_counter()

    cohort_dir = CACHE / f"baselines_{size['n_slides']}x{size['size']}"
    log(f"cohort {cohort_dir} ({size['n_slides']} slides of {size['size']}^2 px)")
    manifest = make_cohort(
        cohort_dir, size["n_slides"], size["size"], seed=0, splits=size["splits"],
        workers=args.workers, progress=True,
    )  # fmt: skip
    t_cohort = time.perf_counter() - t_start
    slides = read_cohort(manifest)
    train_set = [s for s in slides if s.split == "train"]
    val_set = [s for s in slides if s.split == "val"]
    test_set = [s for s in slides if s.split == "test"]
    boxes = lesion_boxes(cohort_dir / "ground_truth.json")
    runs = (
        CACHE / f"baselines_runs_{mode}" / f"{args.pipeline.stem}_prior{config.attention.prior:g}"
    )

    log("1. attention sampling: training")
    t0 = time.perf_counter()
    ats_run = train(
        manifest, config, runs / "attention", epochs=epochs, progress=False, overwrite=True
    )
    t_ats_train = time.perf_counter() - t0
    ats = load_model(ats_run.model_path)
    ats_eval = evaluate_sampling(ats, test_set, boxes)
    untrained = build_model(config, seed=config.train.seed).eval()
    positives = [s for s in test_set if s.label == 1]
    init_share = evaluate_sampling(untrained, positives, boxes).hit_share
    log(f"attention sampling: test AUC {ats_eval.auc:.3f}")

    log("3. uniform sampling: training")
    torch.manual_seed(config.train.seed)
    uniform_model = SlideClassifier(
        config, attention_net=UniformAttention(config.attention.map_stride)
    )
    t0 = time.perf_counter()
    uni_run = train(
        manifest,
        None,
        runs / "uniform",
        epochs=epochs,
        progress=False,
        model=uniform_model,
        overwrite=True,
    )
    t_uni_train = time.perf_counter() - t0
    uni = load_model(
        uni_run.model_path, attention_net=UniformAttention(config.attention.map_stride)
    )
    uni_eval = evaluate_sampling(uni, test_set, boxes)
    log(f"uniform sampling: test AUC {uni_eval.auc:.3f}")

    log("2. low resolution only: training")
    t0 = time.perf_counter()
    low_eval, low_val = train_lowres(config, train_set, val_set, test_set, args.lowres_epochs)
    t_low_train = time.perf_counter() - t0
    log(f"low-res only: test AUC {low_eval.auc:.3f}")

    log("4. dense evaluation")
    dense_slides = pick_dense(test_set, size["n_dense"])
    dense_eval, ats_same, dense_tiles = evaluate_dense(ats, dense_slides, boxes)
    views = [view_slide(s.path, config, s.slide_id) for s in dense_slides]
    tile0 = round(config.slide.patch_size * views[0].read_downsample)
    tissue_tiles = float(np.mean([tissue_tile_count(v, (tile0, tile0)) for v in views]))

    speedup = np.mean(dense_eval.seconds) / np.mean(ats_same.seconds)
    n_sampled = config.sampling.n_patches
    lines = [
        f"# benchmarks/baselines.py{' --quick' if args.quick else ''}  "
        f"({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())})",
        f"# cohort: {size['n_slides']} synthetic slides of {size['size']} x {size['size']} px "
        f"(train {len(train_set)}, val {len(val_set)}, test {len(test_set)}), seed 0, "
        f"default spot diameter (1.5% of the side)",
        f"# pipeline: {_show(args.pipeline)}: low-res view {config.slide.lowres_size} px, "
        f"tiles {config.slide.patch_size} px at level {config.slide.read_level}, N = {n_sampled} "
        f"per draw, {config.predict.n_draws} draws per slide, {epochs} epochs, attention "
        f"stain prior {config.attention.prior:g}",
        f"# times: wall seconds per slide, from the slide file to the probability (view and tissue mask "
        "included); rows 4 and 4' are timed back to back on each slide\n"
        f"# machine: {platform.machine()}, {os.cpu_count()} CPU cores (shared), torch threads "
        f"{torch.get_num_threads()}, torch {torch.__version__}",
        "",
        f"{'method':<42} {'test AUC':>9} {'slides':>7} {'s/slide':>8} {'lesion hits':>12}",
        f"{'1. attention sampling':<42} {ats_eval.auc:>9.3f} {len(ats_eval.labels):>7} "
        f"{np.mean(ats_eval.seconds):>8.2f} {100 * ats_eval.hit_share:>11.1f}%",
        f"{'2. low resolution only (same backbone)':<42} {low_eval.auc:>9.3f} "
        f"{len(low_eval.labels):>7} {np.mean(low_eval.seconds):>8.2f} {'-':>12}",
        f"{'3. uniform sampling over tissue, same N':<42} {uni_eval.auc:>9.3f} "
        f"{len(uni_eval.labels):>7} {np.mean(uni_eval.seconds):>8.2f} "
        f"{100 * uni_eval.hit_share:>11.1f}%",
        f"{'4. dense: every tissue tile, full attention':<42} {dense_eval.auc:>9.3f} "
        f"{len(dense_eval.labels):>7} {np.mean(dense_eval.seconds):>8.2f} {'-':>12}",
        f"{ROW_4B:<42} {ats_same.auc:>9.3f} "
        f"{len(ats_same.labels):>7} {np.mean(ats_same.seconds):>8.2f} {'-':>12}",
        "",
        f"goals: (1) AUC >= 0.95: {ats_eval.auc:.3f} -> {_ok(ats_eval.auc >= 0.95)}",
        f"       (2) low-res AUC <= 0.65: {low_eval.auc:.3f} -> {_ok(low_eval.auc <= 0.65)}",
        f"       (3) uniform >= 0.15 below attention: {ats_eval.auc - uni_eval.auc:+.3f} -> "
        f"{_ok(ats_eval.auc - uni_eval.auc >= 0.15)}",
        f"       (4) >= 20x faster than dense at AUC within 0.03: {speedup:.1f}x, "
        f"AUC {ats_same.auc:.3f} vs {dense_eval.auc:.3f} -> "
        f"{_ok(speedup >= 20 and ats_same.auc >= dense_eval.auc - 0.03)}",
        "",
        f"tiles per slide: attention sampling reads <= {n_sampled * config.predict.n_draws} "
        f"({config.predict.n_draws} draws x {n_sampled}); dense reads {dense_tiles:.0f} "
        f"(tissue covers ~{tissue_tiles:.0f} tiles of {tile0} x {tile0} level-0 px)",
        "lesion hits: share of sampled tiles whose centre lies in a malignant spot (positive test "
        f"slides); the untrained attention net (stain prior {config.attention.prior:g} only) "
        f"scores {100 * init_share:.1f}%",
        f"validation AUC (best epoch): attention {ats_run.best_val_auc:.3f} "
        f"(epoch {ats_run.best_epoch}), uniform {uni_run.best_val_auc:.3f} "
        f"(epoch {uni_run.best_epoch}), low-res {low_val:.3f}",
        f"wall time: cohort {t_cohort:.0f} s (cached when 0), training attention "
        f"{t_ats_train:.0f} s, uniform {t_uni_train:.0f} s, low-res {t_low_train:.0f} s; "
        f"total {time.perf_counter() - t_start:.0f} s",
    ]
    text = "\n".join(lines) + "\n"
    print(text)
    out = args.out or RESULTS / ("baselines_quick.txt" if args.quick else "baselines.txt")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, out)
    log(f"written {out}")
    return 0


def _show(path: Path) -> str:
    """``path`` relative to the repository when it lies inside it."""
    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


def _ok(flag: bool) -> str:
    return "met" if flag else "NOT met"


if __name__ == "__main__":
    sys.exit(main())
