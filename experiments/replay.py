"""The same requests for both models: a recorded trace's window, as the fluid model bins it and
as the request-level DES (:mod:`rlscale.experiments.des`) replays it, and the fluid scenario of a
fixed replica count. :func:`replay` sets one up; :func:`run_des` and :func:`run_fluid` run it.
"""

from __future__ import annotations

import functools
import math
import time
from dataclasses import dataclass

import numpy as np

from rlscale.envs.scenario import Scenario, WorkloadConfig, scenario_from_dict
from rlscale.envs.traces import read_trace
from rlscale.experiments.des import DESResult, Routing, simulate

AZURE_CONV = "azure_llm_trace_2023/AzureLLMInferenceTrace_conv.csv"
"""The Azure LLM inference trace (conversation), relative to the data root."""

MOONCAKE_CONV = "mooncake_fast25_traces/conversation_trace.jsonl"
"""The Mooncake (FAST'25) conversation trace, relative to the data root."""

TTFT_TARGET_S = 2.0
"""The SLO's TTFT target: the knee is where p95 TTFT crosses it; attainment counts by it."""


def workload_config(
    *,
    time_scale: float = 1.0,
    rate_scale: float = 1.0,
    window_hours: float | None = None,
    path: str = AZURE_CONV,
    kind: str = "azure",
) -> WorkloadConfig:
    """The workload section both models replay."""
    return WorkloadConfig(
        kind=kind,
        path=path,
        time_scale=time_scale,
        rate_scale=rate_scale,
        window_hours=window_hours,
    )


