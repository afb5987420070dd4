"""Unit tests of the cohort pipeline's manifest validation, output paths and output state (no dask)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from wsi_ats.cohort.manifest import ManifestError, load_manifest
from wsi_ats.cohort.paths import slide_dir, slide_dir_name
from wsi_ats.pipeline.state import (
    COLUMNS,
    PREDICTION_FILE,
    atomic_write_json,
    collect_predictions,
    is_finished,
    write_error,
    write_predictions_csv,
)


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_manifest_reports_every_problem_with_line_numbers(tmp_path: Path) -> None:
    (tmp_path / "a.tiff").write_bytes(b"x")
    (tmp_path / "b.tiff").write_bytes(b"x")
    m = _write(
        tmp_path / "m.csv",
        "slide_id,path,label\n"  # line 1
        "a,a.tiff,1\n"  # 2 ok
        "a,b.tiff,0\n"  # 3 duplicate id
        ",b.tiff,0\n"  # 4 empty id
        "c,b.tiff,2\n"  # 5 bad label
        "d,,1\n"  # 6 empty path
        "e,b.tiff\n"  # 7 wrong field count
        "f,b.tiff,yes\n",  # 8 bad label
    )
    with pytest.raises(ManifestError) as info:
        load_manifest(m)
    lines = [p.line for p in info.value.problems]
    assert lines == [3, 4, 5, 6, 7, 8]
    text = str(info.value)
    assert "duplicate slide_id 'a' (first on line 2)" in text
    assert "label must be 0 or 1, got '2'" in text and "got 'yes'" in text
    assert str(m) in text


def test_manifest_rejects_ids_differing_only_in_case(tmp_path: Path) -> None:
    (tmp_path / "a.tiff").write_bytes(b"x")
    m = _write(
        tmp_path / "m.csv",
        "slide_id,path\nTCGA-01,a.tiff\ntcga-01,a.tiff\nx/y,a.tiff\nX/Y,a.tiff\nb,a.tiff\n",
    )
    with pytest.raises(ManifestError) as info:
        load_manifest(m)
    assert [p.line for p in info.value.problems] == [3]  # x/y and X/Y hash to distinct folders
    assert "'tcga-01' differs from 'TCGA-01' (line 2) only in case" in str(info.value)
    ok = _write(tmp_path / "ok.csv", "slide_id,path\nTCGA-01,a.tiff\nTCGA-02,a.tiff\n")
    assert [e.slide_id for e in load_manifest(ok).entries] == ["TCGA-01", "TCGA-02"]


def test_manifest_missing_columns_reported_on_header_line(tmp_path: Path) -> None:
    m = _write(tmp_path / "m.csv", "id,file\nx,y\n")
    with pytest.raises(ManifestError) as info:
        load_manifest(m)
    (problem,) = info.value.problems
    assert problem.line == 1 and "slide_id" in problem.message and "path" in problem.message
    m2 = _write(tmp_path / "m2.csv", "slide_id,path\nx,y\n")
    with pytest.raises(ManifestError, match="label"):
        load_manifest(m2, require_label=True)


def test_manifest_missing_paths_error_rows_or_fail(tmp_path: Path) -> None:
    sub = tmp_path / "cohort"
    sub.mkdir()
    (sub / "good.tiff").write_bytes(b"x")
    m = _write(sub / "m.csv", "slide_id,path,label,split\ng,good.tiff,1,test\nm,gone.tiff,,\n")
    manifest = load_manifest(m)  # default on_missing="error-row": kept, with the reason
    good, gone = manifest.entries
    assert good.path == str((sub / "good.tiff").resolve()) and good.problem is None
    assert good.label == 1 and good.split == "test" and good.line == 2
    assert gone.line == 3 and gone.label is None and "not found" in gone.problem
    assert str((sub / "gone.tiff").resolve()) in gone.problem
    with pytest.raises(ManifestError) as info:
        load_manifest(m, on_missing="fail")
    assert [p.line for p in info.value.problems] == [3]


def test_manifest_unreadable_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    locked = tmp_path / "locked.tiff"
    locked.write_bytes(b"x")
    # permission bits do not stop root, so the access check itself is made to say "no"
    monkeypatch.setattr("wsi_ats.cohort.manifest.os.access", lambda path, mode: False)
    m = _write(tmp_path / "m.csv", f"slide_id,path\nl,{locked}\n")
    with pytest.raises(ManifestError, match="line 2: l: slide file not readable"):
        load_manifest(m, on_missing="fail")
    assert "not readable" in load_manifest(m).entries[0].problem


@pytest.mark.parametrize(
    "slide_id", ["../../etc", "a/b/../../..", "/abs/path", "..", ".", "", "x\\..\\y", "é/ü", "CON"]
)
def test_slide_dir_stays_inside_out(tmp_path: Path, slide_id: str) -> None:
    out = tmp_path / "out"
    d = slide_dir(out, slide_id)
    assert d.parent == (out / "slides").resolve()
    assert d.name not in ("", ".", "..") and not d.name.startswith(".")
    assert set(d.name) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-")


def test_slide_dir_names_collision_safe_and_stable() -> None:
    ids = ["a/b", "a_b", "a?b", "a b", "ä_b", "TCGA-01.svs"]
    names = [slide_dir_name(i) for i in ids]
    assert len(set(names)) == len(ids)
    assert slide_dir_name("a_b") == "a_b" and slide_dir_name("TCGA-01.svs") == "TCGA-01.svs"
    assert names == [slide_dir_name(i) for i in ids]  # deterministic
    assert len(slide_dir_name("x" * 1000)) < 120


def test_state_rows_and_atomic_csv(tmp_path: Path) -> None:
    out = tmp_path / "out"
    atomic_write_json(
        slide_dir(out, "ok/1") / PREDICTION_FILE,
        {"slide_id": "ok/1", "probability": 0.75, "prediction": 1, "std": 0.1, "n_patches": 16},
    )
    write_error(out, "bad", "SlideOpenError: cannot open /x/bad.tiff", stage="view")
    assert is_finished(out, "ok/1") and not is_finished(out, "bad")
    df = collect_predictions(out, ["ok/1", "bad", "never"])
    assert list(df.columns) == COLUMNS
    assert df["status"].tolist() == ["ok", "error", "pending"]
    assert df.loc[0, "probability"] == 0.75 and df.loc[0, "n_patches"] == 16
    assert "bad.tiff" in df.loc[1, "error"]
    path = write_predictions_csv(df, out)
    back = pd.read_csv(path, keep_default_na=False)
    assert list(back.columns) == COLUMNS and back["slide_id"].tolist() == ["ok/1", "bad", "never"]
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]
    err = json.loads((slide_dir(out, "bad") / "error.json").read_text())
    assert err["stage"] == "view" and err["status"] == "error"


def test_error_format_and_summary_line(tmp_path: Path) -> None:
    from wsi_ats.pipeline.cohort import format_error, summary_line

    assert format_error(OSError("disk gone"), "/d/s.tiff") == "OSError: disk gone (/d/s.tiff)"
    named = format_error(ValueError("bad level in /d/s.tiff"), "/d/s.tiff")
    assert named == "ValueError: bad level in /d/s.tiff"
    out = tmp_path / "out"
    atomic_write_json(
        slide_dir(out, "a") / PREDICTION_FILE,
        {"probability": 0.2, "prediction": 0, "std": 0.01, "n_patches": 8},
    )
    write_error(out, "b", "SlideOpenError: /d/b.tiff: not a slide")
    df = collect_predictions(out, ["a", "b"])
    df.attrs.update(computed=["a"], failed=["b"], skipped=[])
    line = summary_line(df)
    assert "\n" not in line
    assert line.startswith("2 slides: 1 ok, 1 failed (2 computed by this run, 0 already finished)")
    assert "first failure b: SlideOpenError: /d/b.tiff" in line
