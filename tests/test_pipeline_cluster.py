"""Acceptance tests of the cohort pipeline on a real dask-distributed cluster (loopback only).

A ``dask scheduler`` and two ``dask worker`` processes are started on 127.0.0.1 for the module. The
cohort holds tiny synthetic slides (``wsi_ats.synth``, 2048 px), one corrupt file, one missing file
and a hostile slide id; the model is a tiny untrained one (training is not needed to test plumbing).
"""

from __future__ import annotations

import csv
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from distributed import Client, get_task_stream

from wsi_ats.cohort.manifest import load_manifest
from wsi_ats.cohort.paths import slide_dir
from wsi_ats.inference import predict_slide
from wsi_ats.models import PipelineConfig, build_model, load_model, save_checkpoint
from wsi_ats.pipeline import predict_cohort
from wsi_ats.pipeline.cluster import workers_have_gpu
from wsi_ats.pipeline.cohort import ProgressEvent, RunSettingsError
from wsi_ats.pipeline.state import COLUMNS, read_log
from wsi_ats.slides import open_slide
from wsi_ats.stages import tile_features
from wsi_ats.synth import make_cohort

pytestmark = pytest.mark.timeout(240)

BIN = Path(sys.executable).parent
N_GOOD = 10
N_DRAWS = 3
EVIL_ID = "../../etc/évil slide"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


class Cluster:
    """A scheduler and worker processes started with the ``dask`` CLI on 127.0.0.1."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.address = f"tcp://127.0.0.1:{_free_port()}"
        port = self.address.rsplit(":", 1)[1]
        self.scheduler = subprocess.Popen(
            [BIN / "dask", "scheduler", "--host", "127.0.0.1", "--port", port, "--no-dashboard"],
            env=_env(),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self.workers: list[subprocess.Popen] = []

    def start_worker(self, extra: list[str] | None = None) -> subprocess.Popen:
        args = [BIN / "dask", "worker", self.address, "--nworkers", "1", "--nthreads", "1"]
        args += extra or []
        args += ["--host", "127.0.0.1", "--no-nanny", "--no-dashboard"]
        args += ["--local-directory", str(self.tmp / "dask-scratch"), "--death-timeout", "60"]
        proc = subprocess.Popen(
            args, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        self.workers.append(proc)
        return proc

    def alive_workers(self) -> list[subprocess.Popen]:
        return [w for w in self.workers if w.poll() is None]

    def ensure_workers(self, n: int, client: Client) -> None:
        while len(self.alive_workers()) < n:
            self.start_worker()
        client.wait_for_workers(n, timeout=90)

    def close(self) -> None:
        self.stop(*self.workers, self.scheduler)

    @staticmethod
    def stop(*procs: subprocess.Popen) -> None:
        """SIGTERM, then SIGKILL what has not exited within 20 s (a worker busy closing its
        connections on a loaded machine can take longer; how fast it exits is not under test)."""
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=20)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    c = Cluster(tmp_path_factory.mktemp("cluster"))
    c.start_worker()
    c.start_worker()
    try:
        yield c
    finally:
        c.close()


@pytest.fixture
def client(cluster: Cluster) -> Iterator[Client]:
    with Client(cluster.address, timeout="60s") as cl:
        cluster.ensure_workers(2, cl)
        yield cl


@pytest.fixture(scope="module")
def cohort(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Good slides (synthetic), a corrupt one, a missing one, a tiny model; manifests over them."""
    root = tmp_path_factory.mktemp("cohort")
    good = make_cohort(root / "synth", N_GOOD, 2048, seed=3)
    rows = list(csv.DictReader(good.open()))
    corrupt = root / "corrupt.tiff"
    corrupt.write_bytes(b"II*\x00" + np.random.default_rng(0).bytes(4096))
    config = PipelineConfig().replace(
        slide={"lowres_size": 256, "patch_size": 32},
        attention={"width": 4, "depth": 2},
        features={"width": 4, "dim": 8},
        sampling={"n_patches": 8},
        predict={"n_draws": N_DRAWS, "tile_batch_size": 32},
    )
    model = build_model(config, seed=0)
    with torch.no_grad():  # spread the untrained head's outputs so slides differ visibly
        for p in model.head.parameters():
            p.mul_(40.0)
    model_path = save_checkpoint(root / "run" / "model.pt", model, epoch=0)

    def manifest(name: str, extra: list[tuple[str, str]], n: int) -> Path:
        lines = ["slide_id,path,label"]
        lines += [f"{r['slide_id']},{good.parent / r['path']},{r['label']}" for r in rows[:n]]
        lines += [f'"{sid}",{path},' for sid, path in extra]
        path = root / name
        path.write_text("\n".join(lines) + "\n")
        return path

    faults = [("corrupt", str(corrupt)), ("missing", str(root / "gone.tiff"))]
    first = rows[0]
    return {
        "root": root,
        "model": model_path,
        "faulty": manifest("faulty.csv", [*faults, (EVIL_ID, str(good.parent / first["path"]))], 5),
        "good": manifest("good.csv", [], N_GOOD),
        "small_faulty": manifest("small.csv", faults, 2),
        "two": manifest("two.csv", [], 2),
    }


