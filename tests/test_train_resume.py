"""``train --resume`` continues with exactly the settings it records; a finished run is not
silently overwritten."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from tiny_cohort import CONFIG, tiny_cohort

from wsi_ats.cli import main
from wsi_ats.models import CheckpointError, PipelineConfig
from wsi_ats.training import RunExistsError, train


@pytest.fixture(scope="module")
def manifest(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_cohort(tmp_path_factory.mktemp("resume") / "cohort", n=8)


def _lrs(path: Path) -> list[float]:
    """The learning rates of the optimizer state saved in ``path``."""
    state = torch.load(path, weights_only=True)["optimizer"]
    return [group["lr"] for group in state["param_groups"]]


def test_resume_refuses_a_changed_spec_and_records_what_it_uses(
    manifest: Path, tmp_path: Path
) -> None:
    torch.set_num_threads(1)
    run = tmp_path / "run"
    train(manifest, CONFIG, run, epochs=1, progress=False)
    assert _lrs(run / "last.pt") == [CONFIG.train.attention_lr, 0.003]

    changed = CONFIG.replace(train={"lr": 0.001}, predict={"n_draws": 3})
    with pytest.raises(CheckpointError, match=r"train\.lr \(run 0\.003, pipeline 0\.001\)") as info:
        train(manifest, changed, run, resume=True, epochs=2, progress=False)
    assert "predict.n_draws" in str(info.value) and "--overwrite" in str(info.value)
    assert torch.load(run / "last.pt", weights_only=True)["epoch"] == 1  # untouched

    # the same spec with more epochs (and other reader threads) resumes
    more = CONFIG.replace(train={"epochs": 2, "read_workers": 1})
    train(manifest, more, run, resume=True, progress=False)
    last = torch.load(run / "last.pt", weights_only=True)
    assert last["epoch"] == 2
    recorded = PipelineConfig.from_dict(json.loads((run / "config.json").read_text()))
    assert recorded == PipelineConfig.from_dict(last["config"]) == more
    # the restored optimizer really used the recorded learning rates
    assert _lrs(run / "last.pt") == [recorded.train.attention_lr, recorded.train.lr]


def test_resume_refuses_an_optimizer_state_that_disagrees_with_its_config(
    manifest: Path, tmp_path: Path
) -> None:
    """A last.pt written by the old resume (config 0.001, optimizer still 0.003) is refused."""
    run = tmp_path / "run"
    train(manifest, CONFIG, run, epochs=1, progress=False)
    state = torch.load(run / "last.pt", weights_only=True)
    state["config"]["train"]["lr"] = 0.001
    torch.save(state, run / "last.pt")
    with pytest.raises(CheckpointError, match="learning rates"):
        train(manifest, None, run, resume=True, epochs=2, progress=False)


def test_finished_run_is_refused_unless_resume_or_overwrite(
    manifest: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    run = tmp_path / "run"
    train(manifest, CONFIG, run, epochs=1, progress=False)
    before = (run / "model.pt").read_bytes()
    with pytest.raises(RunExistsError, match="--resume.*--overwrite"):
        train(manifest, CONFIG, run, epochs=1, progress=False)
    assert (run / "model.pt").read_bytes() == before

    pipeline = tmp_path / "p.toml"
    pipeline.write_text(
        "[slide]\nlowres_size = 64\npatch_size = 16\n[attention]\nwidth = 4\ndepth = 2\n"
        "[features]\nwidth = 4\ndim = 8\n[sampling]\nn_patches = 8\n"
        "[train]\nepochs = 1\nbatch_size = 4\nlr = 0.002\nread_workers = 2\nval_draws = 1\n"
    )
    argv = ["train", "--manifest", str(manifest), "--pipeline", str(pipeline), "--out", str(run)]
    assert main([*argv, "--quiet"]) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert main([*argv, "--quiet", "--overwrite"]) == 0
    assert "best epoch 1" in capsys.readouterr().out
    assert _lrs(run / "last.pt")[1] == 0.002
    assert json.loads((run / "config.json").read_text())["train"]["lr"] == 0.002
    # the training slides' range is recorded for prediction warnings
    data_range = torch.load(run / "model.pt", weights_only=True)["data_range"]
    assert data_range == {"n_slides": 4, "side_px": [512, 512], "mpp": [0.5, 0.5]}
