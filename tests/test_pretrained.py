"""Pretrained feature networks from local files: a factory named in the spec, its weights
(torch.save state dict or safetensors) loaded exactly, input normalisation, frozen or partly frozen
backbones through a real training step, checkpoints that load without the weights file, and the
missing-file error through the command line (exit 2, one line)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from pretrained_backbones import small_backbone
from tiny_cohort import tiny_cohort

from wsi_ats.cli import main
from wsi_ats.models import ConfigError, PipelineConfig, build_model, load_model, save_checkpoint
from wsi_ats.models.features import WeightsFileError, backbone_of, tile_keys
from wsi_ats.training import SlideStore, read_cohort
from wsi_ats.training.step import StepSettings, build_optimizer, train_step

FACTORY = "factory:pretrained_backbones:small_backbone"

SPEC = """
[slide]
lowres_size = 64
patch_size = 16
[attention]
width = 4
depth = 2
[features]
backbone = "{backbone}"
dim = 8
weights = "{weights}"
freeze = "{freeze}"
{extra}
[sampling]
n_patches = 8
[train]
batch_size = 2
lr = 0.05
attention_lr = 0.05
read_workers = 2
"""


def write_spec(path: Path, weights: str = "", freeze: str = "none", extra: str = "") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    text = SPEC.format(backbone=FACTORY, weights=weights, freeze=freeze, extra=extra)
    path.write_text(text)
    return path


def saved_backbone(path: Path, fmt: str, seed: int = 3) -> dict[str, torch.Tensor]:
    """A trained-looking ``small_backbone`` (random weights, moved BN statistics) saved at
    ``path`` as ``fmt``; returns its state dict."""
    torch.manual_seed(seed)
    net = small_backbone()
    with torch.no_grad():
        net[1].running_mean.uniform_(-1, 1)
        net[1].running_var.uniform_(0.5, 2)
        net[1].weight.uniform_(0.5, 1.5)
    state = {k: v.clone() for k, v in net.state_dict().items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "safetensors":
        from safetensors.torch import save_file

        save_file(state, str(path))
    else:
        torch.save(state, path)
    return state


@pytest.mark.parametrize("fmt", ["pt", "safetensors"])
def test_weights_load_through_the_spec_relative_to_its_folder(
    tmp_path: Path, fmt: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    saved = saved_backbone(tmp_path / "specs" / "weights" / f"backbone.{fmt}", fmt)
    spec = write_spec(tmp_path / "specs" / "p.toml", weights=f"weights/backbone.{fmt}")
    monkeypatch.chdir(tmp_path)  # the path is the spec folder's, not the working folder's
    cfg = PipelineConfig.from_toml(spec)
    assert Path(cfg.features.weights) == tmp_path / "specs" / "weights" / f"backbone.{fmt}"
    model = build_model(cfg, seed=0)
    loaded = backbone_of(model.feature_net).state_dict()
    assert sorted(loaded) == sorted(saved)
    for key, value in saved.items():
        assert torch.equal(loaded[key], value), key
    # without the weights the same spec gives other (random) weights
    fresh = build_model(cfg.replace(features={"weights": ""}), seed=0)
    assert not torch.equal(backbone_of(fresh.feature_net)[0].weight, saved["0.weight"])
    assert model.features(torch.rand(5, 3, 16, 16)).shape == (5, 8)


def test_input_normalisation_from_the_spec(tmp_path: Path) -> None:
    extra = "mean = [0.5, 0.25, 0.75]\nstd = [0.5, 2.0, 0.25]"
    cfg = PipelineConfig.from_toml(write_spec(tmp_path / "p.toml", extra=extra))
    assert cfg.features.mean == (0.5, 0.25, 0.75) and cfg.features.std == (0.5, 2.0, 0.25)
    net = build_model(cfg, seed=0).feature_net.eval()
    x = torch.rand(4, 3, 16, 16)
    mean = torch.tensor([0.5, 0.25, 0.75]).view(1, 3, 1, 1)
    std = torch.tensor([0.5, 2.0, 0.25]).view(1, 3, 1, 1)
    expected = torch.nn.functional.normalize(net.proj(net.body((x - mean) / std)), dim=1)
    torch.testing.assert_close(net(x), expected)
    bad = tmp_path / "bad.toml"
    write_spec(bad, extra="mean = [0.5, 0.5, 0.5]")
    with pytest.raises(ConfigError, match=r"bad\.toml.*features\.mean and features\.std"):
        PipelineConfig.from_toml(bad)


def _one_step(cfg: PipelineConfig, root: Path, steps: int = 1) -> tuple[dict, dict]:
    """The model's state before and after ``steps`` real training steps on a tiny cohort."""
    before, model = _steps(cfg, root, steps)
    return before, model.state_dict()


