"""Fidelity of the fluid cluster model against a request-level discrete-event simulator (DES).

The fluid model (:mod:`rlscale.envs.dynamics`) never sees a request: it moves fractional
sequences, context tokens and queue cohorts through 1 s sub-steps. This module simulates the SAME
cluster one request and one continuous-batching iteration at a time, written from the per-request
semantics alone, and compares the two on a replayed trace at fixed replica counts.

The DES (:func:`simulate`):

* ``R`` identical replicas of one :class:`~rlscale.envs.profiles.ThroughputProfile`, ready for
  the whole run (no scaling, no cold starts), fed by one global FIFO queue.
* Each replica runs vLLM-style iterations back to back while it holds sequences; an idle replica
  wakes when a request arrives. At the START of each iteration the replica schedules, in vLLM's
  order: one token for every decoding sequence, then the next chunk of every sequence still in
  (chunked) prefill, then new requests from the head of the global queue (FIFO, never skipping the
  head) while it has a free sequence slot (``max_num_seqs``), KV room for the new request's full
  projected context (``prompt + output`` of all its sequences, admitted ones included, at most
  ``kv_cache_tokens``) and token budget left (``max_batched_tokens``, decodes taking one token
  each; a prompt larger than the budget left is prefilled in chunks over several iterations).
* An iteration takes ``iter_base_s + iter_per_seq_s*b + iter_per_ctx_token_s*ctx +
  prefill_per_token_s*q`` with ``b`` decoding sequences, ``ctx`` the context tokens held at the
  iteration's start (prompt prefilled so far + tokens generated so far, over all its sequences)
  and ``q`` the prompt tokens prefilled in it. At its end a sequence whose prefill finished emits
  its first token (TTFT = now - arrival), each decoding sequence emits one token, and a sequence
  that has emitted all its output tokens completes and frees its slot and KV room.
* Routing: replicas PULL from the global FIFO at each iteration start. A request that arrives
  while a replica is idle wakes an idle replica (it holds no sequences, so it is the least
  loaded; requests arriving at the same instant are shared evenly among the idle replicas);
  otherwise the first replica to start an iteration with room takes it. With iterations of
  10-50 ms this is the least-loaded router up to one iteration of delay, except that a request
  never waits behind one replica's long prefill while another replica could take it.
* A request still queued ``timeout_s`` after its arrival is dropped; a request whose projected
  context alone exceeds the KV cache can never run and is dropped as soon as it reaches the head.

The event loop is compiled with numba (the whole 1 h Azure conversation trace, 19,366 requests,
takes 0.05-0.5 s at 1-8 replicas once compiled); :func:`compare` runs both models on the same
requests and horizon, :func:`fidelity_table` sweeps a load grid and :func:`format_markdown`
prints it. Utilization (share of time an iteration runs) is near 1 at any load where replicas
always hold a sequence, so the load level is read from the batch and KV fill and the queueing.

Near the load where the trace's peak minutes first build a queue, p95 TTFT is ill-conditioned
(on 1 H100 at time_scale 0.45 the DES's p94/p95/p97 TTFT are 0.49/0.57/0.93 s): a 1-2 % capacity
difference moves it by 2x. The grid stays off that knee, on both sides of it.

Run ``python -m rlscale.experiments.fidelity`` for the README table.
"""

from __future__ import annotations

import argparse
import math
import time
from dataclasses import dataclass

import numpy as np
from numba import njit

from rlscale.envs.profiles import ThroughputProfile, load_profile
from rlscale.envs.scenario import Scenario, WorkloadConfig, scenario_from_dict
from rlscale.envs.traces import TraceRequests, read_trace

AZURE_CONV = "azure_llm_trace_2023/AzureLLMInferenceTrace_conv.csv"
"""The Azure LLM inference trace (conversation), relative to the data root."""

COMPLETED_TOL = 0.05
"""Bound on the relative error of completed requests (DES vs fluid)."""

TTFT_P95_TOL = 0.20
"""Bound on the relative error of p95 TTFT (DES vs fluid)."""

