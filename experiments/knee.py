"""The SLO's knee: replica counts around it, and the capacity at the SLO, in either model.

The SLO here is p95 TTFT within a target (:data:`~rlscale.experiments.replay.TTFT_TARGET_S`, 2 s,
except for the Mooncake trace, whose long prompts' prefill alone takes 2.3 s at p95 on 4x H100
with Llama-3-70B: 10 s, as its scenario has it) over a whole trace window at a fixed replica
count. Its knee for a trace, profile and time compression
(a :class:`KneeCase`) is where adding one replica moves p95 TTFT from a miss to a hold:
:func:`knee_counts` finds, with the DES by default, the last count that misses and the first
two that hold; :data:`KNEE_GRID` freezes them for the fidelity report. The capacity at the SLO
(:func:`capacity_at_slo`) is the other way round: the highest time compression at which ``R``
replicas hold it. Both searches assume that p95 TTFT only grows with load and shrinks with
replicas; every run they make is cached per process, so the report's tables share them.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from rlscale.envs.scenario import ScenarioError, WorkloadConfig
from rlscale.experiments.des import Routing
from rlscale.experiments.replay import (
    AZURE_CONV,
    MOONCAKE_CONV,
    TTFT_TARGET_S,
    replay,
    run_des,
    run_fluid,
    workload_config,
)

Model = Literal["des", "fluid"]

TRACES: dict[str, tuple[str, str]] = {
    "azure-conv": ("azure", AZURE_CONV),
    "mooncake-conv": ("mooncake", MOONCAKE_CONV),
}
"""Trace name -> (workload kind, path under the data root)."""

TTFT_TARGETS_S: dict[str, float] = {"mooncake-conv": 10.0}
"""TTFT targets other than :data:`~rlscale.experiments.replay.TTFT_TARGET_S`, per trace: the
Mooncake trace's p95 prefill alone misses 2 s (its scenario, ``mooncake-conv``, sets 10 s)."""

CAPACITY_REL_TOL = 0.01
"""The capacity bisection stops when its bracket is within 1 % (it reports the bracket's low,
holding end, so it understates by at most 1 %)."""

MIN_EPISODE_INTERVALS = 4
"""The shortest window the capacity search compresses a trace to, in control intervals."""


@dataclass(frozen=True)
class KneeCase:
    """One trace replayed on replicas of one profile at one time compression.

    Attributes:
        trace: a key of :data:`TRACES`.
        profile: the stored throughput profile.
        compression: how many times faster than recorded the trace is replayed
            (``1 / time_scale``).
        ttft_target_s: the SLO's TTFT target.
    """

    trace: str
    profile: str
    compression: float
    ttft_target_s: float = TTFT_TARGET_S

    @property
    def label(self) -> str:
        """``trace, profile, compression`` for tables."""
        return f"{self.trace} {self.profile} {self.compression:g}x"

    def workload(self, compression: float | None = None) -> WorkloadConfig:
        """The workload section, at the case's compression or another."""
        kind, path = TRACES[self.trace]
        x = self.compression if compression is None else compression
        return workload_config(time_scale=1.0 / x, path=path, kind=kind)


def knee_case(trace: str, profile: str, compression: float) -> KneeCase:
    """The :class:`KneeCase` of a trace, profile and compression, with the trace's TTFT target."""
    if trace not in TRACES:
        raise ValueError(f"unknown trace {trace!r}; known: {sorted(TRACES)}")
    return KneeCase(trace, profile, float(compression), TTFT_TARGETS_S.get(trace, TTFT_TARGET_S))


KNEE_CASES: tuple[KneeCase, ...] = (
    *(
        knee_case("azure-conv", profile, x)
        for profile in ("h100x1-llama3-8b", "a100x1-llama3-8b")
        for x in (1.0, 10.0, 20.0)
    ),
    knee_case("mooncake-conv", "h100x4-llama3-70b", 1.0),
)
"""The issue's cases: the Azure conversation trace on one H100 or A100 (Llama-3-8B) at 1x, 10x
and 20x, and the Mooncake conversation trace on 4x H100 (Llama-3-70B) at 1x; whole traces."""

