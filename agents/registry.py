"""Policies by name: what ``rlscale evaluate --policy NAME[=ARTIFACT]`` and tuning resolve.

A baseline is built from a JSON-able config (its tuned parameters, or its defaults); the
factories below receive the scenario so they can size themselves (pools, capacities).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rlscale.agents.base import Policy
from rlscale.envs.scenario import Scenario, ScenarioError

PolicyFactory = Callable[[Scenario, dict[str, Any]], Policy]
_FACTORIES: dict[str, PolicyFactory] = {}


def register(name: str, factory: PolicyFactory) -> None:
    """Make ``name`` resolvable by :func:`make_policy`."""
    _FACTORIES[name] = factory


def known_policies() -> list[str]:
    """Names :func:`make_policy` resolves."""
    _load_builtin()
    return sorted(_FACTORIES)


NOT_RULE_BASED = frozenset({"oracle", "onnx"})
"""Registered policies that are not rule-based scalers: the oracle plans with foresight, and an
exported policy needs its artifact."""


def rule_based_policies() -> list[str]:
    """The registered rule-based scalers (what tuning and "every baseline" mean)."""
    return [name for name in known_policies() if name not in NOT_RULE_BASED]


def make_policy(
    name: str, scenario: Scenario, params: dict[str, Any] | str | Path | None = None
) -> Policy:
    """The policy ``name`` for ``scenario``, with ``params`` (a dict, or a JSON file of them).

    :raises ScenarioError: unknown name (listing the known ones) or unreadable params.
    """
    _load_builtin()
    if name not in _FACTORIES:
        raise ScenarioError(f"unknown policy '{name}'; known: {known_policies()}")
    if isinstance(params, str | Path):
        path = Path(params)
        try:
            params = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise ScenarioError(f"cannot read policy parameters from {path}: {err}") from None
        if isinstance(params, dict) and "params" in params:
            params = params["params"]  # a tuning result file
    return _FACTORIES[name](scenario, dict(params or {}))


def _static(scenario: Scenario, params: dict[str, Any]) -> Policy:
    from rlscale.agents.static import StaticPolicy

    replicas = params.get("replicas") or {p.name: p.initial_replicas for p in scenario.pools}
    return StaticPolicy({str(k): int(v) for k, v in replicas.items()})


def _onnx(scenario: Scenario, params: dict[str, Any]) -> Policy:
    from rlscale.agents.onnx_policy import ArtifactError, load_onnx_policy

    if "artifact" not in params:
        raise ScenarioError("policy 'onnx' needs its artifact: onnx=FOLDER")
    try:
        return load_onnx_policy(params["artifact"], pools=[p.name for p in scenario.pools])
    except ArtifactError as err:
        raise ScenarioError(str(err)) from None


_BUILTIN_LOADED = False


def _load_builtin() -> None:
    global _BUILTIN_LOADED
    if _BUILTIN_LOADED:
        return
    _BUILTIN_LOADED = True
    register("static", _static)
    register("onnx", _onnx)
    # each baseline module registers itself on import
    import importlib

    for module in ("hpa", "keda", "knative", "rayserve", "predictive", "spot_aware", "oracle"):
        try:
            importlib.import_module(f"rlscale.agents.{module}")
        except ModuleNotFoundError as err:
            if err.name != f"rlscale.agents.{module}":
                raise
