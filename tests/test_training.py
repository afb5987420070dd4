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
    # augment off: a 4-px checkerboard on 8 slides gives 40 steps, and the tile classifier needs
    # more than that to learn from augmented replayed tiles (measured: flat at 0.693 for 10 epochs)
    # instance_scale 1: lr 0.01 (10x the default) already lets the tile classifier's weights grow
    # in 40 steps; with the default scale 10 as well it did not learn (measured: validation AUC
    # 0.60 at epoch 10, against 1.00 from epoch 5 at scale 1)
    train={
        "epochs": 10, "batch_size": 2, "lr": 0.01, "read_workers": 2, "val_draws": 1,
        "augment": False, "instance_scale": 1.0,
    },
    predict={"n_draws": 2},
)  # fmt: skip


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


@pytest.mark.parametrize("memory", [0, 4096])
def test_resume_continues_epoch_count(cohort: Path, tmp_path: Path, memory: int) -> None:
    """A resumed run continues the epoch count and ends with the weights of an uninterrupted run,
    with the tile memory too (saved in ``last.pt``)."""
    cfg = CFG.replace(train={"instance_memory": memory})
    run = tmp_path / "run"
    train(cohort, cfg, run, epochs=2, progress=False)
    assert torch.load(run / "last.pt", weights_only=True)["epoch"] == 2
    result = train(cohort, None, run, resume=True, epochs=3, progress=False)
    assert [row["epoch"] for row in result.history] == [1, 2, 3]
    assert torch.load(run / "last.pt", weights_only=True)["epoch"] == 3
    # an uninterrupted 3-epoch run draws (and replays) the same tiles: identical weights
    full = tmp_path / "full"
    train(cohort, cfg, full, epochs=3, progress=False)
    a = torch.load(run / "last.pt", weights_only=True)["state_dict"]
    b = torch.load(full / "last.pt", weights_only=True)["state_dict"]
    for key in a:
        torch.testing.assert_close(a[key], b[key])


def test_resume_refuses_a_tile_memory_that_does_not_fit(cohort: Path, tmp_path: Path) -> None:
    """A ``last.pt`` whose tile memory does not fit the run's is refused, naming the file."""
    cfg = CFG.replace(train={"instance_memory": 64})
    run = tmp_path / "run"
    train(cohort, cfg, run, epochs=1, progress=False)
    state = torch.load(run / "last.pt", weights_only=True)
    assert int(state["tile_memory"]["counts"].sum()) > 0
    state["tile_memory"]["negative_tiles"] = state["tile_memory"]["negative_tiles"][:1]
    torch.save(state, run / "last.pt")
    with pytest.raises(CheckpointError, match=r"last\.pt.*negative_tiles hold 1 tiles"):
        train(cohort, None, run, resume=True, epochs=2, progress=False)


