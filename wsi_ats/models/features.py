"""Feature networks for high-res tiles: a built-in compact CNN, optional timm backbones, any module.

A feature network maps tiles ``[n, 3, p, p]`` (float in ``[0, 1]``) to features ``[n, D]``. Any
``nn.Module`` with that contract can be plugged into :class:`~wsi_ats.models.SlideClassifier`.

Pretrained backbones come from local files only (nothing is downloaded at run time): the spec's
``features.backbone`` names the architecture (``timm:<name>`` or ``factory:<package.module>:<function>``,
a function called without arguments that returns an ``nn.Module`` mapping tiles to ``[n, k]``),
``features.weights`` a safetensors file or a ``torch.save``-d state dict of that module (read with
``weights_only=True``). ``features.mean``/``std`` normalise the tiles before the backbone and
``features.freeze`` fixes all or part of it (frozen parts stay in eval mode); the projection to
``features.dim`` always trains.
"""

from __future__ import annotations

import importlib
from collections import OrderedDict
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from torch import nn

from wsi_ats.models.config import ConfigError, FeatureConfig


class WeightsFileError(ConfigError):
    """The backbone's weights file is missing, unreadable or does not fit the backbone."""

    def __init__(self, path: str | Path, reason: str) -> None:
        self.weights = Path(path)
        super().__init__(f"features.weights {path}: {reason}")


#: how to get a missing weights file (the machines that run wsi-ats may have no internet access)
FETCH_HINT = (
    "weights are never downloaded at run time: download the file on a machine with internet "
    "access and copy it to this path (or fix features.weights, relative to the spec's folder)"
)


class _Freezable(nn.Module):
    """``train(mode)`` leaves the modules that :func:`freeze_backbone` fixed in eval mode."""

    frozen: list[str]  # module names in ``body`` ("" = all of it); set by freeze_backbone

    def train(self, mode: bool = True) -> _Freezable:
        super().train(mode)
        for module in frozen_modules(self):
            module.eval()
        return self


class CompactCNN(_Freezable):
    """Tiles ``[n, 3, p, p]`` in ``[0, 1]`` -> ``[n, dim]``.

    A 3x3 convolution at full tile resolution (fine textures survive), then three stride-2 stages
    doubling the width, global average and max pooling, and a linear layer. No batch statistics, so
    a tile's feature never depends on the other tiles of its batch.
    """

    def __init__(
        self,
        width: int = 16,
        dim: int = 32,
        normalize: bool = False,
        mean: tuple[float, ...] = (),
        std: tuple[float, ...] = (),
        activation: str = "relu",
    ) -> None:
        super().__init__()
        self.frozen = []
        w = width
        self.input_norm = _InputNorm(mean, std) if mean else None

        def unit() -> nn.Module:
            if activation == "leaky_relu":
                return nn.LeakyReLU(0.1, inplace=True)
            return nn.ReLU(inplace=True)

        self.body = nn.Sequential(
            nn.Conv2d(3, w, 3, padding=1),
            unit(),
            nn.Conv2d(w, w, 3, stride=2, padding=1),
            unit(),
            nn.Conv2d(w, 2 * w, 3, stride=2, padding=1),
            unit(),
            nn.Conv2d(2 * w, 2 * w, 3, stride=2, padding=1),
            unit(),
        )
        self.proj = nn.Linear(4 * w, dim)
        self.normalize = normalize
        self.dim = dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.project(self.embed(x))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """The backbone's pooled output ``[n, 4 * width]`` (what the tile cache keeps)."""
        # pixels roughly zero-mean, unit-scale (the spec's mean/std when it gives them)
        h = self.body(self.input_norm(x) if self.input_norm is not None else (x - 0.5) * 4.0)
        return torch.cat([h.mean(dim=(2, 3)), h.amax(dim=(2, 3))], dim=1)

    def project(self, pooled: torch.Tensor) -> torch.Tensor:
        """Features ``[n, dim]`` of backbone outputs."""
        f = self.proj(pooled)
        return nn.functional.normalize(f, dim=1) if self.normalize else f


