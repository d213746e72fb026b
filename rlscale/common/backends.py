"""Where a list of independent tasks runs: in this process, in local processes, or on Ray.

An evaluation grid (every policy x held-out window x seed, and every oracle solve) and a
baseline search (every candidate x training window x seed) are lists of independent tasks.
:func:`run_tasks` runs such a list on a :class:`Backend` and returns the results in the
list's order, whatever order they finished in, so a result never depends on where it ran:

- ``local`` with one worker: a plain loop in this process (the default on one core, and what
  tests and debuggers want).
- ``local`` with ``N`` workers: ``N`` processes of this machine (spawned, so no thread or lock
  of the parent is copied into a child).
- ``ray``: one Ray task per task. ``address`` (or ``$RAY_ADDRESS``) joins an existing cluster;
  without one a local cluster of ``workers`` CPUs starts by itself. Workers run with one
  OpenMP and one numba thread each (a task is one core's work) and the caller's
  ``NUMBA_CACHE_DIR``, so compiled kernels are loaded, not compiled again, on every worker.

A job is a :class:`Job`: ``setup(context)`` builds a worker's state once per worker process
(for an evaluation: the simulator and the policies) and ``run(state, task)`` runs one task.
Both must be importable module-level functions, and context, tasks and results picklable.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

BackendName = Literal["local", "ray"]
BACKENDS: tuple[BackendName, ...] = ("local", "ray")
RAY_ADDRESS_ENV = "RAY_ADDRESS"
RAY_INSTALL_HINT = "pip install 'rlscale[ray]'"
WORKER_ENV = {"OMP_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1"}
"""Thread settings of every worker process: a task is one core's work."""
_PASSED_ENV = ("NUMBA_CACHE_DIR", "RLSCALE_DATA")
"""Variables of this process that workers need too (compiled kernels, the datasets)."""


class BackendError(RuntimeError):
    """A backend that cannot run: Ray missing, or a cluster that cannot be reached."""


@dataclass(frozen=True)
class Backend:
    """Where tasks run.

    :param name: ``local`` or ``ray``.
    :param workers: processes (local) or the CPUs of a Ray cluster started here; None: every
        core of this machine. ``local`` with 1 runs in this process.
    :param address: a Ray cluster to join (``ray://host:10001`` or ``host:6379``); None:
        ``$RAY_ADDRESS``, else a local cluster started here.
    """

    name: BackendName = "local"
    workers: int | None = None
    address: str | None = None

    def __post_init__(self) -> None:
        if self.name not in BACKENDS:
            raise ValueError(f"backend must be one of {list(BACKENDS)}, got {self.name!r}")
        if self.workers is not None and self.workers < 1:
            raise ValueError(f"workers must be at least 1, got {self.workers}")
        if self.address is not None and self.name != "ray":
            raise ValueError(
                f"--address joins a Ray cluster; it needs --backend ray, not {self.name}"
            )

    @property
    def n_workers(self) -> int:
        """Workers asked for, or this machine's cores."""
        return self.workers or os.cpu_count() or 1

    def describe(self) -> str:
        """A short text for logs: ``local x4``, ``ray @ host:6379``."""
        if self.name == "local":
            return "in-process" if self.n_workers == 1 else f"local x{self.n_workers}"
        where = (
            self.address or os.environ.get(RAY_ADDRESS_ENV) or f"local cluster x{self.n_workers}"
        )
        return f"ray @ {where}"


@dataclass(frozen=True)
class Job:
    """What every task of a list shares: how a worker sets up, and how it runs one task."""

    setup: Callable[[Any], Any]
    """``context -> state``, once per worker process."""
    run: Callable[[Any, Any], Any]
    """``(state, task) -> result``."""
    context: Any
    token: str = field(default_factory=lambda: uuid.uuid4().hex)
    """Names this job's state in a worker that serves several jobs in turn."""


_STATES: dict[str, Any] = {}
"""Worker state per job token, in the worker processes (the last few jobs only)."""
_MAX_STATES = 4