DEFAULT_GRID: tuple[tuple[str, int, float], ...] = (
    ("a100x1-llama3-8b", 4, 1.0),
    ("a100x1-llama3-8b", 2, 1.0),
    ("h100x1-llama3-8b", 1, 1.0),
    ("a100x1-llama3-8b", 1, 1.5),
    ("a100x1-llama3-8b", 2, 0.6),
    ("h100x1-llama3-8b", 1, 0.5),
    ("a100x1-llama3-8b", 1, 1.25),
    ("a100x1-llama3-8b", 1, 1.0),
    ("h100x1-llama3-8b", 1, 0.35),
)
"""(profile, replicas, time_scale) on the Azure conversation trace, from light load to saturation.

``time_scale`` stretches (> 1) or compresses (< 1) the trace in time. In order: light (queue always
empty, a few sequences per replica), moderate, high (sub-second queueing behind other prompts'
prefill: p95 TTFT about twice the prefill-only value), and saturated at the trace's peak minutes
(a queue of tens of seconds there, the KV cache or the sequence slots full, yet no drops).
"""

_INF = np.inf


# --- the discrete-event simulator ---------------------------------------------------------------


@njit(cache=True)
def _start_iteration(r, t, horizon, max_new, reqs, engine, seqs, sched):
    """Schedule replica r's next iteration at time t, admitting at most ``max_new`` requests
    from the queue head."""
    arr_t, prompt, output = reqs
    a, c, k, pf, kv, maxseq, maxtok, timeout = engine
    seq_req, seq_pre, seq_held, seq_gen, seq_chunk, nrun, kv_proj = seqs
    qstate, it_end, it_b, acc, admit_t, drop_t = sched
    # drop timed-out requests at the head of the queue (FIFO: the head is the oldest)
    qh = qstate[0]
    na = qstate[1]
    while qh < na and arr_t[qh] + timeout < t:
        drop_t[qh] = arr_t[qh] + timeout
        qh += 1
    budget = maxtok
    n = nrun[r]
    d = 0
    ctx = 0
    for j in range(n):
        ctx += seq_held[r, j]
        if seq_pre[r, j] == 0:
            d += 1
            seq_chunk[r, j] = 0
    budget -= d
    q = 0
    for j in range(n):
        if seq_pre[r, j] > 0:
            ch = min(seq_pre[r, j], max(budget, 0))
            seq_chunk[r, j] = ch
            budget -= ch
            q += ch
    # admission from the head of the global FIFO, never skipping it
    n_new = 0
    while qh < na and budget > 0 and n < maxseq and n_new < max_new:
        i = qh
        need = prompt[i] + output[i]
        if need > kv:
            drop_t[i] = t  # can never fit on any replica
            qh += 1
            continue
        if kv_proj[r] + need > kv:
            break
        ch = min(prompt[i], budget)
        seq_req[r, n] = i
        seq_pre[r, n] = prompt[i]
        seq_held[r, n] = 0
        seq_gen[r, n] = 0
        seq_chunk[r, n] = ch
        budget -= ch
        q += ch
        kv_proj[r] += need
        admit_t[i] = t
        n += 1
        n_new += 1
        qh += 1
    qstate[0] = qh
    nrun[r] = n
    if n == 0:
        it_end[r] = _INF
        return
    dur = a + c * d + k * ctx + pf * q
    it_end[r] = t + dur
    it_b[r] = d
    # time-weighted accumulators, clipped at the horizon
    span = min(t + dur, horizon) - t
    if span > 0.0:
        acc[r, 0] += span  # busy seconds
        acc[r, 1] += span * n  # sequence-seconds
        acc[r, 2] += span * kv_proj[r]  # projected-KV-token-seconds
        acc[r, 3] += 1.0  # iterations
        acc[r, 4] += q  # prefill tokens


@njit(cache=True)
def _finish_iteration(r, t, reqs, seqs, first_t, done_t, tokens):
    """Apply the end of replica r's iteration at time t: emit tokens, complete sequences."""
    _, prompt, output = reqs
    seq_req, seq_pre, seq_held, seq_gen, seq_chunk, nrun, kv_proj = seqs
    j = 0
    n = nrun[r]
    while j < n:
        i = seq_req[r, j]
        if seq_pre[r, j] > 0:
            ch = seq_chunk[r, j]
            seq_pre[r, j] -= ch
            seq_held[r, j] += ch
            if seq_pre[r, j] == 0:
                seq_gen[r, j] = 1
                seq_held[r, j] += 1
                first_t[i] = t
                tokens[0] += 1
        else:
            seq_gen[r, j] += 1
            seq_held[r, j] += 1
            tokens[0] += 1
        if seq_pre[r, j] == 0 and seq_gen[r, j] >= output[i]:
            done_t[i] = t
            kv_proj[r] -= prompt[i] + output[i]
            last = n - 1
            seq_req[r, j] = seq_req[r, last]
            seq_pre[r, j] = seq_pre[r, last]
            seq_held[r, j] = seq_held[r, last]
            seq_gen[r, j] = seq_gen[r, last]
            seq_chunk[r, j] = seq_chunk[r, last]
            n -= 1
            continue
        j += 1
    nrun[r] = n


