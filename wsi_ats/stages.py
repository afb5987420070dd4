"""Per-slide stages shared by training, :func:`~wsi_ats.inference.predict_slide` and the Dask
cohort pipeline: the layer between the slides and everything that learns or predicts.

Each stage is a plain function of plain, picklable data (dataclasses of numpy arrays), so the
pipeline can run them as separate tasks and ``predict_slide`` simply chains them::

    view = view_slide(path, config, slide_id)          # open, low-res view, tissue mask, close
    smp = sample_slide(view, model, n_draws, seed)     # attention map + T draws of N cells
    tiles = read_slide_tiles(smp)                      # the T*N tiles (uint8), nothing else
    feats = tile_features(model, tiles)                # [T*N, D]
    pred = aggregate_slide(model, smp, feats)          # mean and std over the T draws

Coordinates: ``locations`` are level-0 ``(x, y)`` top-left corners (OpenSlide order); tiles are
``tile_size = (w, h)`` pixels of ``read_level``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import math
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from wsi_ats.core import (
    AppearanceStrata,
    Draw,
    appearance_strata,
    cell_descriptors,
    cell_offsets,
    draw,
    estimate,
    mask_to_map,
    stratified_proposal,
)
from wsi_ats.intervals import probability_interval
from wsi_ats.models import PipelineConfig, SlideClassifier
from wsi_ats.models.accel import host_to_device
from wsi_ats.models.data_range import slide_warnings
from wsi_ats.slides import Slide, SlideReadError, open_slide
from wsi_ats.slides import low_res_view as _low_res_view
from wsi_ats.slides import tissue_mask as _tissue_mask
from wsi_ats.slides.lowres import LowResView, view_at_downsample
from wsi_ats.slides.resolution import resolve_mpp, tile_geometry


@dataclass
class SlideView:
    """What the attention network sees of one slide, plus the geometry to map cells to tiles."""

    slide_id: str
    path: str
    image: np.ndarray  # uint8[h, w, 3] low-res view
    mask: np.ndarray  # bool[h, w] tissue, aligned with ``image``
    scale: tuple[float, float]  # (sy, sx) level-0 pixels per low-res pixel
    level0_size: tuple[int, int]  # (H, W) of level 0
    read_level: int  # pyramid level tiles are read at
    read_downsample: float  # level-0 pixels per pixel of ``read_level``
    mpp: tuple[float, float] | None = None  # microns per level-0 pixel (x, y)
    read_size: int = 0  # tile side in read_level px (0: the spec's slide.patch_size)
    tile_size: int = 0  # tile side the feature net gets (0 or read_size: no resize)
    mpp_source: str = ""  # physical geometry: "slide", "manifest" or "assumed"


@dataclass
class SlideSample:
    """The attention map of one slide and ``T`` independent draws of ``N`` cells from it."""

    slide_id: str
    path: str
    attention: np.ndarray  # float32[mh, mw], sums to 1, 0 off tissue
    indices: np.ndarray  # int64[T, N] into the flattened map, in sampling order
    sampled_attention: np.ndarray  # float32[T, N]
    locations: np.ndarray  # int64[T, N, 2] level-0 (x, y) top-left of each tile
    tile_size: tuple[int, int]  # (w, h) pixels of ``read_level``
    read_level: int
    replace: bool = False  # how the cells were drawn (the estimator depends on it)
    read_downsample: float = 1.0  # level-0 pixels per pixel of ``read_level``
    scale: tuple[float, float] = (1.0, 1.0)  # (sy, sx) level-0 pixels per low-res pixel
    warnings: tuple[str, ...] = ()  # why the prediction may not be trusted (see slide_warnings)
    out_size: tuple[int, int] | None = None  # (w, h) tiles are resized to; None = tile_size

    @property
    def tile_size_level0(self) -> tuple[int, int]:
        w, h = self.tile_size
        return round(w * self.read_downsample), round(h * self.read_downsample)


@dataclass
class SlidePrediction:
    """A slide-level prediction: mean over ``n_draws`` draws of ``n_patches`` tiles, and its spread."""

    slide_id: str
    probability: float  # sigmoid of the mean per-draw logit (see wsi_ats.intervals)
    prediction: int  # probability >= threshold
    std: float  # standard deviation of the per-draw probabilities (0 when n_draws == 1)
    n_patches: int  # N tiles per draw
    n_draws: int  # T
    draw_probabilities: np.ndarray  # float32[T]
    attention: np.ndarray  # float32[mh, mw]
    locations: np.ndarray  # int64[T, N, 2] level-0 (x, y)
    tile_size_level0: tuple[int, int]  # (w, h) level-0 pixels covered by a tile
    scale: tuple[float, float]  # (sy, sx) level-0 pixels per low-res pixel
    n_tiles_read: int = 0  # distinct tiles read from the slide (<= T * N)
    extra: dict = field(default_factory=dict)
    cells: np.ndarray | None = None  # int64[T, N] sampled cells, index into flattened ``attention``
    ci_low: float = math.nan  # 95% interval for the exact (dense) probability; NaN when T == 1
    ci_high: float = math.nan
    draw_logits: np.ndarray | None = None  # float64[T] per-draw slide logits


# ------------------------------------------------------------------------------------------------
def slide_seed(seed: int, slide_id: str) -> int:
    """A stable 63-bit seed from ``(run seed, slide_id)`` (sha256; independent of order/worker)."""
    digest = hashlib.sha256(f"{int(seed)}\x00{slide_id}".encode("utf-8", "surrogatepass")).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def view_of(
    slide: Slide, config: PipelineConfig, slide_id: str | None = None, mpp: float | None = None
) -> SlideView:
    """:class:`SlideView` of an open ``slide`` (the slide stays open). ``mpp`` (um/px of level 0,
    e.g. from the manifest) overrides the slide's own in physical geometry (``slide.tile_mpp``)."""
    path = str(getattr(slide, "path", ""))
    if config.slide.physical:
        return physical_view(slide, config, slide_id, mpp)
    level = config.slide.read_level
    if level >= slide.level_count:
        raise SlideReadError(
            path, f"read_level {level} requested but the slide has {slide.level_count} level(s)"
        )
    lr = _low_res_view(slide, target_size=config.slide.lowres_size)
    return _slide_view(
        slide, slide_id, path, lr,
        read_level=level,
        read_downsample=float(slide.level_downsamples[level]),
        mpp=None if slide.mpp is None else (float(slide.mpp[0]), float(slide.mpp[1])),
    )  # fmt: skip


