"""Tuning a baseline: its cheapest parameters that meet the SLO on a scenario's training windows.

``rlscale tune-baseline`` calls :func:`tune_baseline`, which searches a baseline's
``PARAM_SPACE`` (each module's grid of candidate values) so that every rule-based scaler is
compared at its best, not at defaults meant for other workloads:

- Candidates: the documented defaults first, then the whole grid, or, when the grid is larger
  than ``max_trials``, a deterministic random sample of it (seeded, so reruns agree).
- Each candidate runs every training window of
  :func:`rlscale.envs.splits.split_scenario` for every seed, via
  :func:`rlscale.agents.observe.run_episode`. Held-out windows are never touched. Every
  (candidate, window, seed) episode is an independent :class:`TuneTask`, so the search runs
  on any backend of :mod:`rlscale.common.backends` (this process, local processes, Ray) with
  the same result.
- The pick: the lowest mean cost among candidates whose mean episode SLO attainment reaches
  ``scenario.slo.target_attainment``; if none does, the highest attainment, flagged
  ``meets_slo: false``.

The result is a plain JSON-able dict (policy, scenario, the chosen full ``params``, its cost and
attainment, every trial, the training windows) that :func:`save_tuning` writes and
``make_policy(name, scenario, path)`` reads back. Logging it to MLflow is the caller's job.
A baseline's space is the ``param_space`` it registered with (:mod:`rlscale.agents.registry`);
``static``'s depends on the cluster (one pool held at 1..quota replicas).
"""

from __future__ import annotations

import itertools
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rlscale.agents.base import Policy
from rlscale.agents.observe import run_episode
from rlscale.agents.registry import make_policy
from rlscale.agents.registry import param_space as registered_space
from rlscale.common.backends import Backend, Job, run_tasks
from rlscale.envs.scenario import Scenario, ScenarioError, load_scenario
from rlscale.envs.simulator import ClusterSimulator
from rlscale.envs.splits import split_scenario

logger = logging.getLogger(__name__)

DEFAULT_MAX_TRIALS = 64
"""Candidates evaluated when ``max_trials`` is not given (defaults included)."""
SAMPLE_SEED = 0
"""Seed of the sample drawn from grids larger than ``max_trials``."""


TUNING_ROOT = Path("out/tuning")
"""Where ``rlscale tune-baseline`` writes ``<scenario>/<policy>.json`` by default."""


def tuning_dir(scenario_name: str, root: str | Path | None = None) -> Path:
    """The folder of a scenario's tuned baseline parameters (``out/tuning/<scenario>``)."""
    return Path(root or TUNING_ROOT) / scenario_name


def param_space(name: str, sim: ClusterSimulator | None = None) -> dict[str, list[Any]]:
    """The tuning grid baseline ``name`` registered (a cluster-dependent one needs ``sim``).

    :raises ScenarioError: unknown policy, or one registered without a space.
    """
    return registered_space(name, sim)


def candidates(
    space: dict[str, list[Any]], max_trials: int, *, include_defaults: bool = True
) -> tuple[list[dict[str, Any]], str]:
    """Parameter overrides to try, and how they were chosen (``grid`` or ``sample``).

    The defaults (``{}``) come first when ``include_defaults``; the rest is the grid in order, or
    a sorted random sample of its points (seed :data:`SAMPLE_SEED`) when it is too large.
    """
    if max_trials < 1:
        raise ScenarioError(f"max_trials must be >= 1, got {max_trials}")
    keys = list(space)
    for key in keys:
        if not isinstance(space[key], list | tuple) or not space[key]:
            raise ScenarioError(f"PARAM_SPACE['{key}'] must be a non-empty list of values")
    sizes = [len(space[k]) for k in keys]
    total = math.prod(sizes)
    head: list[dict[str, Any]] = [{}] if include_defaults else []
    room = max_trials - len(head)
    if room <= 0:
        return head[:max_trials], "defaults"
    if total <= room:
        grid = itertools.product(*(space[k] for k in keys))
        points = [dict(zip(keys, combo, strict=True)) for combo in grid]
        return head + points, "grid"
    rng = np.random.default_rng(SAMPLE_SEED)
    picks = sorted(int(i) for i in rng.choice(total, size=room, replace=False))
    points = []
    for flat in picks:
        point = {}
        for key, size in zip(reversed(keys), reversed(sizes), strict=True):
            flat, idx = divmod(flat, size)
            point[key] = space[key][idx]
        points.append({k: point[k] for k in keys})
    return head + points, "sample"


