"""Guardrails applied to every answer: replica bounds, step limits, quotas, warm-pool size.

Pure functions of the wanted targets, the current replicas and the limits; each returns the
guarded numbers and one :class:`~rlscale.serving.causes.Reason` per change, so the caller can
see what a guardrail did.
Order matters and is fixed: step limits first (how far one decision may move a pool), then
bounds (min/max per pool, which win over the step limit so a pool outside its bounds is brought
back), then the cluster quota on the sum, then warm pools within what the quota leaves.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from rlscale.serving.causes import Cause, Reason


@dataclass(frozen=True)
class PoolLimits:
    """What one pool may run."""

    min_replicas: int = 0
    max_replicas: int = 1
    """Upper bound on target replicas: the pool's quota unless configured lower."""
    warm_pool_max: int = 0


@dataclass(frozen=True)
class Guardrails:
    """Limits of every pool and of one decision."""

    pools: dict[str, PoolLimits] = field(default_factory=dict)
    max_step_up: int = 4
    """Most replicas one decision may add to a pool."""
    max_step_down: int = 2
    """Most replicas one decision may remove from a pool."""
    max_total_replicas: int | None = None
    """Quota on the sum of target replicas over all pools; None = the sum of pool quotas."""

    def __post_init__(self) -> None:
        if self.max_step_up < 1 or self.max_step_down < 1:
            raise ValueError(
                f"max_step_up ({self.max_step_up}) and max_step_down ({self.max_step_down}) "
                "must be >= 1"
            )
        for name, lim in self.pools.items():
            if not 0 <= lim.min_replicas <= lim.max_replicas:
                raise ValueError(
                    f"pool '{name}': need 0 <= min_replicas ({lim.min_replicas}) <= "
                    f"max_replicas ({lim.max_replicas})"
                )
        if self.max_total_replicas is not None and self.max_total_replicas < 0:
            raise ValueError(f"max_total_replicas ({self.max_total_replicas}) must be >= 0")


def limit_steps(
    wanted: dict[str, int], current: dict[str, int], max_up: int, max_down: int
) -> tuple[dict[str, int], list[Reason]]:
    """Each pool moves at most ``max_up`` up or ``max_down`` down from ``current``."""
    out: dict[str, int] = {}
    reasons: list[Reason] = []
    for pool, want in wanted.items():
        now = current.get(pool, 0)
        got = min(max(want, now - max_down), now + max_up)
        if got != want:
            up = want > now
            cause = Cause.STEP_UP_LIMITED if up else Cause.STEP_DOWN_LIMITED
            step = f"+{max_up}" if up else f"-{max_down}"
            reasons.append(Reason(cause, f"{step} (asked {want}, current {now})", pool))
        out[pool] = got
    return out, reasons


def apply_bounds(
    wanted: dict[str, int], limits: dict[str, PoolLimits]
) -> tuple[dict[str, int], list[Reason]]:
    """Each pool within ``[min_replicas, max_replicas]``; pools without limits are dropped."""
    out: dict[str, int] = {}
    reasons: list[Reason] = []
    for pool, lim in limits.items():
        want = wanted.get(pool, lim.min_replicas)
        got = min(max(want, lim.min_replicas), lim.max_replicas)
        if got != want:
            bound = Cause.MIN_REPLICAS if got > want else Cause.MAX_REPLICAS
            reasons.append(Reason(bound, f"{got} (asked {want})", pool))
        out[pool] = got
    return out, reasons


def apply_total_quota(
    wanted: dict[str, int], limits: dict[str, PoolLimits], max_total: int | None
) -> tuple[dict[str, int], list[Reason]]:
    """The sum within ``max_total``: trim the largest pools first, never below their minimum."""
    if max_total is None:
        return dict(wanted), []
    out = dict(wanted)
    excess = sum(out.values()) - max_total
    if excess <= 0:
        return out, []
    asked = sum(out.values())
    while excess > 0:
        spare = [
            p for p in out if out[p] > (limits[p].min_replicas if p in limits else 0)
        ]  # pools that can still give a replica
        if not spare:
            break
        biggest = max(spare, key=lambda p: (out[p], p))
        out[biggest] -= 1
        excess -= 1
    return out, [Reason(Cause.CLUSTER_QUOTA, f"{max_total} replicas in all (asked {asked})")]


def limit_warm_pool(
    wanted: dict[str, int], replicas: dict[str, int], limits: dict[str, PoolLimits]
) -> tuple[dict[str, int], list[Reason]]:
    """Warm pool in ``[0, warm_pool_max]`` and within the quota left by the targets."""
    out: dict[str, int] = {}
    reasons: list[Reason] = []
    for pool, lim in limits.items():
        want = wanted.get(pool, 0)
        room = max(min(lim.warm_pool_max, lim.max_replicas - replicas.get(pool, 0)), 0)
        got = min(max(want, 0), room)
        if got != want:
            detail = f"{got} (asked {want}, room {room})"
            reasons.append(Reason(Cause.WARM_POOL_LIMITED, detail, pool))
        out[pool] = got
    return out, reasons


def guard(
    wanted: dict[str, int],
    warm: dict[str, int],
    current: dict[str, int],
    rails: Guardrails,
) -> tuple[dict[str, int], dict[str, int], list[Reason]]:
    """All guardrails in order; returns (replicas, warm pool, reasons)."""
    stepped, r1 = limit_steps(wanted, current, rails.max_step_up, rails.max_step_down)
    bounded, r2 = apply_bounds(stepped, rails.pools)
    capped, r3 = apply_total_quota(bounded, rails.pools, rails.max_total_replicas)
    warm_out, r4 = limit_warm_pool(warm, capped, rails.pools)
    return capped, warm_out, r1 + r2 + r3 + r4
