"""Every user mistake on the command line: exit 2, one line naming the file or field and the fix,
no traceback, and nothing started or created before the check (no cluster, no output folder)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tiny_cohort import CONFIG, tiny_cohort, tiny_model, write_manifest

from wsi_ats.cli import build_parser, main


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("cli-errors")
    manifest = tiny_cohort(root / "cohort", n=4)
    slide = root / "cohort" / "s0.tiff"
    model = tiny_model(root / "run" / "model.pt")
    notes = root / "notes.txt"
    notes.write_text("not a model\n")
    (root / "empty_run").mkdir()
    (root / "finished_run").mkdir()
    (root / "finished_run" / "model.pt").write_bytes(model.read_bytes())
    (root / "a_file").write_text("x")
    other = root / "other_out"
    other.mkdir()  # an earlier predict run with another seed
    (other / "run.json").write_text(
        json.dumps({"seed": 7, "n_draws": 2, "model": "sha256:0", "save_features": False})
    )
    rows = [{"slide_id": f"s{i}", "path": str(slide), "label": "tumor" if i % 2 else "normal"}
            for i in range(60)]  # fmt: skip
    strings = write_manifest(root / "strings.csv", rows, ["slide_id", "path", "label"])
    wrong = write_manifest(root / "wrong.csv", [{"id": "a", "file": str(slide)}], ["id", "file"])
    pipeline = root / "p.toml"
    pipeline.write_text("[train]\nepochs = 1\n")
    bad_pipeline = root / "bad.toml"
    bad_pipeline.write_text("[train]\nlearning_rate = 0.1\n")
    existing = root / "existing.ome.zarr"
    existing.mkdir()
    return {
        "root": root, "manifest": manifest, "slide": slide, "model": model, "notes": notes,
        "empty_run": root / "empty_run", "finished_run": root / "finished_run",
        "a_file": root / "a_file", "other_out": other, "strings": strings, "wrong": wrong,
        "pipeline": pipeline, "bad_pipeline": bad_pipeline, "existing": existing,
        "new": root / "new_out",
    }  # fmt: skip


P = ["predict", "--manifest", "{manifest}", "--model", "{model}", "--out", "{new}"]
# (argv, text the one-line message must hold); "{name}" is replaced by files[name]
CASES = [
    (["predict", "--manifest", "{manifest}", "--model", "{empty_run}", "--out", "{new}"],
     "no model.pt"),
    (["predict", "--manifest", "{manifest}", "--model", "{notes}", "--out", "{new}"],
     "notes.txt: not a checkpoint"),
    (["predict", "--manifest", "{manifest}", "--model", "{root}/gone.pt", "--out", "{new}"],
     "gone.pt: no such checkpoint file"),
    (["predict", "--manifest", "{manifest}", "--model", "{model}", "--out", "{other_out}"],
     "other settings (seed: 7 -> 0"),
    (["predict", "--manifest", "{manifest}", "--model", "{model}", "--out", "{a_file}"],
     "a_file is a file"),
    (["predict", "--manifest", "{strings}", "--model", "{model}", "--out", "{new}"],
     "label must be 0 or 1 on 60 rows (lines 2-61), got 'normal', 'tumor'"),
    (["predict", "--manifest", "{wrong}", "--model", "{model}", "--out", "{new}"],
     "missing column(s): slide_id, path (columns found: id, file)"),
    ([*P, "--split", "holdout"], "no rows with split 'holdout'; splits found: test, train, val"),
    ([*P, "--n-draws", "0"], "argument --n-draws: must be >= 1"),
    ([*P, "--target-halfwidth", "0"], "argument --target-halfwidth: must be a number > 0, got 0"),
    (["heatmap", "{slide}", "--model", "{model}", "--out", "{new}.png", "--target-halfwidth",
      "-1"], "argument --target-halfwidth: must be a number > 0"),
    (["heatmap", "{slide}", "--model", "{notes}", "--out", "{new}.png"], "notes.txt"),
    (["heatmap", "{slide}", "--model", "{empty_run}", "--out", "{new}.png"], "no model.pt"),
    (["heatmap", "{slide}", "--model", "{model}", "--out", "{root}"], "is a folder"),
    (["heatmap", "{slide}", "--model", "{model}", "--out", "{new}.gif"], "unknown image type"),
    (["heatmap", "{root}/gone.tiff", "--model", "{model}", "--out", "{new}.png"], "gone.tiff"),
    (["train", "--manifest", "{manifest}", "--pipeline", "{pipeline}", "--out", "{finished_run}"],
     "already holds a run (model.pt/last.pt); add --resume"),
    (["train", "--manifest", "{manifest}", "--out", "{new}"], "--pipeline is required"),
    (["train", "--manifest", "{manifest}", "--out", "{new}", "--resume"], "no last.pt"),
    (["train", "--manifest", "{manifest}", "--pipeline", "{bad_pipeline}", "--out", "{new}"],
     "bad.toml: [train] unknown field(s) ['learning_rate']"),
    (["train", "--manifest", "{strings}", "--pipeline", "{pipeline}", "--out", "{new}"],
     "label must be 0 or 1 on 60 rows"),
    (["train", "--manifest", "{manifest}", "--pipeline", "{pipeline}", "--out", "{new}",
      "--resume", "--overwrite"], "not allowed with argument"),
    (["convert", "{slide}", "{existing}"], "existing.ome.zarr exists; add --overwrite"),
    (["convert", "{root}/gone.tiff", "{new}.zarr"], "gone.tiff"),
    (["demo", "--pipeline", "{root}/gone.toml", "--out", "{new}"], "gone.toml: no such pipeline"),
    (["synth", "{new}", "--n-slides", "0", "--size", "512"], "n_slides"),
    (["export", "geojson", "{root}/gone"], "gone does not exist; give the --out folder of a"),
    (["export", "geojson", "{empty_run}"], "empty_run has no predictions.csv"),
    (["export", "geojson", "{a_file}"], "a_file is a file; give the --out folder"),
    (["export", "geojson", "{root}", "--min-ratio", "2"], "must be in [0, 1]"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("argv", "expected"), CASES, ids=[" ".join(c[0][:1] + [c[1][:30]]) for c in CASES]
)
def test_user_mistake_is_one_line_and_exit_2(
    argv: list[str],
    expected: str,
    files: dict[str, Path],
    capsys: pytest.CaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import wsi_ats.pipeline.cluster as cluster

    def no_cluster(*args: object, **kwargs: object) -> None:
        raise AssertionError("a cluster was started before the input was checked")

    monkeypatch.setattr(cluster, "open_client", no_cluster)
    monkeypatch.setattr(cluster, "local_cluster", no_cluster)
    args = [a.format(**{k: str(v) for k, v in files.items()}) for a in argv]
    try:
        status = main(args)
    except SystemExit as exc:  # argparse's own errors
        status = exc.code
    err = capsys.readouterr().err.strip()
    assert status == 2, err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if not line.startswith("warning:")]
    assert len(lines) == 1, err
    assert expected in lines[0], lines[0]
    assert not files["new"].exists()  # no output folder made
    assert not Path(f"{files['new']}.zarr").exists()


def test_every_option_shows_its_default_and_version(capsys: pytest.CaptureFixture) -> None:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.choices and "predict" in a.choices)
    for name, p in sub.choices.items():
        for action in p._actions:
            flag = action.nargs == 0  # --quiet, --resume...: off unless given
            if not action.option_strings or flag or action.required:
                continue
            text = p.formatter_class(p.prog)._get_help_string(action)
            assert "default" in text, (name, action.option_strings, text)
    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.startswith("wsi-ats 0.")


def test_checkpoint_and_model_load_name_the_file(files: dict[str, Path]) -> None:
    from wsi_ats.models import CheckpointError, load_model

    with pytest.raises(CheckpointError, match=r"notes\.txt: not a checkpoint"):
        load_model(files["notes"])
    assert load_model(files["model"]).config == CONFIG


def test_train_and_demo_pick_one_thread_on_small_machines(monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    from wsi_ats.cli import common

    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    assert common.default_threads() == 1
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(16)), raising=False)
    assert common.default_threads() is None  # torch's own choice
