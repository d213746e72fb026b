"""Baseline tuning: the candidate set, the pick, and a real search on azure-conv's training part."""

from __future__ import annotations

import json

import pytest

from rlscale.agents.registry import baselines, make_policy
from rlscale.agents.tuning import (
    candidates,
    param_space,
    save_tuning,
    select_trial,
    tune_baseline,
)
from rlscale.envs.scenario import ScenarioError, load_scenario


def test_candidates_grid_with_defaults_first():
    """A grid that fits is taken whole, after the defaults (``{}``)."""
    cands, search = candidates({"a": [1, 2], "b": ["x", "y"]}, 10)
    assert search == "grid"
    assert cands == [
        {},
        {"a": 1, "b": "x"},
        {"a": 1, "b": "y"},
        {"a": 2, "b": "x"},
        {"a": 2, "b": "y"},
    ]


def test_candidates_sample_is_deterministic_and_in_the_grid():
    """A grid larger than max_trials is sampled, the same way every time, without repeats."""
    space = {"a": list(range(10)), "b": list(range(10)), "c": [0.5, 1.0]}
    first, search = candidates(space, 12)
    again, _ = candidates(space, 12)
    assert search == "sample"
    assert first == again
    assert len(first) == 12 and first[0] == {}
    points = [tuple(c.values()) for c in first[1:]]
    assert len(set(points)) == 11
    assert all(a in space["a"] and b in space["b"] and c in space["c"] for a, b, c in points)


def test_candidates_reject_empty_values():
    """A parameter with no values is a configuration error, named."""
    with pytest.raises(ScenarioError, match="PARAM_SPACE\\['a'\\]"):
        candidates({"a": []}, 5)


def test_select_trial_cheapest_meeting_slo_else_best_attainment():
    """Lowest cost among those meeting the target; if none does, the highest attainment."""
    trials = [
        {"cost_usd": 3.0, "slo_attainment": 0.995},
        {"cost_usd": 2.0, "slo_attainment": 0.991},
        {"cost_usd": 1.0, "slo_attainment": 0.95},
    ]
    assert select_trial(trials, 0.99) is trials[1]
    assert select_trial(trials, 0.999) is trials[0]
    tie = [{"cost_usd": 2.0, "slo_attainment": 1.0}, {"cost_usd": 2.0, "slo_attainment": 1.0}]
    assert select_trial(tie, 0.99) is tie[0]  # the earlier trial (the defaults) wins a tie


def test_every_baseline_has_a_param_space():
    """Each registered baseline has a non-empty grid whose values its factory accepts."""
    from rlscale.envs.simulator import ClusterSimulator

    scenario = load_scenario("azure-conv")
    names = baselines()
    assert names[0] == "static" and "hpa" in names and "spot_aware" in names
    sim = ClusterSimulator(scenario, 1)
    for name in names:
        space = param_space(name, sim)
        assert space
        for key, values in space.items():
            for value in values:
                params = {key: value, "lead_s": 120.0} if name == "predictive" else {key: value}
                make_policy(name, scenario, params)  # raises on a value it rejects


def test_unknown_policy_is_named():
    """Tuning a policy nobody registered fails listing the known ones."""
    with pytest.raises(ScenarioError, match="unknown policy 'hpa2'"):
        param_space("hpa2")


@pytest.mark.needs_data
def test_tune_hpa_on_azure_conv_training_windows(azure_conv, tmp_path):
    """A tiny search: the pick meets the SLO at the lowest cost, on training windows only."""
    split = azure_conv["split"]
    space = {"target_utilization": [0.3, 0.6], "min_replicas": [1, 3]}
    result = tune_baseline("hpa", "azure-conv", space=space, progress=False)
    assert result["policy"] == "hpa" and result["scenario"] == "azure-conv"
    assert len(result["trials"]) == 4  # defaults + 4 grid points, (0.6, 1) being the defaults
    assert result["meets_slo"] is True
    assert result["slo_attainment"] >= result["target_attainment"] == 0.99
    meeting = [t for t in result["trials"] if t["meets_slo"]]
    assert result["cost_usd"] == min(t["cost_usd"] for t in meeting)
    assert result["params"]["min_replicas"] == 1  # 3 replicas always cost more here
    assert result["train_starts"] == list(split.train_starts)
    for trial in result["trials"]:
        for episode in trial["episodes"]:
            assert episode["start_step"] in split.train_starts
            assert episode["start_step"] + split.episode_steps <= split.boundary_step
    path = save_tuning(result, tmp_path / "tuned" / "hpa.json")
    assert json.loads(path.read_text())["params"] == result["params"]
    policy = make_policy("hpa", load_scenario("azure-conv"), path)
    assert policy.config() == result["params"]


@pytest.mark.needs_data
def test_tune_static_finds_the_smallest_peak_provisioning():
    """static's space is one pool at 1..quota replicas; the cheapest meeting the SLO wins."""
    result = tune_baseline("static", "azure-conv", progress=False)
    counts = [next(iter(t["params"]["replicas"].values())) for t in result["trials"]]
    assert counts == list(range(1, len(counts) + 1))
    chosen = next(iter(result["params"]["replicas"].values()))
    assert result["meets_slo"] is True
    assert all(not t["meets_slo"] for t in result["trials"][: chosen - 1])
