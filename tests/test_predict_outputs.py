"""What ``predict`` tells a user: label and split kept, a warnings column for slides outside the
model's range, AUC and accuracy with their counts, ``--split``; plain progress lines in logs."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from distributed import LocalCluster
from slide_factory import write_pyramidal_tiff
from tiny_cohort import tiny_cohort, tiny_model, tissue_slide, write_manifest

from wsi_ats.cli import main
from wsi_ats.models.data_range import DataRange, slide_warnings

TRAINED_ON = DataRange(8, (512, 512), (0.5, 0.5))


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("predict-outputs")
    manifest = tiny_cohort(root / "cohort", n=8)
    rows = pd.read_csv(manifest).to_dict("records")
    for row in rows:
        row["path"] = str(root / "cohort" / row["path"])
    tiny = np.full((12, 12, 3), 200, np.uint8)  # smaller than one 16 px tile
    odd = {
        "tiny": write_pyramidal_tiff(root / "tiny.tiff", tiny, tile=16, levels=1, mpp=0.5),
        "coarse": tissue_slide(root / "coarse.tiff", 1, seed=1, mpp=352.8),
        "large": tissue_slide(root / "large.tiff", 0, seed=2, size=2048),
    }
    rows += [{"slide_id": k, "path": str(v), "label": 1, "split": "odd"} for k, v in odd.items()]
    columns = ["slide_id", "path", "label", "split"]
    # textured tissue: no two tiles alike, so draws differ and an interval never closes to 0
    noisy = [
        {"slide_id": f"n{i}", "path": str(tissue_slide(root / f"n{i}.tiff", i, seed=10 + i,
                                                      noise=40)), "label": i, "split": "test"}
        for i in range(2)
    ]  # fmt: skip
    return {
        "root": root,
        "manifest": write_manifest(root / "all.csv", rows, columns),
        "noisy_manifest": write_manifest(root / "noisy.csv", noisy, columns),
        "model": tiny_model(root / "run" / "model.pt", TRAINED_ON),
        "old_model": tiny_model(root / "old" / "model.pt", None),  # no recorded range
    }


@pytest.fixture(scope="module")
def scheduler() -> str:
    with LocalCluster(
        n_workers=1, processes=False, threads_per_worker=1, dashboard_address=None
    ) as cluster:
        yield cluster.scheduler_address


def _predict(cohort: dict[str, Path], scheduler: str, out: Path, *extra: str) -> int:
    argv = ["predict", "--manifest", str(cohort["manifest"]), "--out", str(out)]
    return main([*argv, "--scheduler", scheduler, "--no-progress", *extra])


def test_predictions_keep_label_split_and_warn_outside_the_range(
    cohort: dict[str, Path], scheduler: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    assert _predict(cohort, scheduler, tmp_path / "out", "--model", str(cohort["model"])) == 0
    df = pd.read_csv(tmp_path / "out" / "predictions.csv", keep_default_na=False)
    assert list(df.columns)[-6:] == ["warnings", "ci_low", "ci_high", "n_draws", "label", "split"]
    by_id = df.set_index("slide_id")
    for i in range(8):  # the model's 2 draws per slide, and a 95% interval around the probability
        row = by_id.loc[f"s{i}"]
        assert int(row["n_draws"]) == 2
        assert float(row["ci_low"]) <= float(row["probability"]) <= float(row["ci_high"])
    assert by_id.loc["s1", "label"] == 1 and by_id.loc["s6", "split"] == "test"
    assert all(by_id.loc[f"s{i}", "warnings"] == "" for i in range(8))
    assert "slide 12x12 px is smaller than one tile (16x16 px)" in by_id.loc["tiny", "warnings"]
    assert (
        "resolution 353 um/px far from the training range 0.5-0.5"
        in by_id.loc["coarse", "warnings"]
    )
    assert "size 2048 px far from the training range 512-512 px" in by_id.loc["large", "warnings"]
    summary, evaluation = capsys.readouterr().out.strip().splitlines()
    assert "3 with warnings" in summary
    labels, probs = df["label"].to_numpy(), df["probability"].to_numpy()
    from sklearn.metrics import roc_auc_score

    n_pos = int(labels.sum())
    correct = int((df["prediction"].to_numpy() == labels).sum())
    assert evaluation == (
        f"evaluation on 11 labelled slides ({n_pos} positive, {11 - n_pos} negative): "
        f"AUC {roc_auc_score(labels, probs):.3f}, accuracy {correct / 11:.3f} ({correct}/11)"
    )


def test_split_filters_rows_and_old_checkpoints_give_no_range_warning(
    cohort: dict[str, Path], scheduler: str, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "out"
    model = ["--model", str(cohort["old_model"])]
    assert _predict(cohort, scheduler, out, *model, "--split", "ODD") == 0
    df = pd.read_csv(out / "predictions.csv", keep_default_na=False)
    assert list(df["slide_id"]) == ["tiny", "coarse", "large"]
    assert set(df["split"]) == {"odd"}
    warnings = dict(zip(df["slide_id"], df["warnings"], strict=True))
    assert "smaller than one tile" in warnings["tiny"]
    assert warnings["coarse"] == "" and warnings["large"] == ""  # no range recorded: no range rule
    assert "evaluation on 3 labelled slides (3 positive, 0 negative): AUC n/a (one class)" in (
        capsys.readouterr().out
    )


def test_slide_warning_rules() -> None:
    ok = slide_warnings((512, 512), (0.5, 0.5), (64, 64), True, 100, 32, TRAINED_ON)
    assert ok == []
    few = slide_warnings((512, 512), (0.5, 0.5), (64, 64), True, 5, 32, TRAINED_ON)
    assert few == ["5 tissue cells < N=32 tiles per draw (tiles repeat)"]
    blank = slide_warnings((512, 512), None, (64, 64), False, 64, 32, None)
    assert blank == ["no tissue detected (attention spread over the whole slide)"]
    edge = slide_warnings((1024, 1024), (0.74, 0.74), (64, 64), True, 100, 32, TRAINED_ON)
    assert edge == []  # within the tolerances (2x size, 1.5x resolution)
    assert DataRange.from_dict(TRAINED_ON.to_dict()) == TRAINED_ON
    assert DataRange.from_dict(None) is None and DataRange.from_dict({"side_px": "x"}) is None


def test_progress_without_a_terminal_is_plain_lines(monkeypatch: pytest.MonkeyPatch) -> None:
    import wsi_ats.progress as progress

    monkeypatch.setattr(progress, "PLAIN_INTERVAL", 3600.0)
    log = io.StringIO()  # not a terminal
    with progress.Progress(total=500, desc="predict", unit="slide", file=log) as bar:
        for _ in range(500):
            bar.update(1)
            bar.set_postfix(loss="0.1")
    text = log.getvalue()
    assert "\r" not in text
    assert text.splitlines() == [
        "predict:   0%| 0/500 [00:00<?, ?slide/s]",
        text.splitlines()[1],
    ] and text.splitlines()[1].startswith("predict: 100%| 500/500")


def test_heatmap_writes_the_format_of_its_suffix(cohort: dict[str, Path], tmp_path: Path) -> None:
    from PIL import Image

    slide = cohort["root"] / "cohort" / "s1.tiff"
    for name, fmt in (("h.jpg", "JPEG"), ("h.png", "PNG")):
        out = tmp_path / name
        assert (
            main(["heatmap", str(slide), "--model", str(cohort["model"]), "--out", str(out)]) == 0
        )
        with Image.open(out) as img:
            assert img.format == fmt


def test_heatmap_target_halfwidth_draws_until_max_draws_and_prints_the_interval(
    cohort: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    slide = cohort["root"] / "n1.tiff"
    argv = ["heatmap", str(slide), "--model", str(cohort["model"]), "--out", str(tmp_path / "h.png"),
            "--draws", "2", "--target-halfwidth", "1e-12", "--max-draws", "5"]  # fmt: skip
    assert main(argv) == 0
    line = capsys.readouterr().out
    assert "(95% CI " in line and ", 5 draws of " in line, line


def test_target_halfwidth_adds_draws_up_to_max_draws(
    cohort: dict[str, Path], scheduler: str, tmp_path: Path
) -> None:
    """``--target-halfwidth`` on the cluster: an unreachable W stops every slide at ``--max-draws``
    (rounds of ``--n-draws``, the last cut), with the values ``predict_slide`` gives."""
    from wsi_ats.inference import predict_slide
    from wsi_ats.models import load_model

    out = tmp_path / "out"
    textured = {**cohort, "manifest": cohort["noisy_manifest"]}
    extra = ["--model", str(cohort["model"]), "--n-draws", "2", "--seed", "3"]
    assert _predict(textured, scheduler, out, *extra, "--target-halfwidth", "1e-12",
                    "--max-draws", "5") == 0  # fmt: skip
    df = pd.read_csv(out / "predictions.csv")
    assert list(df["n_draws"]) == [5, 5]
    model = load_model(cohort["model"])
    for row in df.itertuples():
        path = cohort["root"] / f"{row.slide_id}.tiff"
        ref = predict_slide(
            path, model, n_draws=2, seed=3, slide_id=row.slide_id, target_halfwidth=1e-12,
            max_draws=5,
        )  # fmt: skip
        assert ref.n_draws == 5
        assert (row.probability, row.ci_low, row.ci_high) == pytest.approx(
            (ref.probability, ref.ci_low, ref.ci_high), abs=1e-6
        )
        assert row.ci_low < row.probability < row.ci_high


def test_decision_rule_adds_rounds_on_the_cluster_as_predict_slide_does(
    cohort: dict[str, Path], scheduler: str, tmp_path: Path
) -> None:
    """``predict.decision_max_draws`` on the cluster: a slide whose interval contains the threshold
    gets rounds of ``n_draws`` more (the finish task reads them), with the draws and values
    ``predict_slide`` gives in one process."""
    from wsi_ats.inference import predict_slide
    from wsi_ats.models import load_model, save_checkpoint

    plain = load_model(cohort["model"])
    path = cohort["root"] / "n0.tiff"
    first = predict_slide(path, plain, seed=3, slide_id="n0")  # the model's 2 draws
    predict = {"decision_max_draws": 6, "threshold": first.probability}  # inside n0's interval
    model = load_model(cohort["model"], config=plain.config.replace(predict=predict))
    checkpoint = save_checkpoint(tmp_path / "rule" / "model.pt", model, 0)
    out = tmp_path / "out"
    textured = {**cohort, "manifest": cohort["noisy_manifest"]}
    assert _predict(textured, scheduler, out, "--model", str(checkpoint), "--seed", "3") == 0
    df = pd.read_csv(out / "predictions.csv").set_index("slide_id")
    assert df.loc["n0", "n_draws"] > 2
    for slide_id, row in df.iterrows():
        ref = predict_slide(cohort["root"] / f"{slide_id}.tiff", model, seed=3, slide_id=slide_id)
        assert row["n_draws"] == ref.n_draws
        assert (row["probability"], row["ci_low"], row["ci_high"]) == pytest.approx(
            (ref.probability, ref.ci_low, ref.ci_high), abs=1e-6
        )