@njit(cache=True)
def _run_des(arr_t, prompt, output, R, a, c, k, pf, kv, maxseq, maxtok, timeout, horizon):
    N = arr_t.shape[0]
    first_t = np.full(N, np.nan)
    done_t = np.full(N, np.nan)
    admit_t = np.full(N, np.nan)
    drop_t = np.full(N, np.nan)
    seq_req = np.zeros((R, maxseq), dtype=np.int64)
    seq_pre = np.zeros((R, maxseq), dtype=np.int64)
    seq_held = np.zeros((R, maxseq), dtype=np.int64)
    seq_gen = np.zeros((R, maxseq), dtype=np.int64)
    seq_chunk = np.zeros((R, maxseq), dtype=np.int64)
    nrun = np.zeros(R, dtype=np.int64)
    kv_proj = np.zeros(R, dtype=np.int64)
    it_end = np.full(R, _INF)
    it_b = np.zeros(R, dtype=np.int64)
    acc = np.zeros((R, 5))
    tokens = np.zeros(1, dtype=np.int64)
    qstate = np.zeros(2, dtype=np.int64)  # queue head, requests arrived so far
    # the helpers' arguments, grouped: the requests, the engine, the running sequences per
    # replica, and the scheduler's own records
    reqs = (arr_t, prompt, output)
    engine = (a, c, k, pf, kv, maxseq, maxtok, timeout)
    seqs = (seq_req, seq_pre, seq_held, seq_gen, seq_chunk, nrun, kv_proj)
    sched = (qstate, it_end, it_b, acc, admit_t, drop_t)
    while True:
        r_min = 0
        t_it = it_end[0]
        for r in range(1, R):
            if it_end[r] < t_it:
                t_it = it_end[r]
                r_min = r
        na = qstate[1]
        t_arr = arr_t[na] if na < N else _INF
        if t_arr <= t_it:
            if t_arr >= horizon:
                break
            # every request arriving at this instant joins the queue before anyone is woken
            na += 1
            while na < N and arr_t[na] == t_arr:
                na += 1
            qstate[1] = na
            # least-loaded routing: idle replicas (no sequences) share the new requests evenly;
            # busy ones pull from the queue at their next iteration start
            n_idle = 0
            for r in range(R):
                if it_end[r] == _INF:
                    n_idle += 1
            for r in range(R):
                if it_end[r] != _INF:
                    continue
                waiting = qstate[1] - qstate[0]
                if waiting <= 0:
                    break
                _start_iteration(
                    r, t_arr, horizon, (waiting + n_idle - 1) // n_idle, reqs, engine, seqs, sched
                )
                n_idle -= 1
        else:
            if t_it > horizon:
                break
            _finish_iteration(r_min, t_it, reqs, seqs, first_t, done_t, tokens)
            _start_iteration(r_min, t_it, horizon, maxseq, reqs, engine, seqs, sched)
    # requests still queued at the horizon whose timeout has passed by then are dropped too
    for i in range(qstate[0], qstate[1]):
        if arr_t[i] + timeout <= horizon and np.isnan(drop_t[i]):
            drop_t[i] = arr_t[i] + timeout
    return first_t, done_t, admit_t, drop_t, acc, tokens[0]


