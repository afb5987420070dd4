"""GPU smoke (needs CUDA and timm): two training epochs on CUDA in bf16 and in fp16 (GradScaler),
a frozen timm backbone with weights from a local file, then a checkpoint reload and a prediction.

    python benchmarks/gpu_smoke.py [MANIFEST]   # default: the cohort benchmarks/gpu.py writes
"""

import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path.cwd()))
import pandas as pd

from wsi_ats.inference import predict_slide
from wsi_ats.models import PipelineConfig, build_model, load_model
from wsi_ats.models.accel import feature_precision
from wsi_ats.training import train

man = Path(sys.argv[1] if len(sys.argv) > 1 else "benchmarks/_cache/gpu_16_4096/manifest.csv")
body = build_model(
    PipelineConfig().replace(features={"backbone": "timm:resnet18"})
).feature_net.body
torch.save(body.state_dict(), "/tmp/r18.pt")
for label, bf16 in (("bf16", True), ("fp16+GradScaler", False)):
    if not bf16:
        torch.cuda.is_bf16_supported = lambda *a, **k: False
    print(label, feature_precision("cuda"))
    cfg = PipelineConfig().replace(
        slide={"lowres_size": 512, "patch_size": 224},
        features={
            "backbone": "timm:resnet18",
            "weights": "/tmp/r18.pt",
            "freeze": "all",
            "mean": [0.485, 0.456, 0.406],
            "std": [0.229, 0.224, 0.225],
        },
        sampling={"n_patches": 32},
        train={
            "epochs": 2,
            "batch_size": 4,
            "n_patches_start": 0,
            "read_workers": 8,
            "val_draws": 2,
        },
    )
    t0 = time.perf_counter()
    res = train(man, cfg, f"/tmp/run_{bf16}", progress=False, overwrite=True)
    dt = time.perf_counter() - t0
    m = load_model(res.model_path, map_location="cuda")
    same = torch.equal(m.feature_net.body.conv1.weight.cpu(), body.conv1.weight)
    path = str(man.parent / pd.read_csv(man)["path"][0])
    pred = predict_slide(path, m)
    print(
        f"{label}: 2 epochs in {dt:.1f}s, history {[(r['epoch'], round(r['train_loss'], 3), round(r['tiles_per_s'])) for r in res.history]}, "
        f"frozen backbone kept its file weights: {same}, predict p={pred.probability:.3f} tiles={pred.n_tiles_read}"
    )