KNEE_GRID: tuple[tuple[str, str, float, int], ...] = (
    ("azure-conv", "h100x1-llama3-8b", 1.0, 1),
    ("azure-conv", "h100x1-llama3-8b", 1.0, 2),
    ("azure-conv", "h100x1-llama3-8b", 10.0, 4),
    ("azure-conv", "h100x1-llama3-8b", 10.0, 5),
    ("azure-conv", "h100x1-llama3-8b", 10.0, 6),
    ("azure-conv", "h100x1-llama3-8b", 20.0, 7),
    ("azure-conv", "h100x1-llama3-8b", 20.0, 8),
    ("azure-conv", "h100x1-llama3-8b", 20.0, 9),
    ("azure-conv", "a100x1-llama3-8b", 1.0, 1),
    ("azure-conv", "a100x1-llama3-8b", 1.0, 2),
    ("azure-conv", "a100x1-llama3-8b", 1.0, 3),
    ("azure-conv", "a100x1-llama3-8b", 10.0, 10),
    ("azure-conv", "a100x1-llama3-8b", 10.0, 11),
    ("azure-conv", "a100x1-llama3-8b", 10.0, 12),
    ("azure-conv", "a100x1-llama3-8b", 20.0, 19),
    ("azure-conv", "a100x1-llama3-8b", 20.0, 20),
    ("azure-conv", "a100x1-llama3-8b", 20.0, 21),
    ("mooncake-conv", "h100x4-llama3-70b", 1.0, 4),
    ("mooncake-conv", "h100x4-llama3-70b", 1.0, 5),
    ("mooncake-conv", "h100x4-llama3-70b", 1.0, 6),
)
"""(trace, profile, compression, replicas) around each case's knee.

DES p95 TTFT (s) at these counts: H100 1x 0.14 / 0.12; 10x 3.9 / 0.17 / 0.14; 20x 8.3 / 1.2 /
0.21; A100 1x 33 / 0.29 / 0.28; 10x 3.6 / 0.40 / 0.35; 20x 3.5 / 1.4 / 0.44; Mooncake (10 s
target) 18.6 / 3.1 / 2.8. Found by ``knee_counts(case)`` (the DES, least-loaded routing) for
every case of :data:`KNEE_CASES`: the last replica count whose p95 TTFT misses the target (left
out where one replica already holds) and the first two that hold it; ``tests/envs/test_knee.py``
re-derives it.
"""


@functools.lru_cache(maxsize=4096)
def evaluate(
    model: Model,
    case: KneeCase,
    replicas: int,
    compression: float | None = None,
    routing: Routing = "least_loaded",
) -> dict[str, float]:
    """One model's run of a case at a replica count: the DES's summary or the fluid's totals.

    Cached: treat the result as read-only.
    """
    rp = replay(
        case.profile,
        replicas,
        case.workload(compression),
        routing=routing,
        ttft_target_s=case.ttft_target_s,
    )
    if model == "des":
        return run_des(rp).summary()
    if model == "fluid":
        return run_fluid(rp.scenario)
    raise ValueError(f"model must be 'des' or 'fluid', got {model!r}")


def holds_slo(result: dict[str, float], ttft_target_s: float = TTFT_TARGET_S) -> bool:
    """Whether a run's p95 TTFT is within the target."""
    return result["ttft_p95_s"] <= ttft_target_s


def fewest_holding(holds: Callable[[int], bool], max_n: int) -> int | None:
    """The smallest ``n >= 1`` with ``holds(n)``, for ``holds`` monotone (False then True):
    doubling, then bisection; None if not even ``max_n`` holds."""
    if holds(1):
        return 1
    lo, hi = 1, 2  # lo misses
    while not holds(hi):
        if hi >= max_n:
            return None
        lo, hi = hi, min(2 * hi, max_n)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if holds(mid) else (mid, hi)
    return hi


