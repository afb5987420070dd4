"""Models: config parsing/validation, shapes, masking, checkpoints (incl. incompatible configs)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from wsi_ats.core import masked_softmax
from wsi_ats.models import (
    CheckpointError,
    ConfigError,
    PipelineConfig,
    SlideClassifier,
    build_model,
    load_model,
    save_checkpoint,
)
from wsi_ats.models.config import SAVED_BEFORE

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", ["default.toml", "synthetic.toml", "demo.toml", "baselines.toml"])
def test_shipped_pipelines_parse(name: str) -> None:
    cfg = PipelineConfig.from_toml(ROOT / "pipelines" / name)
    assert cfg.sampling.n_patches >= 1
    if name == "synthetic.toml":  # the built-in defaults, in pixel geometry
        assert cfg == PipelineConfig() and not cfg.slide.physical
    if name == "default.toml":  # real slides: 256 px tiles at 0.5 um/px, one cell per tile
        assert cfg.slide.physical and (cfg.slide.tile_mpp, cfg.slide.tile_size) == (0.5, 256)
        assert cfg.diff(PipelineConfig()) == [
            "slide.tile_mpp", "attention.map_stride", "predict.n_draws",
            "predict.tile_batch_size", "predict.decision_max_draws",
        ]  # fmt: skip


def test_every_field_is_documented_in_default_toml() -> None:
    text = (ROOT / "pipelines" / "default.toml").read_text()
    for section, values in PipelineConfig().to_dict().items():
        assert f"[{section}]" in text
        for key in values:
            line = next(ln for ln in text.splitlines() if ln.startswith(f"{key} "))
            assert "#" in line, f"{section}.{key} has no comment"


#: a bad spec file's text -> what its error must say (the file's name, the field, the problem)
BAD_SPECS = [
    ("[sampling]\nn_patchs = 3\n", r"bad\.toml.*n_patchs"),
    ("[sampling]\nn_patches = 'many'\n", r"sampling\.n_patches must be an integer"),
    ("[attention]\nmap_stride = 3\n", r"bad\.toml.*map_stride"),
    ('[train]\ncontrast_weighting = "uniform"\n', r"bad\.toml.*train\.contrast_weighting must be"),
    ("[train]\ncontrast_decay = 0.0\n", r"bad\.toml.*train\.contrast_decay must be in"),
    ("[train]\ninstance_scale = 0.0\n", r"bad\.toml.*train\.instance_scale must be > 0"),
    ("[head]\nlogit_scale = -1.0\n", r"bad\.toml.*head\.logit_scale must be > 0"),
    (
        "[predict]\ndecision_max_draws = -4\n",
        r"bad\.toml.*predict\.decision_max_draws must be >= 0",
    ),
    ("[nonsense]\n", "unknown section"),
]


@pytest.mark.parametrize(("text", "message"), BAD_SPECS)
def test_config_errors_name_file_and_field(tmp_path: Path, text: str, message: str) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(text)
    with pytest.raises(ConfigError, match=message):
        PipelineConfig.from_toml(bad)


def test_config_round_trip_and_replace() -> None:
    cfg = PipelineConfig().replace(train={"epochs": 3}, sampling={"n_patches": 5})
    assert cfg.train.epochs == 3 and cfg.sampling.n_patches == 5
    assert PipelineConfig.from_dict(cfg.to_dict()) == cfg


@pytest.mark.parametrize("stride", [1, 2, 4, 8])
def test_attention_map_shape_and_mask(stride: int) -> None:
    cfg = PipelineConfig().replace(attention={"map_stride": stride})
    model = build_model(cfg, seed=0)
    view = torch.rand(2, 3, 40, 56)
    mask = torch.zeros(2, 40, 56, dtype=torch.bool)
    mask[0, 8:24, 16:40] = True  # item 1 has no tissue: falls back to every cell
    a = model.attention(view, mask)
    assert a.shape == (2, -(-40 // stride), -(-56 // stride))
    torch.testing.assert_close(a.sum(dim=(1, 2)), torch.ones(2))
    # the mask rule itself (tests/test_core_masking.py) is the core's: the model uses it
    torch.testing.assert_close(a, masked_softmax(model.attention_net(view), mask))
    z = model.attention_logits(view, mask)
    torch.testing.assert_close(torch.softmax(z.flatten(1), 1).view_as(a), a)


def test_feature_and_head_shapes() -> None:
    model = build_model(PipelineConfig(), seed=0)
    f = model.features(torch.rand(5, 3, 64, 64))
    assert f.shape == (5, model.config.features.dim)
    assert model.classify(f).shape == (5,)
    plain = build_model(PipelineConfig().replace(head={"logit_scale": 1.0}), seed=0)
    scale = model.config.head.logit_scale
    torch.testing.assert_close(model.classify(f), scale * plain.classify(f))


def test_pluggable_feature_net() -> None:
    cfg = PipelineConfig().replace(features={"dim": 8})
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.LazyLinear(8))
    model = SlideClassifier(cfg, feature_net=net)
    assert model.features(torch.rand(3, 3, 16, 16)).shape == (3, 8)


def test_timm_backbone_needs_the_extra() -> None:
    cfg = PipelineConfig().replace(features={"backbone": "timm:resnet18"})
    try:
        import timm  # noqa: F401
    except ModuleNotFoundError:
        with pytest.raises(ImportError, match=r"wsi-ats\[timm\]"):
            build_model(cfg)
    else:  # pragma: no cover - only where timm is installed
        assert build_model(cfg).features(torch.rand(2, 3, 64, 64)).shape == (2, cfg.features.dim)


def test_checkpoint_round_trip(tmp_path: Path) -> None:
    cfg = PipelineConfig().replace(features={"dim": 12}, head={"hidden": 7})
    model = build_model(cfg, seed=1)
    path = save_checkpoint(tmp_path / "run" / "model.pt", model, epoch=4, val_auc=0.5)
    assert (tmp_path / "run" / "config.json").exists()
    loaded = load_model(tmp_path / "run")
    assert loaded.config == cfg and not loaded.training
    x = torch.rand(3, 3, 32, 32)
    torch.testing.assert_close(loaded.features(x), model.eval().features(x))
    raw = torch.load(path, weights_only=True)
    assert raw["epoch"] == 4 and raw["config"] == cfg.to_dict()


def test_incompatible_config_is_rejected_with_fields(tmp_path: Path) -> None:
    model = build_model(PipelineConfig(), seed=0)
    path = save_checkpoint(tmp_path / "model.pt", model, epoch=0)
    other = PipelineConfig().replace(features={"dim": 64}, attention={"width": 8})
    with pytest.raises(CheckpointError) as err:
        load_model(path, other)
    msg = str(err.value)
    assert str(path) in msg and "features.dim" in msg and "attention.width" in msg
    assert isinstance(err.value, ValueError)


def test_weights_not_fitting_config_are_rejected(tmp_path: Path) -> None:
    model = build_model(PipelineConfig(), seed=0)
    path = save_checkpoint(tmp_path / "model.pt", model, epoch=0)
    raw = torch.load(path, weights_only=True)
    raw["config"]["features"]["dim"] = 48  # config says 48, weights say 32
    torch.save(raw, path)
    with pytest.raises(CheckpointError, match=r"model\.pt.*shape mismatch.*proj"):
        load_model(path)


def test_non_checkpoints_are_rejected(tmp_path: Path) -> None:
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="junk.pt"):
        load_model(junk)
    torch.save({"weights": torch.zeros(1)}, junk)
    with pytest.raises(CheckpointError, match="not a wsi-ats checkpoint"):
        load_model(junk)
    with pytest.raises(CheckpointError, match="no such"):
        load_model(tmp_path / "missing.pt")


def written_before(path: Path, section: str, name: str) -> Path:
    """Rewrite the checkpoint at ``path`` without ``section.name`` in its config, as a version
    from before that field wrote it."""
    raw = torch.load(path, weights_only=True)
    del raw["config"][section][name]
    torch.save(raw, path)
    return path


@pytest.mark.parametrize("section", ["attention", "features"])
def test_units_are_saved_and_a_checkpoint_from_before_the_field_loads_with_relu(
    section: str, tmp_path: Path
) -> None:
    """``attention.activation`` / ``features.activation`` pick the units and are saved; a
    checkpoint that does not record the field was trained with ReLUs and must load as such (not
    with a leaky default) and give the outputs it was saved with."""

    def output(m: SlideClassifier, x: torch.Tensor) -> torch.Tensor:
        return m.attention(x) if section == "attention" else m.features(x)

    x = torch.rand(2, 3, 48, 48)
    models = {}
    for units in ("relu", "leaky_relu"):
        model = build_model(PipelineConfig().replace(**{section: {"activation": units}}), seed=3)
        models[units] = model.eval()
        loaded = load_model(save_checkpoint(tmp_path / units / "model.pt", model, epoch=1))
        assert getattr(loaded.config, section).activation == units
        torch.testing.assert_close(output(loaded, x), output(model, x))
    leaky = models["leaky_relu"]
    leaky.load_state_dict(models["relu"].state_dict())  # same weights, other units: other output
    assert not torch.allclose(output(leaky, x), output(models["relu"], x))
    old = written_before(tmp_path / "relu" / "model.pt", section, "activation")
    loaded = load_model(old)
    assert getattr(loaded.config, section).activation == "relu"
    torch.testing.assert_close(output(loaded, x), output(models["relu"], x))
    if section == "attention":  # today's default is leaky: the old weights do not fit it
        with pytest.raises(CheckpointError, match="attention.activation"):
            load_model(old, config=PipelineConfig())


@pytest.mark.parametrize("activation", ["relu", "leaky_relu"])
def test_a_switched_off_attention_trunk_keeps_a_gradient_only_when_leaky(activation: str) -> None:
    """Every trunk unit pushed below zero (what a noisy early push of the logits can do): the map
    is flat, and with ReLUs no gradient reaches the trunk again; leaky units still learn."""
    cfg = PipelineConfig().replace(attention={"activation": activation, "stratum_scale": 0.0})
    model = build_model(cfg, seed=0)
    with torch.no_grad():
        for layer in model.attention_net.trunk:
            if isinstance(layer, torch.nn.Conv2d):
                layer.bias.fill_(-100.0)
    logits = model.attention_logits(torch.rand(1, 3, 64, 64))
    (logits * torch.randn_like(logits)).sum().backward()
    first = next(iter(model.attention_net.trunk)).weight.grad
    grad = 0.0 if first is None else float(first.abs().sum())
    assert (grad > 0) == (activation == "leaky_relu")


def test_a_saved_config_without_the_newer_fields_loads_as_it_was_trained() -> None:
    """A checkpoint's config written before every field of SAVED_BEFORE existed gets each field's
    old value (together they are valid); a spec written today without them gets the defaults."""
    saved = PipelineConfig().to_dict()
    for section, name in SAVED_BEFORE:
        del saved[section][name]
    old, today = PipelineConfig.from_saved(saved), PipelineConfig()
    for (section, name), value in SAVED_BEFORE.items():
        assert getattr(getattr(old, section), name) == value, (section, name)
    assert old.train.instance_scale == 1.0
    assert PipelineConfig.from_dict(saved) == today
