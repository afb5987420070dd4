"""The GPU path's choices, checked on the CPU: autocast dtype (bfloat16 where supported, else
float16 with loss scaling), channels-last, device resolution, pinned copies; and the CPU path
unchanged bit for bit."""

from __future__ import annotations

import pytest
import torch

from wsi_ats.models import PipelineConfig, build_model
from wsi_ats.models.accel import (
    DEVICE_ENV,
    DeviceError,
    FeaturePrecision,
    feature_precision,
    grad_scaler,
    host_to_device,
    resolve_device,
    run_feature_net,
)
from wsi_ats.stages import tiles_to_tensor


def test_precision_per_device() -> None:
    cpu = feature_precision("cpu")
    assert cpu.amp_dtype is None and not cpu.channels_last and not cpu.needs_grad_scaler
    bf16 = feature_precision(torch.device("cuda"), bf16_supported=True)
    assert bf16.amp_dtype == torch.bfloat16 and bf16.channels_last
    assert not bf16.needs_grad_scaler
    fp16 = feature_precision("cuda:0", bf16_supported=False)
    assert fp16.amp_dtype == torch.float16 and fp16.channels_last and fp16.needs_grad_scaler
    assert grad_scaler("cpu") is None


def test_cpu_features_are_unchanged_bit_for_bit() -> None:
    model = build_model(PipelineConfig(), seed=0).eval()
    x = torch.rand(6, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model.features(x), model.feature_net(x))
    assert model.feature_net.body[0].weight.is_contiguous()  # not converted to channels-last


def test_mixed_precision_channels_last_path_runs() -> None:
    """The CUDA recipe (autocast + channels-last), run with the CPU's bfloat16 autocast."""
    model = build_model(PipelineConfig(), seed=0).eval()
    x = torch.rand(6, 3, 64, 64)
    with torch.no_grad():
        reference = model.feature_net(x)
        out = run_feature_net(model.feature_net, x, FeaturePrecision("cpu", torch.bfloat16, True))
    assert out.dtype == torch.float32 and out.shape == reference.shape
    weight = model.feature_net.body[0].weight
    assert weight.is_contiguous(memory_format=torch.channels_last) and not weight.is_contiguous()
    assert not torch.equal(out, reference)  # it did run in bfloat16...
    torch.testing.assert_close(out, reference, atol=0.05, rtol=0.05)  # ...and close to float32


def test_resolve_device(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(DEVICE_ENV, raising=False)
    assert resolve_device("cpu") == torch.device("cpu")
    auto = resolve_device()
    assert auto.type == ("cuda" if torch.cuda.is_available() else "cpu")
    monkeypatch.setenv(DEVICE_ENV, "cpu")
    assert resolve_device() == torch.device("cpu")
    with pytest.raises(DeviceError, match="unsupported device 'meta'"):
        resolve_device("meta")
    if torch.cuda.is_available():  # pragma: no cover - GPU machines
        assert resolve_device("cuda").type == "cuda"
    else:
        with pytest.raises(DeviceError, match="torch sees no CUDA GPU"):
            resolve_device("cuda")


def test_host_copies_and_tile_tensors_on_cpu() -> None:
    tiles = torch.randint(0, 256, (3, 8, 8, 3), dtype=torch.uint8).numpy()
    t = host_to_device(tiles, torch.device("cpu"))
    assert t.dtype == torch.uint8 and torch.equal(t, torch.from_numpy(tiles))
    x = tiles_to_tensor(tiles, torch.device("cpu"))
    assert x.shape == (3, 3, 8, 8)
    assert torch.equal(x, torch.from_numpy(tiles).permute(0, 3, 1, 2).float() / 255.0)


def test_cli_device_cuda_without_gpu_is_one_line(
    capsys: pytest.CaptureFixture, tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from wsi_ats.cli import main

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # as on a machine without one

    code = main(["train", "--manifest", str(tmp_path / "m.csv"), "--pipeline",
                 str(tmp_path / "p.toml"), "--out", str(tmp_path / "run"), "--device", "cuda"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and "torch sees no CUDA GPU" in err and len(err.strip().splitlines()) == 1