def _slide_view(
    slide: Slide, slide_id: str | None, path: str, lr: LowResView, **fields: object
) -> SlideView:
    """The :class:`SlideView` of a low-res view ``lr`` (its image, tissue mask and scale) with the
    geometry ``fields`` of pixel or physical mode."""
    image = np.ascontiguousarray(lr.image, dtype=np.uint8)
    w0, h0 = slide.dimensions
    return SlideView(
        slide_id=slide_id if slide_id is not None else Path(path).stem,
        path=path,
        image=image,
        mask=np.asarray(_tissue_mask(image), dtype=bool),
        scale=(float(lr.scale[0]), float(lr.scale[1])),
        level0_size=(int(h0), int(w0)),
        **fields,
    )


def physical_view(
    slide: Slide, config: PipelineConfig, slide_id: str | None = None, mpp: float | None = None
) -> SlideView:
    """:class:`SlideView` in physical geometry: tiles of ``slide.tile_size`` px at
    ``slide.tile_mpp`` um/px, one attention cell per tile footprint (or ``lowres_mpp x map_stride``
    um), the view built at exactly that cell grid (:func:`~wsi_ats.slides.resolution.tile_geometry`).
    A slide without a plausible mpp raises ``SlideResolutionError`` unless ``mpp`` or
    ``slide.assume_mpp`` says what to assume."""
    path = str(getattr(slide, "path", ""))
    sc = config.slide
    um, source = resolve_mpp(path, slide.mpp, mpp, sc.assume_mpp)
    geo = tile_geometry(
        slide.dimensions, slide.level_downsamples, um, sc.tile_mpp, sc.tile_size,
        config.attention.map_stride, sc.lowres_mpp, source, sc.tiles_per_cell,
    )  # fmt: skip
    lr = view_at_downsample(slide, geo.view_downsample, geo.view_shape)
    return _slide_view(
        slide,
        slide_id,
        path,
        lr,
        read_level=geo.read_level,
        read_downsample=geo.read_downsample,
        mpp=(um, um),
        read_size=geo.read_size,
        tile_size=geo.tile_size,
        mpp_source=source,
    )