def test_resume_restores_the_loss_scale(
    cohort: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """float16 training (CUDA without bfloat16) keeps its GradScaler's state in last.pt, so a
    resumed run continues at the loss scale it had reached. Emulated on the CPU with a CPU scaler."""
    from wsi_ats.training import loop

    made = []

    def scaler(device: object) -> torch.amp.GradScaler:
        made.append(torch.amp.GradScaler("cpu", init_scale=2.0**10, growth_interval=1))
        return made[-1]

    monkeypatch.setattr(loop, "grad_scaler", scaler)
    run = tmp_path / "run"
    train(cohort, CFG, run, epochs=1, progress=False)
    saved = torch.load(run / "last.pt", weights_only=True)["grad_scaler"]
    assert saved["scale"] == made[0].get_scale() > 2.0**10  # grew once per finite step
    train(cohort, None, run, resume=True, epochs=2, progress=False)
    assert made[1].get_scale() > saved["scale"]  # went on from the saved scale, not from 2**10
    assert torch.load(run / "last.pt", weights_only=True)["grad_scaler"]["scale"] == (
        made[1].get_scale()
    )


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


# --- epoch settings, parameter groups, clipping -------------------------------------------------


def test_epoch_settings_anneal_n_geometrically_and_explore_linearly() -> None:
    from wsi_ats.training.loop import epoch_settings

    cfg = CFG.replace(
        sampling={"n_patches": 8},
        train={"n_patches_start": 128, "anneal_epochs": 4, "explore": 0.9, "explore_epochs": 6},
    )
    settings = [epoch_settings(cfg, epoch) for epoch in range(1, 10)]
    # 128 * (8 / 128) ** ((epoch - 1) / 4): halves each epoch, then stays at sampling.n_patches
    assert [s.n_patches for s in settings] == [128, 64, 32, 16, 8, 8, 8, 8, 8]
    # 0.9 * (1 - (epoch - 1) / 6), then 0
    expected = [0.9 * max(0.0, 1 - (epoch - 1) / 6) for epoch in range(1, 10)]
    assert [s.explore for s in settings] == pytest.approx(expected)
    assert settings[6].explore == 0.0 and settings[-1].explore == 0.0
    # uneven ratio: rounded, monotone, ends exactly at n_patches
    odd = cfg.replace(
        sampling={"n_patches": 10}, train={"n_patches_start": 100, "anneal_epochs": 3}
    )
    ns = [epoch_settings(odd, epoch).n_patches for epoch in range(1, 6)]
    assert ns == [100, round(100 * 0.1 ** (1 / 3)), round(100 * 0.1 ** (2 / 3)), 10, 10]
    # switched off: constant N and constant explore
    flat = cfg.replace(train={"n_patches_start": 0, "explore_epochs": 0, "explore": 0.3})
    assert {(epoch_settings(flat, e).n_patches, epoch_settings(flat, e).explore)
            for e in range(1, 8)} == {(8, 0.3)}  # fmt: skip
    no_anneal = cfg.replace(train={"anneal_epochs": 0})
    assert epoch_settings(no_anneal, 1).n_patches == 8


def test_interleaved_order_mixes_the_labels_in_every_batch() -> None:
    from wsi_ats.training.loop import interleaved_order

    balanced = [0] * 30 + [1] * 30
    for seed in range(20):
        order = interleaved_order(balanced, np.random.default_rng(seed))
        assert sorted(order.tolist()) == list(range(60))  # a permutation
        pairs = np.asarray(balanced)[order].reshape(-1, 2)
        assert (pairs.sum(axis=1) == 1).all()  # batches of 2: one of each label
    # 45 negatives, 15 positives: every batch of 4 holds one positive
    skewed = [0] * 45 + [1] * 15
    quads = np.asarray(skewed)[interleaved_order(skewed, np.random.default_rng(0))].reshape(-1, 4)
    assert (quads.sum(axis=1) == 1).all()
    # still a shuffle: each class's order differs between epochs (seeds)
    a = interleaved_order(balanced, np.random.default_rng(1))
    b = interleaved_order(balanced, np.random.default_rng(2))
    assert a.tolist() != b.tolist()
    # a plain permutation puts both slides of some batch in one class (what the option avoids)
    plain = np.asarray(balanced)[np.random.default_rng(0).permutation(60)].reshape(-1, 2)
    assert (plain.sum(axis=1) != 1).any()


def test_parameter_groups_separate_the_attention_network() -> None:
    from wsi_ats.models import build_model
    from wsi_ats.training.step import build_optimizer, parameter_groups

    cfg = CFG.replace(train={"lr": 0.01, "attention_lr": 0.0005})
    model = build_model(cfg, seed=0)
    groups = parameter_groups(model)
    assert [g["name"] for g in groups] == ["attention", "features_head"]
    assert [g["lr"] for g in groups] == [0.0005, 0.01]
    attention = {id(p) for p in groups[0]["params"]}
    rest = {id(p) for p in groups[1]["params"]}
    assert attention == {id(p) for p in model.attention_net.parameters()}
    assert not attention & rest
    assert attention | rest == {id(p) for p in model.parameters()}
    others = [model.feature_net, model.head, model.instance_head]
    assert rest == {id(p) for m in others for p in m.parameters()}
    optimizer = build_optimizer(model)
    assert [g["lr"] for g in optimizer.param_groups] == [0.0005, 0.01]


def _group_norm(params: list[torch.Tensor]) -> float:
    return float(torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params])))