def select_trial(trials: list[dict[str, Any]], target_attainment: float) -> dict[str, Any]:
    """The cheapest trial meeting ``target_attainment``, else the one with the highest attainment.

    Ties go to the earlier trial (the defaults come first), so the pick is deterministic.
    """
    if not trials:
        raise ScenarioError("no trials to choose from")
    meeting = [t for t in trials if t["slo_attainment"] >= target_attainment]
    if meeting:
        return min(meeting, key=lambda t: (t["cost_usd"], -t["slo_attainment"]))
    return max(trials, key=lambda t: (t["slo_attainment"], -t["cost_usd"]))


@dataclass(frozen=True)
class TuneTask:
    """One episode of a search: a candidate's overrides on one training window and seed."""

    candidate: int
    """Index of the candidate in the search (results are grouped by it)."""
    overrides: dict[str, Any] = field(hash=False)
    start_step: int = 0
    seed: int = 0


class TuneRunner:
    """A worker's state for a search: one simulator of the split scenario, candidates built
    once each."""

    def __init__(self, context: tuple[str, Scenario]) -> None:
        self.name, self.scenario = context
        self.sim = ClusterSimulator(self.scenario, 1)
        self._policies: dict[int, Policy] = {}

    def seed_policy(self, candidate: int, policy: Policy) -> None:
        """Use ``policy``, already built, for ``candidate`` (saves a build in this process)."""
        self._policies[candidate] = policy

    def run(self, task: TuneTask) -> dict[str, Any]:
        """One episode: its window, seed, cost and attainment."""
        if task.candidate not in self._policies:
            self._policies[task.candidate] = make_policy(self.name, self.scenario, task.overrides)
        result = run_episode(
            self._policies[task.candidate], self.sim, seed=task.seed, start_step=task.start_step
        )
        return {
            "start_step": int(task.start_step),
            "seed": int(task.seed),
            "cost_usd": float(result.summary["cost_usd"]),
            "slo_attainment": float(result.summary["slo_attainment"]),
        }


def run_tune_task(runner: TuneRunner, task: TuneTask) -> dict[str, Any]:
    """:meth:`TuneRunner.run` as a module-level function, so workers can unpickle it."""
    return runner.run(task)


def _mean_of(episodes: list[dict[str, Any]]) -> dict[str, Any]:
    """A candidate's mean cost and attainment over its episodes (windows outer, seeds inner)."""
    return {
        "cost_usd": float(np.mean([e["cost_usd"] for e in episodes])),
        "slo_attainment": float(np.mean([e["slo_attainment"] for e in episodes])),
        "episodes": episodes,
    }