def _reference(path: str, model, slide_id: str):  # noqa: ANN001, ANN202
    return predict_slide(path, model, n_draws=N_DRAWS, seed=0, slide_id=slide_id)


def _assert_matches_single_process(out: Path, manifest: Path, model_path: Path) -> None:
    model = load_model(model_path)
    df = pd.read_csv(out / "predictions.csv")
    assert list(df.columns)[: len(COLUMNS)] == COLUMNS
    by_id = df.set_index("slide_id")
    for entry in load_manifest(manifest):
        if entry.problem or "corrupt" in entry.slide_id:
            continue
        ref = _reference(entry.path, model, entry.slide_id)
        row = by_id.loc[entry.slide_id]
        assert row["status"] == "ok", (entry.slide_id, row["error"])
        np.testing.assert_allclose(row["probability"], ref.probability, atol=1e-5)
        np.testing.assert_allclose(row["std"], ref.std, atol=1e-5)
        assert row["n_patches"] == ref.n_patches and row["prediction"] == ref.prediction
        coords = pd.read_csv(slide_dir(out, entry.slide_id) / "coords.csv")
        np.testing.assert_array_equal(coords[["x", "y"]].to_numpy(), ref.locations.reshape(-1, 2))


def test_cluster_bad_slides_and_killed_worker(
    cluster: Cluster, client: Client, cohort: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "out"
    killed: list[tuple[str, int]] = []
    pids = client.run(os.getpid)  # worker address -> pid

    def kill_busiest_worker(event: ProgressEvent) -> None:
        if killed or event.status != "ok":
            return
        load = {a: len(t) for a, t in client.processing().items()}
        held = {a: len(k) for a, k in client.has_what().items()}
        victim = max(pids, key=lambda a: (load.get(a, 0) + held.get(a, 0), a))
        killed.append((victim, load.get(victim, 0) + held.get(victim, 0)))
        os.kill(pids[victim], signal.SIGKILL)

    df = predict_cohort(
        cohort["faulty"],
        cohort["model"],
        out,
        client=client,
        max_in_flight=4,
        batch_slides=2,
        progress=kill_busiest_worker,
    )
    # a worker really died, holding work that had to be redone elsewhere
    assert len(killed) == 1 and killed[0][1] > 0
    assert len(cluster.alive_workers()) == 1

    assert list(df.columns) == [*COLUMNS, "label"] and len(df) == 8  # the manifest has labels
    status = dict(zip(df["slide_id"], df["status"], strict=True))
    errors = dict(zip(df["slide_id"], df["error"], strict=True))
    assert status.pop("corrupt") == "error" and status.pop("missing") == "error"
    assert set(status.values()) == {"ok"}
    assert "SlideOpenError" in errors["corrupt"] and "corrupt.tiff" in errors["corrupt"]
    assert "FileNotFoundError" in errors["missing"] and "gone.tiff" in errors["missing"]
    for sid in ("corrupt", "missing"):  # recorded, but not finished: a restart retries them
        assert (slide_dir(out, sid) / "error.json").is_file()
        assert not (slide_dir(out, sid) / "prediction.json").exists()
    assert sorted(df.attrs["failed"]) == ["corrupt", "missing"] and len(df.attrs["computed"]) == 6

    # the hostile id stays inside OUT/slides, and nothing was written outside OUT
    evil = slide_dir(out, EVIL_ID)
    assert evil.parent == (out / "slides").resolve() and (evil / "prediction.json").is_file()
    assert {p.name for p in tmp_path.iterdir()} == {"out"}
    assert all(out.resolve() in p.resolve().parents for p in out.rglob("*"))

    _assert_matches_single_process(out, cohort["faulty"], cohort["model"])


def _predict_cmd(manifest: Path, model: Path, out: Path, scheduler: str) -> list[str]:
    return [
        sys.executable, "-m", "wsi_ats.cli", "predict", "--manifest", str(manifest),
        "--model", str(model), "--out", str(out), "--scheduler", scheduler,
        "--max-in-flight", "2", "--batch-slides", "1", "--no-progress",
    ]  # fmt: skip


def _wait_idle(client: Client, timeout: float = 60.0) -> None:
    """Until no task is known to the scheduler or executing on a worker (a killed client's leftovers)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        n_sched = client.run_on_scheduler(lambda dask_scheduler: len(dask_scheduler.tasks))
        executing = client.run(lambda dask_worker: dask_worker.state.executing_count)
        if n_sched == 0 and not any(executing.values()):
            return
        time.sleep(0.2)
    raise TimeoutError("cluster did not become idle")


def test_killed_run_restarts_only_missing(
    cluster: Cluster, client: Client, cohort: dict[str, Path], tmp_path: Path
) -> None:
    out = tmp_path / "out"
    cmd = _predict_cmd(cohort["good"], cohort["model"], out, cluster.address)
    run = subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while len(list(out.glob("slides/*/prediction.json"))) < 3:
        assert run.poll() is None, run.communicate()
        assert time.time() < deadline, "no progress"
        time.sleep(0.05)
    run.send_signal(signal.SIGKILL)
    run.wait(timeout=30)
    _wait_idle(client)  # tasks the killed client left running may still write their slide

    before = {p.parent.name: p.stat().st_mtime_ns for p in out.glob("slides/*/prediction.json")}
    assert 3 <= len(before) < N_GOOD, "the run must be interrupted half way"
    logged_before = len(read_log(out))

    done = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=150)
    assert done.returncode == 0, done.stderr
    summary = done.stdout.strip().splitlines()
    assert len(summary) == 2 and f"{N_GOOD} ok, 0 failed" in summary[0]
    assert summary[1].startswith(f"evaluation on {N_GOOD} labelled slides")
    assert (
        f"{N_GOOD - len(before)} computed by this run, {len(before)} already finished"
        in (summary[0])
    )
    recomputed = [r["slide_id"] for r in read_log(out)[logged_before:]]
    all_ids = {e.slide_id for e in load_manifest(cohort["good"])}
    assert sorted(recomputed) == sorted(all_ids - set(before))  # exactly the missing ones, once
    after = {p.parent.name: p.stat().st_mtime_ns for p in out.glob("slides/*/prediction.json")}
    assert len(after) == N_GOOD and all(after[k] == v for k, v in before.items())
    _assert_matches_single_process(out, cohort["good"], cohort["model"])
    with pytest.raises(RunSettingsError, match="n_draws"):  # resuming with other settings: refused
        predict_cohort(cohort["good"], cohort["model"], out, client=client, n_draws=N_DRAWS + 1)


def test_cli_exit_status_and_summary_on_failures(
    cluster: Cluster, client: Client, cohort: dict[str, Path], tmp_path: Path
) -> None:
    cmd = _predict_cmd(cohort["small_faulty"], cohort["model"], tmp_path / "out", cluster.address)
    done = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=150)
    assert done.returncode == 1, done.stderr
    line, evaluation = done.stdout.strip().splitlines()
    assert "4 slides: 2 ok, 2 failed" in line and "corrupt" in line
    assert evaluation.startswith("evaluation on 2 labelled slides")
    assert "gone.tiff" in done.stderr  # the missing path is announced up front
    assert "dask dashboard" in done.stderr


def test_cli_rejects_invalid_manifest_before_compute(
    cohort: dict[str, Path], tmp_path: Path
) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("slide_id,path,label\na,x.tiff,1\na,y.tiff,3\n,z.tiff,0\n")
    cmd = [sys.executable, "-m", "wsi_ats.cli", "predict", "--manifest", str(bad)]
    cmd += ["--model", str(cohort["model"]), "--out", str(tmp_path / "out"), "--on-missing", "fail"]
    done = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    for expected in ("line 2: a: slide file not found", "line 3: a: duplicate slide_id", "line 3",
                     "label must be 0 or 1", "line 4: ?: empty slide_id"):  # fmt: skip
        assert expected in done.stderr, done.stderr
    assert not (tmp_path / "out").exists()  # nothing computed, nothing written


def test_feature_stage_goes_to_gpu_workers(
    cluster: Cluster, client: Client, cohort: dict[str, Path], tmp_path: Path
) -> None:
    """A worker declaring ``--resources GPU=1`` gets every feature task (CPU torch here)."""
    assert not workers_have_gpu(client)
    gpu = cluster.start_worker(["--resources", "GPU=1"])
    try:
        client.wait_for_workers(3, timeout=90)
        assert workers_have_gpu(client)
        gpu_address = next(
            a for a, w in client.scheduler_info()["workers"].items() if w["resources"]
        )
        with get_task_stream(client) as stream:
            df = predict_cohort(cohort["two"], cohort["model"], tmp_path / "out", client=client)
        assert (df["status"] == "ok").all()
        where = {t["key"]: t["worker"] for t in stream.data}
        features = [w for k, w in where.items() if str(k).startswith("features-")]
        assert features and set(features) == {gpu_address}
        assert {w for k, w in where.items() if str(k).startswith("view-")} <= set(
            client.scheduler_info()["workers"]
        )
    finally:
        cluster.stop(gpu)


def test_local_cluster_and_in_memory_model(cohort: dict[str, Path], tmp_path: Path) -> None:
    """No client: a LocalCluster sized to the machine; a model object is scattered, not a path."""
    model = load_model(cohort["model"])
    out = tmp_path / "out"
    df = predict_cohort(cohort["two"], model, out)
    assert (df["status"] == "ok").all() and len(df) == 2
    _assert_matches_single_process(out, cohort["two"], cohort["model"])


def test_save_features_matches_the_sampled_tiles(
    client: Client, cohort: dict[str, Path], tmp_path: Path
) -> None:
    """``save_features``: features.npy per slide, one row per coords.csv row, equal to recomputing
    them from the slide; refused when resuming a run that did not save them."""
    model = load_model(cohort["model"])
    out = tmp_path / "out"
    df = predict_cohort(cohort["two"], cohort["model"], out, client=client, save_features=True)
    assert (df["status"] == "ok").all()
    for entry in load_manifest(cohort["two"]):
        folder = slide_dir(out, entry.slide_id)
        feats = np.load(folder / "features.npy")
        coords = pd.read_csv(folder / "coords.csv")
        ref = _reference(entry.path, model, entry.slide_id)
        assert feats.dtype == np.float32 and feats.shape[0] == len(coords)
        level, patch = model.config.slide.read_level, model.config.slide.patch_size
        with open_slide(entry.path) as slide:
            tiles = slide.read_regions(coords[["x", "y"]].to_numpy(), level, (patch, patch))
        assert len(coords) == ref.locations.reshape(-1, 2).shape[0]
        np.testing.assert_allclose(feats, tile_features(model, tiles), atol=1e-5)
    with pytest.raises(RunSettingsError, match="save_features"):
        predict_cohort(cohort["two"], cohort["model"], out, client=client)


def test_cli_unreachable_scheduler(cohort: dict[str, Path], tmp_path: Path) -> None:
    nobody = f"tcp://127.0.0.1:{_free_port()}"
    cmd = _predict_cmd(cohort["two"], cohort["model"], tmp_path / "out", nobody)
    done = subprocess.run(
        [*cmd, "--connect-timeout", "2"], env=_env(), capture_output=True, text=True, timeout=90
    )
    assert done.returncode == 2
    assert f"cannot reach scheduler {nobody}" in done.stderr