@pytest.mark.parametrize("huge", ["attention", "features_head"])
def test_clip_gradients_clips_each_group_to_its_own_limit(huge: str) -> None:
    from wsi_ats.models import build_model
    from wsi_ats.training.step import clip_gradients, parameter_groups

    cfg = CFG.replace(train={"grad_clip": 2.0, "attention_grad_clip": 0.5})
    model = build_model(cfg, seed=0)
    groups = {g["name"]: g["params"] for g in parameter_groups(model)}
    limits = {"attention": 0.5, "features_head": 2.0}
    gen = torch.Generator().manual_seed(0)
    for name, params in groups.items():
        scale = 1e4 if name == huge else 1e-4  # the other group stays well below its limit
        for p in params:
            p.grad = scale * torch.randn(p.shape, generator=gen)
    small = next(n for n in groups if n != huge)
    before = [p.grad.clone() for p in groups[small]]
    clip_gradients(model)
    assert _group_norm(groups[huge]) == pytest.approx(limits[huge], rel=1e-5)
    for p, g in zip(groups[small], before, strict=True):
        assert torch.equal(p.grad, g)  # untouched by the other group's clip
    # a limit of 0 switches clipping off for that group
    off = build_model(cfg.replace(train={"attention_grad_clip": 0.0, "grad_clip": 0.0}), seed=0)
    for p in off.parameters():
        p.grad = torch.full_like(p, 100.0)
    clip_gradients(off)
    assert all(bool((p.grad == 100.0).all()) for p in off.parameters())


# --- the training step computes the gradients of wsi_ats.core -----------------------------------


def _reference_gradients(
    model: torch.nn.Module,
    store: SlideStore,
    slides: list,
    state: torch.Tensor,
    n: int,
    explore: float,
    baseline: torch.Tensor | None,
) -> tuple[dict[str, torch.Tensor], list[torch.Tensor]]:
    """The step's loss rebuilt from ``wsi_ats.core`` (same generator state, same draws), its
    gradients and the drawn indices."""
    import torch.nn.functional as F

    from wsi_ats.core import (
        appearance_strata,
        attention_distillation_loss,
        cell_descriptors,
        draw,
        estimate,
        evidence_likelihood_loss,
        instance_evidence,
        mask_to_map,
        multinomial_entropy,
        stratified_proposal,
        topk_instance_loss,
    )
    from wsi_ats.stages import cells_to_locations, read_tiles

    cfg = model.config
    tc = cfg.train
    gen = torch.Generator()
    gen.set_state(state)
    draws = []
    for s in slides:  # every slide is drawn first, with the weights of the step
        view = store.view(s)
        x = torch.from_numpy(view.image).permute(2, 0, 1)[None].float() / 255
        m = torch.from_numpy(view.mask)[None]
        with torch.no_grad():
            att = model.attention(x, m).reshape(1, -1)
        map_size = tuple(model.attention(x, m).shape[1:])
        support = mask_to_map(m, map_size).reshape(1, -1)
        ids = appearance_strata(cell_descriptors(x, map_size, tc.explore_context), support, tc.explore_strata,
                                seed=tc.seed)  # fmt: skip
        e = stratified_proposal(ids, tc.explore_rarity)
        replace = int((att > 0).sum()) < n
        drawn = draw(att, n, replace, gen, explore, exploration=e)
        draws.append((view, x, m, map_size, support, e, drawn))
    model.zero_grad(set_to_none=True)
    total = 0.0
    running = baseline
    for s, (view, x, m, map_size, support, e, drawn) in zip(slides, draws, strict=True):
        logits = model.attention_logits(x, m).reshape(1, -1)
        att = torch.softmax(logits, dim=1)
        locs = cells_to_locations(drawn.indices, map_size, view, cfg)[0]
        size = (cfg.slide.patch_size, cfg.slide.patch_size)
        with store.slides.lease(view.path) as handle:
            tiles = read_tiles(handle, locs, view.read_level, size)
        feats = model.features(torch.from_numpy(tiles).permute(0, 3, 1, 2).float() / 255)
        cv = "loo" if tc.control_variate == "loo" else "none"
        use_baseline = running if tc.control_variate != "none" else None
        pooled = estimate(att, drawn, feats[None], cv, use_baseline)
        y = torch.tensor([float(s.label)])
        loss = F.binary_cross_entropy_with_logits(model.classify(pooled), y)
        loss = loss - tc.entropy_coef * multinomial_entropy(att).mean()
        inst_logits = tc.instance_scale * model.instance_head(feats)[..., 0][None]
        loss = loss + tc.instance_coef * topk_instance_loss(inst_logits, y, tc.instance_topk)
        evidence = instance_evidence(inst_logits)
        if tc.distill == "odds":
            weights = e.gather(1, drawn.indices) / drawn.proposal
            dist = attention_distillation_loss(logits.gather(1, drawn.indices), evidence, weights)
        else:
            log_att = torch.log_softmax(logits, dim=1).gather(1, drawn.indices)
            weights = 1.0 / (support.sum() * drawn.proposal)
            dist = evidence_likelihood_loss(log_att, evidence, weights)
        total = total + (loss + tc.distill_coef * dist) / len(slides)
        if running is not None:  # the running mean moves on after each slide
            running = 0.9 * running + 0.1 * pooled.detach().reshape(-1)
    total.backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters()}
    return grads, [d[-1].indices for d in draws]


