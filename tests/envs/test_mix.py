"""Training on a mix of workloads with the same pools (``randomization.workloads``): each
part of the batch runs its own workload exactly as a simulator of that workload alone would,
rates read in the scenario's own units, and only training mixes."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from rlscale.envs.mix import PART_SEED_STRIDE, MixedSimulator, mix_sizes
from rlscale.envs.sb3_vec_env import InferenceClusterVecEnv
from rlscale.envs.scenario import ScenarioError, load_scenario
from rlscale.envs.simulator import ClusterSimulator
from rlscale.envs.vector import InferenceClusterVectorEnv

BASE = "synthetic-4day"


def _other_workload(base_rate_rps: float = 4.0, **more) -> dict:
    """A quieter synthetic service with longer answers and its own season."""
    return {
        "kind": "synthetic",
        "synthetic": {"base_rate_rps": base_rate_rps, "peak_hour": 3, "days": 4},
        "prompt_tokens": {"median": 300, "p90": 900},
        "output_tokens": {"median": 400, "p90": 1200},
        **more,
    }


def _mixed(*shares: float, **workload):
    sc = load_scenario(BASE)
    data = sc.model_dump()
    data["randomization"]["workloads"] = [
        {"share": s, "workload": _other_workload(**workload)} for s in shares
    ]
    return type(sc).model_validate(data)


@pytest.mark.parametrize(
    ("n", "shares", "want"),
    [
        (8, [0.25], [6, 2]),
        (32, [0.25, 0.25], [16, 8, 8]),
        (3, [0.1, 0.1], [1, 1, 1]),
        (7, [0.3, 0.3], [3, 2, 2]),  # 2.8 / 2.1 / 2.1: the largest remainder gets the seventh
    ],
)
def test_clusters_are_shared_out_by_share_with_at_least_one_each(n, shares, want):
    assert mix_sizes(n, shares) == want


def test_more_parts_than_clusters_is_refused():
    with pytest.raises(ScenarioError, match="at least 3 clusters"):
        mix_sizes(2, [0.2, 0.2])


def test_shares_must_leave_the_scenarios_own_workload_some():
    with pytest.raises(ValidationError, match="sum to 1"):
        _mixed(0.5, 0.5)
    with pytest.raises(ValidationError, match="share"):
        _mixed(0.0)


def test_each_part_runs_as_a_simulator_of_its_workload_alone():
    """Cluster for cluster, bit for bit: the mix changes nothing but which clusters run what;
    the other workload's rates are observed in the scenario's own units."""
    sc = _mixed(0.5)
    mixed = MixedSimulator(sc, 4, split="train", randomize=True)
    own = ClusterSimulator(sc, 2, split="train", randomize=True, episode_latency_stats=False)
    other_sc = sc.model_copy(
        update={
            "workload": sc.randomization.workloads[0].workload,
            "episode_hours": own.scenario.episode_hours,
        }
    )
    other = ClusterSimulator(
        other_sc,
        2,
        workload_seed=PART_SEED_STRIDE,
        split="train",
        randomize=True,
        episode_latency_stats=False,
        reference_rps=own.reference_rps,
    )
    assert mixed.sizes == [2, 2]
    assert other.reference_rps == own.reference_rps
    assert other.workload.mean_rps < 0.5 * own.workload.mean_rps  # another workload indeed
    for i in range(4):
        mixed.reset_cluster(i, np.random.default_rng(i))
        (own if i < 2 else other).reset_cluster(i % 2, np.random.default_rng(i))
    rng = np.random.default_rng(7)
    for _ in range(40):
        a = rng.integers(0, own.action_nvec, size=(4, own.action_nvec.size))
        mixed.step(a)
        own.step(a[:2])
        other.step(a[2:])
        assert np.array_equal(mixed.obs, np.concatenate([own.obs, other.obs]))
        assert np.array_equal(mixed.rewards, np.concatenate([own.rewards, other.rewards]))
    good, counted = mixed.step_requests()
    assert good.shape == counted.shape == (4,)
    assert mixed.step_info(3)["workload"] == other.workload.name
    assert mixed.step_info(0)["workload"] == own.workload.name
    # the quieter workload reads as less load in the same units
    rate = mixed.observation_names.index("arrival_rate")
    assert mixed.obs[2:, rate].mean() < mixed.obs[:2, rate].mean()


def test_a_reset_reaches_its_own_part_and_starts_in_that_parts_training_part():
    """Cluster ``i`` of the mix is cluster ``i - offset`` of its part, reset with the same
    generator as a direct reset of that part would be; every part's windows lie before its
    validation windows, and every part runs the scenario's episode length."""
    sc = _mixed(0.25, 0.25)
    mixed = MixedSimulator(sc, 8, split="train", randomize=True)
    assert mixed.sizes == [4, 2, 2]
    offsets = [0, 4, 6]
    lengths = {part.episode_steps for part in mixed.parts}
    assert lengths == {mixed.primary.episode_steps}
    for seed in range(5):
        for i in range(8):
            mixed.reset_cluster(i, np.random.default_rng([seed, i]))
        for k, part in enumerate(mixed.parts):
            lo, hi = part.start_range
            assert hi + part.episode_steps <= part.split.validation_starts[0]
            for j in range(part.num_clusters):
                want = np.random.default_rng([seed, offsets[k] + j]).integers(lo, hi + 1)
                assert part.start_steps[j] == want
                assert part.steps[j] == 0
            assert part.randomization(0) == mixed.randomization(offsets[k])