def _steps(cfg: PipelineConfig, root: Path, steps: int) -> tuple[dict, torch.nn.Module]:
    manifest = root / "manifest.csv"
    slides = read_cohort(manifest if manifest.exists() else tiny_cohort(root, n=4))[:2]
    model = build_model(cfg, seed=0)
    before = {k: v.detach().clone() for k, v in model.state_dict().items()}
    optimizer = build_optimizer(model)
    with SlideStore(cfg, 2) as store:
        gen = torch.Generator().manual_seed(0)
        for _ in range(steps):
            train_step(model, optimizer, store, slides, gen, StepSettings(8))
    return before, model


def test_frozen_backbone_stays_fixed_while_attention_and_head_train(tmp_path: Path) -> None:
    saved_backbone(tmp_path / "w.pt", "pt")
    cfg = PipelineConfig.from_toml(write_spec(tmp_path / "p.toml", weights="w.pt", freeze="all"))
    model = build_model(cfg, seed=0)
    model.train()
    assert not backbone_of(model.feature_net).training  # batch norm kept in eval mode
    before, after = _one_step(cfg, tmp_path / "cohort")
    body = [k for k in before if k.startswith("feature_net.body.")]
    assert any(k.endswith("running_mean") for k in body)
    for key in body:  # weights and batch-norm statistics alike
        assert torch.equal(before[key], after[key]), key
    for prefix in ("attention_net.", "head.", "feature_net.proj."):
        keys = [k for k in before if k.startswith(prefix)]
        assert keys and any(not torch.equal(before[k], after[k]) for k in keys), prefix


def test_partly_frozen_backbone(tmp_path: Path) -> None:
    cfg = PipelineConfig.from_toml(write_spec(tmp_path / "p.toml", freeze="2"))  # conv + BN
    before, after = _one_step(cfg, tmp_path / "cohort")
    for key in ("0.weight", "0.bias", "1.weight", "1.bias", "1.running_mean", "1.running_var"):
        k = f"feature_net.body.{key}"
        assert torch.equal(before[k], after[k]), k
    k = "feature_net.body.3.weight"  # the second convolution trains
    assert not torch.equal(before[k], after[k])
    by_name = PipelineConfig.from_toml(write_spec(tmp_path / "q.toml", freeze="0,1"))
    frozen = {
        n for n, p in build_model(by_name).feature_net.named_parameters() if not p.requires_grad
    }
    assert frozen == {"body.0.weight", "body.0.bias", "body.1.weight", "body.1.bias"}
    with pytest.raises(ConfigError, match=r"no module \['stem'\]; its top-level modules"):
        build_model(PipelineConfig.from_toml(write_spec(tmp_path / "r.toml", freeze="stem")))


def test_checkpoint_loads_without_the_weights_file(tmp_path: Path) -> None:
    weights = tmp_path / "w.pt"
    saved = saved_backbone(weights, "pt")
    spec = write_spec(tmp_path / "p.toml", weights="w.pt", freeze="all")
    cfg = PipelineConfig.from_toml(spec)
    model = build_model(cfg, seed=0)
    with torch.no_grad():
        model.feature_net.body[3].weight.add_(1.0)  # as if trained further: the checkpoint's win
    ckpt = save_checkpoint(tmp_path / "run" / "model.pt", model, epoch=1)
    weights.unlink()
    for loaded in (load_model(ckpt), load_model(ckpt, PipelineConfig.from_toml(spec))):
        for key, value in model.state_dict().items():
            assert torch.equal(loaded.state_dict()[key], value), key
        assert not torch.equal(loaded.feature_net.body[3].weight, saved["3.weight"])
    with pytest.raises(WeightsFileError):  # a fresh model does need the file
        build_model(cfg)


