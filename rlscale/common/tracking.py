"""MLflow tracking of evaluations: one run per ``rlscale evaluate``, metrics and report attached.

Where runs go: ``$MLFLOW_TRACKING_URI`` when set (a team's server), else
``sqlite:///mlflow.db`` in the working directory (MLflow 3 no longer accepts a plain ``./mlruns``
folder as a tracking store). For a SQLite store, a new experiment keeps its artifacts in
``mlartifacts/<experiment>/`` beside the database rather than in MLflow's ``./mlruns`` default,
so database and artifacts move together.

A run is named ``{scenario}__evaluate__{seeds}__{unix time}`` in the experiment
``rlscale-evaluate``. Its metrics are the means over seeds, namespaced by policy
(``hpa/cost_usd``, ``oracle/gpu_hours/h100``); the 95% intervals are in ``results.json``, which
is logged as an artifact beside ``report.html``.

:func:`rlscale.experiments.results.log_evaluation` logs an evaluation's run with
:func:`log_run`; the promotion gate and sweeps log theirs through the same pieces.

MLflow is an optional dependency (``pip install 'rlscale[eval]'``); it is imported only here,
and only when a run is logged.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

TRACKING_URI_ENV = "MLFLOW_TRACKING_URI"
DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"
EXPERIMENT_NAME = "rlscale-evaluate"
INSTALL_HINT = "pip install 'rlscale[eval]'"

_PARAM_MAX_CHARS = 6000
_BATCH_METRICS = 1000
_BATCH_PARAMS = 100
_BAD_NAME_CHARS = re.compile(r"[^A-Za-z0-9_.\- /]")


class TrackingError(RuntimeError):
    """MLflow is missing or the run could not be logged; the message says what to do."""


@dataclass(frozen=True)
class TrackedRun:
    """Where a logged evaluation ended up."""

    run_id: str
    experiment_id: str
    tracking_uri: str
    run_name: str


def require_mlflow() -> ModuleType:
    """The ``mlflow`` module, or a :class:`TrackingError` saying how to install it."""
    try:
        import mlflow
    except ImportError as err:
        raise TrackingError(
            f"MLflow is not installed ({err}); install it with: {INSTALL_HINT} "
            "(or pass --no-mlflow to skip the run)"
        ) from None
    return mlflow


def tracking_uri(uri: str | None = None) -> str:
    """``uri``, else ``$MLFLOW_TRACKING_URI``, else ``sqlite:///mlflow.db``."""
    return uri or os.environ.get(TRACKING_URI_ENV) or DEFAULT_TRACKING_URI


def _sqlite_artifact_root(uri: str, experiment: str) -> str | None:
    """``mlartifacts/<experiment>/`` beside a SQLite database as a file URI; None otherwise."""
    if not uri.startswith("sqlite:///"):
        return None
    db = Path(uri[len("sqlite:///") :])
    if str(db) in ("", ":memory:"):
        return None
    folder = _BAD_NAME_CHARS.sub("_", experiment).replace("/", "_").replace(" ", "_")
    return (db.resolve().parent / "mlartifacts" / folder).as_uri()


def ensure_experiment(client: Any, uri: str, experiment: str) -> str:
    """The id of ``experiment``, created (artifacts beside a SQLite store) when missing."""
    exp = client.get_experiment_by_name(experiment)
    if exp is not None:
        return exp.experiment_id
    return client.create_experiment(
        experiment, artifact_location=_sqlite_artifact_root(uri, experiment)
    )


def metric_key(policy: str, metric: str) -> str:
    """``{policy}/{metric}`` with characters MLflow rejects replaced by ``_``.

    A ``/`` inside the policy label would shift the namespace, so it is replaced too.
    """
    policy_part = _BAD_NAME_CHARS.sub("_", policy).replace("/", "_")
    metric_part = _BAD_NAME_CHARS.sub("_", metric)
    key = f"{policy_part}/{metric_part}"
    # names are treated as paths by some stores; never let them normalize to something else
    key = re.sub(r"/+", "/", key).replace("/./", "/_./").replace("..", "__")
    return key.strip("/ ") or "_"


def _chunks(items: Sequence[Any], size: int) -> Iterable[Sequence[Any]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def log_params(client: Any, run_id: str, params: dict[str, Any]) -> None:
    """Log ``params`` to run ``run_id`` in batches, each value cut to MLflow's length."""
    from mlflow.entities import Param

    rows = [Param(k, str(v)[:_PARAM_MAX_CHARS]) for k, v in params.items()]
    for chunk in _chunks(rows, _BATCH_PARAMS):
        client.log_batch(run_id, params=list(chunk))


def log_metrics(client: Any, run_id: str, metrics: dict[str, float], step: int = 0) -> None:
    """Log ``metrics`` to run ``run_id`` at ``step`` in batches (one timestamp for all)."""
    from mlflow.entities import Metric

    now_ms = int(time.time() * 1000)
    rows = [Metric(k, float(v), now_ms, int(step)) for k, v in sorted(metrics.items())]
    for chunk in _chunks(rows, _BATCH_METRICS):
        client.log_batch(run_id, metrics=list(chunk))


def log_run(
    *,
    experiment: str,
    run_name: str,
    command: str,
    params: dict[str, str],
    metrics: dict[str, float],
    artifacts: Sequence[Path] = (),
    uri: str | None = None,
) -> TrackedRun:
    """Log one finished run: params, metrics and artifact files, in experiment ``experiment``.

    :raises TrackingError: MLflow missing, or the store refused the run (which is then marked
        FAILED, so a half-logged run never looks finished).
    """
    require_mlflow()
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    uri = tracking_uri(uri)
    client = MlflowClient(tracking_uri=uri)
    run_id = None
    try:
        exp_id = ensure_experiment(client, uri, experiment)
        run = client.create_run(exp_id, run_name=run_name, tags={"rlscale.command": command})
        run_id = run.info.run_id
        log_params(client, run_id, params)
        log_metrics(client, run_id, metrics)
        for path in artifacts:
            client.log_artifact(run_id, str(path))
        client.set_terminated(run_id)
    except MlflowException as err:
        if run_id is not None:
            client.set_terminated(run_id, status="FAILED")
        raise TrackingError(f"could not log the {command} run to MLflow at {uri}: {err}") from None
    return TrackedRun(run_id, exp_id, uri, run_name)