def window_requests(
    cfg: WorkloadConfig, *, substep_s: float = 1.0, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    """The requests of a recorded-trace workload exactly as ``build_workload`` bins them.

    Returns (arrival_s from the window start, prompt, output, window length in seconds), sorted
    by time. Time scaling and the window are deterministic; a ``rate_scale`` other than 1 uses
    the workload module's own thinning/superposition with the same seeded generator, so the DES
    and the fluid model see the same requests (``compare`` checks the binned counts agree).
    """
    from rlscale.envs import workload as wlmod

    if cfg.path is None or cfg.kind not in ("azure", "mooncake", "csv"):
        raise ValueError(f"window_requests needs a recorded trace, got kind {cfg.kind!r}")
    req = read_trace(cfg.kind, cfg.path)
    req = req.time_scaled(cfg.time_scale)
    start_s, n_bins = wlmod._select_window(
        cfg, float(req.time_s[-1]), substep_s, what=req.source, last_is_request=True
    )
    span_s = n_bins * substep_s
    mask = (req.time_s >= start_s) & (req.time_s < start_s + span_s)
    scale = wlmod._rate_scale(cfg, int(mask.sum()), span_s, req.source)
    rng = np.random.default_rng(np.random.SeedSequence(seed))
    t, prompt, output, _ = wlmod._rescale_requests(req, mask, start_s, span_s, scale, rng)
    order = np.argsort(t, kind="stable")
    return t[order], prompt[order], output[order], span_s


def fluid_scenario(
    profile_name: str,
    replicas: int,
    cfg: WorkloadConfig,
    episode_hours: float,
    *,
    max_batched_tokens: int = 8192,
    timeout_s: float = 60.0,
    substep_s: float = 1.0,
    control_interval_s: float = 30.0,
    routing: Routing = "least_loaded",
    ttft_target_s: float = TTFT_TARGET_S,
) -> Scenario:
    """One on-demand pool of ``replicas`` ready replicas, nothing else moving.

    :param profile_name: a stored profile's name, or the path of a profile YAML file.
    :param routing: the scenario's routing setting (see :class:`~rlscale.envs.scenario.Scenario`).
    :param ttft_target_s: the SLO's TTFT target, which the fluid model's attainment counts by.
    """
    return scenario_from_dict(
        {
            "name": f"fidelity-{profile_name}-x{replicas}",
            "description": "fixed replicas, for the fluid-vs-DES fidelity check",
            "control_interval_s": control_interval_s,
            "substep_s": substep_s,
            "episode_hours": episode_hours,
            "workload": cfg.model_dump(),
            "pools": [
                {
                    "name": "gpu",
                    "profile": profile_name,
                    "purchase": "on_demand",
                    "price_usd_h": 1.0,
                    "quota": replicas,
                    "initial_replicas": replicas,
                }
            ],
            "slo": {"timeout_s": timeout_s, "ttft_s": ttft_target_s},
            "max_batched_tokens": max_batched_tokens,
            "routing": routing,
        }
    )


def run_fluid(sc: Scenario, seed: int = 0) -> dict[str, float]:
    """Step the fluid model through one episode with no-op actions; its totals and latencies.

    :param seed: the workload seed (rate-scaling copies); the cluster's own stream is seed 0.
    """
    from rlscale.envs.simulator import ClusterSimulator

    t0 = time.perf_counter()
    sim = ClusterSimulator(sc, 1, workload_seed=seed)
    sim.reset_cluster(0, np.random.default_rng(0), start_step=0)
    a = sim.noop_action()
    util = []
    batch = []
    while not sim.truncated()[0]:
        sim.step(a)
        info = sim.step_info(0)
        util.append(info["load/compute_util"])
        batch.append(info["load/in_flight"])
    cnt = sim.counters(0)
    lat = sim.episode_latency(0)
    prof = sim.pools[0].profile
    R = sc.pools[0].initial_replicas
    return {
        "arrived": cnt["arrived"],
        "completed": cnt["completed"],
        "dropped": cnt["dropped"],
        "admitted": cnt["admitted"],
        "queued": cnt["queued"],
        "in_flight": cnt["in_flight"],
        "ttft_p50_s": lat["ttft_p50_s"],
        "ttft_p95_s": lat["ttft_p95_s"],
        "ttft_p99_s": lat["ttft_p99_s"],
        "tpot_p50_s": lat["tpot_p50_s"],
        "tpot_p95_s": lat["tpot_p95_s"],
        "ttft_attainment": lat["ttft_attainment"],
        "ttft_mean_s": lat["ttft_mean_s"],
        "utilization": float(np.mean(util)) if util else 0.0,
        "batch_fill": float(np.mean(batch)) / (R * prof.max_num_seqs) if batch else 0.0,
        "episode_s": sim.episode_steps * sc.control_interval_s,
        "wall_s": time.perf_counter() - t0,
    }


@functools.lru_cache(maxsize=64)
def _window_requests_cached(
    cfg_json: str, substep_s: float, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:
    # a knee search replays one window at many replica counts: read and bin the trace once
    cfg = WorkloadConfig.model_validate_json(cfg_json)
    t, prompt, output, span_s = window_requests(cfg, substep_s=substep_s, seed=seed)
    for a in (t, prompt, output):
        a.flags.writeable = False
    return t, prompt, output, span_s


@dataclass(frozen=True)
class Replay:
    """One fixed replica count on one trace window, set up for both models.

    Attributes:
        scenario: the fluid model's scenario (one pool, ``replicas`` ready, nothing moving).
        arrival_s, prompt_tokens, output_tokens: the requests before the horizon, which the
            fluid model bins (checked), in arrival order.
        horizon_s: the workload window rounded DOWN to whole control intervals (the episode).
    """

    scenario: Scenario
    arrival_s: np.ndarray
    prompt_tokens: np.ndarray
    output_tokens: np.ndarray
    horizon_s: float

    @property
    def replicas(self) -> int:
        """The pool's ready replicas."""
        return self.scenario.pools[0].initial_replicas

    @property
    def load_rps(self) -> float:
        """Mean arrival rate over the horizon."""
        return self.arrival_s.size / self.horizon_s


def replay(
    profile_name: str,
    replicas: int,
    cfg: WorkloadConfig,
    *,
    max_batched_tokens: int = 8192,
    timeout_s: float = 60.0,
    substep_s: float = 1.0,
    control_interval_s: float = 30.0,
    routing: Routing = "least_loaded",
    ttft_target_s: float = TTFT_TARGET_S,
    seed: int = 0,
) -> Replay:
    """Set up ``replicas`` replicas of a profile on a trace window for both models.

    The keyword settings go to :func:`fluid_scenario`; the DES takes them from the scenario.

    :raises AssertionError: the DES's requests differ from the fluid workload's binned arrivals.
    """
    from rlscale.envs.simulator import scenario_workload

    settings = {
        "max_batched_tokens": max_batched_tokens,
        "timeout_s": timeout_s,
        "substep_s": substep_s,
        "control_interval_s": control_interval_s,
        "routing": routing,
        "ttft_target_s": ttft_target_s,
    }
    probe = fluid_scenario(profile_name, replicas, cfg, control_interval_s / 3600.0, **settings)
    wl = scenario_workload(probe, seed)
    steps = int(wl.duration_s // control_interval_s)
    horizon_s = steps * control_interval_s
    sc = fluid_scenario(profile_name, replicas, cfg, horizon_s / 3600.0, **settings)
    assert sc.episode_steps == steps, (sc.episode_steps, steps)
    t, prompt, output, _ = _window_requests_cached(cfg.model_dump_json(), substep_s, seed)
    # the DES must see exactly the requests the fluid model bins
    n_bins = round(horizon_s / substep_s)
    fed = t < horizon_s
    counts = np.bincount((t[fed] / substep_s).astype(np.int64), minlength=n_bins)[:n_bins]
    if not np.allclose(counts, wl.arrivals[:n_bins]):
        raise AssertionError("DES requests differ from the fluid workload's binned arrivals")
    return Replay(sc, t[fed], prompt[fed], output[fed], horizon_s)


def run_des(rp: Replay, seed: int = 0) -> DESResult:
    """Run the DES on a replay with its scenario's settings (routing and its seed included)."""
    sc = rp.scenario
    return simulate(
        sc.pools[0].profile,
        rp.replicas,
        rp.arrival_s,
        rp.prompt_tokens,
        rp.output_tokens,
        horizon_s=rp.horizon_s,
        max_batched_tokens=sc.max_batched_tokens,
        timeout_s=sc.slo.timeout_s,
        routing=sc.routing,
        seed=seed,
        ttft_target_s=sc.slo.ttft_s,
    )


def rel_err(des: float, fluid: float) -> float:
    """Relative error of the fluid value, taking the DES as the reference."""
    if des == 0.0:
        return 0.0 if fluid == 0.0 else math.inf
    return (fluid - des) / des
