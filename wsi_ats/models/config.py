"""``PipelineConfig``: every knob of a run (model, sampling, training, prediction) from one TOML file.

The TOML has one table per section below (``[slide]``, ``[attention]``, ``[features]``,
``[sampling]``, ``[head]``, ``[train]``, ``[predict]``); ``pipelines/default.toml`` documents every
field. Unknown tables or keys and values of the wrong type or range raise :class:`ConfigError`
naming the file and the field, so a typo never silently falls back to a default.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

try:  # Python >= 3.11
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python 3.10
    tomllib = None  # type: ignore[assignment]


class ConfigError(ValueError):
    """A pipeline spec is invalid; the message names the file (when any) and the field."""

    def __init__(self, message: str, path: str | Path | None = None) -> None:
        self.path = None if path is None else Path(path)
        super().__init__(f"{path}: {message}" if path is not None else message)


@dataclass(frozen=True)
class SlideConfig:
    """Where the model looks: the low-res view and the resolution high-res tiles are read at.

    Two modes. Physical (``tile_mpp > 0``, real slides): tiles of ``tile_size`` px at ``tile_mpp``
    um/px, one attention cell per tile footprint (the low-res view's mpp follows), from each slide's
    own mpp. Pixels (``tile_mpp = 0``, the built-in default): a view of ``lowres_size`` px and tiles
    of ``patch_size`` px of pyramid level ``read_level``, whatever the slide's resolution.
    """

    lowres_size: int = 512  # pixel mode: longest side of the low-res view, in low-res pixels
    read_level: int = 0  # pixel mode: pyramid level the tiles are read at (0 = full resolution)
    patch_size: int = 64  # pixel mode: tile side, in pixels of ``read_level``
    tile_mpp: float = 0.0  # um/px tiles are read at (physical mode); 0 = pixel mode
    tile_size: int = 256  # physical mode: tile side in pixels at ``tile_mpp``
    lowres_mpp: float = 0.0  # physical mode: um/px of the low-res view; 0 = one cell per tile
    tiles_per_cell: int = 1  # physical mode: one cell = k x k tile footprints (a drawn cell reads
    # one of its tiles, chosen uniformly); 1 = one tile per cell
    assume_mpp: float = 0.0  # physical mode: um/px assumed for a slide without a plausible mpp

    @property
    def physical(self) -> bool:
        """True when tiles are placed in microns (``tile_mpp > 0``)."""
        return self.tile_mpp > 0

    def cell_coverage(self, map_stride: int) -> float:
        """Physical mode: share of an attention cell's area its tile covers (1 when the view's mpp
        follows the tiles; above 1 the tiles of neighbouring cells overlap)."""
        if not self.physical or self.lowres_mpp <= 0:
            return 1.0
        tile_um = self.tile_size * self.tile_mpp
        cell_um = self.lowres_mpp * map_stride
        return min(tile_um / cell_um, 1.0) ** 2


@dataclass(frozen=True)
class AttentionConfig:
    """The attention network on the low-res view (architecture: checked when loading)."""

    width: int = 16  # channels of its convolutions
    depth: int = 3  # number of 3x3 convolutions (>= 1)
    map_stride: int = 2  # low-res pixels per attention cell along each axis (1, 2, 4 or 8)
    prior: float = 0.0  # strength of the stain-density prior added to the logits (0 = none)
    activation: str = "leaky_relu"  # "leaky_relu" (slope 0.1) or "relu" (checkpoints from before)
    stratum_scale: float = 0.001  # > 0: logit per cohort stratum, log(1 + contrast / this)


@dataclass(frozen=True)
class FeatureConfig:
    """The feature network applied to high-res tiles (architecture: checked when loading)."""

    backbone: str = (
        "compact"  # "compact", "timm:<model name>" or "factory:<package.module>:<function>"
    )
    width: int = 16  # channels of the first convolution of the compact CNN (doubles per stage)
    dim: int = 32  # length D of a tile's feature vector
    normalize: bool = (
        True  # L2-normalise each feature vector (keeps the attention gradient bounded)
    )
    weights: str = ""  # local weights file of the backbone (safetensors or state dict); "" = none
    mean: tuple[float, ...] = ()  # per-channel input mean (RGB in [0, 1]); () = the backbone's own
    std: tuple[float, ...] = ()  # per-channel input std; () = the backbone's own
    freeze: str = "none"  # "none", "all", "<n>" (first n top-level modules), "a,b" (prefixes)
    cache_tiles: int = 0  # freeze = "all": keep backbone outputs of this many tiles (LRU); 0 = off
    activation: str = "relu"  # units of the compact CNN: "relu" or "leaky_relu" (slope 0.1)


@dataclass(frozen=True)
class SamplingConfig:
    """Attention sampling: how many tiles per slide and how they are drawn."""

    n_patches: int = 32  # N tiles drawn per slide and per draw
    replace: bool = False  # with replacement (multinomial) or without (Gumbel top-k)
    receptive_field: int = 0  # receptive-field margin of the attention map, in low-res pixels


@dataclass(frozen=True)
class HeadConfig:
    """The classifier on the aggregated feature (architecture: checked when loading)."""

    hidden: int = 0  # width of a hidden layer; 0 = a single linear layer
    dropout: float = 0.0  # dropout before the last layer (training only)
    logit_scale: float = 10.0  # the slide logit is this x the head's output (a pooled feature of
    # L2-normalised tiles lies in the unit ball, so a linear head's logit is bounded by its weights)


@dataclass(frozen=True)
class TrainConfig:
    """The training loop."""

    epochs: int = 10  # passes over the training slides
    batch_size: int = 8  # slides per optimiser step (gradients accumulated slide by slide)
    lr: float = 1e-3  # Adam learning rate of the feature network and the head
    attention_lr: float = 1e-3  # Adam learning rate of the attention network (its own group)
    weight_decay: float = 0.0  # Adam weight decay
    entropy_coef: float = 0.0  # weight of the attention-entropy bonus (> 0 keeps attention spread)
    grad_clip: float = 1.0  # max gradient norm of the feature network and head; 0 = no clipping
    attention_grad_clip: float = 1.0  # max gradient norm of the attention network, clipped alone
    control_variate: str = "loo"  # baseline in the attention gradient: "none", "mean", "loo"
    instance_coef: float = 1.0  # weight of the instance loss on instance_head(f_i) of sampled tiles
    instance_scale: float = 10.0  # tile logit = scale x instance_head(f_i): on L2-normalised
    # features |W f + b| <= |W| + |b|, which Adam grows by about lr x sqrt(dim) a step; 1 = plain
    instance_topk: int = 0  # tiles of a positive slide trained towards its label; 0 = every tile
    instance_negatives: str = "all"  # negative slide's tiles towards 0: "all", "topk" or "both"
    instance_memory: int = 4096  # tiles kept from recent slides; the instance loss then trains on
    # instance_replay of them a step, half of each label (0 = on the step's own tiles)
    instance_replay: int = 256  # tiles a step drawn from the memory (instance_memory > 0)
    augment: bool = True  # random flips, rotations, brightness and colour gains on replayed tiles
    distill_coef: float = 10.0  # weight of attention logits -> tiles' instance scores; 0 = off
    slide_to_attention: float = 1.0  # weight of the slide loss's gradient on the attention net
    # (1 = the paper's end-to-end estimator; 0 = the attention learns from distillation only)
    slide_to_features: float = 0.0  # weight of the slide loss's gradient on the feature net
    # (0 = the feature net learns from the instance loss only; the head still trains)
    distill: str = (
        "distribution"  # "distribution": the softmax fits the evidence; "odds": each logit does
    )
    evidence: str = "quantile"  # a tile's evidence: "quantile" (above evidence_quantile of the
    # negative slides' tiles) or "tails" (1 - share of negative / of positive slides' tiles
    # scoring as high)
    evidence_quantile: float = 0.999  # a tile is evidence above this quantile of the instance
    # logits of recent negative slides' tiles; 0 = above the prior odds 1/2 (the earlier rule)
    explore: float = 0.5  # share of the draws from the exploration measure (importance-weighted)
    explore_epochs: int = 0  # explore falls linearly to 0 over this many epochs; 0 = constant
    explore_strata: int = 16  # appearance strata of exploration (k-means); 0 = uniform over tissue
    explore_scope: str = "cohort"  # strata of each slide's own cells, or "cohort" (training slides)
    explore_restarts: int = 8  # k-means runs of the cohort fit, the lowest inertia kept
    explore_rarity: float = 2.0  # stratum mass ~ count^-rarity: 1 = even, > 1 favours rare ones
    explore_context: int = 7  # odd k: strata of colour and contrast with k x k cells; 0: mean/std
    contrast_weighting: str = "tiles"  # attention.stratum_scale > 0: a check slide's tile
    # counts in its stratum's contrast with weight u / q ("importance") or once ("tiles")
    contrast_decay: float = 0.99  # the contrast's sums decay by this per check slide read
    contrast_z: float = 2.0  # the contrast is mean_pos - mean_neg less this many standard errors
    contrast_min_tiles: float = 20.0  # effective tiles per label a stratum needs for a contrast
    n_patches_start: int = (
        128  # N at the first epoch, annealed to sampling.n_patches; 0 = no anneal
    )
    anneal_epochs: int = 4  # epochs over which N goes from n_patches_start to sampling.n_patches
    attention_warmup: int = 0  # first epochs in which the attention net is not updated (the
    # feature net and the instance head learn from its initial map and the exploration first)
    balanced_batches: bool = True  # interleave the classes so every batch mixes labels
    seed: int = 0  # seeds shuffling, sampling and initialisation
    read_workers: int = 4  # threads that read tiles of upcoming slides in the background
    val_fraction: float = 0.2  # share of train slides held out when the manifest has no "val" split
    val_draws: int = 2  # draws per slide when computing the validation AUC


@dataclass(frozen=True)
class PredictConfig:
    """Prediction."""

    n_draws: int = 8  # independent draws of N tiles per slide: probability = mean, std = spread
    seed: int = 0  # run seed; per-slide seeds derive from (seed, slide_id)
    tile_batch_size: int = 128  # tiles per forward pass of the feature network
    threshold: float = 0.5  # prediction = probability >= threshold
    # > n_draws: while the 95% interval of the probability contains threshold, rounds of n_draws
    # more draws, up to this many in all (a borderline slide gets more tiles); 0 = exactly n_draws
    decision_max_draws: int = 0


SECTIONS: dict[str, type] = {
    "slide": SlideConfig,
    "attention": AttentionConfig,
    "features": FeatureConfig,
    "sampling": SamplingConfig,
    "head": HeadConfig,
    "train": TrainConfig,
    "predict": PredictConfig,
}

#: how the attention gradient's control variate is formed (training): none; a running mean of pooled
#: features; leave-one-out over the draws (plus the running mean where no other draw is left)
CONTROL_VARIATES = ("none", "mean", "loo")

#: how a check slide's sampled tile counts in its stratum's contrast (training): with its importance
#: weight ``u / q``, or once
CONTRAST_WEIGHTINGS = ("importance", "tiles")

#: sections whose fields decide the shapes of the weights (a checkpoint must match them)
ARCHITECTURE_SECTIONS = ("attention", "features", "head")
#: [features] fields a checkpoint need not match: its weights replace the pretrained ones
NOT_ARCHITECTURE_FEATURES = ("weights", "freeze", "cache_tiles")


@dataclass(frozen=True)
class PipelineConfig:
    """All sections of a pipeline spec; build with :meth:`from_toml` or :meth:`from_dict`."""

    slide: SlideConfig = field(default_factory=SlideConfig)
    attention: AttentionConfig = field(default_factory=AttentionConfig)
    features: FeatureConfig = field(default_factory=FeatureConfig)
    sampling: SamplingConfig = field(default_factory=SamplingConfig)
    head: HeadConfig = field(default_factory=HeadConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    predict: PredictConfig = field(default_factory=PredictConfig)

    def __post_init__(self) -> None:
        _validate(self)

    # --- construction -------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, data: dict[str, Any], path: str | Path | None = None) -> PipelineConfig:
        """Build from ``{section: {field: value}}``; missing fields take their defaults."""
        if not isinstance(data, dict):
            raise ConfigError("a pipeline spec must be a table of sections", path)
        unknown = sorted(set(data) - set(SECTIONS))
        if unknown:
            raise ConfigError(
                f"unknown section(s) {unknown}; expected some of {sorted(SECTIONS)}", path
            )
        parts = {}
        for name, section_cls in SECTIONS.items():
            values = data.get(name, {})
            if not isinstance(values, dict):
                raise ConfigError(f"[{name}] must be a table", path)
            parts[name] = _build_section(name, section_cls, values, path)
        try:
            return cls(**parts)
        except ConfigError as exc:
            if path is None:
                raise
            raise ConfigError(str(exc), path) from None

    @classmethod
    def from_saved(cls, data: dict[str, Any]) -> PipelineConfig:
        """The config a checkpoint recorded. A field added after the checkpoint was written takes
        the value that reproduces how that checkpoint was trained (:data:`SAVED_BEFORE`), not
        today's default."""
        if not isinstance(data, dict):
            raise ConfigError("a pipeline spec must be a table of sections")
        data = {k: dict(v) if isinstance(v, dict) else v for k, v in data.items()}
        for (section, name), old in SAVED_BEFORE.items():
            if isinstance(data.get(section), dict):
                data[section].setdefault(name, old)
        return cls.from_dict(data)

    @classmethod
    def from_toml(cls, path: str | Path) -> PipelineConfig:
        """Read a pipeline spec from a TOML file (raises :class:`ConfigError` naming it)."""
        path = Path(path)
        if tomllib is None:  # pragma: no cover
            raise ConfigError("reading TOML needs Python >= 3.11 (tomllib)", path)
        try:
            with path.open("rb") as fh:
                data = tomllib.load(fh)
        except FileNotFoundError:
            raise ConfigError("no such pipeline file", path) from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"not valid TOML: {exc}", path) from None
        features = data.get("features") if isinstance(data, dict) else None
        if isinstance(features, dict) and isinstance(features.get("weights"), str):
            features["weights"] = resolve_weights_path(features["weights"], path.parent)
        return cls.from_dict(data, path)

    # --- export -------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, dict[str, Any]]:
        """``{section: {field: value}}`` of builtins (JSON- and checkpoint-safe)."""
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    def replace(self, **sections: dict[str, Any]) -> PipelineConfig:
        """A copy with some fields changed: ``cfg.replace(train={"epochs": 3})``."""
        data = self.to_dict()
        for name, values in sections.items():
            if name not in SECTIONS:
                raise ConfigError(f"unknown section {name!r}")
            data[name] = {**data[name], **values}
        return PipelineConfig.from_dict(data)

    def architecture(self) -> dict[str, dict[str, Any]]:
        """The fields that decide weight shapes, ``{section: {field: value}}``."""
        data = self.to_dict()
        arch = {name: dict(data[name]) for name in ARCHITECTURE_SECTIONS}
        arch["head"].pop("dropout", None)  # no weights
        for key in NOT_ARCHITECTURE_FEATURES:  # where weights start and what trains: not shapes
            arch["features"].pop(key, None)
        return arch

    def architecture_diff(self, other: PipelineConfig) -> list[str]:
        """Dotted names of architecture fields whose values differ: ``["features.dim"]``."""
        mine, theirs = self.architecture(), other.architecture()
        return [
            f"{section}.{key}"
            for section in ARCHITECTURE_SECTIONS
            for key in mine[section]
            if mine[section][key] != theirs[section][key]
        ]

    def diff(self, other: PipelineConfig) -> list[str]:
        """Dotted names of every field whose values differ: ``["train.lr", "slide.patch_size"]``."""
        mine, theirs = self.to_dict(), other.to_dict()
        return [
            f"{section}.{key}"
            for section in SECTIONS
            for key in mine[section]
            if mine[section][key] != theirs[section][key]
        ]

    def get(self, dotted: str) -> Any:
        """The value of a dotted field name: ``cfg.get("train.lr")``."""
        section, key = dotted.split(".")
        return getattr(getattr(self, section), key)


