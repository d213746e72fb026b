"""Hypothesis strategies the env tests share (a module, not a fixture: ``@given`` takes
strategies at import time). Import as ``from strategies import ...``: pytest puts this folder
on the path."""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st


@st.composite
def random_pools(
    draw,
    *,
    profiles: list[str],
    max_quota: int = 8,
    min_fulfil: float = 0.0,
    on_demand_first: bool = False,
    serves: bool = False,
) -> list[dict[str, Any]]:
    """1-3 random pools for a scenario dict: on demand (with a warm pool) or spot.

    :param on_demand_first: the first pool is on demand (the baselines need one).
    :param serves: draw each pool's request classes (``serves``) too.
    """
    pools = []
    for p in range(draw(st.integers(1, 3))):
        quota = draw(st.integers(1, max_quota))
        pool: dict[str, Any] = {
            "name": f"pool{p}",
            "profile": draw(st.sampled_from(profiles)),
            "price_usd_h": draw(st.floats(0.5, 20.0)),
            "quota": quota,
            "initial_replicas": draw(st.integers(0, quota)),
        }
        if (p > 0 or not on_demand_first) and draw(st.booleans()):
            pool["purchase"] = "spot"
            pool["spot"] = {
                "hazard_per_h": draw(st.floats(0.0, 20.0)),
                "notice_s": draw(st.sampled_from([0.0, 30.0, 120.0])),
                "fulfil_prob": draw(st.floats(min_fulfil, 1.0)),
                "volatility": draw(st.floats(0.0, 1.0)),
            }
        else:
            pool["warm_pool_max"] = draw(st.integers(0, quota - pool["initial_replicas"]))
            pool["warm_holding_usd_h"] = draw(st.floats(0.0, 1.0))
        if serves:
            pool["serves"] = draw(st.sampled_from(["all", "interactive", "batch"]))
        pools.append(pool)
    return pools
