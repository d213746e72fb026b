"""Queueing theory as an anchor: M/D/c and M/M/c queues built from the simulators' own parts.

A replica with ONE sequence slot (``max_num_seqs=1``), a fixed iteration time and no per-sequence,
per-context or (almost no) prefill cost is a server whose service time is its request's output
tokens times the iteration time: the first token comes from the one-token prefill iteration, each
further token from one decode iteration. Fed Poisson arrivals, ``c`` such replicas behind the
least-loaded router (one FIFO) are a textbook multi-server queue:

* **M/D/c**: every request has the same number of output tokens, ``service_s / iteration_s``.
  Theory: the exact method of Crommelin (1932). The number in system at times ``D`` apart is the
  Markov chain ``N' = max(N - c, 0) + Poisson(lambda D)``; its stationary law is the time-stationary
  law of the queue, so (Poisson arrivals see time averages) ``P(wait) = P(N >= c)`` and, by
  Little's law, ``E[wait] = E[max(N - c, 0)] / lambda``. A FIFO customer arriving at ``t`` has
  started by ``t + kD + u`` (``0 <= u < D``) iff fewer than ``c`` earlier customers remain then:
  ``P(W <= kD + u) = P(max(N - c, 0) + Poisson(lambda (D - u)) <= (k + 1) c - 1)``, ``N`` from the
  stationary law (Franx 2001 gives the same distribution). Erlang C is NOT exact for M/D/c (it
  overstates the wait about twofold) and is not used for it.
* **M/M/c**: geometric output tokens with mean ``service_s / iteration_s``, so the service time is
  ``iteration_s * Geometric(p)``, a lattice version of the exponential with squared coefficient
  of variation ``1 - p``. Theory: Erlang C, exact for the exponential: ``P(wait) = C(c, A)``,
  ``E[wait] = C / (c mu - lambda)``, ``P(W > t) = C exp(-(c mu - lambda) t)``. The lattice lowers
  the mean wait by about ``p / 2`` relative (the Allen-Cunneen factor ``(1 + SCV) / 2``); keep
  ``p`` small (:data:`MMC_CASE` uses 0.02: 1 %).

In both, TTFT is the wait plus the one prefill iteration, so the theory's TTFT distribution is its
wait distribution shifted by ``iteration_s``. :func:`des_queue` runs a case through the DES and
:func:`fluid_queue` through the fluid model (a temporary CSV trace of the same arrivals and a
temporary profile file); :func:`queue_theory` gives the theory's numbers for both.
"""

from __future__ import annotations

import math
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml
from scipy import optimize, stats

from rlscale.envs.profiles import ThroughputProfile, profile_to_dict
from rlscale.experiments.des import simulate
from rlscale.experiments.replay import fluid_scenario, run_fluid, workload_config

PREFILL_S_PER_TOKEN = 1e-9
"""The queue profile's prefill cost: not zero, as the fluid model divides by it, but negligible
against the iteration time for the one-token prompts of these cases."""

QUEUE_TIMEOUT_S = 3600.0
"""No request times out in these cases: a queue that drops is not M/x/c."""


