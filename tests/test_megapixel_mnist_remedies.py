"""The "attention sampling + remedies, no prior" model of benchmarks/megapixel_mnist.py."""

from __future__ import annotations

import importlib.util
import sys
import time
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


def test_pooled_bounded_attention_steps_over_coarser_cells(small):
    """``map_stride 3``: one attention cell per 3 x 3 low-res pixels, whose strata and draws follow
    that grid; ``bounded``: the logits are ``log sigmoid``, so no cell outweighs a sure one."""
    torch.manual_seed(0)
    model = mm.MegapixelATS(n_patches=4, map_stride=3, bounded=True)
    x_low, y, specs = small.batch(range(4))
    logits = model.ats.attention_net(x_low)
    assert logits.shape == (4, 1, 12, 12) and (logits <= 0).all()
    net = model.ats.attention_net
    z = torch.nn.functional.max_pool2d(net.net[:-2](x_low), 3)  # before log sigmoid and pool
    att = model.ats.compute_attention(x_low).reshape(4, -1)
    expected = torch.sigmoid(z).reshape(4, -1)
    assert torch.allclose(att, expected / expected.sum(1, keepdim=True), atol=1e-6)
    r = mm.Remedies(strata=4, memory=0, canvas_to_features=1.0)
    strata = mm.fit_canvas_strata(small, 4, r, seed=0, map_stride=3)
    trainer = mm.RemediesTrainer(model, r, strata)
    e = trainer.exploration(x_low, (12, 12))
    assert e.shape == (4, 144) and torch.allclose(e.sum(1), torch.ones(4))
    before = [p.clone() for p in net.parameters()]
    gen = torch.Generator().manual_seed(0)
    out, stats = trainer.step(x_low, y, mm.CanvasPatchSource(small, specs), 6, 0.5, gen)
    assert out.shape == (4, 10) and all(np.isfinite(v) for v in stats.values())
    assert any(not torch.equal(a, b) for a, b in zip(before, net.parameters(), strict=True))
    with pytest.raises(ValueError, match="map_stride 1"):
        mm.MegapixelATS(prior=12.0, map_stride=3)


def test_attention_temperature_divides_the_logits(small):
    """``temperature`` T: the attention is softmax(z / T) (flatter for T > 1), weights unchanged."""
    torch.manual_seed(0)
    model = mm.MegapixelATS(n_patches=4, map_stride=3)
    x_low, _, _ = small.batch(range(2))
    z = model.ats.attention_net(x_low).reshape(2, -1)
    model.ats.attention_net.temperature = 2.0
    att = model.ats.compute_attention(x_low).reshape(2, -1)
    assert torch.allclose(att, torch.softmax(z / 2.0, dim=1), atol=1e-6)
    assert att.max() < torch.softmax(z, dim=1).max()
    assert "temperature" not in "".join(model.state_dict())


def test_coverage_names_the_digit_a_patch_holds_and_counts_what_a_draw_saw(small):
    import mnist_coverage

    spec = small.spec(0)
    (y0, x0), far = spec.digit_pos[1], [-500, -500]
    offsets = torch.tensor([[y0 - 11, x0 - 11], [y0 + 20, x0 + 20], far])  # around, corner, none
    digit, held = mnist_coverage.overlapped_digit(offsets, spec, 50)
    assert digit.tolist() == [1, 1, -1]
    assert held[0] == 1.0 and held[1] == pytest.approx(64 / 784) and held[2] == 0.0
    torch.manual_seed(0)
    model, scale = mm.MegapixelATS(n_patches=4), mm.Remedies().logit_scale
    rows = mnist_coverage.canvas_coverage(model, small, n_patches=6, logit_scale=scale)
    assert len(rows) == len(small)
    for r in rows:
        assert 0 <= r.label_digits_seen <= 3 and 0 <= r.other_digits_seen <= 2
        assert r.label_digits_seen + r.other_digits_seen <= r.patches_on_digits <= 6
        assert 0.2 - 1e-9 <= r.top_digit_mass <= 1.0 and r.patches_right <= r.patches_judged
    assert [r.label for r in rows] == [
        int(small.spec(i).digit_classes[0]) for i in range(len(small))
    ]
    lines = mnist_coverage.coverage_report(rows, 6)
    assert lines[0].startswith(f"canvases {len(small)}, one draw of N=6 each: error")
    vote_error = 100 * (1 - np.mean([r.correct_vote for r in rows]))
    assert lines[0].endswith(f"% (soft vote: {vote_error:.1f}%)")
    assert any(ln.startswith("  by canvas label") for ln in lines)


def test_train_remedies_averages_the_weights_after_every_step(small, monkeypatch):
    """``Remedies.ema``: the averaged model is the exponential moving average of the weights the
    optimiser left after each step (the first step's weights, then ``d avg + (1 - d) w``), and
    training itself is unchanged by it."""
    snapshots: list[torch.Tensor] = []
    original = mm.RemediesTrainer.step

    def recording_step(self, *args, **kwargs):
        out = original(self, *args, **kwargs)
        snapshots.append(self.model.head.weight.detach().clone())
        return out

    monkeypatch.setattr(mm.RemediesTrainer, "step", recording_step)
    r = mm.Remedies(strata=4, memory=40, n_start=4, ema=0.9)
    trained = {}
    for with_average in (False, True):
        snapshots.clear()
        torch.manual_seed(0)
        model = mm.MegapixelATS(n_patches=4)
        averaged = mm.weight_average(model, r.ema if with_average else 0.0)
        mm.train_remedies(
            model, mm.Data(small, small), r, 2, 1, 1e9, 0, time.perf_counter, averaged=averaged
        )
        trained[with_average] = model.head.weight.detach().clone()
    assert len(snapshots) == 4  # 8 canvases, batches of 2
    expected = snapshots[0]
    for w in snapshots[1:]:
        expected = r.ema * expected + (1 - r.ema) * w
    assert torch.allclose(averaged.module.head.weight, expected, atol=1e-6)
    assert not torch.allclose(expected, snapshots[-1], atol=1e-4)  # it is not the last weights
    assert torch.equal(trained[False], trained[True])


def test_region_normalized_weighs_each_attention_region_as_one_cell():
    """Cells above log 1/2 that touch (8-neighbours) form one region, scaled to total mass 1 with
    their ratios kept; cells outside every region are left as they are."""
    logits = torch.full((2, 1, 6, 6), -8.0)
    logits[0, 0, 0:2, 0:2] = torch.tensor([[0.0, -0.1], [-0.2, -0.3]])  # a 2 x 2 region
    logits[0, 0, 2, 2] = -0.05  # touches the region's corner: the same region
    logits[0, 0, 5, 5] = -0.4  # a region of one cell
    logits[0, 0, 4, 0] = -1.0  # sigmoid below 1/2: not a region
    out = mm.region_normalized(logits)
    big = torch.cat([out[0, 0, 0:2, 0:2].flatten(), out[0, 0, 2, 2].reshape(1)])
    assert torch.logsumexp(big, 0) == pytest.approx(0.0, abs=1e-6)
    assert out[0, 0, 5, 5] == pytest.approx(0.0, abs=1e-6)
    assert torch.allclose(big - big[0], torch.tensor([0.0, -0.1, -0.2, -0.3, -0.05]), atol=1e-6)
    outside = torch.ones(6, 6, dtype=torch.bool)
    outside[0:3, 0:3] = False
    outside[5, 5] = False
    assert torch.equal(out[0, 0][outside], logits[0, 0][outside])
    assert torch.equal(out[1], logits[1])  # no cell above 1/2: unchanged
