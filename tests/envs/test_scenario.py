"""Scenario files: every shipped one loads; bad ones fail naming the field and the value."""

from __future__ import annotations

import pytest
import yaml

from rlscale.envs.run import with_fixed_replicas
from rlscale.envs.scenario import (
    SCENARIO_DIR,
    ScenarioError,
    list_scenarios,
    load_scenario,
    scenario_from_dict,
)
from rlscale.envs.simulator import ClusterSimulator


def _raw(name="azure-conv"):
    return yaml.safe_load((SCENARIO_DIR / f"{name}.yaml").read_text())


@pytest.mark.parametrize("name", list_scenarios())
def test_shipped_scenarios_validate(name):
    sc = load_scenario(name)
    assert sc.name == name and sc.episode_steps >= 1


def test_typo_in_a_key_names_the_key(tmp_path):
    raw = _raw()
    raw["pools"][0]["qouta"] = raw["pools"][0].pop("quota")
    path = tmp_path / "typo.yaml"
    path.write_text(yaml.safe_dump(raw))
    with pytest.raises(ScenarioError) as err:
        load_scenario(path)
    assert "unknown key 'pools.0.qouta'" in str(err.value)
    assert str(path) in str(err.value)


def test_negative_price_names_field_and_value():
    raw = _raw()
    raw["pools"][1]["price_usd_h"] = -2.5
    with pytest.raises(ScenarioError, match=r"pools\.1\.price_usd_h: .*greater than 0.*-2\.5"):
        scenario_from_dict(raw)


def test_initial_replicas_above_quota_is_refused():
    raw = _raw()
    raw["pools"][0]["initial_replicas"] = 50
    with pytest.raises(ScenarioError, match=r"initial_replicas \(50\).*quota \(8\)"):
        scenario_from_dict(raw)


def test_unknown_pool_lists_the_known_ones():
    with pytest.raises(ScenarioError, match=r"unknown pool 'h200'.*'h100', 'a100', 'h100-spot'"):
        with_fixed_replicas(load_scenario("azure-conv"), {"h200": 2})


def test_unknown_profile_lists_the_known_ones():
    raw = _raw()
    raw["pools"][0]["profile"] = "b200x1-llama3-8b"
    with pytest.raises(ScenarioError, match=r"b200x1-llama3-8b.*h100x1-llama3-8b"):
        ClusterSimulator(scenario_from_dict(raw))


def test_interval_must_be_a_multiple_of_the_substep():
    raw = _raw()
    raw["control_interval_s"] = 30
    raw["substep_s"] = 7
    with pytest.raises(ScenarioError, match="whole multiple of substep_s"):
        scenario_from_dict(raw)


def test_unknown_scenario_name_lists_the_shipped_ones():
    with pytest.raises(ScenarioError, match=r"no scenario 'azure-chat'.*azure-conv"):
        load_scenario("azure-chat")


@pytest.mark.needs_data
def test_episode_longer_than_the_trace_is_refused():
    raw = _raw()
    raw["episode_hours"] = 5
    with pytest.raises(ScenarioError, match=r"episode_hours \(5.0\) is longer than the workload"):
        ClusterSimulator(scenario_from_dict(raw))


def test_warm_pool_on_spot_is_refused():
    raw = _raw()
    raw["pools"][2]["warm_pool_max"] = 1
    with pytest.raises(ScenarioError, match="warm pools are for on-demand pools only"):
        scenario_from_dict(raw)


def test_invalid_yaml_says_so(tmp_path):
    path = tmp_path / "broken.yaml"
    path.write_text("name: x\npools: [\n")
    with pytest.raises(ScenarioError, match="not valid YAML"):
        load_scenario(path)
