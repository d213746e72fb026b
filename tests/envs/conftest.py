"""Fixtures of the env tests: small scenarios built in code, independent of the shipped ones."""

from __future__ import annotations

from typing import Any

import pytest

from rlscale.envs.scenario import Scenario, scenario_from_dict


def small_scenario(**overrides: Any) -> Scenario:
    """A quick synthetic scenario: half a day of load, two on-demand pools and one spot pool."""
    raw: dict[str, Any] = {
        "name": "small",
        "episode_hours": 0.5,
        "workload": {
            "kind": "synthetic",
            "synthetic": {"base_rate_rps": 8.0, "days": 0.5, "noise_cv": 0.2},
        },
        "pools": [
            {
                "name": "h100",
                "profile": "h100x1-llama3-8b",
                "price_usd_h": 4.0,
                "quota": 6,
                "initial_replicas": 1,
                "warm_pool_max": 2,
                "warm_holding_usd_h": 0.4,
            },
            {"name": "a100", "profile": "a100x1-llama3-8b", "price_usd_h": 2.5, "quota": 4},
            {
                "name": "spot",
                "profile": "h100x1-llama3-8b",
                "purchase": "spot",
                "price_usd_h": 4.0,
                "quota": 4,
                "initial_replicas": 1,
                "spot": {"hazard_per_h": 2.0, "notice_s": 60},
            },
        ],
    }
    raw.update(overrides)
    return scenario_from_dict(raw)


@pytest.fixture
def make_small_scenario():
    """The :func:`small_scenario` factory, as a fixture."""
    return small_scenario
