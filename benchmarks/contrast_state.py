"""The stratum contrast of a training run, per stratum: what the stratum logits are set from.

Reads ``last.pt`` of a run folder (``learning_trace.py --keep DIR``, or any ``wsi-ats train``
output) and prints, per cohort stratum and slide label, the effective number of check-slide tiles
behind the mean slide-centred instance probability, the difference of the means, two standard
errors of it, and the contrast the logit is set from (0 below the bound or with too few tiles).

    python benchmarks/contrast_state.py /tmp/run --out benchmarks/results/contrast_state_<run>.txt
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from report import command_line, emit

from wsi_ats.models import PipelineConfig
from wsi_ats.training.contrast import StratumContrast


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("run", type=Path, help="training run folder holding last.pt")
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    saved = torch.load(args.run / "last.pt", map_location="cpu", weights_only=True)
    state = saved.get("stratum_contrast")
    if state is None:
        print(f"{args.run / 'last.pt'}: no stratum contrast (stratum_scale 0?)", file=sys.stderr)
        return 1
    train = PipelineConfig.from_saved(saved["config"]).train  # the run's own z and min_tiles
    contrast = StratumContrast.for_config(state["sums"].shape[-1], train)
    if state["sums"].shape != contrast.sums.shape:
        print(
            f"{args.run / 'last.pt'}: contrast sums of shape {tuple(state['sums'].shape)}, this "
            f"source keeps {tuple(contrast.sums.shape)} (written by an older wsi-ats)",
            file=sys.stderr,
        )
        return 1
    contrast.load(state)
    mean, n_eff, se = contrast.moments()
    c = contrast.contrast()
    lines = [
        command_line("contrast_state.py"),
        f"# run {args.run} (epoch {saved.get('epoch', '?')}); tiles: effective number on check "
        f"slides (z = {contrast.z:g}, at least {contrast.min_tiles:g} per label)",
        f"{'stratum':>7} {'tiles neg':>9} {'tiles pos':>9} {'pos - neg':>9} {'2 se':>7} "
        f"{'contrast':>8}",
    ]
    for s in range(c.numel()):
        lines.append(
            f"{s:>7} {float(n_eff[0, s]):9.1f} {float(n_eff[1, s]):9.1f} "
            f"{float(mean[1, s] - mean[0, s]):+9.4f} {float(2 * se[s]):7.4f} {float(c[s]):8.4f}"
        )
    return emit(lines, args.out)


if __name__ == "__main__":
    sys.exit(main())
