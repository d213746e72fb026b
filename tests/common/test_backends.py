"""Backends: the same grid in this process, in local processes and on Ray gives the same
numbers; bad settings and a missing Ray say what to do."""

from __future__ import annotations

import sys

import pytest

from rlscale.common.backends import WORKER_ENV, Backend, BackendError, ray_init
from rlscale.envs.scenario import scenario_from_dict
from rlscale.experiments.evaluate import evaluate
from rlscale.experiments.grid import PolicySpec

POLICIES = [PolicySpec("static"), PolicySpec("hpa"), PolicySpec("predictive")]


@pytest.fixture(scope="module")
def quick(quick_raw):
    return scenario_from_dict(quick_raw())


def _grid(quick, backend):
    """Three baselines and the oracle (one solve per task), two seeds, two windows."""
    ev = evaluate(quick, POLICIES, seeds=2, max_windows=2, progress=False, backend=backend)
    # measurements of this run, not results: when it ran, and the CPU time the oracle took
    ev.results.pop("created_utc")
    ev.timing = ev.results.pop("oracle_cpu_s")
    return ev


@pytest.fixture(scope="module")
def in_process(quick):
    return _grid(quick, Backend("local", workers=1))


@pytest.fixture(scope="module")
def ray_cluster():
    """One local Ray cluster of 2 CPUs for this module's tests."""
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, runtime_env={"env_vars": dict(WORKER_ENV)})
    yield ray
    ray.shutdown()


def test_in_process_grid_has_the_oracle_and_distinct_policies(in_process):
    res = in_process.results
    assert res["oracle"] == "oracle" and list(res["policies"])[-1] == "oracle"
    costs = [m["cost_usd"]["mean"] for m in res["policies"].values()]
    assert len(set(costs)) == len(costs)  # an equal result below is not a constant grid
    assert len(in_process.episodes) == 4 * 2 * 2
    assert in_process.timing["mean"] > 0.0  # the oracle's CPU time per window is reported


def test_local_processes_give_identical_results(quick, in_process):
    ev = _grid(quick, Backend("local", workers=2))
    assert ev.results == in_process.results
    assert ev.episodes == in_process.episodes


def test_ray_gives_identical_results(quick, in_process, ray_cluster):
    ev = _grid(quick, Backend("ray", workers=2))
    assert ev.results == in_process.results
    assert ev.episodes == in_process.episodes


def test_tuning_is_identical_on_every_backend(quick, ray_cluster):
    from rlscale.agents.tuning import tune_baseline

    space = {"target_utilization": [0.5, 0.8], "scale_down_stabilization_s": [0.0, 300.0]}
    kw = {"seeds": (0, 1), "max_windows": 2, "space": space, "progress": False}
    one = tune_baseline("hpa", quick, backend=Backend("local", workers=1), **kw)
    assert len(one["trials"]) == 5 and len({t["cost_usd"] for t in one["trials"]}) > 1
    assert tune_baseline("hpa", quick, backend=Backend("local", workers=2), **kw) == one
    assert tune_baseline("hpa", quick, backend=Backend("ray", workers=2), **kw) == one


def test_bad_backend_settings_name_the_problem():
    with pytest.raises(ValueError, match="backend must be one of"):
        Backend("dask")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="workers must be at least 1, got 0"):
        Backend("local", workers=0)
    with pytest.raises(ValueError, match="needs --backend ray"):
        Backend("local", address="ray://head:10001")


def test_missing_ray_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray now raises ImportError
    with pytest.raises(BackendError, match=r"pip install 'rlscale\[ray\]'"):
        ray_init(Backend("ray"))


def test_cli_evaluate_backend_errors_exit_2(capsys, monkeypatch):
    from rlscale.cli import main

    argv = ["evaluate", "--scenario", "azure-conv", "--no-mlflow", "--address", "x:1"]
    assert main(argv) == 2
    assert "needs --backend ray" in capsys.readouterr().err