def test_missing_or_wrong_weights_file_errors(tmp_path: Path) -> None:
    cfg = PipelineConfig.from_toml(write_spec(tmp_path / "p.toml", weights="gone/uni.safetensors"))
    with pytest.raises(WeightsFileError, match=r"gone/uni\.safetensors: no such file.*internet"):
        build_model(cfg)
    wrong = tmp_path / "wrong.pt"
    torch.save({"0.weight": torch.zeros(2, 2)}, wrong)
    with pytest.raises(WeightsFileError, match=r"wrong\.pt: does not fit the backbone: missing"):
        build_model(cfg.replace(features={"weights": str(wrong)}))
    junk = tmp_path / "junk.pt"
    junk.write_text("not weights")
    with pytest.raises(WeightsFileError, match=r"junk\.pt: not a state dict"):
        build_model(cfg.replace(features={"weights": str(junk)}))
    with pytest.raises(ConfigError, match="no function 'nope'"):
        build_model(cfg.replace(features={"backbone": "factory:pretrained_backbones:nope"}))
    with pytest.raises(ConfigError, match="returned int, not a torch.nn.Module"):
        build_model(cfg.replace(features={"backbone": "factory:pretrained_backbones:not_a_module"}))
    with pytest.raises(ConfigError, match="features.backbone must be"):
        cfg.replace(features={"backbone": "factory:no colon"})


def test_cli_train_missing_weights_is_one_line_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    manifest = tiny_cohort(tmp_path / "cohort", n=4)
    spec = write_spec(tmp_path / "p.toml", weights="models/uni.safetensors")
    out = tmp_path / "run"
    code = main(["train", "--manifest", str(manifest), "--pipeline", str(spec), "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert str(tmp_path / "models" / "uni.safetensors") in err
    assert "never downloaded" in err and "machine with internet access" in err
    assert not out.exists()  # nothing made before the check


def test_tile_cache_of_a_frozen_backbone(tmp_path: Path) -> None:
    saved_backbone(tmp_path / "w.pt", "pt")
    spec = write_spec(tmp_path / "p.toml", weights="w.pt", freeze="all", extra="cache_tiles = 6")
    cfg = PipelineConfig.from_toml(spec)
    model = build_model(cfg, seed=0).train()
    cache = model.feature_net.tile_cache
    tiles = torch.rand(8, 3, 16, 16)
    keys = tile_keys("s.tiff", 0, (16, 16), [(i * 16, 0) for i in range(8)])
    plain = model.features(tiles)  # no keys: no cache
    assert len(cache) == 0
    torch.testing.assert_close(model.features(tiles[:4], keys[:4]), plain[:4])
    assert (cache.hits, cache.misses, len(cache)) == (0, 4, 4)
    torch.testing.assert_close(model.features(tiles, keys), plain)  # 4 hits, 4 computed
    assert (cache.hits, cache.misses, len(cache)) == (4, 8, 6)  # bounded: LRU keeps 6
    again = model.features(tiles[[7, 6]], keys[6:8][::-1])  # the newest are kept
    torch.testing.assert_close(again, plain[[7, 6]])
    assert cache.hits == 6
    # misses go through the backbone in power-of-two batches (few shapes for cuDNN autotuning)
    cache.clear()
    shapes: list[int] = []
    embed = model.feature_net.embed
    model.feature_net.embed = lambda x: (shapes.append(len(x)), embed(x))[1]
    model.features(tiles[:2], keys[:2])
    torch.testing.assert_close(model.features(tiles[:5], keys[:5]), plain[:5])  # 3 misses
    assert shapes == [2, 4]
    # gradients reach the projection through cached rows
    model.features(tiles[[7]], keys[7:8]).sum().backward()
    assert model.feature_net.proj.weight.grad is not None

    # through real training steps: the same result as without the cache, and the cache is used
    _, cached_model = _steps(cfg, tmp_path / "cohort", steps=2)
    _, plain_model = _steps(cfg.replace(features={"cache_tiles": 0}), tmp_path / "cohort", 2)
    for key, value in plain_model.state_dict().items():
        torch.testing.assert_close(cached_model.state_dict()[key], value, msg=key)
    assert cached_model.feature_net.tile_cache.misses >= 16
    with pytest.raises(ConfigError, match='cache_tiles needs freeze = "all"'):
        cfg.replace(features={"freeze": "none"})