@pytest.mark.parametrize(
    ("distill", "topk", "control_variate", "clip"),
    [
        ("distribution", 0, "loo", False),
        ("odds", 1, "mean", False),
        ("distribution", 2, "none", True),
    ],
)
def test_train_step_gradients_equal_those_of_core(
    cohort: Path,
    monkeypatch: pytest.MonkeyPatch,
    distill: str,
    topk: int,
    control_variate: str,
    clip: bool,
) -> None:
    """``train_step`` on two slides, the optimiser held still (SGD with lr 0), against the loss
    rebuilt by hand from ``wsi_ats.core`` on the same draws: every parameter's gradient matches."""
    import wsi_ats.training.step as step
    from wsi_ats.models import build_model

    torch.set_num_threads(1)
    cfg = CFG.replace(
        train={
            "distill": distill, "instance_topk": topk, "control_variate": control_variate,
            "instance_coef": 0.7, "instance_scale": 3.0, "distill_coef": 1.3, "entropy_coef": 0.05,
            "grad_clip": 0.05 if clip else 0.0, "attention_grad_clip": 0.01 if clip else 0.0,
            "explore_strata": 4, "explore_rarity": 1.0,
            # the per-slide losses of the reference: no tile memory (its replayed loss and
            # slide_to_features have their own tests below)
            "instance_memory": 0, "slide_to_features": 1.0,
        }
    )  # fmt: skip
    model = build_model(cfg, seed=0)
    with torch.no_grad():  # tiles above the prior odds: some evidence for the distillation
        model.instance_head.bias.fill_(0.5)
    slides = [s for s in read_cohort(cohort) if s.slide_id in ("s0", "s1")]
    assert sorted(s.label for s in slides) == [0, 1]
    plans: list = []

    def recording_plan_batch(*args: object, **kwargs: object) -> list:
        plans.extend(step.plan_batch.__wrapped__(*args, **kwargs))
        return plans

    recording_plan_batch.__wrapped__ = step.plan_batch  # type: ignore[attr-defined]
    monkeypatch.setattr(step, "plan_batch", recording_plan_batch)
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    running = step.RunningMean()
    running.value = 0.1 * torch.randn(cfg.features.dim, generator=torch.Generator().manual_seed(1))
    baseline = running.value.clone()
    gen = torch.Generator().manual_seed(123)
    state = gen.get_state()
    settings = step.StepSettings(n_patches=8, explore=0.5)
    with SlideStore(cfg, 2) as store:
        stats = step.train_step(
            model, optimizer, store, slides, gen, settings, step.StepState(running_mean=running)
        )
        assert stats.instance_loss > 0 and stats.distill_loss != 0  # every term is in play
        got = {name: p.grad.clone() for name, p in model.named_parameters()}
        for key, value in model.state_dict().items():
            assert torch.equal(value, weights[key])  # nothing moved: same weights for the reference
        expected, indices = _reference_gradients(
            model, store, slides, state, 8, 0.5, None if control_variate == "none" else baseline
        )
    if clip:  # the step clips each group; clip the reference the same way
        for name, p in model.named_parameters():
            p.grad = expected[name].clone()
        step.clip_gradients(model)
        expected = {name: p.grad.clone() for name, p in model.named_parameters()}
    for plan, idx in zip(plans, indices, strict=True):
        assert torch.equal(plan.drawn.indices, idx)
    assert set(got) == set(expected)
    for name in got:
        assert float(got[name].abs().max()) > 0, f"{name}: no gradient"
        torch.testing.assert_close(got[name], expected[name], msg=lambda m, n=name: f"{n}: {m}")


