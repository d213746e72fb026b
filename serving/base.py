"""What the decision service's front ends (HTTP, KEDA gRPC) need from its core.

The core (:class:`rlscale.serving.service.DecisionService`) keeps each cluster's latest state,
asks the policy, applies guardrails and falls back to a rule-based scaler; front ends only
translate. KEDA's calls carry no metrics, so the gRPC scaler asks the core for the current
recommendation of one pool of one cluster, and the core says when it has none it may act on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

TOKEN_ENV_VAR = "RLSCALE_API_TOKEN"
"""The environment variable that holds the bearer token of ``/v1/*``."""


@dataclass(frozen=True)
class PoolRecommendation:
    """The replicas recommended for one pool of one cluster now, and where they came from."""

    pool: str
    replicas: int
    source: str
    """``policy``, or ``fallback`` when a guardrail or the rule-based scaler decided."""
    reason: str = ""
    policy_version: str = ""
    cluster: str = ""


class NoRecommendationError(LookupError):
    """No number to act on for this cluster and pool: no state yet, a stale one, or a pool
    whose current count was never known. Scalers must hold (KEDA: its ``fallback``)."""


@runtime_checkable
class PoolRecommender(Protocol):
    """The core as a front end sees it."""

    def is_ready(self) -> bool:
        """A policy is loaded (``/readyz``)."""
        ...

    def pools(self) -> list[str]:
        """Pool names the service decides for."""
        ...

    def recommend(self, cluster: str, pool: str) -> PoolRecommendation:
        """The current recommendation for ``pool`` of ``cluster``.

        :raises KeyError: an unknown pool.
        :raises NoRecommendationError: nothing fresh to act on.
        """
        ...
