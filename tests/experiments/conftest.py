"""Fixtures of the evaluation tests: a quick synthetic scenario and a stand-in oracle."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from rlscale.agents import registry
from rlscale.agents.static import StaticPolicy
from rlscale.envs.scenario import Scenario, scenario_from_dict


@pytest.fixture(scope="session")
def results_d0578ef() -> Path:
    """A results.json written by main at d0578ef, before results.json had a version: static,
    hpa and the oracle on the quick scenario replaying a three-tenant CSV trace, seeds 0 and 1,
    one held-out window, two tenants by name (written by fixtures/make_results_d0578ef.py).
    Readers of today must load it."""
    return Path(__file__).parent / "fixtures" / "results-d0578ef.json"


@pytest.fixture(scope="session")
def scenario(quick_raw) -> Scenario:
    """The quick scenario (``quick_raw`` in tests/conftest.py)."""
    return scenario_from_dict(quick_raw())


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

    real = registry.entry("oracle")  # loads the built-ins first, so ours is not overwritten
    monkeypatch.setitem(registry._ENTRIES, "oracle", dataclasses.replace(real, factory=factory))
    return calls