def view_slide(
    path: str | Path, config: PipelineConfig, slide_id: str | None = None, mpp: float | None = None
) -> SlideView:
    """Open the slide at ``path``, compute its low-res view and tissue mask, close it (``mpp``: as
    in :func:`view_of`)."""
    with open_slide(path) as slide:
        return view_of(slide, config, slide_id if slide_id is not None else Path(path).stem, mpp)


def view_tensors(view: SlideView, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The view as float ``[1, 3, h, w]`` in ``[0, 1]`` and the mask as bool ``[1, h, w]``."""
    x = torch.from_numpy(view.image).to(device).permute(2, 0, 1)[None].float().div_(255.0)
    m = torch.from_numpy(view.mask).to(device)[None]
    return x, m


def cells_to_locations(
    indices: torch.Tensor,
    map_size: tuple[int, int],
    view: SlideView,
    config: PipelineConfig,
    generator: torch.Generator | None = None,
) -> np.ndarray:
    """Level-0 ``(x, y)`` top-left ``int64[..., n, 2]`` of the tiles of cells ``indices``: the
    tile centred on each cell, or with ``slide.tiles_per_cell = k > 1`` one of the cell's ``k x k``
    tiles (:func:`cell_tile_locations`), each with probability ``1 / k^2`` (drawn with
    ``generator``, which is then required). A tile is thus drawn with its cell's probability over
    ``k^2``: the estimators stay unbiased for the mean over tiles, and every tile can be read."""
    k = config.slide.tiles_per_cell
    if k == 1:
        return _tile_block_locations(indices, map_size, view, config, 1)
    if generator is None:
        raise ValueError(f"slide.tiles_per_cell = {k}: a generator must choose the tiles")
    every = cell_tile_locations(indices, map_size, view, config)  # [..., n, k * k, 2]
    pick = torch.randint(k * k, tuple(indices.shape), generator=generator, device=generator.device)
    pick = pick.cpu().numpy()[..., None, None]
    return np.take_along_axis(every, np.broadcast_to(pick, (*pick.shape[:-1], 2)), -2)[..., 0, :]


def cell_tile_locations(
    indices: torch.Tensor, map_size: tuple[int, int], view: SlideView, config: PipelineConfig
) -> np.ndarray:
    """Level-0 ``(x, y)`` top-left ``int64[..., n, k * k, 2]`` of every tile of cells ``indices``
    (``k = slide.tiles_per_cell``, row-major within the cell): the tiles that together cover it."""
    k = config.slide.tiles_per_cell
    block = _tile_block_locations(indices, map_size, view, config, k)  # [..., n, 2]
    side = (view.read_size or config.slide.patch_size) * view.read_downsample
    i, j = np.meshgrid(np.arange(k), np.arange(k), indexing="ij")
    steps = np.stack([j.reshape(-1), i.reshape(-1)], axis=-1) * side  # (x, y) of tile (i, j)
    return np.ceil(block[..., None, :] + steps - 1e-6).astype(np.int64)


def _tile_block_locations(
    indices: torch.Tensor,
    map_size: tuple[int, int],
    view: SlideView,
    config: PipelineConfig,
    k: int,
) -> np.ndarray:
    """Level-0 top-left ``[..., n, 2]`` of the ``k x k`` tile block centred on each cell: ``int64``
    when ``k`` is 1 (the tile itself), else float64 (its tiles are placed at multiples of the tile
    side from it, then rounded as one tile is)."""
    flat = indices.reshape(-1, indices.shape[-1])
    p = k * (view.read_size or config.slide.patch_size)
    low_h, low_w = view.image.shape[:2]
    sy, sx = view.scale
    # extent of the view in read-level pixels: a streamed view (ceil(h / k) pixels of k) may reach
    # past the slide's edge, so it is low size x scale, not the read level's size
    view_extent = (low_h * sy / view.read_downsample, low_w * sx / view.read_downsample)
    offsets = cell_offsets(
        flat.cpu(),
        map_size,
        (low_h, low_w),
        view_extent,
        p,
        config.sampling.receptive_field,
    )  # [B, n, 2] (y, x) at read level
    xy = offsets.flip(-1).double() * view.read_downsample
    if k > 1:
        return xy.numpy().reshape(*indices.shape, 2)
    # smallest level-0 pixel that maps back (floor(loc / ds)) onto the read-level offset; rounding
    # would land one read-level pixel early whenever it rounds down at a non-integer downsample
    return torch.ceil(xy - 1e-6).long().numpy().reshape(*indices.shape, 2)


def view_descriptors(
    view: SlideView, map_size: tuple[int, int], context: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Appearance descriptors ``[K, d]`` of the view's attention cells
    (:func:`wsi_ats.core.cell_descriptors` with ``context``) and their tissue support ``bool[K]``
    (every cell when the slide has no detected tissue, as the attention does)."""
    x, m = view_tensors(view, torch.device("cpu"))
    support = mask_to_map(m, map_size).reshape(-1)
    if not bool(support.any()):
        support = torch.ones_like(support)
    return cell_descriptors(x, map_size, context)[0], support


def appearance_exploration(
    view: SlideView,
    map_size: tuple[int, int],
    strata: AppearanceStrata | None = None,
    n_strata: int = 16,
    rarity: float = 1.0,
    seed: int = 0,
    context: int = 0,
) -> np.ndarray:
    """float32 ``[mh * mw]``: exploration spread over the appearance strata of the view's tissue
    cells (``strata`` fitted on the cohort, else ``n_strata`` clusters of this view alone), each
    cell weighted by its stratum's ``count ** -rarity`` (:func:`wsi_ats.core.stratified_proposal`)."""
    desc, support = view_descriptors(view, map_size, context)
    ids = appearance_strata(desc[None], support[None], n_strata, seed=seed, strata=strata)
    return stratified_proposal(ids, rarity)[0].numpy()


def attention_map_size(model: SlideClassifier, view: SlideView) -> tuple[int, int]:
    """``(mh, mw)``: the size of the attention map ``model`` gives for ``view``."""
    x, m = view_tensors(view, model.device)
    with torch.no_grad(), eval_mode(model):
        return tuple(model.attention(x, m).shape[1:])


def effective_replace(attention: torch.Tensor, n: int, replace: bool) -> bool:
    """``replace``, or ``True`` when fewer than ``n`` cells have nonzero attention (tiny tissue)."""
    return replace or int((attention.reshape(attention.shape[0], -1) > 0).sum(dim=1).min()) < n


def sample_slide(
    view: SlideView,
    model: SlideClassifier,
    n_draws: int | None = None,
    seed: int | None = None,
    round_index: int = 0,
) -> SlideSample:
    """Attention map of ``view`` and ``n_draws`` independent draws of ``N`` cells from it.

    ``seed`` is the run seed (default ``config.predict.seed``); the generator is seeded with
    :func:`slide_seed` ``(seed, view.slide_id)``, so the draws depend only on the seed and the slide.
    ``round_index > 0`` gives further, independent rounds of draws (adaptive prediction).
    """
    cfg = model.config
    n_draws = cfg.predict.n_draws if n_draws is None else int(n_draws)
    if n_draws < 1:
        raise ValueError(f"n_draws must be >= 1, got {n_draws} (slide {view.slide_id!r})")
    seed = cfg.predict.seed if seed is None else int(seed)
    n = cfg.sampling.n_patches
    device = model.device
    x, m = view_tensors(view, device)
    with torch.no_grad(), eval_mode(model):
        att = model.attention(x, m)  # [1, mh, mw]
    map_size = (int(att.shape[1]), int(att.shape[2]))
    replace = effective_replace(att, n, cfg.sampling.replace)
    gen = torch.Generator(device=device)
    key = view.slide_id if round_index == 0 else f"{view.slide_id}\x00round {int(round_index)}"
    gen.manual_seed(slide_seed(seed, key))
    flat = att.reshape(1, -1).expand(n_draws, -1).contiguous()
    drawn = draw(flat, n, replace, gen)
    indices, sampled = drawn.indices, drawn.proposal  # the proposal is the attention itself
    smp = SlideSample(
        slide_id=view.slide_id,
        path=view.path,
        attention=att[0].float().cpu().numpy(),
        indices=indices.cpu().numpy().astype(np.int64),
        sampled_attention=sampled.float().cpu().numpy(),
        locations=cells_to_locations(indices, map_size, view, cfg, gen),
        tile_size=view_tile_size(view, cfg),
        read_level=view.read_level,
        replace=replace,
        read_downsample=view.read_downsample,
        scale=view.scale,
        out_size=view_out_size(view),
    )
    smp.warnings = tuple(
        slide_warnings(
            view.level0_size, view.mpp, smp.tile_size_level0, bool(view.mask.any()),
            int((att > 0).sum()), n, getattr(model, "data_range", None),
        )
    )  # fmt: skip
    if view.mpp_source == "assumed":  # the spec's guess, not the slide's own resolution
        smp.warnings += (f"resolution assumed: {view.mpp[0]:g} um/px (slide.assume_mpp)",)
    return smp


def view_tile_size(view: SlideView, config: PipelineConfig) -> tuple[int, int]:
    """``(w, h)`` of a tile in pixels of ``view.read_level`` (what is read)."""
    p = view.read_size or config.slide.patch_size
    return (p, p)


def view_out_size(view: SlideView) -> tuple[int, int] | None:
    """``(w, h)`` tiles are resized to after reading, or None (used as read)."""
    if view.tile_size and view.read_size and view.tile_size != view.read_size:
        return (view.tile_size, view.tile_size)
    return None


def read_tiles(
    slide: Slide,
    locations: np.ndarray,
    level: int,
    size: tuple[int, int],
    out_size: tuple[int, int] | None = None,
) -> np.ndarray:
    """``uint8[..., h, w, 3]`` tiles at level-0 ``locations`` ``[..., 2]``, each distinct one read once:
    ``size = (w, h)`` pixels of ``level``, resized to ``out_size`` when given and different."""
    flat = np.asarray(locations, dtype=np.int64).reshape(-1, 2)
    uniq, inverse = np.unique(flat, axis=0, return_inverse=True)
    tiles = resize_tiles(slide.read_regions(uniq, level, size), out_size)
    out = tiles[inverse.reshape(-1)]
    return out.reshape(*np.shape(locations)[:-1], *out.shape[1:])


def resize_tiles(tiles: np.ndarray, out_size: tuple[int, int] | None) -> np.ndarray:
    """``uint8[n, h, w, 3]`` resized to ``out_size = (w, h)`` (antialiased bilinear), or as given
    when ``out_size`` is None or already their size."""
    if out_size is None or tuple(tiles.shape[2:0:-1]) == tuple(out_size):
        return tiles
    from PIL import Image

    w, h = (int(v) for v in out_size)
    out = np.empty((len(tiles), h, w, 3), dtype=np.uint8)
    for i, tile in enumerate(tiles):
        out[i] = np.asarray(Image.fromarray(tile).resize((w, h), Image.Resampling.BILINEAR))
    return out


def unique_tile_features(model: SlideClassifier, smp: SlideSample, slide: Slide) -> np.ndarray:
    """Features ``float32[T*N, D]`` of a sample's tiles, each distinct tile read and computed once
    (equal to ``tile_features(model, read_slide_tiles(smp))``)."""
    flat = smp.locations.reshape(-1, 2)
    uniq, inverse = np.unique(flat, axis=0, return_inverse=True)
    if model.device.type == "cuda":  # the next batch's tiles are read while the GPU computes
        return overlapped_tile_features(
            model, slide, uniq, smp.read_level, smp.tile_size, out_size=smp.out_size
        )[inverse.reshape(-1)]
    tiles = read_tiles(slide, uniq, smp.read_level, smp.tile_size, smp.out_size)
    return tile_features(model, tiles)[inverse.reshape(-1)]


def overlapped_tile_features(
    model: SlideClassifier,
    slide: Slide,
    locations: np.ndarray,
    level: int,
    size: tuple[int, int],
    batch_size: int | None = None,
    out_size: tuple[int, int] | None = None,
) -> np.ndarray:
    """``tile_features(model, read_tiles(slide, locations, level, size), batch_size)``, batch by
    batch, the tiles of batch ``k + 1`` read in a background thread while batch ``k`` computes."""
    batch_size = batch_size or model.config.predict.tile_batch_size
    starts = list(range(0, len(locations), batch_size))
    if len(starts) <= 1:
        return tile_features(model, read_tiles(slide, locations, level, size, out_size), batch_size)
    out = []
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="wsi-ats-tiles") as pool:
        pending = pool.submit(read_tiles, slide, locations[:batch_size], level, size, out_size)
        for start in starts:
            tiles = pending.result()
            if start + batch_size < len(locations):
                nxt = locations[start + batch_size : start + 2 * batch_size]
                pending = pool.submit(read_tiles, slide, nxt, level, size, out_size)
            out.append(tile_features(model, tiles, batch_size))
    return np.concatenate(out)