def timm_backbone(
    name: str,
    dim: int,
    normalize: bool = False,
    mean: tuple[float, ...] = (),
    std: tuple[float, ...] = (),
) -> nn.Module:
    """A timm model (random init, never downloads weights) with a linear projection to ``dim``.

    Needs the optional ``timm`` extra (``pip install 'wsi-ats[timm]'``); raises ``ImportError``
    saying so otherwise.
    """
    try:
        timm = importlib.import_module("timm")
    except ModuleNotFoundError as exc:
        raise ImportError(
            f"features.backbone = 'timm:{name}' needs timm: pip install 'wsi-ats[timm]'"
        ) from exc
    body = timm.create_model(name, pretrained=False, num_classes=0)
    return _Projected(body, int(body.num_features), dim, normalize, mean, std)


def factory_backbone(
    spec: str,
    dim: int,
    normalize: bool = False,
    mean: tuple[float, ...] = (),
    std: tuple[float, ...] = (),
) -> nn.Module:
    """The module that ``package.module:function`` (called without arguments) returns, with a
    linear projection to ``dim``; its output width is its ``num_features`` attribute, else that of
    one forward pass of a 224 x 224 tile. :class:`ConfigError` when it cannot be imported or built."""
    module_name, _, func_name = spec.partition(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ConfigError(
            f"features.backbone: cannot import {module_name!r} ({exc}); install the package "
            "that provides it"
        ) from None
    factory = getattr(module, func_name, None)
    if not callable(factory):
        raise ConfigError(f"features.backbone: {module_name!r} has no function {func_name!r}")
    body = factory()
    if not isinstance(body, nn.Module):
        raise ConfigError(
            f"features.backbone: {spec} returned {type(body).__name__}, not a torch.nn.Module"
        )
    return _Projected(body, _output_width(body), dim, normalize, mean, std)


def _output_width(body: nn.Module) -> int:
    width = getattr(body, "num_features", None)
    if isinstance(width, int) and width > 0:
        return width
    was_training = body.training
    body.eval()
    try:
        with torch.no_grad():
            out = body(torch.zeros(1, 3, 224, 224))
    finally:
        body.train(was_training)
    if out.ndim != 2:
        raise ConfigError(
            f"features.backbone must map tiles [n, 3, h, w] to features [n, k]; it gave "
            f"{tuple(out.shape)} for [1, 3, 224, 224]"
        )
    return int(out.shape[1])


class _InputNorm(nn.Module):
    """``(x - mean) / std`` per channel (buffers not saved: the spec holds them)."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)


class _Projected(_Freezable):
    """A backbone ``[n, 3, h, w] -> [n, k]`` (``body``), then a linear layer to ``dim`` (``proj``)."""

    def __init__(
        self,
        body: nn.Module,
        in_dim: int,
        dim: int,
        normalize: bool,
        mean: tuple[float, ...] = (),
        std: tuple[float, ...] = (),
    ) -> None:
        super().__init__()
        self.frozen = []
        self.input_norm = _InputNorm(mean, std) if mean else None
        self.body = body
        self.proj = nn.Linear(in_dim, dim)
        self.normalize = normalize

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.project(self.embed(x))

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """The backbone's output ``[n, k]`` (what the tile cache keeps)."""
        if self.input_norm is not None:
            x = self.input_norm(x)
        if backbone_frozen(self):  # no graph through a fixed backbone
            with torch.no_grad():
                return self.body(x)
        return self.body(x)

    def project(self, h: torch.Tensor) -> torch.Tensor:
        """Features ``[n, dim]`` of backbone outputs."""
        f = self.proj(h.float())
        return nn.functional.normalize(f, dim=1) if self.normalize else f


def build_feature_net(cfg: FeatureConfig, pretrained: bool = True) -> nn.Module:
    """The feature network that ``cfg.backbone`` names, with ``cfg.weights`` loaded into its
    backbone when ``pretrained`` (a checkpoint's load passes ``False``: it holds every weight) and
    ``cfg.freeze`` applied."""
    norm = (cfg.mean, cfg.std)
    if cfg.backbone == "compact":
        net: nn.Module = CompactCNN(cfg.width, cfg.dim, cfg.normalize, *norm, cfg.activation)
    elif cfg.backbone.startswith("timm:"):
        net = timm_backbone(cfg.backbone[len("timm:") :], cfg.dim, cfg.normalize, *norm)
    elif cfg.backbone.startswith("factory:"):
        net = factory_backbone(cfg.backbone[len("factory:") :], cfg.dim, cfg.normalize, *norm)
    else:
        raise ValueError(f"unknown feature backbone {cfg.backbone!r}")
    if pretrained and cfg.weights:
        load_backbone_weights(backbone_of(net), cfg.weights)
    freeze_backbone(net, cfg.freeze)
    if cfg.cache_tiles > 0:
        net.tile_cache = TileCache(cfg.cache_tiles)  # type: ignore[assignment]
    return net


def backbone_of(net: nn.Module) -> nn.Module:
    """The part of a feature network that pretrained weights and ``freeze`` refer to: ``body``."""
    body = getattr(net, "body", None)
    if not isinstance(body, nn.Module):
        raise ValueError(f"{type(net).__name__} has no backbone ('body') to load or freeze")
    return body


def read_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a weights file: safetensors (``.safetensors``, needs the optional
    ``safetensors`` package) or a state dict saved by ``torch.save`` (read ``weights_only``; a dict
    holding it under ``"state_dict"`` or ``"model"`` is unwrapped). :class:`WeightsFileError`
    naming the file when it is missing or not such a file."""
    path = Path(path)
    if not path.is_file():
        raise WeightsFileError(path, f"no such file; {FETCH_HINT}")
    if path.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ModuleNotFoundError:
            raise WeightsFileError(
                path, "reading .safetensors needs the optional safetensors package: "
                "pip install safetensors (or save the weights with torch.save)",
            ) from None  # fmt: skip
        try:
            return dict(load_file(str(path), device="cpu"))
        except Exception as exc:  # noqa: BLE001 - safetensors raises its own error types
            raise WeightsFileError(path, f"not a safetensors file ({exc})") from None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - the unpickler fails in many ways on other files
        raise WeightsFileError(
            path, f"not a state dict saved by torch.save ({type(exc).__name__})"
        ) from None
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict) and len(state) <= 3:
            state = state[key]
            break
    if not isinstance(state, dict) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise WeightsFileError(path, "not a state dict (a mapping of names to tensors)")
    return state


def state_dict_mismatch(
    own: dict[str, torch.Tensor], state: dict[str, torch.Tensor]
) -> tuple[list[str], list[str], list[str]]:
    """How ``state`` fails to fit a module whose ``state_dict()`` is ``own``: the names it lacks,
    the names it has beyond them, and ``"name (state shape) vs (own shape)"`` for mis-shaped ones
    (empty lists: it fits)."""
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [
        f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}"
        for k, v in own.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    return missing, unexpected, shapes


def load_backbone_weights(body: nn.Module, path: str | Path) -> None:
    """Copy the tensors of the weights file ``path`` into ``body``: every weight of ``body`` must
    be there with its shape; extra ones are refused, except a classifier that timm models name
    (``pretrained_cfg["classifier"]``), which the feature network has no use for."""
    state = read_weights(path)
    own = body.state_dict()
    classifier = str(getattr(body, "pretrained_cfg", {}).get("classifier") or "")
    missing, extra, shapes = state_dict_mismatch(own, state)
    ignorable = [k for k in extra if classifier and k.startswith(classifier + ".")]
    extra = [k for k in extra if k not in ignorable]
    problems = []
    if missing:
        problems.append(f"missing {len(missing)} weight(s) of the backbone {missing[:5]}")
    if extra:
        problems.append(f"{len(extra)} unexpected weight(s) {extra[:5]}")
    if shapes:
        problems.append(f"shape mismatch (file vs backbone) {shapes[:5]}")
    if problems:
        raise WeightsFileError(
            path, "does not fit the backbone: " + "; ".join(problems)
            + " (is features.backbone the architecture these weights were saved from?)",
        )  # fmt: skip
    for k in ignorable:
        state.pop(k)
    body.load_state_dict(state, strict=True)


def freeze_backbone(net: nn.Module, freeze: str) -> list[str]:
    """Fix the backbone's parameters that ``freeze`` names (``"none"``, ``"all"``, ``"<n>"`` =
    its first ``n`` top-level modules, or comma-separated parameter-name prefixes); the frozen
    modules stay in eval mode (no batch-norm statistics drift). Returns the frozen parameter names."""
    freeze = freeze.strip()
    if freeze == "none":
        return []
    body = backbone_of(net)
    if freeze == "all":
        modules = [("", body)]
    elif freeze.isdigit():
        children = list(body.named_children())
        n = int(freeze)
        if n > len(children):
            raise ConfigError(
                f"features.freeze = {freeze!r}: the backbone has only {len(children)} top-level "
                f"modules {[name for name, _ in children]}"
            )
        modules = children[:n]
    else:
        named = dict(body.named_modules())
        prefixes = [p.strip() for p in freeze.split(",")]
        unknown = [p for p in prefixes if p not in named]
        if unknown:
            top = [name for name, _ in body.named_children()]
            raise ConfigError(
                f"features.freeze: the backbone has no module {unknown}; its top-level modules "
                f"are {top} (nested ones are named like 'layer1.0')"
            )
        modules = [(p, named[p]) for p in prefixes]
    frozen: list[str] = []
    for prefix, module in modules:
        for name, param in module.named_parameters():
            param.requires_grad_(False)
            frozen.append(f"{prefix}.{name}" if prefix else name)
    net.frozen = [prefix for prefix, _ in modules]  # type: ignore[assignment]
    net.train(net.training)
    return frozen


def frozen_modules(net: nn.Module) -> Iterator[nn.Module]:
    """The modules :func:`freeze_backbone` fixed in ``net`` (none when nothing was)."""
    names = getattr(net, "frozen", [])
    if names:
        named = dict(backbone_of(net).named_modules())
        yield from (named[name] for name in names)


def backbone_frozen(net: nn.Module) -> bool:
    """Whether ``net``'s whole backbone is fixed (its output for a tile never changes)."""
    return "" in getattr(net, "frozen", [])