def _run_one(job: Job, task: Any) -> Any:
    """One task in a worker, on the worker's state for ``job`` (built on its first task)."""
    if job.token not in _STATES:
        while len(_STATES) >= _MAX_STATES:
            _STATES.pop(next(iter(_STATES)))
        _STATES[job.token] = job.setup(job.context)
    return job.run(_STATES[job.token], task)


def run_tasks(
    job: Job,
    tasks: Sequence[Any],
    backend: Backend | None = None,
    *,
    state: Any = None,
    progress: bool = True,
    desc: str = "",
    unit: str = "task",
    label: Callable[[Any], str] | None = None,
    heavy: Callable[[Any], bool] | None = None,
) -> list[Any]:
    """Run every task of ``job`` on ``backend``; the results in the order of ``tasks``.

    :param backend: where to run; None: in this process.
    :param state: for the in-process backend, a worker state already built (saves a setup).
    :param progress: a tqdm bar over the tasks, advanced as they finish.
    :param label: a task's description for the bar (in-process only, where order is known).
    :param heavy: marks long tasks (an oracle solve): workers start them first, so no worker
        is left alone with them at the end. Only the order of work changes, not the results.
    :raises BackendError: Ray missing or unreachable.
    """
    from tqdm import tqdm

    backend = backend or Backend(workers=1)
    bar = tqdm(total=len(tasks), desc=desc, unit=unit, disable=not progress)
    order = list(range(len(tasks)))
    if heavy is not None:
        order.sort(key=lambda i: not heavy(tasks[i]))  # stable: heavy ones first, in order
    try:
        if backend.name == "ray":
            return _run_ray(job, tasks, order, backend, bar)
        if backend.n_workers == 1 or len(tasks) <= 1:
            worker_state = state if state is not None else job.setup(job.context)
            results = []
            for task in tasks:
                if label is not None:
                    bar.set_postfix_str(label(task))
                results.append(job.run(worker_state, task))
                bar.update(1)
            return results
        return _run_processes(job, tasks, order, backend.n_workers, bar)
    finally:
        bar.close()


def _init_worker(env: dict[str, str]) -> None:
    os.environ.update(env)


def _worker_env() -> dict[str, str]:
    env = dict(WORKER_ENV)
    env.update({k: os.environ[k] for k in _PASSED_ENV if k in os.environ})
    return env


def _run_processes(
    job: Job, tasks: Sequence[Any], order: list[int], workers: int, bar: Any
) -> list[Any]:
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor, as_completed

    results: list[Any] = [None] * len(tasks)
    # a spawned child starts clean: set its thread counts before numba or numpy load
    env = _worker_env()
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        with ProcessPoolExecutor(
            max_workers=min(workers, len(tasks)),
            mp_context=mp.get_context("spawn"),
            initializer=_init_worker,
            initargs=(env,),
        ) as pool:
            futures = {pool.submit(_run_one, job, tasks[i]): i for i in order}
            try:
                for future in as_completed(futures):
                    results[futures[future]] = future.result()
                    bar.update(1)
            except BaseException:
                # a failed task (or Ctrl-C) ends the grid now: the queued tasks are dropped
                # rather than run to the end before the error shows
                pool.shutdown(wait=False, cancel_futures=True)
                raise
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return results


_JOINED: dict[str, str] = {}
"""The address :func:`ray_init` last joined, and the GCS address of the cluster it found there
(``{"asked": ..., "gcs": ...}``): asking for the same address again reuses the connection."""