def read_slide_tiles(sample: SlideSample, slide: Slide | None = None) -> np.ndarray:
    """The ``M = T * N`` tiles of ``sample`` as ``uint8[M, h, w, 3]`` (opens and closes the slide
    unless an open ``slide`` is given). Tiles drawn several times are read once."""
    locs = sample.locations.reshape(-1, 2)
    if slide is not None:
        return read_tiles(slide, locs, sample.read_level, sample.tile_size, sample.out_size)
    with open_slide(sample.path) as opened:
        return read_tiles(opened, locs, sample.read_level, sample.tile_size, sample.out_size)


def tiles_to_tensor(tiles: np.ndarray | torch.Tensor, device: torch.device) -> torch.Tensor:
    """uint8 ``[n, h, w, 3]`` -> float ``[n, 3, h, w]`` in ``[0, 1]`` on ``device`` (uint8 goes to
    a GPU through pinned memory, asynchronously)."""
    t = host_to_device(tiles, device)
    return t.permute(0, 3, 1, 2).float().div_(255.0)


def tile_features(
    model: SlideClassifier, tiles: np.ndarray, batch_size: int | None = None
) -> np.ndarray:
    """Features ``float32[M, D]`` of tiles ``uint8[M, h, w, 3]`` (from any slides), in batches."""
    batch_size = batch_size or model.config.predict.tile_batch_size
    device = model.device
    out = []
    with torch.no_grad(), eval_mode(model):
        for start in range(0, len(tiles), batch_size):
            chunk = tiles_to_tensor(tiles[start : start + batch_size], device)
            out.append(model.features(chunk).float().cpu())
    if not out:
        return np.zeros((0, model.config.features.dim), dtype=np.float32)
    return torch.cat(out).numpy()


