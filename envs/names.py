"""Names of the simulator's results, importable without loading the numba kernel.

The evaluation's command line imports these to build its tables and parser; importing
:mod:`rlscale.envs.simulator` there would load numba for ``rlscale --help``.
"""

from __future__ import annotations

EPISODE_LATENCY_KEYS = (
    "ttft_p50_s",
    "ttft_p95_s",
    "ttft_p99_s",
    "tpot_p50_s",
    "tpot_p95_s",
    "tpot_p99_s",
    "ttft_attainment",
    "ttft_mean_s",
)
"""What ``ClusterSimulator.episode_latency`` reports, in the kernel's order."""

BILLED_STATES = ("provisioning", "loading", "ready", "draining", "refilling")
"""The replica states billed at the pool's replica price (the kernel's billing step in
``envs/dynamics.py``); a standby replica costs the pool's warm-pool holding price instead.
Names as in ``rlscale.envs.simulator.POOL_STATES``."""

BUDGET_LIMIT_USD = "budget_limit_usd"
BUDGET_PEAK_SPEND_USD = "budget_peak_spend_usd"
BUDGET_BREACHES = "budget_breaches"
BUDGET_GROUPS = (BUDGET_LIMIT_USD, BUDGET_PEAK_SPEND_USD, BUDGET_BREACHES)
"""An episode summary's per-budget dicts (``{budget name: value}``; keyed ``group/name`` when
flat): the limit, the most one period of the episode spent, and the periods that went over."""

CAP_BOUND_STEPS = "cap_bound_steps"
CAP_BOUND_REQUESTS = "cap_bound_requests"
CAP_BOUND_MET = "cap_bound_met"
CAP_COUNTS = (CAP_BOUND_STEPS, CAP_BOUND_REQUESTS, CAP_BOUND_MET)
"""An episode under a budget cap: the steps where the cap cut the policy's action, and the
requests of those steps that counted for the SLO and that met it."""

COST_BY_CLASS_USD = "cost_by_class_usd"
"""An episode summary's cost per request class (``interactive``, ``batch``), summing to the
bill (only with batch work)."""
BATCH_COUNTS = "batch"
"""An episode summary's batch-request accounting: arrived, admitted, completed, expired,
requeued, queued and in flight (only with batch work)."""
BATCH_ATTAINMENT = "batch_attainment"
"""The share of batch requests whose fate is known that completed within their deadline."""
