"""What the stratum logits (``attention.stratum_scale``) cost at prediction: the attention of one
low-res view with and without them, timed back to back (interleaved repetitions, one thread).

    python benchmarks/stratum_overhead.py --out benchmarks/results/stratum_overhead.txt
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
from pathlib import Path

import torch
from report import command_line, emit

from wsi_ats.core import cell_descriptors, fit_appearance_strata
from wsi_ats.models import PipelineConfig, build_model

ROOT = Path(__file__).resolve().parents[1]
PIPELINE = ROOT / "pipelines" / "baselines.toml"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--size", type=int, default=512, help="low-res view side, px")
    ap.add_argument("--reps", type=int, default=50)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    config = PipelineConfig.from_toml(PIPELINE)
    with_strata = build_model(config, seed=0).eval()
    without = build_model(config.replace(attention={"stratum_scale": 0.0}), seed=0).eval()
    without.attention_net.load_state_dict(with_strata.attention_net.net.state_dict())
    x = torch.rand(1, 3, args.size, args.size, generator=torch.Generator().manual_seed(0))
    m = torch.ones(1, args.size, args.size, dtype=torch.bool)
    stride = config.attention.map_stride
    map_size = (args.size // stride, args.size // stride)
    net = with_strata.attention_net
    net.set_strata(fit_appearance_strata(cell_descriptors(x, map_size, net.context)[0], 16))
    net.set_bias(torch.linspace(0, 3, net.n_strata))  # every logit non-zero: the lookup runs
    times = {"with": [], "without": []}
    with torch.no_grad():
        for _ in range(args.reps):
            for name, model in (("with", with_strata), ("without", without)):
                t0 = time.perf_counter()
                model.attention(x, m)
                times[name].append(time.perf_counter() - t0)
    med = {k: sorted(v)[len(v) // 2] * 1000 for k, v in times.items()}
    lines = [
        command_line("stratum_overhead.py"),
        f"# {args.size} x {args.size} px view, {map_size[0]} x {map_size[1]} cells, "
        f"{net.n_strata} strata, pipelines/baselines.toml attention net, {args.reps} interleaved "
        f"repetitions, median",
        f"# machine: {platform.machine()}, torch {torch.__version__}, 1 thread",
        f"attention without stratum logits  {med['without']:7.2f} ms",
        f"attention with stratum logits     {med['with']:7.2f} ms",
        f"ratio                             {med['with'] / med['without']:7.2f}x",
    ]
    return emit(lines, args.out)


if __name__ == "__main__":
    sys.exit(main())