TileKey = tuple  # (slide path, read level, x, y, *sizes): one tile of one slide


class TileCache:
    """Backbone outputs of up to ``max_tiles`` tiles, least recently used dropped first.

    Valid only for a fully frozen backbone (its output for a tile never changes); memory is at
    most ``max_tiles`` x the backbone's output width x 4 bytes (float32), on the device that
    computed them. ``hits`` and ``misses`` count lookups."""

    def __init__(self, max_tiles: int) -> None:
        self.max_tiles = int(max_tiles)
        self._rows: OrderedDict[TileKey, torch.Tensor] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._rows)

    def get(self, key: TileKey) -> torch.Tensor | None:
        row = self._rows.get(key)
        if row is None:
            self.misses += 1
            return None
        self._rows.move_to_end(key)
        self.hits += 1
        return row

    def put(self, key: TileKey, row: torch.Tensor) -> None:
        self._rows[key] = row.detach().float()
        self._rows.move_to_end(key)
        while len(self._rows) > self.max_tiles:
            self._rows.popitem(last=False)

    def clear(self) -> None:
        self._rows.clear()


def tile_keys(path: str, level: int, size: tuple[int, ...], locations: object) -> list[TileKey]:
    """Cache keys of tiles at level-0 ``locations`` ``[n, 2]`` (x, y) of one slide, read at
    ``level`` with ``size`` (the read size, and the size tiles are resized to, if any)."""
    dims = tuple(int(v) for v in size)
    return [(str(path), int(level), int(x), int(y), *dims) for x, y in locations]


def cached_embed(
    net: nn.Module, tiles: torch.Tensor, keys: list[TileKey], embed: Callable
) -> torch.Tensor | None:
    """Backbone outputs ``[n, k]`` of ``tiles`` through ``net.tile_cache``: ``embed`` runs on the
    tiles it lacks only. ``None`` when ``net`` has no cache or its backbone is not fully frozen."""
    cache: TileCache | None = getattr(net, "tile_cache", None)
    if cache is None or not backbone_frozen(net) or len(keys) != len(tiles):
        return None
    rows: list[torch.Tensor | None] = [cache.get(k) for k in keys]
    missing = [i for i, row in enumerate(rows) if row is None]
    if missing:
        # pad to a power of two (repeating the last tile): few distinct batch shapes, so cuDNN
        # autotuning (torch.backends.cudnn.benchmark) does not rerun for every number of misses
        n = len(missing)
        bucket = min(1 << (n - 1).bit_length(), len(tiles))
        with torch.no_grad():
            fresh = embed(tiles[missing + [missing[-1]] * (bucket - n)]).float()[:n]
        for i, row in zip(missing, fresh, strict=True):
            cache.put(keys[i], row)
            rows[i] = row
    return torch.stack(rows)  # type: ignore[arg-type]
