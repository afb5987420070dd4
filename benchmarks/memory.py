"""Peak memory of writing, converting and sampling a 100k x 100k slide (goal: every phase < 1.5 GB).

Each phase runs in its own subprocess and reports its own peak RSS (``ru_maxrss``), so phases do not
hide each other. One level 0 of such a slide is 30 GB of RGB: a bounded peak shows no level is held.

    nice python benchmarks/memory.py [--size 100000] [--workdir benchmarks/_cache/memory] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

LIMIT_MB = 1536
PHASES = ("write_tiff", "convert", "low_res_views", "sample_tiles")


def peak_rss_mb() -> float:
    """Peak resident set size of this process in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def phase_write_tiff(work: Path, size: int) -> dict:
    from wsi_ats.synth import write_synthetic_slide

    truth = write_synthetic_slide(work / "big.tiff", size, seed=0, label=1, compression="jpeg")
    return {"tissue_fraction": round(truth.tissue_fraction, 3), "tiff_GB": _gb(work / "big.tiff")}


def phase_convert(work: Path, size: int) -> dict:
    from wsi_ats.slides import convert_to_ome_zarr

    dst = convert_to_ome_zarr(
        work / "big.tiff", work / "big.zarr", chunk_size=512, overwrite=True, threads=2
    )
    return {"zarr_GB": _gb(dst)}


def phase_low_res_views(work: Path, size: int) -> dict:
    from wsi_ats.slides import low_res_view, open_slide, tissue_mask
    from wsi_ats.slides.lowres import stream_reduce

    out = {}
    with open_slide(work / "big.zarr") as z, open_slide(work / "big.tiff") as t:
        view = low_res_view(z, target_size=1024)
        np.save(work / "mask.npy", tissue_mask(view.image))
        np.save(work / "scale.npy", np.array(view.scale))
        out["zarr_view"] = f"{view.image.shape[1]}x{view.image.shape[0]} from level {view.level}"
        # streaming: a 12.5k x 12.5k level (469 MB of RGB) reduced 12x, tile by tile
        level = t.get_best_level_for_downsample(8)
        w, h = t.level_dimensions[level]
        t0 = time.perf_counter()
        img = stream_reduce(t, level, 12)
        out["streamed_view"] = (
            f"{img.shape[1]}x{img.shape[0]} streamed from level {level} ({w}x{h}, "
            f"{w * h * 3 / 2**20:.0f} MiB as RGB) in {time.perf_counter() - t0:.1f} s"
        )
    return out


def phase_sample_tiles(work: Path, size: int) -> dict:
    from wsi_ats.slides import open_slide

    mask = np.load(work / "mask.npy")
    sy, sx = np.load(work / "scale.npy")
    rng = np.random.default_rng(0)
    ys, xs = np.nonzero(mask)
    pick = rng.integers(0, len(ys), 512)
    locs = np.stack([(xs[pick] + 0.5) * sx - 128, (ys[pick] + 0.5) * sy - 128], axis=1).astype(
        np.int64
    )
    out = {}
    for name in ("big.zarr", "big.tiff"):
        with open_slide(work / name) as slide:
            t0 = time.perf_counter()
            total = 0
            for batch in np.array_split(locs, 4):  # 4 batches of 128 tiles, like a sampler would
                tiles = slide.read_regions(batch, 0, (256, 256))
                total += len(tiles)
            out[name] = f"{total} tiles 256x256 at level 0 in {time.perf_counter() - t0:.1f} s"
    return out


def _gb(path: Path) -> float:
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    return round(sum(p.stat().st_size for p in files) / 1e9, 2)


def run_phase(name: str, work: Path, size: int) -> None:
    t0 = time.perf_counter()
    info = globals()[f"phase_{name}"](work, size)
    info.update(seconds=round(time.perf_counter() - t0, 1), peak_rss_mb=round(peak_rss_mb(), 1))
    print(json.dumps(info))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=100_000)
    parser.add_argument("--workdir", type=Path, default=Path("benchmarks/_cache/memory"))
    parser.add_argument("--out", type=Path, default=None, help="also write the report here")
    parser.add_argument("--reuse-tiff", action="store_true", help="keep an existing big.tiff")
    parser.add_argument("--phase", choices=PHASES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    if args.phase:
        run_phase(args.phase, args.workdir, args.size)
        return 0
    lines = [
        f"memory benchmark: {args.size} x {args.size} synthetic slide, limit {LIMIT_MB} MiB per phase"
    ]
    ok = True
    for name in PHASES:
        if name == "write_tiff" and args.reuse_tiff and (args.workdir / "big.tiff").exists():
            lines.append(f"{name:>14}: reused {args.workdir / 'big.tiff'}")
            continue
        cmd = [
            sys.executable,
            __file__,
            "--phase",
            name,
            "--size",
            str(args.size),
            "--workdir",
            str(args.workdir),
        ]
        res = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if res.returncode != 0:
            lines.append(f"{name:>14}: FAILED\n{res.stderr[-2000:]}")
            ok = False
            break
        info = json.loads(res.stdout.strip().splitlines()[-1])
        ok &= info["peak_rss_mb"] < LIMIT_MB
        lines.append(f"{name:>14}: peak RSS {info.pop('peak_rss_mb'):7.1f} MiB  {json.dumps(info)}")
        print(lines[-1], flush=True)
    lines.append(f"all phases under {LIMIT_MB} MiB: {ok}")
    text = "\n".join(lines)
    print(lines[-1])
    if args.out:
        args.out.write_text(text + "\n")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
