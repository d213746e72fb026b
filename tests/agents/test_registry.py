"""The policy registry: one list of policies, their kinds and spaces, in a fixed order."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from rlscale.agents import registry
from rlscale.agents.registry import PolicyKind
from rlscale.agents.static import StaticPolicy
from rlscale.envs.scenario import ScenarioError

BUILTIN_BASELINES = ["static", "hpa", "keda", "knative", "rayserve", "predictive", "spot_aware"]


def test_kinds_of_the_builtin_policies():
    assert registry.baselines() == BUILTIN_BASELINES
    assert registry.policies_of_kind(PolicyKind.ORACLE) == ["oracle"]
    assert registry.policies_of_kind(PolicyKind.EXPORTED) == ["onnx"]
    assert registry.entry("oracle").per_episode
    assert not any(registry.entry(n).per_episode for n in BUILTIN_BASELINES)


@pytest.mark.parametrize("first", ["rlscale.agents.keda", "rlscale.agents.spot_aware"])
def test_order_does_not_depend_on_which_module_was_imported_first(first):
    """A program that imports one policy module before the registry sees the same order."""
    code = (
        f"import {first}\nimport json\nfrom rlscale.agents import registry\n"
        "print(json.dumps(registry.baselines()))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert json.loads(out.stdout.strip().splitlines()[-1]) == BUILTIN_BASELINES


def test_a_registered_policy_serves_evaluation_and_tuning(monkeypatch, quick_raw):
    from rlscale.envs.scenario import scenario_from_dict

    monkeypatch.setattr(registry, "_ENTRIES", dict(registry._ENTRIES))
    space = {"replicas": [{"h100": 1}, {"h100": 2}]}

    def factory(scenario, params):
        return StaticPolicy(params.get("replicas", {"h100": 3}), name="mine")

    registry.register("mine", factory, param_space=space)
    assert registry.baselines() == [*BUILTIN_BASELINES, "mine"]  # after the built-ins
    assert registry.param_space("mine") == space
    policy = registry.make_policy("mine", scenario_from_dict(quick_raw()), {"replicas": {"a": 1}})
    assert policy.replicas == {"a": 1}


def test_spaces_and_names_fail_with_what_is_wrong():
    with pytest.raises(ScenarioError, match=r"unknown policy 'hpa2'; known: \[.*'hpa'"):
        registry.make_policy("hpa2", None, {})  # type: ignore[arg-type]
    with pytest.raises(ScenarioError, match="depends on the cluster"):
        registry.param_space("static")
    with pytest.raises(ScenarioError, match="'oracle' has no parameter space"):
        registry.param_space("oracle")
    with pytest.raises(ValueError, match="'nope' is not a valid PolicyKind"):
        registry.register("x", lambda sc, p: None, kind="nope")  # type: ignore[arg-type]