@dataclass(frozen=True)
class DESResult:
    """Outcome of one DES run over ``[0, horizon_s)``.

    Attributes:
        arrived: requests fed (arrival before the horizon).
        completed: requests whose last token came by the horizon.
        dropped: requests dropped by timeout (or too large for the KV cache) by the horizon.
        first_token: requests that got their first token by the horizon.
        ttft_p50_s, ttft_p95_s, ttft_p99_s: TTFT percentiles of those requests.
        tpot_p50_s, tpot_p95_s: percentiles of per-request TPOT ((last - first token) /
            (output - 1)) of completed requests with more than one output token.
        wait_p95_s: p95 of queueing delay (arrival to admission) of admitted requests.
        utilization: busy share of replica time (an iteration was running).
        batch_fill: time-average sequences held per replica / ``max_num_seqs``.
        kv_fill: time-average projected KV tokens per replica / ``kv_cache_tokens``.
        tokens: output tokens emitted.
        iterations: iterations run, all replicas together.
        ttft_s, tpot_s, wait_s: the per-request values behind the percentiles.
        wall_s: seconds the run took.
        arrival_s, admit_s, first_token_s, done_s, drop_s: per request fed, in arrival order,
            when it arrived, was admitted by a replica, got its first token, completed, was
            dropped; NaN where it did not happen (events after the horizon are NaN too).
    """

    arrived: int
    completed: int
    dropped: int
    first_token: int
    ttft_p50_s: float
    ttft_p95_s: float
    ttft_p99_s: float
    tpot_p50_s: float
    tpot_p95_s: float
    wait_p95_s: float
    utilization: float
    batch_fill: float
    kv_fill: float
    tokens: int
    iterations: int
    ttft_s: np.ndarray
    tpot_s: np.ndarray
    wait_s: np.ndarray
    wall_s: float
    arrival_s: np.ndarray
    admit_s: np.ndarray
    first_token_s: np.ndarray
    done_s: np.ndarray
    drop_s: np.ndarray

    def summary(self) -> dict[str, float]:
        """The scalar fields as a plain dict."""
        return {k: v for k, v in self.__dict__.items() if not isinstance(v, np.ndarray)}


def _pct(x: np.ndarray, q: float) -> float:
    return float(np.percentile(x, q)) if x.size else 0.0


def simulate(
    profile: ThroughputProfile | str,
    replicas: int,
    arrival_s: np.ndarray,
    prompt_tokens: np.ndarray,
    output_tokens: np.ndarray,
    *,
    horizon_s: float | None = None,
    max_batched_tokens: int = 8192,
    timeout_s: float = 60.0,
) -> DESResult:
    """Run the request-level DES (see the module docstring) on the given requests.

    :param profile: the replicas' throughput profile (object or stored name).
    :param replicas: number of identical ready replicas.
    :param arrival_s: arrival times in seconds, non-decreasing.
    :param prompt_tokens: prompt tokens per request (>= 1).
    :param output_tokens: output tokens per request (>= 1; the first comes from the prefill).
    :param horizon_s: simulate ``[0, horizon_s)``; requests arriving later are ignored. Defaults
        to just after the last arrival plus the timeout.
    :param max_batched_tokens: token budget of one iteration (decodes + prefill chunks).
    :param timeout_s: a request queued longer than this is dropped.
    """
    prof = load_profile(profile) if isinstance(profile, str) else profile
    if replicas < 1:
        raise ValueError(f"replicas must be >= 1, got {replicas}")
    t = np.ascontiguousarray(arrival_s, dtype=np.float64)
    p = np.ascontiguousarray(np.rint(prompt_tokens), dtype=np.int64)
    o = np.ascontiguousarray(np.rint(output_tokens), dtype=np.int64)
    if not (t.shape == p.shape == o.shape) or t.ndim != 1:
        raise ValueError("arrival_s, prompt_tokens and output_tokens must be 1-D of one length")
    if t.size and (np.any(np.diff(t) < 0) or t[0] < 0):
        raise ValueError("arrival_s must be non-negative and sorted")
    if t.size and (p.min() < 1 or o.min() < 1):
        raise ValueError("every request needs at least one prompt and one output token")
    if horizon_s is None:
        horizon_s = (float(t[-1]) if t.size else 0.0) + timeout_s + 1.0
    t0 = time.perf_counter()
    first_t, done_t, admit_t, drop_t, acc, tokens = _run_des(
        t,
        p,
        o,
        int(replicas),
        prof.iter_base_s,
        prof.iter_per_seq_s,
        prof.iter_per_ctx_token_s,
        prof.prefill_per_token_s,
        int(prof.kv_cache_tokens),
        int(prof.max_num_seqs),
        int(max_batched_tokens),
        float(timeout_s),
        float(horizon_s),
    )
    wall = time.perf_counter() - t0
    fed = t < horizon_s
    # events after the horizon did not happen within it
    for ev in (first_t, done_t, admit_t, drop_t):
        ev[ev > horizon_s] = np.nan
    got_first = fed & ~np.isnan(first_t)
    done = fed & ~np.isnan(done_t)
    dropped = fed & ~np.isnan(drop_t)
    admitted = fed & ~np.isnan(admit_t)
    ttft = first_t[got_first] - t[got_first]
    multi = done & (o > 1)
    tpot = (done_t[multi] - first_t[multi]) / (o[multi] - 1)
    wait = admit_t[admitted] - t[admitted]
    denom = replicas * horizon_s
    return DESResult(
        arrived=int(fed.sum()),
        completed=int(done.sum()),
        dropped=int(dropped.sum()),
        first_token=int(got_first.sum()),
        ttft_p50_s=_pct(ttft, 50),
        ttft_p95_s=_pct(ttft, 95),
        ttft_p99_s=_pct(ttft, 99),
        tpot_p50_s=_pct(tpot, 50),
        tpot_p95_s=_pct(tpot, 95),
        wait_p95_s=_pct(wait, 95),
        utilization=float(acc[:, 0].sum() / denom) if denom > 0 else 0.0,
        batch_fill=float(acc[:, 1].sum() / denom / prof.max_num_seqs) if denom > 0 else 0.0,
        kv_fill=float(acc[:, 2].sum() / denom / prof.kv_cache_tokens) if denom > 0 else 0.0,
        tokens=int(tokens),
        iterations=int(acc[:, 3].sum()),
        ttft_s=ttft,
        tpot_s=tpot,
        wait_s=wait,
        wall_s=wall,
        arrival_s=t[fed],
        admit_s=admit_t[fed],
        first_token_s=first_t[fed],
        done_s=done_t[fed],
        drop_s=drop_t[fed],
    )


