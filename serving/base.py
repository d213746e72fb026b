"""What the decision service's front ends (HTTP, KEDA gRPC) need from its core.

The core (:class:`rlscale.serving.service.DecisionService`) keeps the cluster's latest state,
asks the policy, applies guardrails and falls back to a rule-based scaler; front ends only
translate. KEDA's calls carry no metrics, so the gRPC scaler asks the core for the current
recommendation of one pool.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable


@dataclass(frozen=True)
class PoolRecommendation:
    """The replicas recommended for one pool now, and where the number came from."""

    pool: str
    replicas: int
    source: str
    """``policy``, or ``fallback`` when a guardrail or the rule-based scaler decided."""
    reason: str = ""
    policy_version: str = ""


@runtime_checkable
class PoolRecommender(Protocol):
    """The core as a front end sees it."""

    def is_ready(self) -> bool:
        """A policy is loaded (``/readyz``, KEDA's IsActive)."""
        ...

    def pools(self) -> list[str]:
        """Pool names the service decides for."""
        ...

    def recommend(self, pool: str) -> PoolRecommendation:
        """The current recommendation for ``pool`` (KeyError for an unknown pool)."""
        ...