def test_attention_warmup_leaves_the_attention_network_unchanged(cohort: Path) -> None:
    """During ``train.attention_warmup`` a step updates the feature network and the heads only."""
    from wsi_ats.models import build_model
    from wsi_ats.training.loop import epoch_settings
    from wsi_ats.training.step import build_optimizer, train_step

    cfg = CFG.replace(train={"attention_warmup": 2, "distill_coef": 1.0})
    assert [epoch_settings(cfg, e).learn_attention for e in (1, 2, 3, 4)] == [
        False,
        False,
        True,
        True,
    ]
    slides = [s for s in read_cohort(cohort) if s.split == "train"][:2]
    for epoch, moves in ((1, False), (3, True)):
        model = build_model(cfg, seed=0)
        optimizer = build_optimizer(model)
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        with SlideStore(cfg, 2) as store:
            gen = torch.Generator().manual_seed(0)
            train_step(model, optimizer, store, slides, gen, epoch_settings(cfg, epoch))
        changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
        assert any(n.startswith("feature_net.") for n in changed)
        assert any(n.startswith("attention_net.") for n in changed) == moves


@pytest.mark.parametrize(
    ("field", "scaled", "unchanged"),
    [
        ("slide_to_attention", "attention_net.", ("feature_net.", "head.")),
        ("slide_to_features", "feature_net.", ("attention_net.", "head.")),
    ],
)
def test_slide_gradient_weight_scales_only_its_network(
    cohort: Path, field: str, scaled: str, unchanged: tuple[str, ...]
) -> None:
    """With distillation and the instance loss off, the update under SGD of the network that
    ``train.<field>`` names scales with it (0: none), and no other parameter's update changes."""
    from wsi_ats.models import build_model
    from wsi_ats.training.step import StepSettings, train_step

    slides = [s for s in read_cohort(cohort) if s.split == "train"][:2]
    deltas = {}
    for c in (1.0, 0.5, 0.0):
        cfg = CFG.replace(
            train={field: c, "distill_coef": 0.0, "instance_coef": 0.0,
                   "grad_clip": 0.0, "attention_grad_clip": 0.0, "explore": 0.0}
        )  # fmt: skip
        model = build_model(cfg, seed=0)
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
        with SlideStore(cfg, 2) as store:
            gen = torch.Generator().manual_seed(0)
            train_step(model, optimizer, store, slides, gen, StepSettings(8))
        deltas[c] = {n: p.detach() - before[n] for n, p in model.named_parameters()}
    moved = [n for n in deltas[1.0] if n.startswith(scaled)]
    others = [n for n in deltas[1.0] if n.startswith(unchanged)]
    assert any(float(deltas[1.0][n].abs().max()) > 0 for n in moved)
    assert any(float(deltas[1.0][n].abs().max()) > 0 for n in others)
    for n in moved:
        torch.testing.assert_close(deltas[0.5][n], 0.5 * deltas[1.0][n])
        assert float(deltas[0.0][n].abs().max()) == 0.0
    for n in others:
        torch.testing.assert_close(deltas[0.0][n], deltas[1.0][n])


