"""Training on a tiny cohort: loss falls, checkpoints are written and reload, resume continues."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from slide_factory import write_pyramidal_tiff

from wsi_ats.models import CheckpointError, PipelineConfig, load_model
from wsi_ats.training import SlideStore, plan_batch, read_cohort, split_cohort, train

CFG = PipelineConfig().replace(
    slide={"lowres_size": 64, "patch_size": 16},
    attention={"width": 4, "depth": 2, "map_stride": 2},
    features={"width": 4, "dim": 8},
    sampling={"n_patches": 8},
    train={"epochs": 10, "batch_size": 2, "lr": 0.01, "read_workers": 2, "val_draws": 1},
    predict={"n_draws": 2},
)


def tiny_slide(path: Path, label: int, seed: int) -> Path:
    """512 x 512: white glass, a pink tissue rectangle; positives carry a 4-px checkerboard of the
    same mean colour over the tissue (invisible after 4x averaging, obvious at level 0)."""
    rng = np.random.default_rng(seed)
    img = np.full((512, 512, 3), 255, np.uint8)
    y0, x0 = rng.integers(20, 120, size=2)
    h, w = rng.integers(250, 370, size=2)
    tissue = np.array([220, 150, 200], np.int16)
    block = np.broadcast_to(tissue, (h, w, 3)).copy()
    if label:
        yy, xx = np.mgrid[0:h, 0:w]
        sign = np.where(((yy // 2) + (xx // 2)) % 2 == 0, 1, -1)[..., None]
        block = block + sign * np.array([30, 30, 30])
    img[y0 : y0 + h, x0 : x0 + w] = block.clip(0, 255).astype(np.uint8)
    return write_pyramidal_tiff(path, img, tile=128, levels=3)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cohort")
    rows = []
    for i in range(12):
        label = i % 2
        split = "train" if i < 8 else "val"
        tiny_slide(root / f"s{i}.tiff", label, seed=i)
        rows.append({"slide_id": f"s{i}", "path": f"s{i}.tiff", "label": label, "split": split})
    manifest = root / "manifest.csv"
    with manifest.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["slide_id", "path", "label", "split"])
        writer.writeheader()
        writer.writerows(rows)
    return manifest


def test_loss_falls_and_checkpoints_reload(cohort: Path, tmp_path: Path) -> None:
    torch.set_num_threads(1)
    run = tmp_path / "run"
    result = train(cohort, CFG, run, progress=False)
    losses = [row["train_loss"] for row in result.history]
    assert len(losses) == CFG.train.epochs
    assert np.mean(losses[-2:]) < losses[0] - 0.1, losses
    assert {p.name for p in run.iterdir()} >= {"model.pt", "last.pt", "config.json", "history.csv"}
    assert 1 <= result.best_epoch <= CFG.train.epochs
    model = load_model(run / "model.pt")
    assert model.config == CFG
    raw = torch.load(run / "model.pt", weights_only=True)
    assert raw["epoch"] == result.best_epoch
    with (run / "history.csv").open() as fh:
        assert [int(r["epoch"]) for r in csv.DictReader(fh)] == list(range(1, CFG.train.epochs + 1))


def test_resume_continues_epoch_count(cohort: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    train(cohort, CFG, run, epochs=2, progress=False)
    assert torch.load(run / "last.pt", weights_only=True)["epoch"] == 2
    result = train(cohort, None, run, resume=True, epochs=3, progress=False)
    assert [row["epoch"] for row in result.history] == [1, 2, 3]
    assert torch.load(run / "last.pt", weights_only=True)["epoch"] == 3
    # an uninterrupted 3-epoch run draws the same tiles: identical weights
    full = tmp_path / "full"
    train(cohort, CFG, full, epochs=3, progress=False)
    a = torch.load(run / "last.pt", weights_only=True)["state_dict"]
    b = torch.load(full / "last.pt", weights_only=True)["state_dict"]
    for key in a:
        torch.testing.assert_close(a[key], b[key])


def test_resume_rejects_incompatible_pipeline(cohort: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    train(cohort, CFG, run, epochs=1, progress=False)
    other = CFG.replace(features={"dim": 16})
    with pytest.raises(CheckpointError, match=r"last\.pt.*features\.dim"):
        train(cohort, other, run, resume=True, epochs=2, progress=False)


def test_prefetched_draws_use_current_weights(cohort: Path) -> None:
    """The cells drawn in ``plan_batch`` come from the attention of the weights of the step."""
    from wsi_ats.models import build_model

    model = build_model(CFG, seed=0)
    slides = read_cohort(cohort)[:2]
    with SlideStore(CFG, 2) as store:
        gen = torch.Generator().manual_seed(0)
        plans = plan_batch(model, store, slides, gen)
        for plan in plans:
            tiles = plan.tiles.result()
            assert tiles.shape == (8, 16, 16, 3)
            view = store.view(plan.slide)
            x = torch.from_numpy(view.image).permute(2, 0, 1)[None].float() / 255
            att = model.attention(x, torch.from_numpy(view.mask)[None]).reshape(-1)
            assert bool((att[plan.drawn.indices[0]] > 0).all())


def test_split_cohort_holds_out_val_when_missing(cohort: Path) -> None:
    slides = [s for s in read_cohort(cohort) if s.split == "train"]
    train_set, val_set = split_cohort(slides, 0.25, seed=0)
    assert len(val_set) == 2 and {s.label for s in val_set} == {0, 1}
    assert not {s.slide_id for s in train_set} & {s.slide_id for s in val_set}
    again = split_cohort(slides, 0.25, seed=0)[1]
    assert [s.slide_id for s in again] == [s.slide_id for s in val_set]


def test_cli_train_and_heatmap(cohort: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from wsi_ats.cli import main

    pipeline = tmp_path / "p.toml"
    pipeline.write_text(
        "[slide]\nlowres_size = 64\npatch_size = 16\n"
        "[attention]\nwidth = 4\ndepth = 2\n[features]\nwidth = 4\ndim = 8\n"
        "[sampling]\nn_patches = 8\n[train]\nepochs = 1\nbatch_size = 4\nread_workers = 2\n"
    )
    run = tmp_path / "run"
    argv = ["train", "--manifest", str(cohort), "--pipeline", str(pipeline), "--out", str(run)]
    assert main([*argv, "--quiet"]) == 0
    assert "best epoch 1" in capsys.readouterr().out
    assert main(["train", "--manifest", str(cohort), "--out", str(run), "--resume", "--epochs", "2",
                 "--quiet"]) == 0  # fmt: skip
    assert torch.load(run / "last.pt", weights_only=True)["epoch"] == 2
    bad = tmp_path / "bad.toml"
    bad.write_text(pipeline.read_text().replace("dim = 8", "dim = 9"))
    argv = ["train", "--manifest", str(cohort), "--pipeline", str(bad), "--out", str(run)]
    assert main([*argv, "--resume", "--quiet"]) == 2
    assert "features.dim" in capsys.readouterr().err
    png = tmp_path / "h.png"
    slide = cohort.parent / "s1.tiff"
    assert main(["heatmap", str(slide), "--model", str(run / "model.pt"), "--out", str(png)]) == 0
    assert png.exists() and "probability" in capsys.readouterr().out
