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
