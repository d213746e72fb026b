"""Which windows of a workload tune and train, and which are held out for evaluation.

The workload's decision steps are cut in two: the first part for tuning baselines and training
policies, the last part for evaluation, so no held-out window is ever seen before. Long traces
(ServeGen's 14 days) hold out their last quarter; a trace shorter than two episodes (the 1-hour
Azure and Mooncake traces) is cut in half and episodes shrink to fit each half.
"""

from __future__ import annotations

from dataclasses import dataclass

from rlscale.envs.scenario import Scenario, ScenarioError
from rlscale.envs.simulator import scenario_workload

HELD_OUT_SHARE = 0.25


@dataclass(frozen=True)
class Split:
    """Start steps (decision steps into the workload) of training and held-out episodes."""

    episode_steps: int
    train_starts: tuple[int, ...]
    test_starts: tuple[int, ...]
    boundary_step: int
    total_steps: int


def split_workload(scenario: Scenario, *, max_windows: int = 8) -> tuple[Split, float]:
    """The train / held-out split of ``scenario``'s workload and the episode length in hours.

    Episodes start at whole days where the workload spans days (so daily patterns line up),
    otherwise at the start of each part. Returns the split and the episode hours to use.
    """
    wl = scenario_workload(scenario)
    K = scenario.substeps_per_step
    total = wl.n_bins // K
    episode = scenario.episode_steps
    if total >= 2 * episode:
        boundary = int(total * (1.0 - HELD_OUT_SHARE))
        if boundary + episode > total:
            boundary = total - episode
    else:
        boundary = total // 2
        episode = min(episode, boundary, total - boundary)
    if episode < 1:
        raise ScenarioError(f"workload '{wl.name}' is too short to split ({total} steps)")
    day = round(86400.0 / scenario.control_interval_s)
    stride = day if episode >= day // 2 and total >= 2 * day else episode
    train = tuple(range(0, boundary - episode + 1, stride))[:max_windows] or (0,)
    test = tuple(range(boundary, total - episode + 1, stride))[:max_windows] or (boundary,)
    split = Split(episode, train, test, boundary, total)
    return split, episode * scenario.control_interval_s / 3600.0


def split_scenario(scenario: Scenario) -> tuple[Scenario, Split]:
    """The scenario with its episode length fitted to the split, and the split."""
    split, hours = split_workload(scenario)
    return scenario.model_copy(update={"episode_hours": hours}), split
