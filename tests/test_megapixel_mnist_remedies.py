"""The "attention sampling + remedies, no prior" model of benchmarks/megapixel_mnist.py."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

_BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(_BENCH))  # megapixel_mnist imports mnist_data from its folder
_SPEC = importlib.util.spec_from_file_location(
    "wsi_ats_bench_megapixel_mnist", _BENCH / "megapixel_mnist.py"
)
mm = importlib.util.module_from_spec(_SPEC)
sys.modules[_SPEC.name] = mm
_SPEC.loader.exec_module(mm)


def test_epoch_schedule_anneals_n_and_exploration():
    r = mm.Remedies(explore=0.9, explore_epochs=3, n_start=40, anneal_epochs=2)
    assert mm.epoch_schedule(r, 10, 1) == (40, 0.9)
    n2, e2 = mm.epoch_schedule(r, 10, 2)
    assert n2 == 20 and e2 == pytest.approx(0.6)
    assert mm.epoch_schedule(r, 10, 3)[0] == 10
    assert mm.epoch_schedule(r, 10, 4) == (10, 0.0)
    off = mm.Remedies(explore=0.5, explore_epochs=0, n_start=0)
    assert mm.epoch_schedule(off, 10, 7) == (10, 0.5)


@pytest.fixture(scope="module")
def small():
    """Small canvases (300 x 300, 36 x 36 views) from the training digit pool."""
    images, labels = mm.load_mnist_sample()
    train_idx, _ = mm.split_digit_pools(labels, test_fraction=0.2, seed=0)
    return mm.MegapixelMNIST(
        images[train_idx], labels[train_idx], 8, seed=5, canvas_size=300, low_size=36
    )


@pytest.mark.parametrize("memory", [0, 40], ids=["own-patches", "memory"])
def test_remedies_step_trains_every_part_through_the_core(small, memory):
    torch.manual_seed(0)
    model = mm.MegapixelATS(n_patches=4)
    r = mm.Remedies(strata=4, memory=memory, canvas_to_features=0.0 if memory else 1.0)
    strata = mm.fit_canvas_strata(small, 4, r, seed=0)
    trainer = mm.RemediesTrainer(model, r, strata)
    x_low, y, specs = small.batch(range(4))
    e = trainer.exploration(x_low, (36, 36))
    assert e.shape == (4, 36 * 36) and torch.allclose(e.sum(1), torch.ones(4))
    assert (e > 0).all()  # exploration covers every cell: the estimate stays unbiased
    if memory:  # every label held, so the replay can draw a tenth of each
        for label in range(10):
            trainer.memory.add(np.full((1, 1, 50, 50), 25 * label, np.uint8), label)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    gen = torch.Generator().manual_seed(0)
    logits, stats = trainer.step(x_low, y, mm.CanvasPatchSource(small, specs), 6, 0.9, gen)
    assert logits.shape == (4, 10)
    assert all(np.isfinite(v) for v in stats.values())
    assert stats["instance"] > 0 and stats["distill"] >= 0
    after = model.state_dict()
    att_changed = any(
        not torch.equal(before[k], after[k]) for k in after if k.startswith("ats.attention_net")
    )
    feat_changed = any(
        not torch.equal(before[k], after[k]) for k in after if k.startswith("ats.feature_net")
    )
    assert (
        att_changed
        and feat_changed
        and not torch.equal(before["head.weight"], after["head.weight"])
    )
    assert [g["lr"] for g in trainer.opt.param_groups] == [r.attention_lr, r.lr, r.head_lr]
    assert trainer.baseline is not None and trainer.baseline.shape == (32,)
    if memory:  # the step's 4 x 6 patches joined the memory under their canvases' labels
        per_label = np.bincount(y.numpy(), minlength=10)
        assert len(trainer.memory) == np.minimum(1 + 6 * per_label, 4).sum()  # 4 kept per label


def test_remedies_memory_step_trains_the_features_on_the_replay_only(small):
    """With the memory and ``canvas_to_features = 0`` the feature net's gradient comes from the
    replayed patches alone: the same step with the replay's loss off leaves it unchanged."""
    x_low, y, specs = small.batch(range(4))
    changed = {}
    for coef in (0.0, 1.0):
        torch.manual_seed(0)
        model = mm.MegapixelATS(n_patches=4)
        r = mm.Remedies(strata=4, memory=40, canvas_to_features=0.0, instance_coef=coef)
        trainer = mm.RemediesTrainer(model, r, mm.fit_canvas_strata(small, 4, r, seed=0))
        for label in range(10):
            trainer.memory.add(np.full((1, 1, 50, 50), 25 * label, np.uint8), label)
        before = [p.clone() for p in model.ats.feature_net.parameters()]
        gen = torch.Generator().manual_seed(0)
        trainer.step(x_low, y, mm.CanvasPatchSource(small, specs), 6, 0.9, gen)
        after = list(model.ats.feature_net.parameters())
        changed[coef] = any(not torch.equal(a, b) for a, b in zip(before, after, strict=True))
    assert changed == {0.0: False, 1.0: True}


def test_dev_canvases_come_from_the_training_digit_pool():
    data = mm.make_data(4, 4, seed=0, dev=True)
    assert np.array_equal(data.test.images, data.train.images)
    assert data.test.seed not in (data.train.seed, mm.make_data(4, 4, seed=0).test.seed)


def test_lr_factor_schedules():
    assert mm.lr_factor("constant", 0.7) == 1.0
    assert mm.lr_factor("cosine", 0.0) == pytest.approx(1.0)
    assert mm.lr_factor("cosine", 0.5) == pytest.approx(0.5)
    assert mm.lr_factor("cosine", 1.0) == pytest.approx(0.0, abs=1e-12)
    assert mm.lr_factor("cosine", 1.3) == pytest.approx(0.0, abs=1e-12)  # past the budget
    with pytest.raises(ValueError, match="unknown lr_schedule"):
        mm.lr_factor("linear", 0.5)
