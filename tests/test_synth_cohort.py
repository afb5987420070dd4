"""Synthetic cohorts: manifest, labels, splits, ground truth, caching and the ``synth`` command."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import openslide
import pytest

from wsi_ats.cli import main
from wsi_ats.synth import make_cohort, slide_seed, write_synthetic_slide
from wsi_ats.synth.cohort import assign_labels, assign_splits, split_counts


def _rows(manifest: Path) -> list[dict[str, str]]:
    with open(manifest, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cohort")
    return make_cohort(out, n_slides=6, size=512, seed=3, workers=2)


def test_manifest_columns_labels_splits_and_paths(cohort: Path) -> None:
    rows = _rows(cohort)
    assert list(rows[0]) == ["slide_id", "path", "label", "split"]
    assert [r["slide_id"] for r in rows] == [f"slide_{i:04d}" for i in range(6)]
    assert sum(int(r["label"]) for r in rows) == 3
    assert [r["split"] for r in rows].count("train") == 4  # 0.6 * 6 rounded by largest remainder
    assert {r["split"] for r in rows} == {"train", "val", "test"}
    for r in rows:
        assert not Path(r["path"]).is_absolute()
        with openslide.OpenSlide(str(cohort.parent / r["path"])) as s:
            assert s.dimensions == (512, 512)


def test_ground_truth_matches_manifest(cohort: Path) -> None:
    gt = json.loads((cohort.parent / "ground_truth.json").read_text())
    rows = _rows(cohort)
    assert set(gt["slides"]) == {r["slide_id"] for r in rows}
    for r in rows:
        truth = gt["slides"][r["slide_id"]]
        assert truth["label"] == int(r["label"])
        kinds = [s["kind"] for s in truth["spots"]]
        assert ("malignant" in kinds) == (truth["label"] == 1)
        assert truth["lesion_fraction_of_tissue"] < 0.01
        for s in truth["spots"]:
            assert s["x"] >= 0 and s["x"] + s["w"] <= truth["width"]
            assert s["y"] >= 0 and s["y"] + s["h"] <= truth["height"]


def test_standard_cohort_params_have_no_variant(cohort: Path) -> None:
    """So that standard cohorts cached before variants existed are reused as they are."""
    params = json.loads((cohort.parent / "cohort.json").read_text())
    assert "variant" not in params
    gt = json.loads((cohort.parent / "ground_truth.json").read_text())
    for truth in gt["slides"].values():
        assert "variant" not in truth
        assert {s["kind"] for s in truth["spots"]} <= {"benign", "malignant"}


def test_same_parameters_reuse_the_cohort(cohort: Path) -> None:
    slide = cohort.parent / "slides" / "slide_0000.tiff"
    before = slide.stat().st_mtime_ns, cohort.stat().st_mtime_ns
    again = make_cohort(cohort.parent, n_slides=6, size=512, seed=3)
    assert again == cohort
    assert (slide.stat().st_mtime_ns, cohort.stat().st_mtime_ns) == before


def test_interrupted_cohort_resumes_with_identical_slides(tmp_path: Path) -> None:
    manifest = make_cohort(tmp_path, n_slides=3, size=512, seed=1)
    first = (tmp_path / "slides" / "slide_0001.tiff").read_bytes()
    gt = (tmp_path / "ground_truth.json").read_text()
    (tmp_path / "slides" / "slide_0001.tiff").unlink()
    manifest.unlink()
    assert make_cohort(tmp_path, n_slides=3, size=512, seed=1) == manifest
    assert (tmp_path / "slides" / "slide_0001.tiff").read_bytes() == first
    assert (tmp_path / "ground_truth.json").read_text() == gt


def test_changed_parameters_regenerate(tmp_path: Path) -> None:
    make_cohort(tmp_path, n_slides=2, size=512, seed=1)
    a = (tmp_path / "slides" / "slide_0000.tiff").read_bytes()
    make_cohort(tmp_path, n_slides=2, size=512, seed=2)
    assert (tmp_path / "slides" / "slide_0000.tiff").read_bytes() != a
    assert json.loads((tmp_path / "cohort.json").read_text())["seed"] == 2


def test_labels_are_exact_and_splits_stratified() -> None:
    labels = assign_labels(200, 0.5, seed=0)
    assert labels.sum() == 100
    splits = assign_splits(labels, (("train", 0.6), ("val", 0.2), ("test", 0.2)))
    for name, n in (("train", 120), ("val", 40), ("test", 40)):
        members = labels[np.array(splits) == name]
        assert len(members) == n
        assert abs(members.mean() - 0.5) <= 0.03
    assert split_counts(10, (("train", 7), ("test", 3))) == [7, 3]
    with pytest.raises(ValueError, match="sum"):
        split_counts(10, (("train", 7), ("test", 4)))


def test_synth_command_prints_manifest(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    status = main(
        ["synth", str(tmp_path / "c"), "--n-slides", "2", "--size", "512", "--compression", "zlib"]
    )
    assert status == 0
    manifest = Path(capsys.readouterr().out.strip().splitlines()[-1])
    assert manifest == tmp_path / "c" / "manifest.csv"
    assert len(_rows(manifest)) == 2


def test_synth_command_variant(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    argv = ["synth", str(tmp_path), "--n-slides", "1", "--size", "512", "--compression", "zlib"]
    assert main([*argv, "--variant", "distractors"]) == 0
    assert json.loads((tmp_path / "cohort.json").read_text())["variant"] == "distractors"
    gt = json.loads((tmp_path / "ground_truth.json").read_text())
    assert "distractor" in {s["kind"] for s in gt["slides"]["slide_0000"]["spots"]}
    with pytest.raises(SystemExit):
        main([*argv, "--variant", "pale"])
    assert "default: standard" in _synth_help(capsys)


def _synth_help(capsys: pytest.CaptureFixture) -> str:
    capsys.readouterr()
    with pytest.raises(SystemExit):
        main(["synth", "--help"])
    return " ".join(capsys.readouterr().out.split())


def test_zarr_cohort_opens_with_the_same_pyramid(tmp_path: Path) -> None:
    from wsi_ats.slides import open_slide

    manifest = make_cohort(tmp_path, n_slides=1, size=1024, seed=4, fmt="zarr", compression="zlib")
    row = _rows(manifest)[0]
    assert row["path"].endswith(".zarr")
    with open_slide(manifest.parent / row["path"]) as s:
        assert s.level_dimensions[:2] == ((1024, 1024), (512, 512))
        assert s.mpp == pytest.approx((0.5, 0.5))
    assert not list((tmp_path / "slides").glob("*.tiff*"))


def test_synth_command_reports_spots_that_do_not_fit(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    argv = ["synth", str(tmp_path), "--n-slides", "1", "--size", "512", "--spot-diameter", "400"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "could not place" in err and "slide_0000.tiff" in err


def test_worker_processes_write_the_same_bytes(cohort: Path, tmp_path: Path) -> None:
    """Slides written by the process pool equal a direct call with the derived seed."""
    row = _rows(cohort)[1]
    direct = write_synthetic_slide(
        tmp_path / "direct.tiff",
        512,
        seed=slide_seed(3, 1),
        label=int(row["label"]),
        texture_seed=3,
    )
    assert (cohort.parent / row["path"]).read_bytes() == direct.path.read_bytes()
