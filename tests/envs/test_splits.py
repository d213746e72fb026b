"""The train / validation / held-out split, and the envs drawing training episodes from it."""

from __future__ import annotations

import numpy as np
import pytest

from rlscale.envs import list_scenarios
from rlscale.envs.env import InferenceClusterEnv
from rlscale.envs.scenario import ScenarioError, load_scenario
from rlscale.envs.splits import PARTS, Split, split_steps, split_workload, validation_windows
from rlscale.envs.vector import InferenceClusterVectorEnv


@pytest.fixture
def scenario_of(make_small_scenario):
    """``name -> Scenario``: a shipped scenario, or ``"synthetic"``: the env tests' small one."""
    return lambda name: make_small_scenario() if name == "synthetic" else load_scenario(name)


def _windows_inside(starts, episode: int, first: int, end: int) -> bool:
    return all(first <= s and s + episode <= end for s in starts)


# --- the split itself ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("total", "episode", "day"),
    [
        (40320, 2880, 2880),
        (116, 114, 2880),
        (117, 114, 2880),
        (40320, 40320, 2880),
        (8640, 2880, 2880),
        (1440, 60, 2880),
        (5, 1, 2880),
        (2, 5, 2880),
    ],
)
def test_parts_are_ordered_and_every_window_lies_in_its_part(total, episode, day):
    s = split_steps(total, episode, day)
    assert 0 < s.train_end_step <= s.boundary_step < s.total_steps == total
    assert 0 <= s.validation_step < s.boundary_step
    assert s.episode_steps <= min(s.train_end_step, s.total_steps - s.boundary_step)
    assert _windows_inside(s.train_starts, s.episode_steps, 0, s.boundary_step)
    assert _windows_inside(s.test_starts, s.episode_steps, s.boundary_step, total)
    assert _windows_inside(s.validation_starts, s.episode_steps, s.validation_step, s.boundary_step)
    for part in PARTS:
        lo, hi = s.start_range(part)
        first, end = s.part_steps(part)
        assert first <= lo <= hi and hi + s.episode_steps <= end


def test_validation_is_carved_off_training_where_the_training_part_allows():
    # ServeGen's 14 days of 30 s steps, episodes of a day: 8 training days, 2.5 validation days
    s = split_steps(40320, 2880, 2880)
    assert (s.train_end_step, s.validation_step, s.boundary_step) == (23040, 23040, 30240)
    assert s.validation_starts == (23040, 25920) and not s.validation_overlaps_train
    # a one-hour trace: one episode of training, nothing to carve, validation on it (declared)
    short = split_steps(116, 114, 2880)
    assert short.validation_overlaps_train
    assert short.validation_starts == (0,) and short.train_end_step == short.boundary_step == 58


@pytest.mark.needs_data
@pytest.mark.parametrize("name", [*list_scenarios(), "synthetic"])
def test_validation_windows_lie_in_training_and_never_meet_held_out(name, scenario_of):
    sc = scenario_of(name)
    fitted, starts = validation_windows(sc)
    split, _ = split_workload(sc)
    ep = fitted.episode_steps
    assert ep == split.episode_steps and starts
    for s in starts:
        assert s >= 0 and s + ep <= split.boundary_step  # inside the training part
        for t in split.test_starts:  # and no held-out window overlaps it
            assert s + ep <= t or t + ep <= s
    if not split.validation_overlaps_train:
        assert split.train_end_step <= min(starts)


def test_an_episode_that_does_not_fit_its_part_is_named():
    s = split_steps(1440, 60, 2880)
    with pytest.raises(ScenarioError, match=r"episode of 400 steps does not fit in the 'heldout'"):
        s.start_range("heldout", 400)
    with pytest.raises(ValueError, match=r"unknown split part 'test'; known: \['train'"):
        s.part_steps("test")


def test_unknown_part_is_refused_by_the_env(make_small_scenario):
    with pytest.raises(ValueError, match="unknown split part 'held_out'"):
        InferenceClusterEnv(scenario=make_small_scenario(), split="held_out")


