"""Why an answer is what it is: cause codes, and the reasons that carry them.

Every reason the service gives is a :class:`Reason`: a :class:`Cause` (the machine-readable
code that alerts and dashboards key on) with the detail of this case. Its text is rendered
from the two, never parsed back: ``Reason(Cause.STALE_METRICS, "300 s old (max 60 s)")``
reads ``stale metrics: 300 s old (max 60 s)``, and one about a pool reads
``h100: step down limited to -2 (asked 0, current 6)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Cause(StrEnum):
    """A cause code; its value is the code, :attr:`label` the words a reason starts with."""

    label: str
    """The words a reason of this cause starts with."""

    def __new__(cls, code: str, label: str) -> Cause:
        member = str.__new__(cls, code)
        member._value_ = code
        member.label = label
        return member

    STALE_METRICS = "stale_metrics", "stale metrics"
    INVALID_INPUT = "invalid_input", "invalid input"
    MISSING_INPUT = "missing_input", "missing input"
    NO_POLICY = "no_policy", "no policy loaded"
    POLICY_FAILED = "policy_failed", "policy failed"
    BUDGET_UNKNOWN = "budget_unknown", "the observed budget's spend is not known whole"
    BATCH_UNKNOWN = "batch_unknown", "the batch inputs the policy observes are not known"
    FALLBACK_FAILED = "fallback_failed", "fallback failed"
    FALLBACK_DECIDED = "fallback_decided", "fallback decided"
    HOLD = "hold", "hold"
    LAST_KNOWN_GOOD = "last_known_good", "current replicas unknown, last known-good count used"
    NO_SCALE_DOWN = "no_scale_down", "no scale-down on missing or untrusted input"
    NO_RECOMMENDATION = "no_recommendation", "no recommendation"
    STEP_UP_LIMITED = "step_up_limited", "step up limited to"
    STEP_DOWN_LIMITED = "step_down_limited", "step down limited to"
    MIN_REPLICAS = "min_replicas", "min_replicas"
    MAX_REPLICAS = "max_replicas", "max_replicas"
    CLUSTER_QUOTA = "cluster_quota", "cluster quota"
    WARM_POOL_LIMITED = "warm_pool_limited", "warm pool"


FALLBACK_CAUSES = frozenset(
    {
        Cause.STALE_METRICS,
        Cause.INVALID_INPUT,
        Cause.MISSING_INPUT,
        Cause.NO_POLICY,
        Cause.POLICY_FAILED,
        Cause.BUDGET_UNKNOWN,
        Cause.BATCH_UNKNOWN,
    }
)
"""Why the policy did not decide (``rlscale_fallback_causes_total{cause=...}``)."""

GUARDRAIL_CAUSES = frozenset(
    {
        Cause.STEP_UP_LIMITED,
        Cause.STEP_DOWN_LIMITED,
        Cause.MIN_REPLICAS,
        Cause.MAX_REPLICAS,
        Cause.CLUSTER_QUOTA,
        Cause.WARM_POOL_LIMITED,
    }
)
"""Causes that mean a guardrail changed the answer."""

PROBLEM_CAUSES = frozenset({Cause.STALE_METRICS, Cause.INVALID_INPUT, Cause.MISSING_INPUT})
"""Causes that mean the input cannot be trusted as it stands."""


@dataclass(frozen=True)
class Reason:
    """One reason: its cause, the detail of this case, and the pool it is about (if one)."""

    cause: Cause
    detail: str = ""
    pool: str | None = None

    def __str__(self) -> str:
        if self.pool is not None:
            return f"{self.pool}: {self.cause.label} {self.detail}".rstrip()
        return f"{self.cause.label}: {self.detail}" if self.detail else self.cause.label


def texts(reasons: list[Reason]) -> list[str]:
    """The reasons as the response writes them."""
    return [str(r) for r in reasons]


def codes(reasons: list[Reason]) -> list[str]:
    """The distinct cause codes of ``reasons``, in the order they first appear."""
    return list(dict.fromkeys(r.cause.value for r in reasons))
