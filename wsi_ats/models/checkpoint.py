"""Checkpoints: ``RUN/model.pt`` = ``{"state_dict", "config", "epoch", ...}``, loaded weights-only.

Only plain tensors and builtins are stored, so :func:`load_model` reads them with
``torch.load(..., weights_only=True)`` (no pickle of arbitrary objects). ``RUN/config.json`` mirrors the
config for people and tools.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from wsi_ats.atomic import atomic_path, atomic_write_text
from wsi_ats.models.classifier import SlideClassifier
from wsi_ats.models.config import ConfigError, PipelineConfig
from wsi_ats.models.data_range import DataRange
from wsi_ats.models.features import state_dict_mismatch

CHECKPOINT_FORMAT = 1


class CheckpointError(ValueError):
    """A checkpoint cannot be used: unreadable, not ours, or not fitting the architecture."""

    def __init__(self, path: str | Path, reason: str) -> None:
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"{path}: {reason}")


def save_checkpoint(path: str | Path, model: SlideClassifier, epoch: int, **extra: Any) -> Path:
    """Write ``model``'s weights and config (+ ``extra`` builtins/tensors) atomically to ``path``.

    The model's ``data_range`` (training slides' size and resolution), when set, is kept too.
    Also writes ``config.json`` beside it. Returns ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data_range = getattr(model, "data_range", None)
    payload = {
        "format": CHECKPOINT_FORMAT,
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "config": model.config.to_dict(),
        "epoch": int(epoch),
        **({} if data_range is None else {"data_range": data_range.to_dict()}),
        **extra,
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)
    atomic_write_text(path.with_name("config.json"), model.config.to_json() + "\n")
    return path


def checkpoint_file(path: str | Path) -> Path:
    """``path``, or ``path/model.pt`` when it is a run folder (:class:`CheckpointError` if that
    folder has none)."""
    path = Path(path)
    if path.is_dir():
        if not (path / "model.pt").is_file():
            raise CheckpointError(
                path, "folder has no model.pt; give RUN/model.pt written by 'wsi-ats train'"
            )
        path = path / "model.pt"
    return path


def read_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """The raw checkpoint dict (weights-only load); :class:`CheckpointError` when it is not one."""
    path = checkpoint_file(path)
    if not path.is_file():
        raise CheckpointError(path, "no such checkpoint file; give RUN/model.pt of a trained run")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except OSError as exc:
        raise CheckpointError(path, f"cannot read it ({exc.strerror or exc})") from None
    except Exception as exc:  # noqa: BLE001 - torch's unpickler fails on other files in many ways
        # (UnpicklingError, IndexError, KeyError, UnicodeDecodeError...; its own text suggests
        # weights_only=False, which we never do): whatever it is, the file is not a checkpoint
        raise CheckpointError(
            path,
            f"not a checkpoint ({type(exc).__name__}); give RUN/model.pt written by 'wsi-ats train'",
        ) from None
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt or "config" not in ckpt:
        raise CheckpointError(path, "not a wsi-ats checkpoint (needs 'state_dict' and 'config')")
    return ckpt


def load_model(
    path: str | Path,
    config: PipelineConfig | None = None,
    *,
    attention_net: nn.Module | None = None,
    feature_net: nn.Module | None = None,
    head: nn.Module | None = None,
    map_location: str | torch.device = "cpu",
) -> SlideClassifier:
    """The :class:`SlideClassifier` saved at ``path`` (a ``model.pt`` or the run folder), in eval mode.

    When ``config`` is given, its architecture fields must equal the checkpoint's. The checkpoint
    holds every weight, the feature network's too: ``features.weights`` is not read. Custom modules
    (``attention_net``...) replace the built-in ones before the weights are loaded. Raises
    :class:`CheckpointError` (a ``ValueError``) naming the file and the mismatching fields or weights.
    """
    path = checkpoint_file(path)
    ckpt = read_checkpoint(path, map_location)
    try:
        saved = PipelineConfig.from_saved(ckpt["config"])
    except ConfigError as exc:
        raise CheckpointError(path, f"its config is not valid here: {exc}") from None
    if config is not None:
        diff = saved.architecture_diff(config)
        if diff:
            details = ", ".join(
                f"{name} (checkpoint {_get(saved, name)!r}, pipeline {_get(config, name)!r})"
                for name in diff
            )
            raise CheckpointError(path, f"incompatible config: {details}")
        saved = config
    try:
        model = SlideClassifier(saved, attention_net, feature_net, head, pretrained=False)
    except (ImportError, ValueError) as exc:
        raise CheckpointError(path, f"cannot build its model: {exc}") from None
    check_state_dict(path, model, ckpt["state_dict"])
    model.load_state_dict(ckpt["state_dict"])
    model.data_range = DataRange.from_dict(ckpt.get("data_range"))
    return model.to(map_location).eval()


def check_state_dict(path: str | Path, model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Raise :class:`CheckpointError` listing missing, unexpected and mis-shaped weights."""
    missing, unexpected, shapes = (
        sorted(x) for x in state_dict_mismatch(model.state_dict(), state)
    )
    problems = []
    if missing:
        problems.append(f"missing weights {missing[:5]}")
    if unexpected:
        problems.append(f"unexpected weights {unexpected[:5]}")
    if shapes:
        problems.append(f"shape mismatch (checkpoint vs model) {shapes[:5]}")
    if problems:
        raise CheckpointError(path, "weights do not fit the architecture: " + "; ".join(problems))


def _get(cfg: PipelineConfig, dotted: str) -> Any:
    section, key = dotted.split(".")
    return getattr(getattr(cfg, section), key)