# --- the envs draw only inside their part ------------------------------------------------------


def _train_split(sim) -> Split:
    assert sim.split is not None and sim.split_part == "train"
    return sim.split


@pytest.mark.needs_data
@pytest.mark.parametrize("name", ["servegen-m-large", "azure-conv", "synthetic"])
def test_sb3_vec_env_never_starts_or_runs_in_held_out_windows(name, scenario_of):
    pytest.importorskip("stable_baselines3")
    from rlscale.envs.sb3_vec_env import InferenceClusterVecEnv

    venv = InferenceClusterVecEnv(16, scenario=scenario_of(name))
    split = _train_split(venv.sim)
    ep = venv.sim.episode_steps
    assert ep == split.episode_steps
    starts = []
    for seed in range(40):  # 640 resets
        venv.seed(seed)
        venv.reset()
        starts += venv.sim.start_steps.tolist()
    starts = np.array(starts)
    # every episode, start to end, before validation and held-out windows
    assert starts.min() >= 0 and (starts + ep).max() <= split.train_end_step
    # drawn over the whole training range, not pinned to a few windows
    lo, hi = split.start_range("train")
    assert len(set(starts.tolist())) > min(50, hi - lo)
    assert starts.min() - lo <= 0.1 * (hi - lo) + 1 and hi - starts.max() <= 0.1 * (hi - lo) + 1


@pytest.mark.needs_data
def test_sb3_vec_env_autoresets_stay_in_training_on_azure():
    pytest.importorskip("stable_baselines3")
    from rlscale.envs.sb3_vec_env import InferenceClusterVecEnv

    venv = InferenceClusterVecEnv(4, scenario="azure-conv")
    split = _train_split(venv.sim)
    assert venv.sim.episode_steps == 58  # evaluation's length, not the scenario's 114
    venv.seed(0)
    venv.reset()
    noop = np.tile(venv.sim.noop_action(), (4, 1))
    ended = 0
    for _ in range(3 * 58):
        # the step about to be simulated, for every env: never at or past the training end
        assert (venv.sim.start_steps + venv.sim.steps < split.train_end_step).all()
        _, _, dones, _ = venv.step(noop)
        ended += int(dones.sum())
    assert ended == 3 * 4


@pytest.mark.needs_data
@pytest.mark.parametrize("name", ["servegen-m-large", "azure-conv", "synthetic"])
def test_gymnasium_envs_never_start_in_held_out_windows(name, scenario_of):
    sc = scenario_of(name)
    env = InferenceClusterEnv(scenario=sc)
    split = _train_split(env.sim)
    ep = env.sim.episode_steps
    for seed in range(100):
        _, info = env.reset(seed=seed)
        assert info["start_step"] + ep <= split.train_end_step
    vec = InferenceClusterVectorEnv(8, scenario=sc)
    for seed in range(0, 400, 8):
        vec.reset(seed=seed)
        assert (vec.sim.start_steps + ep <= split.train_end_step).all()


def test_pinned_start_outside_the_part_is_refused(make_small_scenario):
    env = InferenceClusterEnv(scenario=make_small_scenario())
    split = env.sim.split
    with pytest.raises(ValueError, match=r"outside \[0, \d+\] .* the 'train' part"):
        env.reset(seed=0, options={"start_step": split.boundary_step})
    held = InferenceClusterEnv(scenario=make_small_scenario(), split="heldout")
    _, info = held.reset(seed=0, options={"start_step": split.boundary_step})
    assert info["start_step"] == split.boundary_step
    for seed in range(50):
        _, info = held.reset(seed=seed)
        assert info["start_step"] >= split.boundary_step


def test_split_all_keeps_the_whole_trace_and_the_scenario_episode(make_small_scenario):
    sc = make_small_scenario()
    env = InferenceClusterEnv(scenario=sc, split="all")
    assert env.sim.split is None and env.sim.episode_steps == sc.episode_steps
    starts = {env.reset(seed=s)[1]["start_step"] for s in range(200)}
    assert max(starts) > split_workload(sc)[0].boundary_step
