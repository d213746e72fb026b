"""Which windows of a workload train, validate and tune, and which are held out for evaluation.

The workload's decision steps are cut in time, and every layer reads the cut from here (the envs
draw training episodes, baselines tune, training validates, evaluation tests):

```
0 ............ train_end_step ......... boundary_step ............ total_steps
|  train (episodes drawn here)  | validation |        held out (evaluation only)        |
|<------------- training part: tuning windows (train_starts) ------>|
```

* Held out: long traces (ServeGen's 14 days) hold out their last quarter; a trace shorter than
  two episodes (the 1-hour Azure and Mooncake traces, the two-week synthetic load whose episode
  is the whole trace) is cut in half and episodes shrink to fit each half. Nothing before the
  boundary is ever evaluated on, nothing after it is ever trained or tuned on.
* Validation: the last :data:`VALIDATION_SHARE` of the training part (at least one episode,
  aligned to the window stride), where training checks its policy on windows it does not fit.
  When the training part holds fewer than two episodes there is nothing to carve: validation
  windows are then the training part's own (``validation_overlaps_train``), still never held
  out.

Kept in ``envs/`` because the envs draw from it and every layer above may import it; it reads
only the workload's length, never its content.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

from rlscale.envs.scenario import Scenario, ScenarioError

HELD_OUT_SHARE = 0.25
VALIDATION_SHARE = 0.2

Part = Literal["train", "validation", "heldout", "all"]
PARTS: tuple[str, ...] = get_args(Part)


@dataclass(frozen=True)
class Split:
    """Parts of one workload in decision steps, and the fixed windows of each.

    :param episode_steps: episode length that fits every part (train, validation, held out).
    :param total_steps: decision steps in the workload.
    :param boundary_step: first held-out step; the training part is ``[0, boundary_step)``.
    :param validation_step: first step of the validation part ``[validation_step,
        boundary_step)``.
    :param train_end_step: training episodes lie in ``[0, train_end_step)``
        (``validation_step``, or ``boundary_step`` when validation overlaps training).
    :param train_starts: fixed windows of the whole training part (where baselines tune).
    :param validation_starts: fixed windows of the validation part.
    :param test_starts: fixed windows of the held-out part (evaluation).
    """

    episode_steps: int
    train_starts: tuple[int, ...]
    test_starts: tuple[int, ...]
    boundary_step: int
    total_steps: int
    validation_step: int
    train_end_step: int
    validation_starts: tuple[int, ...]

    @property
    def validation_overlaps_train(self) -> bool:
        """True when the training part was too short to carve validation windows off."""
        return self.train_end_step > self.validation_step

    def part_steps(self, part: str) -> tuple[int, int]:
        """``[first, end)`` decision steps of ``part`` (one of :data:`PARTS`)."""
        bounds = {
            "train": (0, self.train_end_step),
            "validation": (self.validation_step, self.boundary_step),
            "heldout": (self.boundary_step, self.total_steps),
            "all": (0, self.total_steps),
        }
        if part not in bounds:
            raise ValueError(f"unknown split part {part!r}; known: {list(PARTS)}")
        return bounds[part]

    def start_range(self, part: str, episode_steps: int | None = None) -> tuple[int, int]:
        """Lowest and highest start step of an episode lying wholly inside ``part``.

        :param episode_steps: the episode's length; the split's own by default.
        :raises ScenarioError: the episode does not fit in the part.
        """
        steps = self.episode_steps if episode_steps is None else int(episode_steps)
        first, end = self.part_steps(part)
        if end - first < steps:
            raise ScenarioError(
                f"an episode of {steps} steps does not fit in the '{part}' part of the workload "
                f"(steps [{first}, {end}), {end - first} steps); shorten episode_hours, pick "
                f"another part, or split='all' for the whole trace"
            )
        return first, end - steps


def split_steps(
    total_steps: int, episode_steps: int, steps_per_day: int, *, max_windows: int = 8
) -> Split:
    """The split of a workload of ``total_steps`` decision steps (see the module docstring).

    Windows start at whole days where the workload spans days and episodes last half a day or
    more (so daily patterns line up), otherwise back to back.
    """
    total, episode = int(total_steps), int(episode_steps)
    if total >= 2 * episode:
        boundary = int(total * (1.0 - HELD_OUT_SHARE))
        if boundary + episode > total:
            boundary = total - episode
    else:
        boundary = total // 2
        episode = min(episode, boundary, total - boundary)
    if episode < 1:
        raise ScenarioError(f"a workload of {total} decision steps is too short to split")
    day = int(steps_per_day)
    stride = day if episode >= day // 2 and total >= 2 * day else episode

    carved = boundary - max(episode, round(boundary * VALIDATION_SHARE))
    validation = carved // stride * stride
    train_end = validation
    if validation < episode:  # no room for both: validate on the training part itself
        validation, train_end = 0, boundary

    def windows(first: int, end: int) -> tuple[int, ...]:
        return tuple(range(first, end - episode + 1, stride))[:max_windows] or (first,)

    return Split(
        episode_steps=episode,
        train_starts=windows(0, boundary),
        test_starts=windows(boundary, total),
        boundary_step=boundary,
        total_steps=total,
        validation_step=validation,
        train_end_step=train_end,
        validation_starts=windows(validation, boundary),
    )


def split_workload(scenario: Scenario, *, max_windows: int = 8) -> tuple[Split, float]:
    """The split of ``scenario``'s workload and the episode length in hours to use with it."""
    from rlscale.envs.simulator import scenario_workload

    wl = scenario_workload(scenario)
    return split_of(scenario, wl.n_bins, max_windows=max_windows)


def split_of(scenario: Scenario, n_bins: int, *, max_windows: int = 8) -> tuple[Split, float]:
    """The split of a workload of ``n_bins`` sub-steps run under ``scenario``, and the episode
    hours to use with it."""
    split = split_steps(
        n_bins // scenario.substeps_per_step,
        scenario.episode_steps,
        round(86400.0 / scenario.control_interval_s),
        max_windows=max_windows,
    )
    return split, split.episode_steps * scenario.control_interval_s / 3600.0


def split_scenario(scenario: Scenario) -> tuple[Scenario, Split]:
    """The scenario with its episode length fitted to the split, and the split."""
    split, hours = split_workload(scenario)
    return scenario.model_copy(update={"episode_hours": hours}), split


def validation_windows(scenario: Scenario, *, max_windows: int = 8) -> tuple[Scenario, tuple]:
    """Where training validates: the scenario with its episode length fitted to the split, and
    the validation windows' start steps (inside the training part, never held out)."""
    split, hours = split_workload(scenario, max_windows=max_windows)
    return scenario.model_copy(update={"episode_hours": hours}), split.validation_starts


def check_part(part: str) -> str:
    """``part`` if it names a part of a split, else a ``ValueError`` listing the parts."""
    if part not in PARTS:
        raise ValueError(f"unknown split part {part!r}; known: {list(PARTS)}")
    return part