def test_a_mixed_part_has_its_own_randomness():
    """The same synthetic service mixed in is another realization of it (its noise and
    bursts), not the scenario's own series over again."""
    sc = load_scenario(BASE)
    data = sc.model_dump()
    data["randomization"]["workloads"] = [{"share": 0.5, "workload": data["workload"]}]
    mixed = MixedSimulator(type(sc).model_validate(data), 2, split="train", randomize=True)
    own, other = mixed.parts
    assert own.workload.n_bins == other.workload.n_bins
    assert not np.array_equal(own.workload.arrivals, other.workload.arrivals)


def test_what_a_mix_does_not_define_is_named():
    mixed = MixedSimulator(_mixed(0.5), 2, split="train", randomize=True)
    assert mixed.action_nvec.tolist() == mixed.primary.action_nvec.tolist()
    with pytest.raises(AttributeError, match="not defined on a mix of workloads"):
        mixed.cluster_state  # noqa: B018


def test_only_randomized_training_mixes():
    sc = _mixed(0.25)
    for cls in (InferenceClusterVecEnv, InferenceClusterVectorEnv):
        assert isinstance(cls(4, scenario=sc, randomize=True).sim, MixedSimulator)
        plain = cls(4, scenario=sc, randomize=False).sim
        assert isinstance(plain, ClusterSimulator)
        assert plain.num_clusters == 4


def test_the_sb3_vec_env_steps_a_mix_and_ends_episodes_with_their_workload():
    sc = _mixed(0.5)
    venv = InferenceClusterVecEnv(4, scenario=sc, randomize=True)
    venv.seed(3)
    obs = venv.reset()
    assert obs.shape == (4, len(venv.sim.observation_names))
    noop = np.tile(venv.sim.noop_action(), (4, 1))
    steps = venv.sim.primary.episode_steps
    ended = []
    for _ in range(steps):
        obs, rewards, _, infos = venv.step(noop)
        ended += [info["workload"] for info in infos if "episode" in info]
    assert sorted(set(ended)) == sorted({p.workload.name for p in venv.sim.parts})
    assert np.isfinite(obs).all() and np.isfinite(rewards).all()


def test_a_workload_observed_otherwise_is_refused():
    """A mixed workload with batch requests would add the batch entries to the observation."""
    sc = _mixed(0.25, batch={"share": 0.3, "deadline_h": 1.0})
    with pytest.raises(ScenarioError, match=r"randomization.workloads\[0\].*observed alike"):
        MixedSimulator(sc, 4, split="train", randomize=True)


def test_a_mixed_workload_that_cannot_be_built_is_named():
    sc = _mixed(0.25)
    data = sc.model_dump()
    data["randomization"]["workloads"].append(
        {"share": 0.25, "workload": {"kind": "csv", "path": "no/such/trace.csv"}}
    )
    with pytest.raises(ScenarioError, match=r"randomization.workloads\[1\] \(csv no/such"):
        MixedSimulator(type(sc).model_validate(data), 4, split="train", randomize=True)


def test_validation_covers_the_mixed_workloads_on_their_own_validation_windows():
    """Training validates on the mix too (``Validator(mixed=True)``): each mixed workload on
    the validation windows of its own split, never its held-out part, built as training builds
    it; the scenario's own episodes are what validating it alone gives."""
    from rlscale.training.validate import Validator

    sc = _mixed(0.25)
    alone = Validator(sc, max_windows=2)
    both = Validator(sc, max_windows=2, mixed=True)
    (own, _), (other, other_cases) = both.parts
    noop = own.noop_action()

    def hold(obs):
        return np.tile(noop, (len(obs), 1))

    r_alone, r_both = alone.run(hold, 5), both.run(hold, 5)
    assert own.workload.name != other.workload.name
    assert [e for e in r_both.episodes if e["workload"] == own.workload.name] == r_alone.episodes
    theirs = [e for e in r_both.episodes if e["workload"] == other.workload.name]
    assert len(theirs) == len(other_cases) >= 1
    assert len(r_both.episodes) == len(r_alone.episodes) + len(theirs)
    # the other workload is the training mix's own (its seed and rate units)...
    trained = MixedSimulator(sc, 4, split="train").parts[1]
    assert np.array_equal(other.workload.arrivals, trained.workload.arrivals)
    assert other.reference_rps == own.reference_rps
    # ... validated on its own split's validation windows, never its held-out part
    split = other.split
    assert both.workload_windows[other.workload.name] == sorted({w for w, _ in other_cases})
    for w, _ in other_cases:
        assert w in split.validation_starts
        assert w + other.episode_steps <= split.boundary_step
    # the result is over every episode
    assert r_both.cost_usd == pytest.approx(np.mean([e["cost_usd"] for e in r_both.episodes]))
    assert r_both.min_attainment == min(e["slo_attainment"] for e in r_both.episodes)
    assert len(alone.parts) == 1
    assert alone.workload_windows == {own.workload.name: alone.windows}


def test_a_mixed_part_named_like_the_own_workload_keeps_its_own_label():
    """The same service mixed in with its own seed has the scenario's workload name: its
    validation episodes and windows are labelled with its place in the mix, not merged."""
    from rlscale.training.validate import Validator

    sc = load_scenario(BASE)
    data = sc.model_dump()
    data["randomization"]["workloads"] = [{"share": 0.25, "workload": data["workload"]}]
    both = Validator(type(sc).model_validate(data), max_windows=1, mixed=True)
    (own, _), (other, _) = both.parts
    assert own.workload.name == other.workload.name
    assert both.labels == [own.workload.name, f"{own.workload.name} [randomization.workloads[0]]"]
    assert list(both.workload_windows) == both.labels
    noop = own.noop_action()
    result = both.run(lambda obs: np.tile(noop, (len(obs), 1)))
    assert [e["workload"] for e in result.episodes] == both.labels
