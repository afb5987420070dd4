"""The compute device and how the feature network runs on it (mixed precision, channels-last).

On CUDA the feature network runs under autocast in bfloat16 where the GPU supports it, else float16
(training then scales the loss with a ``GradScaler``), with tiles and weights in channels-last
memory format; host tiles are pinned and copied asynchronously. On the CPU nothing changes: the
feature network runs in float32 exactly as before. ``WSI_ATS_DEVICE`` (``auto``, ``cpu``, ``cuda``
or ``cuda:N``) chooses the device where no argument does, so Dask workers follow the command line.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import nn

#: environment variable naming the device (``--device`` of the commands sets it for the workers)
DEVICE_ENV = "WSI_ATS_DEVICE"


class DeviceError(ValueError):
    """The device asked for is not available (e.g. ``cuda`` on a machine without a GPU)."""


def resolve_device(name: str | torch.device | None = None) -> torch.device:
    """``name`` (or ``$WSI_ATS_DEVICE``, else ``auto``) as a device: ``auto`` is ``cuda`` when
    torch sees a GPU, else ``cpu``. :class:`DeviceError` for ``cuda`` without a usable GPU."""
    if isinstance(name, torch.device):
        return name
    text = (name or os.environ.get(DEVICE_ENV) or "auto").strip().lower()
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(text)
    except RuntimeError:
        raise DeviceError(f"unknown device {text!r}; use auto, cpu or cuda") from None
    if device.type not in ("cpu", "cuda"):
        raise DeviceError(f"unsupported device {text!r}; use auto, cpu or cuda")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DeviceError(
            f"device {text!r} asked for, but torch sees no CUDA GPU (torch {torch.__version__}); "
            "use --device cpu, or install a CUDA build of torch"
        )
    return device


@dataclass(frozen=True)
class FeaturePrecision:
    """How the feature network runs on a device: autocast dtype (None = float32, no autocast)
    and memory format."""

    device_type: str
    amp_dtype: torch.dtype | None
    channels_last: bool

    @property
    def needs_grad_scaler(self) -> bool:
        """float16 gradients underflow without loss scaling; bfloat16 ones do not."""
        return self.amp_dtype == torch.float16


def feature_precision(
    device: torch.device | str, bf16_supported: bool | None = None
) -> FeaturePrecision:
    """The :class:`FeaturePrecision` of ``device``: on CUDA autocast to bfloat16 where
    ``bf16_supported`` (default: ``torch.cuda.is_bf16_supported()``), else float16, and
    channels-last; on any other device float32 and the default memory format."""
    device = torch.device(device)
    if device.type != "cuda":
        return FeaturePrecision(device.type, None, False)
    if bf16_supported is None:
        bf16_supported = torch.cuda.is_bf16_supported()
    return FeaturePrecision("cuda", torch.bfloat16 if bf16_supported else torch.float16, True)


@contextlib.contextmanager
def autocast_for(precision: FeaturePrecision) -> Iterator[None]:
    """Autocast to ``precision.amp_dtype`` on its device for the block (nothing when None)."""
    if precision.amp_dtype is None:
        yield
        return
    with torch.autocast(precision.device_type, dtype=precision.amp_dtype):
        yield


def run_feature_net(
    net: nn.Module,
    tiles: torch.Tensor,
    precision: FeaturePrecision | None = None,
    call: Callable[[torch.Tensor], torch.Tensor] | None = None,
) -> torch.Tensor:
    """``net(tiles)`` (or ``call(tiles)``, a method of ``net``) as ``precision`` says (default:
    that of the tiles' device), as float32.

    On the CPU by default this is exactly ``net(tiles)``. With channels-last the network's weights
    are converted once (kept so) and the tiles each call."""
    precision = precision or feature_precision(tiles.device)
    call = call or net
    if precision.amp_dtype is None and not precision.channels_last:
        return call(tiles)
    if precision.channels_last:
        if not getattr(net, "_channels_last", False):
            net.to(memory_format=torch.channels_last)
            net._channels_last = True  # type: ignore[assignment]
        if tiles.ndim == 4:
            tiles = tiles.contiguous(memory_format=torch.channels_last)
    with autocast_for(precision):
        out = call(tiles)
    return out.float()


def grad_scaler(device: torch.device | str) -> torch.amp.GradScaler | None:
    """A ``GradScaler`` for training on ``device`` when its autocast dtype is float16, else None."""
    precision = feature_precision(device)
    if not precision.needs_grad_scaler:
        return None
    return torch.amp.GradScaler(precision.device_type)


def host_to_device(array: object, device: torch.device) -> torch.Tensor:
    """``array`` (numpy or tensor) on ``device``: through pinned memory with an asynchronous copy
    on CUDA, a plain ``.to`` elsewhere."""
    t = torch.as_tensor(array)
    if device.type == "cuda":
        if not t.is_pinned():
            t = t.pin_memory()
        return t.to(device, non_blocking=True)
    return t.to(device, non_blocking=True)
