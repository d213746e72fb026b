"""Fixtures of the evaluation tests: a quick synthetic scenario and a stand-in oracle."""

from __future__ import annotations

from typing import Any

import pytest

from rlscale.agents import registry
from rlscale.agents.static import StaticPolicy
from rlscale.envs.scenario import Scenario, scenario_from_dict


def quick_scenario(**overrides: Any) -> Scenario:
    """Half a day of synthetic load on two on-demand pools: no spot, so a fixed fleet costs the
    same under every seed (what the zero-width-interval check relies on)."""
    raw: dict[str, Any] = {
        "name": "quick",
        "episode_hours": 0.5,
        "workload": {
            "kind": "synthetic",
            "synthetic": {"base_rate_rps": 6.0, "days": 0.5, "noise_cv": 0.2},
        },
        "pools": [
            {
                "name": "h100",
                "profile": "h100x1-llama3-8b",
                "price_usd_h": 4.0,
                "quota": 6,
                "initial_replicas": 2,
            },
            {"name": "a100", "profile": "a100x1-llama3-8b", "price_usd_h": 2.5, "quota": 4},
        ],
    }
    raw.update(overrides)
    return scenario_from_dict(raw)


@pytest.fixture(scope="session")
def scenario() -> Scenario:
    """The :func:`quick_scenario`."""
    return quick_scenario()


@pytest.fixture
def fake_oracle(monkeypatch) -> list[dict[str, Any]]:
    """Register a fast stand-in for ``oracle`` (one h100 replica); returns the params it got.

    The real oracle solves a program per window; these tests check how the evaluation builds
    and reports it, not the oracle itself.
    """
    calls: list[dict[str, Any]] = []

    def factory(scenario: Scenario, params: dict[str, Any]) -> StaticPolicy:
        calls.append(dict(params))
        return StaticPolicy({"h100": 1, "a100": 0}, name="oracle")

    registry.known_policies()  # load the built-ins first, so ours is not overwritten
    monkeypatch.setitem(registry._FACTORIES, "oracle", factory)
    return calls