@pytest.mark.parametrize(("memory", "graph_kept"), [(0, True), (64, False)])
def test_slide_tiles_keep_a_graph_only_when_a_loss_trains_through_them(
    cohort: Path, memory: int, graph_kept: bool
) -> None:
    """With ``train.slide_to_features = 0`` a slide's own tiles train the feature net only through
    an instance loss on them (no tile memory); otherwise their feature pass runs without autograd.
    Either way the step's gradients are those of a step that keeps the graph (a slide loss weight
    of 1e-12 on the features)."""
    from wsi_ats.models import build_model
    from wsi_ats.training.replay import TileMemory
    from wsi_ats.training.step import StepSettings, StepState, train_step

    slides = [s for s in read_cohort(cohort) if s.split == "train"][:2]
    assert sorted(s.label for s in slides) == [0, 1]
    grads, kept = {}, {}
    for weight in (0.0, 1e-12):
        cfg = CFG.replace(
            train={"slide_to_features": weight, "instance_memory": memory, "instance_replay": 16,
                   "distill_coef": 1.0, "explore": 0.5}
        )  # fmt: skip
        model = build_model(cfg, seed=0)
        kept[weight] = []

        def recording_features(
            tiles: torch.Tensor, keys: object = None, run=model.features, log=kept[weight]
        ) -> torch.Tensor:
            out = run(tiles, keys)
            log.append(out.requires_grad)
            return out

        model.features = recording_features  # type: ignore[method-assign]
        optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
        state = StepState(memory=TileMemory(memory) if memory else None)
        with SlideStore(cfg, 2) as store:
            gen = torch.Generator().manual_seed(0)
            train_step(model, optimizer, store, slides, gen, StepSettings(8), state)
        grads[weight] = {n: p.grad for n, p in model.named_parameters()}
    # the two slides' passes (then, with the memory, the replayed tiles' pass with a graph)
    assert kept[0.0][:2] == [graph_kept] * 2 and kept[1e-12][:2] == [True, True]
    assert kept[0.0][2:] == kept[1e-12][2:] == ([] if memory == 0 else [True])
    feature_net = [n for n in grads[0.0] if n.startswith("feature_net.")]
    assert feature_net and all(float(grads[0.0][n].abs().max()) > 0 for n in feature_net)
    for name, g in grads[0.0].items():
        torch.testing.assert_close(g, grads[1e-12][name], msg=name)


def test_instance_memory_trains_the_instance_head_on_tiles_of_both_labels(cohort: Path) -> None:
    """With ``train.instance_memory``, a step's tiles join the memory, and the instance head learns
    once the memory holds tiles of both labels (not from a first step of one label)."""
    from wsi_ats.models import build_model
    from wsi_ats.training.replay import TileMemory
    from wsi_ats.training.step import StepSettings, StepState, train_step

    train_slides = [s for s in read_cohort(cohort) if s.split == "train"]
    negative = next(s for s in train_slides if s.label == 0)
    positive = next(s for s in train_slides if s.label == 1)
    cfg = CFG.replace(
        train={"instance_memory": 64, "instance_replay": 16, "distill_coef": 0.0,
               "slide_to_features": 0.0, "explore": 0.0}
    )  # fmt: skip
    model = build_model(cfg, seed=0)
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    memory = TileMemory(64)
    gen = torch.Generator().manual_seed(0)
    with SlideStore(cfg, 2) as store:
        for batch, learns in (([positive], False), ([negative, positive], True)):
            before = model.instance_head.weight.detach().clone()
            stats = train_step(
                model, optimizer, store, batch, gen, StepSettings(8), StepState(memory=memory)
            )
            assert (stats.instance_loss > 0) == learns
            assert (not torch.equal(model.instance_head.weight, before)) == learns
    assert len(memory) == 3 * 8  # every tile read so far