def largest_holding(
    holds: Callable[[float], bool], start: float, cap: float, rel_tol: float, floor: float
) -> float:
    """The largest ``x`` in ``[floor, cap]`` with ``holds(x)``, for ``holds`` monotone (True
    then False), to within ``rel_tol``: doubling or halving from ``start``, then geometric
    bisection. Returns the bracket's holding end (never above the truth), ``cap`` if that holds
    and 0 if ``floor`` does not."""
    lo = hi = min(start, cap)
    if holds(lo):
        while hi < cap:
            hi = min(2.0 * hi, cap)
            if not holds(hi):
                break
            lo = hi
        else:
            return cap
    else:
        while not holds(lo):
            if lo <= floor:
                return 0.0
            hi, lo = lo, max(lo / 2.0, floor)
    while hi / lo - 1.0 > rel_tol:
        mid = math.sqrt(lo * hi)
        lo, hi = (mid, hi) if holds(mid) else (lo, mid)
    return lo


def replicas_for_slo(
    case: KneeCase,
    *,
    model: Model = "des",
    routing: Routing = "least_loaded",
    max_replicas: int = 128,
) -> int:
    """The fewest replicas whose p95 TTFT holds the case's target (:func:`fewest_holding`).

    :raises ValueError: not even ``max_replicas`` hold it (the prefill alone misses it).
    """
    n = fewest_holding(
        lambda r: holds_slo(evaluate(model, case, r, None, routing), case.ttft_target_s),
        max_replicas,
    )
    if n is None:
        raise ValueError(f"{case.label}: {max_replicas} replicas miss the SLO ({model})")
    return n


def knee_counts(
    case: KneeCase, *, model: Model = "des", routing: Routing = "least_loaded"
) -> tuple[int, ...]:
    """The last replica count that misses the SLO (none if one holds) and the first two that
    hold it."""
    first = replicas_for_slo(case, model=model, routing=routing)
    return (*((first - 1,) if first > 1 else ()), first, first + 1)


def _max_compression(case: KneeCase) -> float:
    """The compression that leaves the trace :data:`MIN_EPISODE_INTERVALS` control intervals."""
    rp = replay(case.profile, 1, case.workload(1.0))
    return rp.horizon_s / (MIN_EPISODE_INTERVALS * rp.scenario.control_interval_s)


def capacity_at_slo(
    case: KneeCase,
    replicas: int,
    *,
    model: Model = "des",
    routing: Routing = "least_loaded",
    rel_tol: float = CAPACITY_REL_TOL,
) -> float:
    """The highest time compression at which ``replicas`` hold the SLO (:func:`largest_holding`
    from the case's compression, within ``rel_tol`` below the truth).

    Capped at the compression that leaves :data:`MIN_EPISODE_INTERVALS` control intervals of
    trace (returned when even that holds); 0 when the replicas miss the SLO at 1/1024 of the
    case's compression.
    """
    return largest_holding(
        lambda x: holds_slo(evaluate(model, case, replicas, x, routing), case.ttft_target_s),
        case.compression,
        _max_compression(case),
        rel_tol,
        case.compression / 1024.0,
    )


@functools.cache
def fluid_routes() -> bool:
    """Whether the fluid model honours the scenario's routing: it accepts ``random``, and a
    loaded point run under ``least_loaded`` and ``random`` gives different p95 TTFT or
    attainment."""
    case = knee_case("azure-conv", "h100x1-llama3-8b", 10.0)
    try:
        rnd = evaluate("fluid", case, 2, None, "random")
    except ScenarioError:
        return False
    ll = evaluate("fluid", case, 2, None, "least_loaded")
    keys = ("ttft_p95_s", "ttft_attainment", "completed")
    return any(ll[k] != rnd[k] for k in keys)