@dataclass(frozen=True)
class QueueCase:
    """A multi-server queue of one-slot replicas (see the module docstring).

    Attributes:
        servers: replicas ``c``.
        load: utilization ``rho = lambda * service_s / c``.
        service_s: mean service time (output tokens times the iteration time).
        iteration_s: one iteration (the service time's lattice step; TTFT = wait + this).
        exponential: geometric output tokens (M/M/c) rather than a fixed number (M/D/c).
    """

    servers: int
    load: float
    service_s: float
    iteration_s: float
    exponential: bool

    def __post_init__(self) -> None:
        tokens = self.service_s / self.iteration_s
        if not 0.0 < self.load < 1.0:
            raise ValueError(f"load must be in (0, 1) for a stable queue, got {self.load}")
        if self.servers < 1 or tokens < 1.0:
            raise ValueError(f"need servers >= 1 and service_s >= iteration_s, got {self}")
        if not self.exponential and abs(tokens - round(tokens)) > 1e-9:
            raise ValueError(
                f"M/D/c needs service_s a whole number of iterations, got {tokens:g} tokens"
            )

    @property
    def name(self) -> str:
        """Kendall notation with the load, e.g. ``M/D/8 at 0.85``."""
        return f"M/{'M' if self.exponential else 'D'}/{self.servers} at {self.load:g}"

    @property
    def arrival_rps(self) -> float:
        """Poisson arrival rate ``lambda``."""
        return self.load * self.servers / self.service_s

    @property
    def output_tokens(self) -> float:
        """Mean output tokens per request (fixed for M/D/c)."""
        return self.service_s / self.iteration_s

    def at(self, load: float) -> QueueCase:
        """The same queue at another load."""
        return QueueCase(self.servers, load, self.service_s, self.iteration_s, self.exponential)


MDC_CASE = QueueCase(servers=8, load=0.875, service_s=10.0, iteration_s=0.5, exponential=False)
"""The issue's M/D/8: 0.5 s iterations, 20 output tokens (10 s of service); ``.at(load)`` others."""

MMC_CASE = QueueCase(servers=8, load=0.85, service_s=10.0, iteration_s=0.2, exponential=True)
"""M/M/8 with 10 s of mean service: 0.2 s iterations, 50 output tokens on average (p = 0.02)."""

ANCHOR_LOADS = (0.7, 0.85, 0.95)
"""The loads the issue checks both models at."""


def queue_profile(case: QueueCase) -> ThroughputProfile:
    """One sequence slot, ``iteration_s`` per iteration, room for any request."""
    return ThroughputProfile(
        name=f"queue-{case.iteration_s:g}s",
        gpu="none",
        gpus_per_replica=1,
        model="none",
        weights_gb=0.0,
        iter_base_s=case.iteration_s,
        iter_per_seq_s=0.0,
        iter_per_ctx_token_s=0.0,
        prefill_per_token_s=PREFILL_S_PER_TOKEN,
        kv_cache_tokens=1 << 40,
        max_num_seqs=1,
        fit_mape=0.0,
        fit_rows=0,
        source="experiments/queueing.py: a one-slot server for the queueing anchors",
    )