# --- the same requests the fluid model sees -----------------------------------------------------


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
    if cfg.time_scale != 1.0:
        req = TraceRequests(
            req.source,
            req.time_s * cfg.time_scale,
            req.prompt_tokens,
            req.output_tokens,
            req.tenant,
            req.tenant_names,
        )
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
) -> Scenario:
    """One on-demand pool of ``replicas`` ready replicas, nothing else moving."""
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
            "slo": {"timeout_s": timeout_s},
            "max_batched_tokens": max_batched_tokens,
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
        "utilization": float(np.mean(util)) if util else 0.0,
        "batch_fill": float(np.mean(batch)) / (R * prof.max_num_seqs) if batch else 0.0,
        "episode_s": sim.episode_steps * sc.control_interval_s,
        "wall_s": time.perf_counter() - t0,
    }


def _rel(des: float, fluid: float) -> float:
    """Relative error of the fluid value, taking the DES as the reference."""
    if des == 0.0:
        return 0.0 if fluid == 0.0 else math.inf
    return (fluid - des) / des


def compare(
    profile_name: str,
    replicas: int,
    *,
    time_scale: float = 1.0,
    rate_scale: float = 1.0,
    window_hours: float | None = None,
    path: str = AZURE_CONV,
    max_batched_tokens: int = 8192,
    timeout_s: float = 60.0,
    substep_s: float = 1.0,
    control_interval_s: float = 30.0,
    seed: int = 0,
) -> dict:
    """Run the DES and the fluid model on the same requests and horizon; relative errors.

    The horizon is the workload window rounded DOWN to whole control intervals (the fluid
    episode). Errors are ``(fluid - des) / des``.

    :return: ``{"profile", "replicas", "time_scale", "rate_scale", "load_rps", "horizon_s",
        "des": DESResult.summary(), "fluid": run_fluid(...), "completed_err", "ttft_p95_err"}``.
    """
    from rlscale.envs.simulator import scenario_workload

    cfg = workload_config(
        time_scale=time_scale, rate_scale=rate_scale, window_hours=window_hours, path=path
    )
    probe = fluid_scenario(
        profile_name,
        replicas,
        cfg,
        control_interval_s / 3600.0,
        max_batched_tokens=max_batched_tokens,
        timeout_s=timeout_s,
        substep_s=substep_s,
        control_interval_s=control_interval_s,
    )
    wl = scenario_workload(probe, seed)
    steps = int(wl.duration_s // control_interval_s)
    horizon_s = steps * control_interval_s
    sc = fluid_scenario(
        profile_name,
        replicas,
        cfg,
        horizon_s / 3600.0,
        max_batched_tokens=max_batched_tokens,
        timeout_s=timeout_s,
        substep_s=substep_s,
        control_interval_s=control_interval_s,
    )
    assert sc.episode_steps == steps, (sc.episode_steps, steps)
    t, prompt, output, _ = window_requests(cfg, substep_s=substep_s, seed=seed)
    # the DES must see exactly the requests the fluid model bins
    n_bins = round(horizon_s / substep_s)
    fed = t < horizon_s
    counts = np.bincount((t[fed] / substep_s).astype(np.int64), minlength=n_bins)[:n_bins]
    if not np.allclose(counts, wl.arrivals[:n_bins]):
        raise AssertionError("DES requests differ from the fluid workload's binned arrivals")
    des = simulate(
        profile_name,
        replicas,
        t[fed],
        prompt[fed],
        output[fed],
        horizon_s=horizon_s,
        max_batched_tokens=max_batched_tokens,
        timeout_s=timeout_s,
    )
    fluid = run_fluid(sc, seed)
    return {
        "profile": profile_name,
        "replicas": replicas,
        "time_scale": time_scale,
        "rate_scale": rate_scale,
        "load_rps": des.arrived / horizon_s,
        "horizon_s": horizon_s,
        "des": des.summary(),
        "fluid": fluid,
        "completed_err": _rel(des.completed, fluid["completed"]),
        "ttft_p95_err": _rel(des.ttft_p95_s, fluid["ttft_p95_s"]),
    }


def fidelity_table(
    grid: tuple[tuple[str, int, float], ...] | list[tuple[str, int, float]] = DEFAULT_GRID,
    **kwargs,
) -> list[dict]:
    """:func:`compare` over a grid of (profile, replicas, time_scale); one flat row each."""
    rows = []
    for profile_name, replicas, time_scale in grid:
        res = compare(profile_name, replicas, time_scale=time_scale, **kwargs)
        d, f = res["des"], res["fluid"]
        rows.append(
            {
                "profile": profile_name,
                "replicas": replicas,
                "time_scale": time_scale,
                "load_rps": res["load_rps"],
                "des_utilization": d["utilization"],
                "des_batch_fill": d["batch_fill"],
                "des_kv_fill": d["kv_fill"],
                "des_dropped": d["dropped"],
                "des_wait_p95_s": d["wait_p95_s"],
                "des_completed": d["completed"],
                "fluid_completed": f["completed"],
                "completed_err": res["completed_err"],
                "des_ttft_p95_s": d["ttft_p95_s"],
                "fluid_ttft_p95_s": f["ttft_p95_s"],
                "ttft_p95_err": res["ttft_p95_err"],
                "fluid_dropped": f["dropped"],
                "des_wall_s": d["wall_s"],
                "fluid_wall_s": f["wall_s"],
            }
        )
    return rows


def within_bounds(row: dict) -> bool:
    """Whether a table row meets the fidelity bounds (completed 5 %, p95 TTFT 20 %)."""
    return abs(row["completed_err"]) <= COMPLETED_TOL and abs(row["ttft_p95_err"]) <= TTFT_P95_TOL


def format_markdown(rows: list[dict]) -> str:
    """The fidelity table in markdown; errors are the fluid model's, relative to the DES.

    ``load`` is the mean arrival rate; ``DES fill`` the DES's time-average sequences per replica
    over ``max_num_seqs`` and its projected KV use over the KV cache, ``DES wait p95`` its p95
    queueing delay (arrival to admission), which shows the regime.
    """
    head = (
        "| profile | replicas | time scale | load (req/s) | DES fill seqs / KV | DES wait p95 (s) "
        "| DES completed | fluid completed | error % | DES p95 TTFT (s) | fluid p95 TTFT (s) "
        "| error % | within bounds |\n"
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|:---:|\n"
    )
    lines = [
        f"| {r['profile']} | {r['replicas']} | {r['time_scale']:g} | {r['load_rps']:.2f} | "
        f"{r['des_batch_fill']:.2f} / {r['des_kv_fill']:.2f} | {r['des_wait_p95_s']:.3f} | "
        f"{r['des_completed']:,} | {r['fluid_completed']:,.0f} | "
        f"{100 * r['completed_err']:+.1f} | {r['des_ttft_p95_s']:.3f} | "
        f"{r['fluid_ttft_p95_s']:.3f} | {100 * r['ttft_p95_err']:+.1f} | "
        f"{'yes' if within_bounds(r) else '**no**'} |"
        for r in rows
    ]
    return head + "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--verbose", action="store_true", help="print extra DES columns")
    args = parser.parse_args(argv)
    t0 = time.perf_counter()
    rows = fidelity_table()
    print(format_markdown(rows))
    if args.verbose:
        for r in rows:
            print({k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()})
    print(f"({time.perf_counter() - t0:.1f} s)")


if __name__ == "__main__":
    main()