def aggregate_slide(
    model: SlideClassifier, sample: SlideSample, features: np.ndarray
) -> SlidePrediction:
    """Expectation per draw -> head -> logits ``[T]`` -> probability ``sigmoid(mean logit)``, its
    95% interval (:func:`wsi_ats.intervals.probability_interval`) and the per-draw spread."""
    cfg = model.config
    t, n = sample.indices.shape
    device = model.device
    f = torch.as_tensor(features, dtype=torch.float32, device=device).reshape(t, n, -1)
    a = torch.as_tensor(sample.sampled_attention, dtype=torch.float32, device=device)
    drawn = Draw(torch.as_tensor(sample.indices, device=device), a, sample.replace)
    attention = torch.as_tensor(sample.attention, dtype=torch.float32, device=device)
    with torch.no_grad(), eval_mode(model):
        pooled = estimate(attention.reshape(1, -1).expand(t, -1), drawn, f)
        logits = model.classify(pooled).double().cpu()
    probs_np = torch.sigmoid(logits).numpy().astype(np.float32)
    p, ci_low, ci_high = probability_interval(logits.numpy())
    n_read = len(np.unique(sample.locations.reshape(-1, 2), axis=0))
    return SlidePrediction(
        slide_id=sample.slide_id,
        probability=p,
        prediction=int(p >= cfg.predict.threshold),
        std=float(probs_np.std()) if t > 1 else 0.0,
        n_patches=n,
        n_draws=t,
        draw_probabilities=probs_np,
        attention=sample.attention,
        locations=sample.locations,
        tile_size_level0=sample.tile_size_level0,
        scale=sample.scale,
        n_tiles_read=n_read,
        extra={
            "warnings": "; ".join(sample.warnings),
            "receptive_field": int(cfg.sampling.receptive_field),
        },
        cells=np.asarray(sample.indices, dtype=np.int64),
        ci_low=ci_low,
        ci_high=ci_high,
        draw_logits=logits.numpy(),
    )


def concat_samples(samples: list[SlideSample]) -> SlideSample:
    """One :class:`SlideSample` holding the draws of several rounds of the same slide, in order."""
    first = samples[0]
    return dataclasses.replace(
        first,
        indices=np.concatenate([s.indices for s in samples]),
        sampled_attention=np.concatenate([s.sampled_attention for s in samples]),
        locations=np.concatenate([s.locations for s in samples]),
    )


@contextlib.contextmanager
def eval_mode(model: torch.nn.Module) -> Iterator[None]:
    """Put ``model`` in eval mode for the block, restoring its previous mode after."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def tissue_tile_count(view: SlideView, tile_size_level0: tuple[int, int]) -> float:
    """How many tiles of ``tile_size_level0`` (w, h) the tissue covers: the dense pipeline's work."""
    sy, sx = view.scale
    w, h = tile_size_level0
    return float(view.mask.sum()) * sy * sx / (w * h)
