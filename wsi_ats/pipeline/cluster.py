"""Where the cohort graph runs: a ``LocalCluster`` sized to this machine, or an existing cluster.

Everything binds to 127.0.0.1 unless the user points ``--scheduler`` at another address.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager

import dask
from distributed import Client, LocalCluster

#: Dask's nannies start workers with ``MALLOC_TRIM_THRESHOLD_=65536``; setting it disables glibc's
#: dynamic mmap threshold, so every array over 128 KiB (views, tiles, feature maps) is mmap'd and
#: page-faulted afresh: measured ~1.7x slower per slide here. Our workers allocate and free the same
#: few sizes slide after slide and memory per slide is bounded, so the default malloc is used.
#: The workers' statistical profiler (stack samples every 10 ms, for the dashboard's profile page)
#: costs ~3% of a worker's CPU time on this workload; the local cluster turns it off.
LOCAL_CLUSTER_CONFIG = {
    "distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None,
    "distributed.worker.profile.enabled": False,
}


def machine_workers() -> int:
    """Worker processes for a local cluster: one per CPU core this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def local_cluster(
    n_workers: int | None = None, threads_per_worker: int = 1, **kwargs: object
) -> LocalCluster:
    """A process-based ``LocalCluster`` on 127.0.0.1 (scheduler, workers and dashboard).

    ``n_workers`` defaults to :func:`machine_workers`; each worker runs ``threads_per_worker``
    task threads and torch uses as many threads (set when the model is loaded on it). Workers keep
    glibc's default malloc tuning and run no profiler (see :data:`LOCAL_CLUSTER_CONFIG`).
    """
    options: dict[str, object] = {
        "n_workers": n_workers or machine_workers(),
        "threads_per_worker": threads_per_worker,
        "processes": True,
        "host": "127.0.0.1",
        "dashboard_address": "127.0.0.1:0",
        # a failing slide is reported in its error row and error.json; the workers' own
        # "Compute Failed" tracebacks (one per retry) would only bury the progress bar
        "silence_logs": logging.CRITICAL,
    }
    options.update(kwargs)
    with dask.config.set(LOCAL_CLUSTER_CONFIG):  # read by each Nanny (and passed to its worker)
        return LocalCluster(**options)


@contextmanager
def open_client(
    scheduler: str | None = None,
    *,
    n_workers: int | None = None,
    threads_per_worker: int = 1,
    timeout: str = "60s",
) -> Iterator[Client]:
    """A client of ``scheduler`` (``tcp://HOST:PORT``), or of a fresh local cluster when None.

    A local cluster is closed on exit; an existing cluster is left running.
    """
    if scheduler:
        client = Client(scheduler, timeout=timeout)
        try:
            yield client
        finally:
            client.close()
        return
    with (
        local_cluster(n_workers, threads_per_worker) as cluster,
        Client(cluster, timeout=timeout) as client,
    ):
        yield client


def dashboard_link(client: Client) -> str | None:
    """The dashboard's URL, or None when the scheduler serves none (bokeh not installed)."""
    try:
        services = client.scheduler_info().get("services", {})
    except (OSError, TimeoutError):
        return None
    if "dashboard" not in services:
        return None
    return client.dashboard_link


def total_threads(client: Client) -> int:
    """Task threads over all workers currently connected."""
    return sum(w.get("nthreads", 1) for w in client.scheduler_info()["workers"].values()) or 1


def workers_have_gpu(client: Client) -> bool:
    """True when some connected worker declares a ``GPU`` resource (``--resources GPU=1``)."""
    return any(
        w.get("resources", {}).get("GPU", 0) > 0
        for w in client.scheduler_info()["workers"].values()
    )
