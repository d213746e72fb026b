"""The grid's tasks are independent: run in any order, they give the same numbers."""

from __future__ import annotations

import dataclasses
import random

from rlscale.common.backends import run_tasks
from rlscale.envs.splits import split_scenario
from rlscale.experiments.grid import EpisodeRunner, PolicySpec, episode_job, grid_tasks
from rlscale.experiments.results import summarize


def _evaluation(scenario, specs, tasks, results, seeds, starts):
    sc, split = split_scenario(scenario)
    ev = summarize(
        sc,
        split,
        specs,
        list(zip(tasks, results, strict=True)),
        seeds=seeds,
        windows="all",
        test_starts=starts,
        trace_replaced=False,
        n_top_tenants=3,
        pool_capacity_rps={},
    )
    ev.results = dataclasses.replace(ev.results, created_utc=None)  # when it ran
    return ev


def test_same_numbers_from_the_task_list_run_in_any_order(scenario):
    """Shuffled tasks on one worker (whose simulator and policies carry over from task to
    task) give bit-identical results and episodes to the grid's own order."""
    sc, split = split_scenario(scenario)
    specs = [PolicySpec("static"), PolicySpec("hpa"), PolicySpec("predictive")]
    seeds, starts = [0, 1], list(split.test_starts[:2])
    tasks = grid_tasks(specs, seeds, starts)
    job = episode_job(sc)
    in_order = run_tasks(job, tasks, state=EpisodeRunner(sc), progress=False)
    shuffled = list(range(len(tasks)))
    random.Random(7).shuffle(shuffled)
    assert shuffled != sorted(shuffled)
    out = run_tasks(job, [tasks[i] for i in shuffled], state=EpisodeRunner(sc), progress=False)
    # summarize is handed the shuffled pairs as they came: it sorts them into the grid's order
    a = _evaluation(scenario, specs, tasks, in_order, seeds, starts)
    b = _evaluation(scenario, specs, [tasks[i] for i in shuffled], out, seeds, starts)
    assert a.results == b.results
    assert a.episodes == b.episodes
    # the policies differ, so equal numbers are not an accident of a constant grid
    costs = {p: m.mean("cost_usd") for p, m in a.results.policies.items()}
    assert len(set(costs.values())) == 3
    hpa = [e["cost_usd"] for e in a.episodes if e["policy"] == "hpa"]
    assert len(set(hpa)) > 1  # seeds and windows matter