def ray_init(backend: Backend, *, join: bool = True) -> Any:
    """The ``ray`` module, connected: to ``backend.address`` or ``$RAY_ADDRESS``, else to a
    local cluster of ``backend.n_workers`` CPUs started here.

    A process holds one Ray connection. When it is already connected (a cluster joined or
    started earlier, by this function or by the caller's own ``ray.init``), that connection
    is used if no address is asked for, or the address asked for is the cluster's (its GCS
    ``host:port``, or the very address this function joined it by); an address of another
    cluster is an error, never a silent run on the wrong cluster.

    :param join: False: always a local cluster started here, even when ``$RAY_ADDRESS`` is
        set (``rlscale sweep --backend local``: Tune runs on Ray either way).
    :raises BackendError: Ray not installed, the cluster cannot be reached, or this process
        is connected to another cluster than the one asked for.
    """
    try:
        import ray
    except ImportError:
        raise BackendError(f"--backend {backend.name} needs Ray: {RAY_INSTALL_HINT}") from None
    address = (backend.address or os.environ.get(RAY_ADDRESS_ENV) or None) if join else None
    if ray.is_initialized():
        _check_same_cluster(ray, address, "--address" if backend.address else RAY_ADDRESS_ENV)
        return ray
    runtime_env = {"env_vars": _worker_env()}
    try:
        if address:
            ray.init(address=address, runtime_env=runtime_env, log_to_driver=False)
        else:
            ray.init(
                # "local": start one here even when $RAY_ADDRESS names another
                address=None if join else "local",
                num_cpus=backend.n_workers,
                include_dashboard=False,
                runtime_env=runtime_env,
                log_to_driver=False,
            )
    except (ConnectionError, RuntimeError, ValueError) as err:
        raise BackendError(f"cannot start or join Ray ({address or 'local'}): {err}") from None
    _JOINED.clear()
    if address:
        _JOINED.update(asked=address, gcs=_gcs_address(ray) or "")
    return ray


def _gcs_address(ray: Any) -> str | None:
    """``host:port`` of the GCS of the cluster this process is connected to, if Ray says."""
    try:
        return str(ray.get_runtime_context().gcs_address)
    except Exception:  # a Ray client connection, or a Ray that does not tell
        return None


def _host_port(address: str) -> tuple[str, str] | None:
    """``address`` (``host:port``, ``ray://host:port``) as (IP, port), or None."""
    import socket

    rest = address.split("://", 1)[-1]
    host, sep, port = rest.rpartition(":")
    if not sep or not host:
        return None
    try:
        return socket.gethostbyname(host), port
    except OSError:
        return host, port


def _check_same_cluster(ray: Any, address: str | None, source: str) -> None:
    """Raise unless the connection this process holds is to the cluster ``address`` names."""
    if address is None or address == "auto":
        return  # any cluster will do: the one this process is connected to
    current = _gcs_address(ray)
    if _JOINED.get("asked") == address and _JOINED.get("gcs", "") == (current or ""):
        return  # the connection this function made to that very address
    if current is not None and _host_port(current) == _host_port(address):
        return
    where = source if source == "--address" else f"${source}"
    raise BackendError(
        f"this process is already connected to the Ray cluster at {current or 'an unknown address'}"
        f", and {where} asks for {address}: Ray joins one cluster per process. Run the command "
        "in a new process, or leave out the address to use the cluster already joined"
    )


def _run_ray(
    job: Job, tasks: Sequence[Any], order: list[int], backend: Backend, bar: Any
) -> list[Any]:
    ray = ray_init(backend)
    remote = ray.remote(num_cpus=1, max_retries=0)(_run_one)
    job_ref = ray.put(job)  # the context travels once, not with every task
    pending = {remote.remote(job_ref, tasks[i]): i for i in order}
    results: list[Any] = [None] * len(tasks)
    try:
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            for ref in done:
                results[pending.pop(ref)] = ray.get(ref)
                bar.update(1)
    except BaseException:
        for ref in pending:
            ray.cancel(ref)
        raise
    return results


def add_backend_arguments(parser: Any) -> None:
    """``--backend``, ``--workers`` and ``--address`` on an argparse parser."""
    parser.add_argument(
        "--backend",
        choices=BACKENDS,
        default="local",
        help="local: this machine's cores, in processes (default); ray: one Ray task per "
        "task, on a local Ray cluster started here or the one --address / $RAY_ADDRESS names",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        help="processes (local) or CPUs of a local Ray cluster (default: every core, "
        f"{os.cpu_count()} here); --workers 1 runs in this process",
    )
    parser.add_argument(
        "--address",
        default=None,
        help="a Ray cluster to join, e.g. ray://head:10001 (default $RAY_ADDRESS)",
    )


def backend_from_args(args: Any) -> Backend:
    """The :class:`Backend` of parsed ``--backend/--workers/--address``.

    :raises ValueError: a bad combination (the message names it).
    """
    return Backend(args.backend, args.workers, args.address)