def load_config(path: str | Path | None) -> PipelineConfig:
    """The config in ``path`` (TOML), or the defaults when ``path`` is ``None``."""
    return PipelineConfig() if path is None else PipelineConfig.from_toml(path)


def resolve_weights_path(weights: str, folder: str | Path) -> str:
    """``weights`` as an absolute path, a relative one taken against ``folder`` (the spec's);
    ``""`` (no weights) stays ``""``."""
    if not weights:
        return weights
    p = Path(weights).expanduser()
    return str(p if p.is_absolute() else (Path(folder) / p).absolute())


def _build_section(
    name: str, section_cls: type, values: dict[str, Any], path: str | Path | None
) -> Any:
    known = {f.name: f for f in fields(section_cls)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ConfigError(
            f"[{name}] unknown field(s) {unknown}; expected some of {sorted(known)}", path
        )
    kwargs = {}
    for key, value in values.items():
        default = getattr(section_cls(), key)
        kwargs[key] = _coerce(f"{name}.{key}", value, type(default), path)
    return section_cls(**kwargs)


def _coerce(name: str, value: Any, kind: type, path: str | Path | None) -> Any:
    if kind is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{name} must be true or false, got {value!r}", path)
        return value
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{name} must be an integer, got {value!r}", path)
        return value
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{name} must be a number, got {value!r}", path)
        return float(value)
    if kind is str:
        if not isinstance(value, str):
            raise ConfigError(f"{name} must be a string, got {value!r}", path)
        return value
    if kind is tuple:  # a list of numbers
        if not isinstance(value, (list, tuple)) or any(
            isinstance(v, bool) or not isinstance(v, (int, float)) for v in value
        ):
            raise ConfigError(f"{name} must be a list of numbers, got {value!r}", path)
        return tuple(float(v) for v in value)
    raise ConfigError(f"{name}: unsupported type {kind}", path)  # pragma: no cover


def _validate(cfg: PipelineConfig) -> None:
    checks: list[tuple[bool, str]] = [
        (cfg.slide.lowres_size >= 16, "slide.lowres_size must be >= 16"),
        (cfg.slide.read_level >= 0, "slide.read_level must be >= 0"),
        (cfg.slide.patch_size >= 8, "slide.patch_size must be >= 8"),
        (cfg.slide.tile_mpp >= 0, "slide.tile_mpp must be >= 0 (0 = pixel mode)"),
        (cfg.slide.tile_size >= 8, "slide.tile_size must be >= 8"),
        (cfg.slide.lowres_mpp >= 0, "slide.lowres_mpp must be >= 0 (0 = one cell per tile)"),
        (cfg.slide.assume_mpp >= 0, "slide.assume_mpp must be >= 0 (0 = no assumption)"),
        (cfg.slide.tiles_per_cell >= 1, "slide.tiles_per_cell must be >= 1"),
        (
            cfg.slide.tiles_per_cell == 1 or (cfg.slide.physical and cfg.slide.lowres_mpp == 0),
            "slide.tiles_per_cell > 1 needs physical geometry (slide.tile_mpp > 0) and "
            "slide.lowres_mpp = 0: the cells are then whole numbers of tile footprints",
        ),
        (cfg.attention.width >= 1, "attention.width must be >= 1"),
        (cfg.attention.depth >= 1, "attention.depth must be >= 1"),
        (cfg.attention.prior >= 0, "attention.prior must be >= 0"),
        (
            cfg.attention.activation in ("leaky_relu", "relu"),
            'attention.activation must be "leaky_relu" or "relu"',
        ),
        (
            cfg.features.activation in ("leaky_relu", "relu"),
            'features.activation must be "leaky_relu" or "relu"',
        ),
        (cfg.attention.map_stride in (1, 2, 4, 8), "attention.map_stride must be 1, 2, 4 or 8"),
        (
            cfg.features.backbone == "compact"
            or (cfg.features.backbone.startswith("timm:") and len(cfg.features.backbone) > 5)
            or _is_factory(cfg.features.backbone),
            'features.backbone must be "compact", "timm:<name>" or '
            '"factory:<package.module>:<function>"',
        ),
        (
            len(cfg.features.mean) == len(cfg.features.std) and len(cfg.features.mean) in (0, 3),
            "features.mean and features.std must both be 3 numbers (R, G, B) or both be empty",
        ),
        (all(s > 0 for s in cfg.features.std), "features.std must be > 0"),
        (cfg.features.cache_tiles >= 0, "features.cache_tiles must be >= 0"),
        (
            cfg.features.cache_tiles == 0 or cfg.features.freeze.strip() == "all",
            'features.cache_tiles needs freeze = "all" (a trained backbone changes its outputs)',
        ),
        (
            _is_freeze(cfg.features.freeze),
            'features.freeze must be "none", "all", a number of top-level modules ("2") or '
            'comma-separated parameter-name prefixes ("stem,stages.0")',
        ),
        (cfg.features.width >= 1, "features.width must be >= 1"),
        (cfg.features.dim >= 1, "features.dim must be >= 1"),
        (cfg.sampling.n_patches >= 1, "sampling.n_patches must be >= 1"),
        (cfg.sampling.receptive_field >= 0, "sampling.receptive_field must be >= 0"),
        (cfg.head.hidden >= 0, "head.hidden must be >= 0"),
        (0.0 <= cfg.head.dropout < 1.0, "head.dropout must be in [0, 1)"),
        (cfg.head.logit_scale > 0, "head.logit_scale must be > 0"),
        (cfg.train.epochs >= 0, "train.epochs must be >= 0"),
        (cfg.train.batch_size >= 1, "train.batch_size must be >= 1"),
        (cfg.train.lr > 0, "train.lr must be > 0"),
        (cfg.train.weight_decay >= 0, "train.weight_decay must be >= 0"),
        (cfg.train.entropy_coef >= 0, "train.entropy_coef must be >= 0"),
        (cfg.train.grad_clip >= 0, "train.grad_clip must be >= 0"),
        (cfg.train.attention_lr >= 0, "train.attention_lr must be >= 0 (0 = attention frozen)"),
        (cfg.train.attention_grad_clip >= 0, "train.attention_grad_clip must be >= 0"),
        (
            cfg.train.control_variate in CONTROL_VARIATES,
            f"train.control_variate must be one of {CONTROL_VARIATES}",
        ),
        (cfg.train.instance_coef >= 0, "train.instance_coef must be >= 0"),
        (cfg.train.instance_scale > 0, "train.instance_scale must be > 0"),
        (cfg.train.instance_topk >= 0, "train.instance_topk must be >= 0"),
        (cfg.train.instance_memory >= 0, "train.instance_memory must be >= 0"),
        (cfg.train.instance_replay >= 2, "train.instance_replay must be >= 2"),
        (
            cfg.train.instance_memory == 0 or cfg.train.instance_topk == 0,
            "train.instance_memory needs train.instance_topk = 0 (replayed tiles have no bag)",
        ),
        (
            cfg.train.instance_negatives in ("all", "topk", "both"),
            'train.instance_negatives must be "all", "topk" or "both"',
        ),
        (cfg.train.distill_coef >= 0, "train.distill_coef must be >= 0"),
        (cfg.train.slide_to_attention >= 0, "train.slide_to_attention must be >= 0"),
        (cfg.train.slide_to_features >= 0, "train.slide_to_features must be >= 0"),
        (
            cfg.train.evidence in ("quantile", "tails"),
            'train.evidence must be "quantile" or "tails"',
        ),
        (
            0 <= cfg.train.evidence_quantile < 1,
            "train.evidence_quantile must be in [0, 1) (0 = prior odds 1/2)",
        ),
        (
            cfg.train.distill in ("odds", "distribution"),
            'train.distill must be "odds" or "distribution"',
        ),
        (0.0 <= cfg.train.explore <= 1.0, "train.explore must be in [0, 1]"),
        (cfg.train.explore_epochs >= 0, "train.explore_epochs must be >= 0"),
        (cfg.train.explore_strata >= 0, "train.explore_strata must be >= 0"),
        (cfg.train.explore_restarts >= 1, "train.explore_restarts must be >= 1"),
        (cfg.train.explore_rarity >= 0, "train.explore_rarity must be >= 0"),
        (
            cfg.train.explore_context == 0 or cfg.train.explore_context % 2 == 1,
            "train.explore_context must be 0 or odd (cells of the context window)",
        ),
        (
            cfg.train.explore_scope in ("slide", "cohort"),
            'train.explore_scope must be "slide" or "cohort"',
        ),
        (cfg.attention.stratum_scale >= 0, "attention.stratum_scale must be >= 0"),
        (
            cfg.train.contrast_weighting in CONTRAST_WEIGHTINGS,
            f"train.contrast_weighting must be one of {CONTRAST_WEIGHTINGS}",
        ),
        (0 < cfg.train.contrast_decay <= 1, "train.contrast_decay must be in (0, 1]"),
        (cfg.train.contrast_z >= 0, "train.contrast_z must be >= 0"),
        (cfg.train.contrast_min_tiles >= 0, "train.contrast_min_tiles must be >= 0"),
        (
            cfg.attention.stratum_scale == 0
            or (cfg.train.explore_scope == "cohort" and cfg.train.explore_strata > 0),
            "attention.stratum_scale > 0 needs the cohort's appearance strata: "
            'train.explore_scope = "cohort" and train.explore_strata > 0',
        ),
        (cfg.train.n_patches_start >= 0, "train.n_patches_start must be >= 0"),
        (cfg.train.anneal_epochs >= 0, "train.anneal_epochs must be >= 0"),
        (cfg.train.attention_warmup >= 0, "train.attention_warmup must be >= 0"),
        (cfg.train.read_workers >= 1, "train.read_workers must be >= 1"),
        (0.0 <= cfg.train.val_fraction < 1.0, "train.val_fraction must be in [0, 1)"),
        (cfg.train.val_draws >= 1, "train.val_draws must be >= 1"),
        (cfg.predict.n_draws >= 1, "predict.n_draws must be >= 1"),
        (cfg.predict.tile_batch_size >= 1, "predict.tile_batch_size must be >= 1"),
        (0.0 < cfg.predict.threshold < 1.0, "predict.threshold must be in (0, 1)"),
        (cfg.predict.decision_max_draws >= 0, "predict.decision_max_draws must be >= 0"),
    ]
    for ok, message in checks:
        if not ok:
            raise ConfigError(message)
    _check_cell_coverage(cfg)


#: fields whose default changed after checkpoints were written: (section, field) -> the value a
#: checkpoint that does not record the field was trained with
SAVED_BEFORE: dict[tuple[str, str], Any] = {
    ("head", "logit_scale"): 1.0,
    ("attention", "activation"): "relu",
    ("train", "evidence_quantile"): 0.0,
    ("train", "balanced_batches"): False,
    ("features", "activation"): "relu",
    ("train", "attention_warmup"): 0,
    ("attention", "stratum_scale"): 0.0,
    ("train", "explore_scope"): "slide",
    ("train", "instance_memory"): 0,
    ("train", "slide_to_features"): 1.0,
    ("train", "augment"): False,
    ("train", "explore_restarts"): 1,
    ("train", "contrast_weighting"): "importance",
    ("train", "instance_scale"): 1.0,
}

#: a tile must cover at least this share of its attention cell, or tissue is left unreadable
MIN_CELL_COVERAGE = 0.5


def _check_cell_coverage(cfg: PipelineConfig) -> None:
    """Refuse a physical spec whose tiles cover less than half of their attention cells."""
    s, stride = cfg.slide, cfg.attention.map_stride
    coverage = s.cell_coverage(stride)
    if coverage >= MIN_CELL_COVERAGE:
        return
    tile_um = s.tile_size * s.tile_mpp
    cell_um = s.lowres_mpp * stride
    raise ConfigError(
        f"slide.lowres_mpp: a tile ({s.tile_size} px at {s.tile_mpp:g} um/px = {tile_um:g} um) "
        f"would cover {coverage:.0%} of its attention cell ({stride} x {s.lowres_mpp:g} um/px = "
        f"{cell_um:g} um): tissue between the tiles could never be sampled; set "
        f"slide.lowres_mpp <= {tile_um / stride / MIN_CELL_COVERAGE**0.5:.3g} (0 = one cell per "
        "tile)"
    )


def _is_factory(backbone: str) -> bool:
    """``factory:<package.module>:<function>`` with non-empty dotted names."""
    parts = backbone.split(":")
    return (
        len(parts) == 3
        and parts[0] == "factory"
        and all(p.isidentifier() for p in parts[1].split("."))
        and parts[2].isidentifier()
    )


def _is_freeze(freeze: str) -> bool:
    text = freeze.strip()
    if text in ("none", "all") or (text.isdigit() and int(text) >= 1):
        return True
    prefixes = [p.strip() for p in text.split(",")]
    return bool(text) and all(p and " " not in p for p in prefixes)