def queue_requests(
    case: QueueCase, n_requests: int, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``n_requests`` Poisson arrivals (s), one-token prompts and the case's output tokens."""
    rng = np.random.default_rng(np.random.SeedSequence(seed))
    arrival_s = np.cumsum(rng.exponential(1.0 / case.arrival_rps, n_requests))
    if case.exponential:
        output = rng.geometric(case.iteration_s / case.service_s, n_requests)
    else:
        output = np.full(n_requests, round(case.output_tokens))
    return arrival_s, np.ones(n_requests, dtype=np.int64), output.astype(np.int64)


# --- theory ---------------------------------------------------------------------------------


def erlang_c(servers: int, offered_erlangs: float) -> float:
    """Erlang C: the probability that an M/M/c arrival waits, ``offered_erlangs = lambda / mu``.

    Through the Erlang B recursion, stable for any number of servers.
    """
    if not 0.0 <= offered_erlangs < servers:
        raise ValueError(f"need 0 <= lambda/mu < c, got {offered_erlangs} with c = {servers}")
    b = 1.0
    for k in range(1, servers + 1):
        b = offered_erlangs * b / (k + offered_erlangs * b)
    return servers * b / (servers - offered_erlangs * (1.0 - b))


@dataclass(frozen=True)
class WaitTheory:
    """The wait (arrival to admission) of a queue case, from theory.

    Attributes:
        p_wait: probability that an arrival waits at all.
        mean_wait_s: mean wait over all arrivals.
        method: which theory (``Erlang C`` or ``Crommelin``).
        case: the case.
    """

    p_wait: float
    mean_wait_s: float
    method: str
    case: QueueCase
    _stationary: np.ndarray | None = None  # M/D/c: the number in system's law

    def wait_cdf(self, x_s: float) -> float:
        """``P(W <= x_s)``."""
        c = self.case
        if x_s < 0.0:
            return 0.0
        if self._stationary is None:
            decay = c.servers / c.service_s - c.arrival_rps
            return 1.0 - self.p_wait * math.exp(-decay * x_s)
        k, u = divmod(x_s, c.service_s)
        p = self._stationary
        # max(N - c, 0): its law, then plus Poisson(lambda (D - u)), at most (k + 1) c - 1
        queued = np.concatenate([[p[: c.servers + 1].sum()], p[c.servers + 1 :]])
        limit = (int(k) + 1) * c.servers - 1
        if limit < 0:
            return 0.0
        n = np.arange(min(limit + 1, queued.size))
        arrivals_cdf = stats.poisson.cdf(limit - n, c.arrival_rps * (c.service_s - u))
        return float(np.dot(queued[: n.size], arrivals_cdf))

    def wait_quantile_s(self, q: float) -> float:
        """The ``q`` quantile (0-1) of the wait: 0 where at least ``q`` do not wait."""
        if 1.0 - self.p_wait >= q:
            return 0.0
        hi = self.case.service_s
        while self.wait_cdf(hi) < q:
            hi *= 2.0
        return float(optimize.brentq(lambda x: self.wait_cdf(x) - q, 0.0, hi, xtol=1e-9))

    def ttft_quantile_s(self, q: float) -> float:
        """The ``q`` quantile of TTFT: the wait plus the one prefill iteration."""
        return self.wait_quantile_s(q) + self.case.iteration_s + PREFILL_S_PER_TOKEN

    def ttft_attainment(self, target_s: float) -> float:
        """``P(TTFT <= target_s)``."""
        return self.wait_cdf(target_s - self.case.iteration_s - PREFILL_S_PER_TOKEN)


def _mdc_stationary(case: QueueCase) -> np.ndarray:
    """Stationary law of ``N' = max(N - c, 0) + Poisson(lambda D)``, truncated where the law's
    last ``c`` states hold under 1e-12 (the truncated mass is kept in the last state; the dense
    solve's round-off is about 1e-15 a state)."""
    c = case.servers
    a = case.arrival_rps * case.service_s
    size = c + 64 + int(40.0 / (1.0 - case.load))
    while True:
        arrivals = stats.poisson.pmf(np.arange(size), a)
        trans = np.zeros((size, size))
        for n in range(size):
            base = max(n - c, 0)
            trans[n, base:] = arrivals[: size - base]
            trans[n, -1] += 1.0 - trans[n].sum()
        # pi (P - I) = 0 with sum(pi) = 1: replace one balance equation by the normalization
        lhs = (trans - np.eye(size)).T
        lhs[-1, :] = 1.0
        rhs = np.zeros(size)
        rhs[-1] = 1.0
        pi = np.clip(np.linalg.solve(lhs, rhs), 0.0, None)
        pi /= pi.sum()
        if pi[-c:].sum() < 1e-12:
            return pi
        if size > 20_000:
            raise ValueError(f"{case.name}: the queue's law does not fit {size} states")
        size *= 2


def queue_theory(case: QueueCase) -> WaitTheory:
    """The case's wait from theory: Crommelin's exact M/D/c, or Erlang C for M/M/c."""
    lam = case.arrival_rps
    if case.exponential:
        c_prob = erlang_c(case.servers, lam * case.service_s)
        mean = c_prob / (case.servers / case.service_s - lam)
        return WaitTheory(c_prob, mean, "Erlang C", case)
    pi = _mdc_stationary(case)
    queued = np.clip(np.arange(pi.size) - case.servers, 0, None)
    return WaitTheory(
        float(pi[case.servers :].sum()),
        float(np.dot(pi, queued) / lam),
        "Crommelin",
        case,
        pi,
    )


# --- the simulators on a case ---------------------------------------------------------------


def des_queue(
    case: QueueCase, n_requests: int, *, seed: int = 0, ttft_target_s: float = 2.0
) -> dict[str, float]:
    """Run a case through the DES; its wait and TTFT measures.

    The first 1 % of requests (the queue filling from empty) are left out of the wait measures.

    :return: ``p_wait``, ``mean_wait_s``, ``ttft_p50_s``/``p95``/``p99``, ``ttft_attainment``
        and ``mean_wait_stderr_s``, the standard error of the mean wait from 20 batch means.
    """
    t, prompt, output = queue_requests(case, n_requests, seed)
    res = simulate(
        queue_profile(case),
        case.servers,
        t,
        prompt,
        output,
        timeout_s=QUEUE_TIMEOUT_S,
        ttft_target_s=ttft_target_s,
    )
    if res.dropped or res.first_token != n_requests:
        raise AssertionError(f"{case.name}: {res.dropped} dropped, {res.first_token} served")
    warm = n_requests // 100
    wait = (res.admit_s - res.arrival_s)[warm:]
    ttft = (res.first_token_s - res.arrival_s)[warm:]
    batches = np.array_split(wait, 20)
    return {
        "p_wait": float(np.mean(wait > 0.0)),
        "mean_wait_s": float(wait.mean()),
        "mean_wait_stderr_s": float(np.std([b.mean() for b in batches], ddof=1) / math.sqrt(20)),
        "ttft_p50_s": float(np.percentile(ttft, 50)),
        "ttft_p95_s": float(np.percentile(ttft, 95)),
        "ttft_p99_s": float(np.percentile(ttft, 99)),
        "ttft_attainment": float(np.mean(ttft <= ttft_target_s)),
        "wall_s": res.wall_s,
    }


def fluid_queue(case: QueueCase, hours: float, *, seed: int = 0) -> dict[str, float]:
    """Run a case through the fluid model: its TTFT percentiles, attainment (2 s target) and
    mean wait.

    The arrivals are written to a temporary CSV trace and the one-slot profile to a temporary
    YAML file, which the scenario names by path. The fluid model reports no wait directly; its
    TTFT is the wait plus the prefill iteration, as in the theory.
    """
    n = math.ceil(case.arrival_rps * hours * 3600.0 * 1.2) + 100
    t, prompt, output = queue_requests(case, n, seed)
    # a minute past the episode, so the trace (last request to last request) covers it
    keep = t < hours * 3600.0 + 60.0
    with tempfile.TemporaryDirectory(prefix="rlscale-queue-") as tmp:
        prof_path = Path(tmp) / "queue.yaml"
        prof_path.write_text(yaml.safe_dump(profile_to_dict(queue_profile(case))))
        trace_path = Path(tmp) / "poisson.csv"
        rows = np.column_stack([t[keep], prompt[keep], output[keep]])
        np.savetxt(
            trace_path,
            rows,
            fmt=("%.6f", "%d", "%d"),
            delimiter=",",
            header="timestamp_s,prompt_tokens,output_tokens",
            comments="",
        )
        cfg = workload_config(path=str(trace_path), kind="csv")
        sc = fluid_scenario(str(prof_path), case.servers, cfg, hours, timeout_s=QUEUE_TIMEOUT_S)
        out = run_fluid(sc, seed)
    return {
        "ttft_p50_s": out["ttft_p50_s"],
        "ttft_p95_s": out["ttft_p95_s"],
        "ttft_p99_s": out["ttft_p99_s"],
        "ttft_attainment": out["ttft_attainment"],
        # TTFT is the wait plus the first iteration and a one-token prefill, as in the theory
        "mean_wait_s": out["ttft_mean_s"] - case.iteration_s - PREFILL_S_PER_TOKEN,
        "completed": out["completed"],
        "wall_s": out["wall_s"],
    }
