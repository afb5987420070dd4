"""Small ``nn.Module`` factories that pipeline specs name as ``factory:pretrained_backbones:<fn>``
in the tests (stand-ins for pretrained networks: a convolution, batch norm, a second convolution)."""

from __future__ import annotations

from torch import nn


def small_backbone() -> nn.Module:
    """Tiles ``[n, 3, h, w]`` -> ``[n, 6]``; top-level modules ``0`` ... ``6`` (``1`` is a batch
    norm, whose running statistics must not move when it is frozen)."""
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.BatchNorm2d(4),
        nn.ReLU(),
        nn.Conv2d(4, 6, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
    )


def not_a_module() -> int:
    """A factory that returns no module (refused with a message)."""
    return 3
