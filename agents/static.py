"""Static peak provisioning: enough replicas for the peak load, held all episode."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

from rlscale.agents.base import ClusterState, Decision, Memory


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
