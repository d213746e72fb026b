"""Static peak provisioning: enough replicas for the peak load, held all episode."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from rlscale.agents.base import ClusterState, Decision, Memory
from rlscale.agents.registry import register
from rlscale.envs.scenario import Scenario

if TYPE_CHECKING:
    from rlscale.envs.simulator import ClusterSimulator


@dataclass(frozen=True)
class StaticPolicy:
    """Hold a fixed replica count per pool: what many teams run, sized for the peak.

    :param replicas: pool name -> replica count. Pools not named keep what they have.
    """

    replicas: dict[str, int]
    name: str = "static"

    @classmethod
    def for_peak(
        cls, peak_rps: float, pool: str, capacity_rps: float, *, headroom: float = 0.2
    ) -> StaticPolicy:
        """Size one pool for ``peak_rps`` with ``headroom`` spare capacity."""
        if capacity_rps <= 0:
            raise ValueError(f"capacity_rps must be positive, got {capacity_rps}")
        return cls({pool: max(1, math.ceil(peak_rps * (1.0 + headroom) / capacity_rps))})

    def initial_memory(self) -> Memory:
        """No state is carried."""
        return {}

    def decide(self, state: ClusterState, memory: Memory) -> tuple[Decision, Memory]:
        """The fixed counts; other pools keep their current target."""
        targets = {p.name: round(p.desired) for p in state.pools}
        targets.update(self.replicas)
        return Decision(targets), memory

    def config(self) -> dict[str, Any]:
        """The replica counts."""
        return asdict(self)


def _factory(scenario: Scenario, params: dict[str, Any]) -> StaticPolicy:
    replicas = params.get("replicas") or {p.name: p.initial_replicas for p in scenario.pools}
    return StaticPolicy({str(k): int(v) for k, v in replicas.items()})


def static_space(sim: ClusterSimulator) -> dict[str, list[Any]]:
    """``static``'s tuning space: the cheapest on-demand pool per capacity held at 1..quota
    replicas, i.e. the smallest peak provisioning that meets the SLO."""
    pools = [(p, c) for p, c in zip(sim.pools, sim.pool_capacity_rps, strict=True) if c > 0]
    on_demand = [(p, c) for p, c in pools if p.purchase == "on_demand"] or pools
    pool = min(on_demand, key=lambda pc: (pc[0].price_usd_h / pc[1], pc[0].name))[0]
    return {"replicas": [{pool.name: n} for n in range(1, pool.quota + 1)]}


register("static", _factory, param_space=static_space)