def tune_baseline(
    name: str,
    scenario: Scenario | str | Path,
    *,
    seeds: tuple[int, ...] | list[int] = (0,),
    max_trials: int | None = None,
    progress: bool = True,
    space: dict[str, list[Any]] | None = None,
    max_windows: int | None = None,
    backend: Backend | None = None,
) -> dict[str, Any]:
    """Search ``name``'s parameters on ``scenario``'s training windows (see the module docstring).

    :param name: a registered baseline (``hpa``, ``keda``, ..., ``static``).
    :param scenario: a Scenario, a shipped scenario name, or a YAML path.
    :param seeds: cluster random streams each candidate runs on every training window.
    :param max_trials: most candidates to evaluate (defaults included); None =
        :data:`DEFAULT_MAX_TRIALS`.
    :param progress: show a tqdm progress bar.
    :param space: a parameter grid to search instead of the one ``name`` registered.
    :param max_windows: use at most this many training windows, evenly spaced over the
        training part (None = all of the split's, at most 8): a cheaper search on long traces.
    :param backend: where the episodes run (default: in this process); results are the same
        on every backend.
    :return: ``{"policy", "scenario", "params", "cost_usd", "slo_attainment", "meets_slo",
        "target_attainment", "trials", "train_starts", "seeds", "episode_steps", "search",
        "space"}``; ``params`` is the chosen policy's full configuration.
    :raises ScenarioError: unknown policy, a bad space or an invalid candidate parameter.
    """
    base = load_scenario(scenario)
    seeds = tuple(int(s) for s in seeds)
    if not seeds:
        raise ScenarioError("tune_baseline needs at least one seed")
    split_sc, split = split_scenario(base)
    runner = TuneRunner((name, split_sc))
    if space is None:
        space = param_space(name, runner.sim)
    trials_cap = DEFAULT_MAX_TRIALS if max_trials is None else int(max_trials)
    # static has no documented default worth a trial: its "default" is the scenario's start
    cands, search = candidates(space, trials_cap, include_defaults=name != "static")
    target = float(base.slo.target_attainment)
    starts = tuple(split.train_starts)
    if max_windows is not None:
        if max_windows < 1:
            raise ScenarioError(f"max_windows must be >= 1, got {max_windows}")
        if max_windows < len(starts):
            picks = np.linspace(0, len(starts) - 1, max_windows).round().astype(int)
            starts = tuple(starts[i] for i in sorted(set(picks.tolist())))
    trials: list[dict[str, Any]] = []
    seen: set[str] = set()
    for overrides in cands:
        # every candidate is built here first: a bad one fails before any episode runs
        policy = make_policy(name, split_sc, overrides)
        params = policy.config()
        key = json.dumps(params, sort_keys=True)
        if key in seen:
            continue  # a grid point equal to the defaults: evaluated once is enough
        seen.add(key)
        runner.seed_policy(len(trials), policy)
        trials.append({"overrides": overrides, "params": params})
    tasks = [
        TuneTask(k, trial["overrides"], start, seed)
        for k, trial in enumerate(trials)
        for start in starts
        for seed in seeds
    ]
    episodes = run_tasks(
        Job(setup=TuneRunner, run=run_tune_task, context=(name, split_sc)),
        tasks,
        backend,
        state=runner,
        progress=progress,
        desc=f"tune {name} on {base.name}",
        unit="episode",
    )
    per_trial = len(starts) * len(seeds)
    for k, trial in enumerate(trials):
        trial.update(_mean_of(episodes[k * per_trial : (k + 1) * per_trial]))
        trial["meets_slo"] = trial["slo_attainment"] >= target
    best = select_trial(trials, target)
    result = {
        "policy": name,
        "scenario": base.name,
        "params": best["params"],
        "cost_usd": best["cost_usd"],
        "slo_attainment": best["slo_attainment"],
        "meets_slo": bool(best["meets_slo"]),
        "target_attainment": target,
        "trials": trials,
        "train_starts": [int(s) for s in starts],
        "seeds": list(seeds),
        "episode_steps": int(split.episode_steps),
        "search": search,
        "space": space,
    }
    logger.info(
        "tuned %s on %s: cost %.2f USD, attainment %.4f (target %.2f, %s) with %s",
        name,
        base.name,
        result["cost_usd"],
        result["slo_attainment"],
        target,
        "met" if result["meets_slo"] else "NOT met",
        result["params"],
    )
    return result


def save_tuning(result: dict[str, Any], path: str | Path) -> Path:
    """Write a :func:`tune_baseline` result as JSON (parents created); returns the path."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, allow_nan=False) + "\n")
    return out


def load_tuning(path: str | Path) -> dict[str, Any]:
    """Read a file written by :func:`save_tuning`."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ScenarioError(f"cannot read tuning result {path}: {err}") from None
