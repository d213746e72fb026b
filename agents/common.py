"""What the classic single-Deployment scalers share: parameter checks, pool choice, windows.

A classic scaler (HPA, KEDA, Knative, Ray Serve, the predictive one) manages one Deployment:
``pool`` names it (default: the on-demand pool with the lowest price per ``capacity_rps``,
chosen at decision time from the state). Other pools are driven to 0; while the managed pool has
no ready replica or is still starting some, they keep what they have, so moving a cluster onto
the managed pool never leaves it empty.
"""

from __future__ import annotations

import math
import numbers
import typing
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any, TypeVar

from rlscale.agents.base import ClusterState, PoolState
from rlscale.envs.scenario import Scenario, ScenarioError

P = TypeVar("P")


def policy_error(policy: str, param: str, value: Any, rule: str) -> ScenarioError:
    """A ScenarioError that names the policy, the parameter, its value and the rule it breaks."""
    return ScenarioError(f"{policy}: parameter '{param}' = {value!r} is invalid: {rule}")


def require(ok: bool, policy: str, param: str, value: Any, rule: str) -> None:
    """Raise :func:`policy_error` unless ``ok``."""
    if not ok:
        raise policy_error(policy, param, value, rule)


def require_all(policy: Any, checks: tuple[tuple[str, bool, str], ...]) -> None:
    """Check ``(param, ok, rule)`` triples of a policy dataclass; the first failure raises."""
    for param, ok, rule in checks:
        require(ok, policy.name, param, getattr(policy, param), f"must be {rule}")


def require_max_at_least_min(policy: Any, max_param: str, min_param: str) -> None:
    """A replica ceiling, when set, must allow at least one replica and the floor."""
    high = getattr(policy, max_param)
    floor = max(getattr(policy, min_param), 1)
    require(
        high is None or high >= floor,
        policy.name,
        max_param,
        high,
        f"must be >= max({min_param}, 1) = {floor}",
    )


def _coerce(policy: str, param: str, value: Any, hint: Any) -> Any:
    """``value`` as the annotated type (JSON gives 2.0 for 2, ints for floats), or an error."""
    allowed = typing.get_args(hint) or (hint,)
    if value is None:
        if type(None) in allowed:
            return None
    elif isinstance(value, bool):
        if bool in allowed:
            return value
    elif isinstance(value, numbers.Real):
        if not math.isfinite(float(value)):
            raise policy_error(policy, param, value, "must be a finite number")
        if int in allowed and float(value).is_integer():
            return int(value)
        if float in allowed:
            return float(value)
    elif isinstance(value, str) and str in allowed:
        return value
    names = " or ".join("null" if t is type(None) else t.__name__ for t in allowed)
    raise policy_error(policy, param, value, f"expected {names}")


def policy_from_params(cls: type[P], params: dict[str, Any]) -> P:
    """Build the dataclass policy ``cls`` from JSON-like ``params``.

    :raises ScenarioError: an unknown parameter (listing the known ones) or a value of the
        wrong type; range checks are the class's own ``__post_init__``.
    """
    policy = getattr(cls, "name", cls.__name__)
    known = [f.name for f in fields(cls) if f.init]  # type: ignore[arg-type]
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in params.items():
        if key not in known:
            raise ScenarioError(f"{policy}: unknown parameter '{key}'; known: {known}")
        kwargs[key] = _coerce(policy, key, value, hints[key])
    return cls(**kwargs)


def check_pool(scenario: Scenario, policy: str, param: str, pool: str | None) -> None:
    """Fail clearly when ``pool`` is set and not one of the scenario's pools."""
    if pool is not None and pool not in [p.name for p in scenario.pools]:
        raise policy_error(
            policy,
            param,
            pool,
            f"not a pool of '{scenario.name}' {[p.name for p in scenario.pools]}",
        )


def cheapest_pool(state: ClusterState, purchase: str = "on_demand") -> PoolState:
    """The pool of that purchase option with the lowest on-demand price per capacity_rps.

    The list price, not the current one, so the choice does not flip with a spot price path.
    """
    pools = [p for p in state.pools if p.purchase == purchase and p.capacity_rps > 0]
    if not pools:
        raise ScenarioError(
            f"no {purchase} pool with positive capacity; pools: {[p.name for p in state.pools]}"
        )
    return min(pools, key=lambda p: (p.on_demand_price_usd_h / p.capacity_rps, p.name))


@dataclass(frozen=True)
class Deployment:
    """The managed pool as a Kubernetes Deployment sees itself (replica counts are whole)."""

    pool: PoolState
    current: int
    """``spec.replicas``: ready + starting (draining replicas are already leaving)."""
    ready: int
    starting: int
    max_replicas: int
    handover: int
    """Replicas of this pool that carry what other pools hold now (0 once they are empty)."""

    @property
    def name(self) -> str:
        """The pool's name."""
        return self.pool.name


def deployment(state: ClusterState, pool: str | None, max_replicas: int | None) -> Deployment:
    """The managed pool (``pool``, or the cheapest on-demand one) read from ``state``."""
    p = cheapest_pool(state) if pool is None else state.pool(pool)
    others_rps = sum(o.desired * o.capacity_rps for o in state.pools if o.name != p.name)
    handover = math.ceil(others_rps / p.capacity_rps - 1e-9) if p.capacity_rps > 0 else 0
    cap = p.quota if max_replicas is None else min(max_replicas, p.quota)
    return Deployment(
        pool=p,
        current=round(p.desired),
        ready=round(p.ready),
        starting=round(p.starting),
        max_replicas=cap,
        handover=max(handover, 0),
    )


def single_pool_targets(state: ClusterState, dep: Deployment, replicas: int) -> dict[str, int]:
    """``replicas`` for the managed pool; other pools 0, or held while the managed one fills."""
    filling = dep.ready < 1 or dep.starting > 0
    return {
        p.name: replicas if p.name == dep.name else (round(p.desired) if filling else 0)
        for p in state.pools
    }


def clamp(n: int, lo: int, hi: int) -> int:
    """``n`` within ``[lo, hi]`` (``hi`` wins if they cross)."""
    return max(min(n, hi), min(lo, hi))


def window(samples: list[list[float]], now: float, span_s: float) -> list[list[float]]:
    """The ``[time_s, value]`` samples newer than ``now - span_s`` (controllers' "After")."""
    return [s for s in samples if s[0] > now - span_s]


def factory_for(cls: type[P], pool_params: tuple[str, ...] = ("pool",)) -> Callable[..., P]:
    """A registry factory: params -> policy, with pool names checked against the scenario."""

    def factory(scenario: Scenario, params: dict[str, Any]) -> P:
        policy = policy_from_params(cls, params)
        for param in pool_params:
            check_pool(scenario, getattr(cls, "name", cls.__name__), param, getattr(policy, param))
        return policy

    return factory
