"""The one implementation of the cluster dynamics: a fluid model compiled with numba.

Every simulated cluster (the single Gymnasium env is N=1, the vectorized ones N>1) is advanced
by :func:`step_clusters`, which loops over clusters (in parallel threads for large N) and, inside
each, over the sub-steps of one decision interval. All state lives in preallocated arrays that
the kernel writes in place; the Python side only packs parameters and reads results. One
cluster's interval is :func:`_step_cluster`, a sequence of named steps: :func:`_market` (spot
prices, preemption notices), the batch queue's expiry, :func:`_actions` (replica changes, the
warm pool), :func:`_substeps` (per sub-step: lifecycle, arrivals, admission, decode and
completions, billing) and :func:`_step_metrics` (latency statistics, attainment, reward), then
the observation.

Model, per cluster and sub-step (``dt`` seconds, default 1 s):

* Arrivals of the shared workload bin (Poisson per cluster when the workload is stochastic);
  a share ``cache_hit_ratio`` is answered by the response cache and never reaches a GPU.
* A FIFO queue kept as a ring of arrival cohorts, one per sub-step, so each admitted request's
  queueing delay is known to the sub-step. Cohorts older than the timeout are dropped.
* Continuous batching per pool: ``R`` ready replicas hold ``I`` sequences with ``C`` context
  tokens and ``W`` output tokens still to generate. An iteration takes
  ``a + c*b + k*ctx + p*q`` seconds (the fitted profile, see ``profiles.py``). Admission is
  limited by free sequence slots, by KV-cache room for the admitted requests' full context, and
  by the prefill token budget per iteration; each iteration emits one token per sequence.
  Completions follow the fluid rule ``completed = decoded * I / W``, which keeps Little's law
  exact in steady state for any output-length distribution.
* Replica lifecycle: provisioning -> loading -> ready -> draining -> gone, with durations drawn
  per replica from quantile tables, held in rings indexed by the sub-step of the transition.
  Draining replicas take no new work, finish their in-flight sequences and leave when empty or
  at the grace deadline (what is left then is dropped). Spot replicas that receive a preemption
  notice drain the same way, but at the notice deadline their in-flight work returns to the queue.
* Billing per second in every billed state (provisioning, loading, ready, draining, warm-pool
  refill); standby replicas cost their holding price.
* Domain randomization: each cluster's episode carries its own multipliers of the arrival rate,
  the spot price, the preemption chance and the cold-start durations (``CS_SCALES``), set at
  reset; they are exactly 1 for the nominal scenario, so its numbers are unchanged.

Per-request latency percentiles come from the queue-age histogram of admitted requests
combined with the prompt-length quantiles (prefill time), see :func:`_ttft_stats`.

Batch requests (request class ``batch``; only when the workload has any, ``SP_BATCH``):

* They wait in their own FIFO queue, a ring of arrival cohorts one decision step wide
  (``bring``), and are never answered by the response cache. A cohort still queued when its
  age reaches the completion window (``SP_BATCH_STEPS`` decision steps) expires: it is
  dropped and counted as expired, as a batch API's unfinished requests are at the end of its
  window. An admitted one always completes (it may finish after its deadline by its decode
  time, seconds to minutes, which is not counted late).
* Admission takes interactive requests first, then fills the room they leave with batch ones
  (vLLM's priority scheduling): per pool the slots, KV and prefill budget of
  :func:`_admission_cap` less what the interactive admissions of the sub-step took. A pool
  that serves both classes takes batch only while no interactive request is left queued after
  its admission; a pool marked ``serves: batch`` (``PP_SERVES``) takes only batch requests, one
  marked ``interactive`` none. Batch sequences already running are not preempted for a burst
  of interactive ones (vLLM would): the burst waits for their slots, which is part of what
  co-batching costs.
* Admitted batch sequences share the iterations (a third in-flight bucket, ``BATCH_BUCKET``,
  beside the two output-length classes), so they lengthen every iteration and with it the
  interactive TPOT and TTFT: the real cost of co-batching. Interactive TPOT, TTFT and SLO
  attainment count interactive requests only; tokens, in-flight sequences and the bill count
  both.
* A draining replica's batch sequences go back to the batch queue at either deadline (spot
  notice or scale-down grace: a batch runner retries them), into its oldest waiting cohort.
* Accounting per class: interactive as before (``CS_ARRIVED`` .. ``CS_REQUEUED``); batch
  arrived = completed + expired + queued + in flight (``CS_B_*``). The reward subtracts
  ``SP_W_BATCH`` per expired batch request. The kernel is compiled once without and once with
  batch work (:func:`step_clusters` picks; ``_step_cluster``'s ``batch`` is a compile-time
  constant): without it none of this code is in the kernel and every number is what it was.
"""

from __future__ import annotations

import math
import os

import numpy as np
from numba import literally, njit, prange

# OpenMP threads spin at the end of each parallel loop by default; with another busy process
# on a 2-core machine a step then waits for a descheduled thread (measured: 8.7k env-steps/s at
# N=64, against ~100k with passive waiting). Passive waiting costs nothing measurable on an
# idle machine (225-256k at N=1024, as with spinning). A policy the user set is kept; it must
# be set before the OpenMP runtime starts, which happens at the first parallel step.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# --- scenario parameters: sp[...] ------------------------------------------------------------
SP_DT = 0
SP_K = 1  # sub-steps per decision step
SP_L = 2  # queue ring length (timeout in sub-steps)
SP_H = 3  # lifecycle ring length
SP_G = 4  # drain ring length
SP_TTFT = 5
SP_TPOT = 6
SP_CACHE = 7
SP_W_SLO = 8
SP_W_CHURN = 9
SP_RSCALE = 10
SP_MAXSTEP = 11
SP_STOCH = 12
SP_GRACE_BINS = 13
SP_MAXTOK = 14
SP_REF_RPS = 15
SP_TOW0 = 16  # seconds since Monday 00:00 at workload bin 0
SP_NBINS = 17  # workload length in bins
SP_NSPOT = 18  # spot series length in decision steps
SP_TIMEOUT = 19
SP_CLASS = 20  # first of the output-length classes' parameters (CP_* below)
# Output-length classes: every pool's sequences are kept in OUTPUT_CLASSES buckets by output
# length (shorter and longer than the median), so that after a burst the short requests
# complete first, as they do. Per class: its share of requests, its mean output and prompt
# relative to the whole workload's, its residual ratio phi = E[o^2] / (2 E[o]^2), and the
# shift of its in-flight prompts, E[p o] / E[o] - E[p], in tokens.
OUTPUT_CLASSES = 2  # the queue and the workload carry class 0 apart (Q_N0, WL_N0)
# The in-flight buckets: the interactive output-length classes, then one for batch requests
# (request class "batch", see "Batch requests" in the module docstring). Every loop over the
# buckets skips an empty one, so a workload without batch work computes what it did before.
BATCH_BUCKET = OUTPUT_CLASSES
N_BUCKETS = OUTPUT_CLASSES + 1
CP_SHARE = 0
CP_OUTPUT = 1
CP_PROMPT = 2
CP_PHI = 3
CP_PSHIFT = 4
N_CP = 5
# output-token quantiles at levels (k + 0.5) / N_OUTPUT_Q, for per-request TPOT
SP_OUTPUT_Q = SP_CLASS + N_CP * N_BUCKETS  # the batch bucket's CP_* follow the classes'
N_OUTPUT_Q = 8
# E[p^2] / E[p]^2 of the prompts: whole (the KV a request needs) and capped at the iteration
# token budget (the prefill an iteration carries: a longer prompt is chunked over several)
SP_PROMPT_M2 = SP_OUTPUT_Q + N_OUTPUT_Q
SP_PROMPT_M2_CHUNK = SP_PROMPT_M2 + 1
# 1 when requests reach replicas through per-replica queues fed blindly (random or round
# robin), 0 when every replica pulls from one queue (least loaded)
SP_PER_REPLICA_QUEUES = SP_PROMPT_M2_CHUNK + 1
# batch requests: 1 when the workload has any; the batch queue's length in decision steps
# (the completion deadline: a request still queued that long expires); USD of reward lost
# per expired batch request
SP_BATCH = SP_PER_REPLICA_QUEUES + 1
SP_BATCH_STEPS = SP_BATCH + 1
SP_W_BATCH = SP_BATCH + 2
N_SP = SP_W_BATCH + 1

# --- pool parameters: pp[pool, ...] ----------------------------------------------------------
PP_A = 0
PP_C = 1
PP_KCTX = 2
PP_PREFILL = 3
PP_KV = 4
PP_MAXSEQ = 5
PP_PRICE = 6
PP_QUOTA = 7
PP_WARMMAX = 8
PP_HOLD = 9
PP_SPOT = 10
PP_FULFIL = 11
PP_NOTICE_BINS = 12
PP_OU_MEAN = 13
PP_OU_REV = 14
PP_OU_VOL = 15
PP_PRICE_TRACE = 16
PP_INIT = 17
PP_SERVES = 18  # which request classes the pool admits: SERVES_* below
N_PP = 19
SERVES_ALL = 0.0  # interactive first, batch in the room left (the default)
SERVES_INTERACTIVE = 1.0
SERVES_BATCH = 2.0

# --- cluster state: cs[i, ...] ---------------------------------------------------------------
CS_STEP = 0
CS_SUB = 1
CS_OFF = 2
CS_QHEAD = 3
CS_QN = 4
CS_QP = 5
CS_QO = 6
CS_ARRIVED = 7
CS_HITS = 8
CS_COMPLETED = 9
CS_DROPPED = 10
CS_ADMITTED = 11
CS_REQUEUED = 12
CS_COST = 13
CS_GOOD = 14
CS_RATE_EWMA = 15
CS_RATE_LAST = 16
CS_VIOL = 17
CS_EP_BASE_SUM = 18  # episode sums for TTFT percentiles: admitted x base latency
CS_EP_PRE_SUM = 19  # admitted x prefill seconds per prompt token
CS_EP_BASE_W = 20  # admitted requests with a known base latency
# the episode's domain-randomization multipliers (SC_* order), drawn at reset; 1 when nominal
CS_SCALES = 21
# the batch queue (a ring of arrival cohorts, one per decision step: bring[i, BQ_*, step %
# SP_BATCH_STEPS]) and the batch requests' accounting; their conservation identity is
# arrived = completed + expired + queued + in flight (requeued ones are queued again)
CS_BQHEAD = CS_SCALES + 4  # absolute decision step of the oldest cohort still held
CS_BQN = CS_BQHEAD + 1  # batch requests queued, their prompt and output tokens
CS_BQP = CS_BQHEAD + 2
CS_BQO = CS_BQHEAD + 3
CS_B_ARRIVED = CS_BQHEAD + 4
CS_B_ADMITTED = CS_BQHEAD + 5
CS_B_COMPLETED = CS_BQHEAD + 6
CS_B_EXPIRED = CS_BQHEAD + 7
CS_B_REQUEUED = CS_BQHEAD + 8
N_CS = CS_B_REQUEUED + 1
# offsets of the multipliers from CS_SCALES (rlscale.envs.randomization.SCALE_NAMES' order)
SC_RATE = 0  # arrivals and their tokens, and the forecast
SC_SPOT_PRICE = 1  # spot prices: a trace's path, or the mean-reverting process's mean and noise
SC_PREEMPT = 2  # the chance of a preemption per step
SC_COLD_START = 3  # provisioning, weight-loading and warm-start durations
N_SCALES = 4

# --- pool state: ps[i, pool, ...] ------------------------------------------------------------
PS_PROV = 0
PS_LOAD = 1
PS_READY = 2
PS_DRAIN = 3
PS_STANDBY = 4
PS_REFILL = 5
PS_NOTICED = 6
PS_IR = 7
PS_WR = 8
PS_CR = 9
PS_ID = 10
PS_WD = 11
PS_CD = 12
PS_PRICE = 13
PS_BATCH = 14
# per output class, statistics of the requests admitted into it and still in flight: how many,
# their mean prompt and output tokens and mean prompt x output, and the pshift these give
# (_freed_per_completion; set by _admit_classes; completions take requests away, not the
# means). Sequences stay in flight for their output's worth of iterations, so the prompts in
# flight are output-weighted, ``E[p o] / E[o]``, against ``E[p]`` for the requests that
# complete; where prompt and output lengths go together this differs from window to window of
# a trace (among the Azure conversation trace's short answers -250 tokens in some minutes, -20
# in others, -153 over the hour), so it is taken over the requests in flight, not as the
# workload's constant (CP_PSHIFT, which the batch class keeps)
PS_PSTAT = 15
PT_N = 0
PT_PROMPT = 1
PT_OUTPUT = 2
PT_PO = 3
PT_PSHIFT = 4
N_PT = 5
# PS_IR .. PS_CD hold the totals of the buckets (batch included), which follow: ps[...,
# PS_CLASS + N_CF * k + CF_*] for bucket k, fields in the order of the totals
PS_CLASS = PS_PSTAT + N_PT * OUTPUT_CLASSES
CF_IR = 0
CF_WR = 1
CF_CR = 2
CF_ID = 3
CF_WD = 4
CF_CD = 5
N_CF = 6
# the latest sub-step (absolute) at which the provisioning and loading rings hold an entry:
# cancelling scans back from there, not from a whole ring ahead
PS_HORIZON_PROV = PS_CLASS + N_CF * N_BUCKETS
PS_HORIZON_LOAD = PS_HORIZON_PROV + 1
# iteration seconds averaged over the decode lifetime of a request of each output quantile
# (EWMAs, one per SP_OUTPUT_Q level, see _tpot_lifetimes; kept with the episode's latency
# histograms only, which alone read them: last, out of the way of the fields every sub-step
# reads)
PS_TPOT_LIFE = PS_HORIZON_LOAD + 1
N_PS = PS_TPOT_LIFE + N_OUTPUT_Q

# queue ring qring[i, row, L]: per arrival cohort, what is still queued of it
Q_N = 0  # requests
Q_PROMPT = 1  # their prompt tokens
Q_OUTPUT = 2  # their output tokens
Q_ARRIVED = 3  # requests the cohort had on arrival (those taken by then arrived first)
Q_N0 = 4  # of which in output class 0 (the shorter answers): requests
Q_PROMPT0 = 5  # ... their prompt tokens
Q_OUTPUT0 = 6  # ... their output tokens
Q_PO0 = 7  # ... the sum over them of prompt x output tokens
Q_PO = 8  # the same over all the cohort's requests
N_Q = 9
# workload rows wl[row, T]
WL_ARRIVALS = 0
WL_PROMPT = 1
WL_OUTPUT = 2
WL_FORECAST = 3
WL_N0 = 4  # arrivals in output class 0, their prompt and output tokens
WL_PROMPT0 = 5
WL_OUTPUT0 = 6
WL_PO0 = 7  # sums of prompt x output tokens over the bin's class-0 arrivals, and all of them
WL_PO = 8
N_WL = 9
# batch arrivals bwl[row, T] (a [N_BQ, 1] array of zeros when the workload has none)
# and the batch queue's cohorts bring[i, row, SP_BATCH_STEPS]: requests, prompt, output tokens
BQ_N = 0
BQ_PROMPT = 1
BQ_OUTPUT = 2
N_BQ = 3

# per-step scratch rows scratch[i, row, pool]
SCR_TPOT_TOK = 0
SCR_TPOT_W = 1
SCR_CAPS = 2
SCR_ADM_N = 3
SCR_ADM_Q = 4
SCR_ADM_TD = 5
SCR_ADM_BUSY = 6
SCR_DONE = 7
SCR_REP_SUB = 8
SCR_TPOT_VALS = 9
SCR_KV_A = 10  # KV admission budget per pool (tokens), see _admission_cap
SCR_KV_C = 11
SCR_KV_A2 = 12
SCR_TOK = 13
SCR_B_ADM = 14  # batch requests admitted per pool in the sub-step
N_SCR = 15

# lifecycle rings srings[i, pool, ring, H]
RING_PROV_DONE = 0
RING_LOAD_DONE = 1
RING_STANDBY_DONE = 2
# drain rings drings[i, pool, ring, G]
RING_GRACE = 0
RING_NOTICE = 1

# cold-start tables cold[pool, table, levels]
CT_PROV = 0
CT_LOAD = 1
CT_WARM = 2

# --- per-step metrics: met[i, ...] -----------------------------------------------------------
M_COST = 0
M_VIOL = 1
M_ATTAIN = 2
M_ARRIVED = 3
M_HITS = 4
M_ADMITTED = 5
M_COMPLETED = 6
M_DROPPED = 7
M_REQUEUED = 8
M_TTFT50 = 9
M_TTFT95 = 10
M_TTFT99 = 11
M_TPOT50 = 12
M_TPOT95 = 13
M_TPOT99 = 14
M_QUEUE = 15
M_INFLIGHT = 16
M_SCALE_EVENTS = 17
M_REPLICAS_CHANGED = 18
M_COLD_STARTS = 19
M_WARM_STARTS = 20
M_PREEMPTIONS = 21
M_UNFULFILLED = 22
M_TOKENS = 23
M_UTIL = 24
M_KV_UTIL = 25
M_GOOD = 26
M_COST_TOTAL = 27
M_RATE_RPS = 28
M_REWARD = 29
M_ATTAIN_EP = 30
# batch requests (zero without batch work); the interactive metrics above exclude them, except
# M_TOKENS and M_INFLIGHT, which count every sequence the servers hold
M_B_ARRIVED = 31
M_B_ADMITTED = 32
M_B_COMPLETED = 33
M_B_EXPIRED = 34
M_B_REQUEUED = 35
M_B_QUEUE = 36
M_B_INFLIGHT = 37
M_B_TOKENS = 38
N_M = 39

# --- per-step pool metrics: pmet[i, pool, ...] -----------------------------------------------
PM_COST = 0
PM_REPLICA_S = 1
PM_PROV = 2
PM_LOAD = 3
PM_READY = 4
PM_DRAIN = 5
PM_STANDBY = 6
PM_REFILL = 7
PM_NOTICED = 8
PM_PRICE = 9
PM_TOKENS = 10
PM_PREEMPT = 11
PM_COLD = 12
PM_WARM = 13
PM_TPOT = 14
PM_B_TOKENS = 15  # of PM_TOKENS, those of batch requests
N_PM = 16

EWMA_HORIZON_S = 300.0
# A drained replica leaves once it holds less than this many sequences on average: the last
# sequence of a replica is what keeps it billed, and a fluid bucket only decays asymptotically.
DRAIN_EMPTY_SEQS = 0.5
# A prefill share above this is saturation: the queue, not the iteration, holds requests then.
PREFILL_SHARE_MAX = 0.95
# Prefill-wait tables (simulator.prefill_wait_quantiles): row 0 is the prompt alone; row 1 + r
# adds an exponential wait of mean WAIT_MIN_TOK * WAIT_RATIO**r prompt tokens' worth of prefill.
WAIT_ROWS = 32
WAIT_MIN_TOK = 2.0
WAIT_RATIO = 1.6
# TTFT percentiles are read off the mixture CDF on this many log-spaced points.
TTFT_GRID = 48
# rows of a cluster's grid scratch grid[i, row, :]: the TTFT grid and its CDF, a step's three
# prefill-wait tables, their indices and shares, and three rows for _add_quantile_cdf's walk
GR_XS = 0
GR_CDF = 1
GR_TABLES = 2
GR_ROWS = 5
GR_PARTS = 6
GR_WORK = 7
GR_TPOT_GROUP = 10  # the episode TPOT's group of sub-steps being merged (TPOT_AT_FIELDS wide)
N_GR = 11
# Episode TPOT histogram: log-spaced bins between these bounds (seconds per output token),
# about 1.9 % wide; percentiles interpolate within a bin, so they land well inside 2 % (the
# TPOT's requests are placed within TPOT_MERGE_TOL of their own lifetime averages).
TPOT_BINS = 480
# an episode TPOT histogram's row carries, past its bins, per sub-step of the step and pool the
# completed requests and the lifetime rows they completed at (_note_tpot_completions)
TPOT_AT_FIELDS = 1 + N_OUTPUT_Q
TPOT_MIN_S = 1e-3
TPOT_MAX_S = 10.0
TPOT_LOG_SPAN = float(np.log(TPOT_MAX_S / TPOT_MIN_S))  # the histogram's width in log seconds
# sub-steps whose lifetime rows differ by less than this share are added to the episode TPOT
# as one (one bin's width; on the knee grid the TPOT percentiles moved by 0.3% at most)
TPOT_MERGE_TOL = TPOT_LOG_SPAN / TPOT_BINS


# --- random numbers: one splitmix64 stream per cluster, so batching never changes a draw -------
@njit(inline="always", cache=True, error_model="numpy")
def _next_u64(rng, i):
    x = rng[i] + np.uint64(0x9E3779B97F4A7C15)
    rng[i] = x
    z = x
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


@njit(inline="always", cache=True, error_model="numpy")
def _uniform(rng, i):
    return float(_next_u64(rng, i) >> np.uint64(11)) * (1.0 / 9007199254740992.0)


@njit(cache=True, error_model="numpy")
def _normal(rng, i):
    u1 = 1.0 - _uniform(rng, i)
    u2 = _uniform(rng, i)
    return np.sqrt(-2.0 * np.log(u1)) * np.cos(2.0 * np.pi * u2)


@njit(cache=True, error_model="numpy")
def _poisson(rng, i, lam):
    """Poisson draw: multiplication method below 10, PTRS (Hormann 1993) above, as numpy does."""
    if lam <= 0.0:
        return 0.0
    if lam < 10.0:
        limit = np.exp(-lam)
        k = 0
        prod = _uniform(rng, i)
        while prod > limit:
            k += 1
            prod *= _uniform(rng, i)
        return float(k)
    slam = np.sqrt(lam)
    loglam = np.log(lam)
    b = 0.931 + 2.53 * slam
    a = -0.059 + 0.02483 * b
    inv_alpha = 1.1239 + 1.1328 / (b - 3.4)
    vr = 0.9277 - 3.6224 / (b - 2.0)
    while True:
        u = _uniform(rng, i) - 0.5
        v = _uniform(rng, i)
        us = 0.5 - abs(u)
        k = np.floor((2.0 * a / us + b) * u + lam + 0.43)
        if us >= 0.07 and v <= vr:
            return k
        if k < 0.0 or (us < 0.013 and v > us):
            continue
        if np.log(v) + np.log(inv_alpha) - np.log(a / (us * us) + b) <= (
            -lam + k * loglam - math.lgamma(k + 1.0)
        ):
            return k


@njit(cache=True, error_model="numpy")
def _binomial(rng, i, n, p):
    if n <= 0.0 or p <= 0.0:
        return 0.0
    if p >= 1.0:
        return n
    if n <= 64.0:
        k = 0.0
        for _ in range(int(n)):
            if _uniform(rng, i) < p:
                k += 1.0
        return k
    mean = n * p
    return min(n, max(0.0, np.floor(mean + np.sqrt(mean * (1.0 - p)) * _normal(rng, i) + 0.5)))


@njit(cache=True, error_model="numpy")
def _draw_table(rng, i, table):
    """Inverse-CDF draw from a quantile table (see :func:`_quantile_at`)."""
    return _quantile_at(table, _uniform(rng, i))


@njit(cache=True, error_model="numpy")
def _quantile_cdf(q, x):
    """CDF at x of a distribution given by quantiles q at levels (k + 0.5) / n."""
    n = q.shape[0]
    if x <= q[0]:
        return 0.5 / n if x == q[0] else 0.0
    if x >= q[n - 1]:
        return 1.0
    lo = 0
    hi = n - 1
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if q[mid] <= x:
            lo = mid
        else:
            hi = mid
    span = q[hi] - q[lo]
    f = (x - q[lo]) / span if span > 0.0 else 1.0
    return (lo + 0.5 + f) / n


@njit(cache=True, error_model="numpy")
def _quantile_at(q, level):
    """Quantile ``level`` of a distribution given by quantiles q at levels (k + 0.5) / n."""
    n = q.shape[0]
    x = level * n - 0.5
    if x <= 0.0:
        return q[0]
    j = int(x)
    if j >= n - 1:
        return q[n - 1]
    f = x - j
    return q[j] * (1.0 - f) + q[j + 1] * f


@njit(cache=True, error_model="numpy")
def _iteration_wait(lam, pre_s, pre2_s, t_dec, R, busy):
    """(probability, conditional mean in seconds) of waiting on other work before one's prefill.

    A replica running continuous batching takes every request queued at the start of each
    iteration (within its token budget); a request's first token comes at the end of that
    iteration, after the prefill of every prompt taken with it. So a request at a busy replica
    waits for the iteration in flight to end, then for the prefill of the prompts taken with
    it. Iterations last ``t_dec`` plus the prefill of what they took: a mean of
    ``T = t_dec / (1 - rho)`` with ``rho = lam * pre_s`` the prefill share, at ``lam``
    admissions per replica-second of mean prefill ``pre_s`` (second moment ``pre2_s``), and a
    variance ``V = lam * T * pre2_s / (1 - rho^2)`` (gated batches: what arrives during one
    iteration is prefilled in the next). With least-loaded pulling the pickups of ``R``
    replicas with independent phases interleave, and the gap between pickups that holds an
    arrival is size-biased: ``T + V / T`` for one replica (its iteration), ``2 T / R`` for many
    (nearly exponential gaps); ``2 T / (R + 1) + V / (T R^2)`` has both limits. The
    request waits half that gap for its pickup, then the prefill of the requests that arrived
    in it, Poisson(``lam * R * gap``) of them. ``busy`` is the chance that no replica is idle
    (an idle one starts at once).

    Returns ``busy``, the chance that prompts were taken along, the mean pickup wait, and the
    mean prefill of the prompts taken along given some were (each wait taken as exponential
    by the tables).
    """
    if lam <= 0.0 or R <= 0.0 or busy <= 0.0:
        return 0.0, 0.0, 0.0, 0.0
    rho = min(lam * pre_s, PREFILL_SHARE_MAX)
    T = t_dec / (1.0 - rho)
    # gated batches: what arrives during one iteration is prefilled in the next, so the
    # variance of an iteration's length carries over, amplified by 1 / (1 - rho^2)
    var_t = lam * T * pre2_s / (1.0 - rho * rho)
    gap = 2.0 * T / (R + 1.0) + var_t / (T * R * R)
    # the pickup wait always comes (at a busy replica); the prompts taken along only when
    # some arrived in the gap: Poisson(m), none with probability exp(-m)
    m = lam * R * gap
    some = 1.0 - np.exp(-m)
    shared = m * pre_s / some if some > 0.0 else 0.0
    return busy, some, 0.5 * gap, shared


@njit(inline="always", cache=True, error_model="numpy")
def _wait_rows(theta_tok):
    """The wait table's row below a mean wait of ``theta_tok`` prompt tokens' worth of
    prefill, and the share of the row above (rows are log-spaced, see ``WAIT_RATIO``)."""
    if theta_tok <= 0.0:
        return 0, 0.0
    xr = np.log(max(theta_tok, WAIT_MIN_TOK) / WAIT_MIN_TOK) / np.log(WAIT_RATIO)
    r0 = min(int(xr), WAIT_ROWS - 2)
    return r0, min(xr - r0, 1.0)


@njit(inline="always", cache=True, error_model="numpy")
def _add_quantile_cdf(cdf, xs, shift, inv_p, w, q, num, span, kf):
    """cdf[g] += w * F_q((xs[g] - shift) * inv_p) for an increasing grid, in one walk.

    The walk finds each point's quantile interval and keeps its numerator, span and index in
    ``num``, ``span`` and ``kf`` (scratch as long as the grid); the divisions then run in a
    loop of their own, which the compiler vectorizes."""
    nq = q.shape[0]
    n = xs.shape[0]
    k = 0
    g0 = n  # the first point at or above q[0] (y rises with g: those below are a prefix)
    g1 = n  # the first point at or past q[-1]
    for g in range(n):
        y = (xs[g] - shift) * inv_p
        if y < q[0]:
            continue
        if y >= q[nq - 1]:
            g1 = g
            break
        if g0 == n:
            g0 = g
        while q[k + 1] <= y:
            k += 1
        num[g] = y - q[k]
        span[g] = q[k + 1] - q[k]
        kf[g] = k + 0.5
    g0 = min(g0, g1)
    # q[k] <= y < q[k + 1]: every span is positive, so no branch keeps the loop from vectorizing
    # (nor a negative index: the slices are walked from 0)
    c_in = cdf[g0:g1]
    num_in = num[g0:g1]
    span_in = span[g0:g1]
    kf_in = kf[g0:g1]
    for g in range(c_in.shape[0]):
        c_in[g] += w * (kf_in[g] + num_in[g] / span_in[g]) / nq
    for g in range(g1, n):
        cdf[g] += w


@njit(inline="always", cache=True, error_model="numpy")
def _bin_waits(hist_kj, dt):
    """The two wait points of one histogram bin in seconds (one standard deviation either
    side of its mean delay), and whether they differ."""
    w = hist_kj[0]
    mean = hist_kj[1] / w
    spread = np.sqrt(max(0.0, hist_kj[2] / w - mean * mean))
    return max(0.0, mean - spread) * dt, max(0.0, mean + spread) * dt, spread > 0.0


@njit(cache=True, error_model="numpy")
def _ttft_stats(hist, tables, rows, scale, L, dt, base_s, prefill_s_per_tok, target_s, buf):
    """TTFT p50/p95/p99 and the count meeting the target, of admitted requests.

    Histogram row ``k`` is ``hist[k]`` times ``scale[k]``, or with one row in ``hist``,
    ``hist[0]`` times ``scale[k]`` (a step's admissions split over its wait tables). Its bin
    ``[0, j]`` counts requests admitted after ``j`` whole sub-steps in the queue (``j < L``)
    whose wait behind other prompts' prefill is row ``rows[k]`` of ``tables`` (token
    quantiles: a step's three tables, or an episode's rows of the prefill-wait table);
    ``[1, j]`` and ``[2, j]`` sum their queueing delays and squared delays in sub-steps, so a
    bin carries the mean and spread of its delays rather than ``j`` (two points at one
    standard deviation either side of the mean, one where the delays do not spread). A
    request admitted on arrival (``j = 0``) waits only for its iteration. Such a request's
    TTFT is its queueing delay, plus ``base_s`` (waiting out the iteration in flight and
    running its own), plus ``prefill_s_per_tok`` times a token count distributed as
    ``tables[r]``: its own prompt and, at a busy replica, the prompts ahead of it in the
    prefill budget.
    """
    one = hist.shape[0] == 1
    nq = tables.shape[1]
    inv_p = 1.0 / prefill_s_per_tok
    total = 0.0
    ok = 0.0
    lo_wait = np.inf
    hi_wait = 0.0
    top = 0.0
    bottom = np.inf
    for k in range(rows.shape[0]):
        if scale[k] <= 0.0:
            continue
        h = hist[0] if one else hist[k]
        r = int(rows[k])
        used = False
        for j in range(L):
            w = h[0, j] * scale[k]
            if w > 0.0:
                used = True
                total += w
                lo, hi, two = _bin_waits(h[:, j], dt)
                lo_wait = min(lo_wait, lo)
                hi_wait = max(hi_wait, hi)
                c_lo = _quantile_cdf(tables[r], (target_s - lo - base_s) * inv_p)
                if two:
                    c_hi = _quantile_cdf(tables[r], (target_s - hi - base_s) * inv_p)
                    ok += 0.5 * w * (c_lo + c_hi)
                else:
                    ok += w * c_lo
        if used:
            top = max(top, tables[r, nq - 1])
            bottom = min(bottom, tables[r, 0])
    if total <= 0.0:
        return 0.0, 0.0, 0.0, 0.0
    # the mixture CDF on a log-spaced grid, then the percentiles by interpolation
    lo_s = max(lo_wait + base_s + prefill_s_per_tok * bottom, 1e-4)
    hi_s = max(hi_wait + base_s + prefill_s_per_tok * top, lo_s * 1.0001)
    ratio = np.exp(np.log(hi_s / lo_s) / (TTFT_GRID - 1))
    # the caller's scratch rows (nothing allocated): the grid, the CDF on it, and the walk's
    xs = buf[GR_XS, :TTFT_GRID]
    cdf = buf[GR_CDF, :TTFT_GRID]
    num = buf[GR_WORK, :TTFT_GRID]
    span = buf[GR_WORK + 1, :TTFT_GRID]
    kf = buf[GR_WORK + 2, :TTFT_GRID]
    x = lo_s
    for g in range(TTFT_GRID):
        xs[g] = x
        cdf[g] = 0.0
        x *= ratio
    xs[TTFT_GRID - 1] = hi_s
    for k in range(rows.shape[0]):
        if scale[k] <= 0.0:
            continue
        h = hist[0] if one else hist[k]
        q = tables[int(rows[k])]
        for j in range(L):
            w = h[0, j] * scale[k]
            if w > 0.0:
                lo, hi, two = _bin_waits(h[:, j], dt)
                if two:
                    _add_quantile_cdf(cdf, xs, lo + base_s, inv_p, 0.5 * w, q, num, span, kf)
                    _add_quantile_cdf(cdf, xs, hi + base_s, inv_p, 0.5 * w, q, num, span, kf)
                else:
                    _add_quantile_cdf(cdf, xs, lo + base_s, inv_p, w, q, num, span, kf)
    levels = (0.50, 0.95, 0.99)
    q50 = hi_s
    q95 = hi_s
    q99 = hi_s
    li = 0
    prev_x = lo_s
    prev_c = 0.0
    for g in range(TTFT_GRID):
        c = cdf[g] / total
        while li < 3 and c >= levels[li]:
            span = c - prev_c
            f = (levels[li] - prev_c) / span if span > 0.0 else 1.0
            v = prev_x + f * (xs[g] - prev_x)
            if li == 0:
                q50 = v
            elif li == 1:
                q95 = v
            else:
                q99 = v
            li += 1
        if li == 3:
            break
        prev_x = xs[g]
        prev_c = c
    return q50, q95, q99, ok


# three-point Gauss-Hermite rule: nodes at 0 and +-sqrt(3) standard deviations, weights
_GH_NODE = 1.7320508075688772
_GH_W_SIDE = 1.0 / 6.0
_GH_W_MID = 2.0 / 3.0


@njit(inline="always", cache=True, error_model="numpy")
def _tpot_lifetimes(ps_row, tpot_s, dt, sp):
    """Update the per-output-quantile lifetime averages of the iteration time (PS_TPOT_LIFE)
    with a sub-step that decoded at ``tpot_s`` seconds an iteration.

    A request's TPOT averages the iterations of its whole decode, its output's worth of them;
    seen at its completion that window's mean lags by half of it: per output quantile an EWMA
    with half its lifetime as time constant.
    """
    if ps_row[PS_TPOT_LIFE] <= 0.0:
        for q in range(N_OUTPUT_Q):
            ps_row[PS_TPOT_LIFE + q] = tpot_s
        return
    for q in range(N_OUTPUT_Q):
        jq = PS_TPOT_LIFE + q
        life_s = 0.5 * sp[SP_OUTPUT_Q + q] * tpot_s
        ps_row[jq] += dt / (life_s + dt) * (tpot_s - ps_row[jq])


@njit(inline="always", cache=True, error_model="numpy")
def _tpot_bin(tpot):
    """The episode TPOT histogram's bin of ``tpot`` seconds per output token."""
    b = int(np.log(max(tpot, TPOT_MIN_S) / TPOT_MIN_S) / TPOT_LOG_SPAN * TPOT_BINS)
    return min(max(b, 0), TPOT_BINS - 1)


@njit(inline="always", cache=True, error_model="numpy")
def _add_request_tpot(hist, life_row, prefill_share, var_iter_s2, weight, sp):
    """Add ``weight`` completed requests' TPOT to an episode TPOT histogram.

    A request's TPOT is the mean of the iterations it decoded in. For a request of output
    quantile ``q`` their mean is ``life_row[q]`` (see ``PS_TPOT_LIFE``), of which
    ``prefill_share`` is other prompts' prefill riding along, and
    that part varies between iterations (``var_iter_s2``, see ``_iteration_wait``). Averaged
    over a request's ``o - 1`` iterations, it varies by ``var_iter_s2 / (o - 1)``: short
    answers see few iterations and spread widely. Per output quantile, the prefill part is
    taken as lognormal with that mean and variance, placed by a three-point Gauss-Hermite rule.
    """
    for q in range(N_OUTPUT_Q):
        n = sp[SP_OUTPUT_Q + q] - 1.0
        if n < 0.5:
            continue  # one output token: no TPOT
        tpot_mean_s = life_row[q]
        m_x = prefill_share * tpot_mean_s
        fixed = tpot_mean_s - m_x
        wq = weight / N_OUTPUT_Q
        var_x = var_iter_s2 / n
        if m_x <= 0.0 or var_x <= 0.0:
            hist[_tpot_bin(tpot_mean_s)] += wq
            continue
        # lognormal of mean m_x and variance var_x: exp(mu + z sig) with sig^2 = log(t),
        # t = 1 + var_x / m_x^2, and exp(mu) = m_x / sqrt(t); its nodes z = 0, +-sqrt(3)
        t = 1.0 + var_x / (m_x * m_x)
        mid = m_x / np.sqrt(t)
        spread = np.exp(_GH_NODE * np.sqrt(np.log(t)))
        hist[_tpot_bin(fixed + mid / spread)] += wq * _GH_W_SIDE
        hist[_tpot_bin(fixed + mid)] += wq * _GH_W_MID
        hist[_tpot_bin(fixed + mid * spread)] += wq * _GH_W_SIDE


@njit(inline="always", cache=True, error_model="numpy")
def _add_tpot_group(hist, group, prefill_share, var_iter_s2, sp):
    """Add a group of sub-steps' completions (``group[0]``) at their completion-weighted mean
    lifetime row (``group[1:]`` holds the weighted sums) to the episode TPOT, and empty it."""
    w = group[0]
    for q in range(N_OUTPUT_Q):
        group[1 + q] /= w
    _add_request_tpot(hist, group[1:], prefill_share, var_iter_s2, w, sp)
    group[:] = 0.0


@njit(inline="always", cache=True, error_model="numpy")
def _note_tpot_completions(at, ps_row, completed):
    """Keep a sub-step's completed interactive requests of a pool and the lifetime averages of
    the iteration time (PS_TPOT_LIFE) they complete at, for the episode TPOT (``at``: the
    sub-step's and pool's TPOT_AT_FIELDS past the episode histogram's bins).

    A request's TPOT is the mean iteration time of its own decode, which ends in the sub-step
    it completes in; the step's later sub-steps are not part of it (read at the step's end, a
    burst of prefill in its last seconds would be charged to every request that completed
    before it, and one in its first seconds forgotten by the requests that lived through it).
    """
    at[0] = completed
    if completed <= 0.0:
        return
    for q in range(N_OUTPUT_Q):
        at[1 + q] = ps_row[PS_TPOT_LIFE + q]


@njit(cache=True, error_model="numpy")
def _weighted_quantile(values, weights, n, level):
    """The smallest of ``values[:n]`` whose share of the weight at or below it reaches
    ``level`` (a handful of values, one per pool: quadratic and allocation-free)."""
    total = 0.0
    for j in range(n):
        total += weights[j]
    if total <= 0.0:
        return 0.0
    best = 0.0
    found = False
    for j in range(n):
        below = 0.0
        for k in range(n):
            if values[k] <= values[j]:
                below += weights[k]
        if below >= level * total and (not found or values[j] < best):
            best = values[j]
            found = True
    return best


@njit(inline="always", cache=True, error_model="numpy")
def _to_drain(ps_row, n, share_flag_ring, drow, slot, nb):
    """Move n ready replicas (and their share of in-flight work) into the draining group."""
    ready = ps_row[PS_READY]
    if n <= 0.0 or ready <= 0.0:
        return
    n = min(n, ready)
    f = n / ready
    for k in range(nb):
        j = PS_CLASS + N_CF * k
        for fld in range(3):
            moved = ps_row[j + CF_IR + fld] * f
            ps_row[j + CF_IR + fld] -= moved
            ps_row[j + CF_ID + fld] += moved
    _sync_totals(ps_row, nb)
    ps_row[PS_READY] = ready - n
    ps_row[PS_DRAIN] += n
    drow[share_flag_ring, slot] += n


@njit(cache=True, error_model="numpy")
def _cancel_starting(ring, n, now, H, horizon):
    """Cancel up to n replicas from a lifecycle ring, latest transition first.

    Entries lie at sub-steps ``now`` .. ``now + H - 1`` (slot ``t % H``), none past
    ``horizon``, the latest one written."""
    removed = 0.0
    for t in range(min(int(horizon), now + H - 1), now - 1, -1):
        if removed >= n:
            break
        slot = t % H
        have = ring[slot]
        if have > 0.0:
            take = min(have, n - removed)
            ring[slot] = have - take
            removed += take
    return removed


@njit(inline="always", cache=True, error_model="numpy")
def _sync_totals(ps_row, nb):
    """PS_IR .. PS_CD from the first ``nb`` buckets: the totals every reader outside them
    uses. ``nb`` is N_BUCKETS with batch work, else OUTPUT_CLASSES (the batch bucket is then
    empty); the kernel passes a compile-time constant, so the loops keep constant bounds."""
    for f in range(N_CF):
        total = 0.0
        for k in range(nb):
            total += ps_row[PS_CLASS + N_CF * k + f]
        ps_row[PS_IR + f] = total


@njit(inline="always", cache=True, error_model="numpy")
def _iterations(a, c, kctx, p_tok, R, seqs, ctx, dt, q_tokens):
    """Iterations each of R replicas runs in a sub-step holding ``seqs`` sequences of ``ctx``
    context tokens, while ``q_tokens`` prompt tokens are prefilled in the same iterations
    (chunked prefill), which lengthens them."""
    if R <= 0.0 or seqs <= 0.0:
        return 0.0
    t_dec = a + c * (seqs / R) + kctx * (ctx / R)
    budget = dt - p_tok * q_tokens / R
    if budget <= 0.0:
        return 0.0
    return budget / t_dec


@njit(inline="always", cache=True, error_model="numpy")
def _freed_per_completion(seqs, remaining, ctx, phi, pshift):
    """KV tokens a completing sequence of one class frees: its prompt and its whole output.

    The fluid does not know which sequences complete, only how many; their mean context is
    read off the bucket. In steady state a sequence in flight holds its prompt plus as many
    generated tokens as it has left (age and residual have one mean), and its prompt is the
    output-weighted mean, ``pshift`` tokens off the mean prompt that completions free. So a
    completing one holds ``ctx/seqs + (1/phi - 1) * remaining/seqs - pshift``. Reading it
    off the state, rather than from the admitted mean, keeps the held context self-correcting.
    """
    if seqs <= 0.0:
        return 0.0
    return max(0.0, ctx / seqs + (1.0 / phi - 1.0) * remaining / seqs - pshift)


@njit(inline="always", cache=True, error_model="numpy")
def _decode_classes(ps_row, bucket, n_iter, sp, nb):
    """Decode ``n_iter`` iterations on one bucket (CF_IR: ready, CF_ID: draining) of every
    class; returns (decoded tokens, completed sequences), all classes and of them the batch
    requests'.

    Every sequence of the batch gets a token per iteration. A class completes
    ``decoded * phi * seqs / remaining`` sequences: in steady state its remaining work per
    sequence is then ``phi`` times a new one's, the mean residual of its output lengths
    (``phi = E[o^2] / (2 E[o]^2)``), and Little's law holds for any ``phi``. Decoded tokens
    join the held context; completing sequences free their prompt and output.
    """
    dec_all = 0.0
    done_all = 0.0
    dec_b = 0.0
    done_b = 0.0
    if n_iter <= 0.0:
        return 0.0, 0.0, 0.0, 0.0
    for k in range(nb):
        j = PS_CLASS + N_CF * k + bucket
        seqs = ps_row[j]
        if seqs <= 0.0:
            continue
        phi = sp[SP_CLASS + N_CP * k + CP_PHI]
        # the class's pshift (PS_PSTAT), the batch class's from the workload
        pshift = (
            ps_row[PS_PSTAT + N_PT * k + PT_PSHIFT]
            if k < OUTPUT_CLASSES
            else sp[SP_CLASS + N_CP * k + CP_PSHIFT]
        )
        remaining = ps_row[j + 1]
        decoded = min(remaining, n_iter * seqs)
        done = decoded * phi * seqs / remaining if remaining > 0.0 else seqs
        # under the rule the remaining work per sequence falls by (1 - phi) a token per
        # iteration: once that reaches 0 the class is done, not left holding empty sequences
        if remaining <= seqs * n_iter * (1.0 - phi):
            done = seqs
        done = min(done, seqs)
        ctx = ps_row[j + 2] + decoded
        remaining -= decoded
        left = seqs - done
        if k < OUTPUT_CLASSES:
            # the completing requests leave the class's in-flight statistics
            jt = PS_PSTAT + N_PT * k + PT_N
            ps_row[jt] = max(0.0, ps_row[jt] - done)
        if left <= 1e-12:
            ps_row[j] = 0.0
            ps_row[j + 1] = 0.0
            ps_row[j + 2] = 0.0
        else:
            ps_row[j + 2] = max(
                0.0, ctx - done * _freed_per_completion(seqs, remaining, ctx, phi, pshift)
            )
            ps_row[j + 1] = max(0.0, remaining)
            ps_row[j] = left
        dec_all += decoded
        done_all += done
        if k == BATCH_BUCKET:
            dec_b = decoded
            done_b = done
    return dec_all, done_all, dec_b, done_b


@njit(inline="always", cache=True, error_model="numpy")
def _admission_cap(pp_row, ps_row, dt, maxtok, sp, pbar, obar, prompt_m2_ratio, nb):
    """Requests a pool's ready replicas can admit in this sub-step.

    Continuous batching admits at every iteration, so the slots and KV room that this
    sub-step's completions free are reused within it. Admitting ``x`` requests spends
    ``h * x`` seconds of each replica's sub-step on their prefill, which leaves less decode
    time and so fewer completions: ``x <= free + g * (dt - h * x)`` with ``g`` completions
    per second of decode time (summed over the classes), solved for ``x``; the KV bound
    likewise. The prefill itself is bounded by the iteration token budget
    (``max_batched_tokens`` less the decodes).

    KV is admitted a whole request at a time in queue order: while the request at the head
    waits for room, what each replica has free short of its need sits unused, about half of
    it (the size-biased need: a large request waits longer, ``prompt_m2_ratio`` is the
    prompts' ``E[p^2] / E[p]^2``).

    Returns ``(cap, cap_slot, kv_a, kv_c, kv_a2, tok)``: the cap in requests of the head's
    mean size (the pools' shares of the admissions), the slot bound in requests, and the bounds
    in tokens, which the caller applies to the requests it actually takes (cohorts behind the
    head can be larger or smaller than it): their prompt and output tokens ``S_p + S_o``
    satisfy ``S_p + S_o + kv_c * S_p <= kv_a`` (prefill time taken from decoding frees less),
    ``S_p + S_o <= kv_a2`` (no more than every sequence in flight can free) and
    ``S_p <= tok`` (the iterations' prefill budget).
    """
    R = ps_row[PS_READY]
    if R <= 0.0:
        return 0.0, 0.0, 0.0, 0.0, 0.0, 0.0
    seqs = ps_row[PS_IR]
    ctx = ps_row[PS_CR]
    b = seqs / R
    t_dec = pp_row[PP_A] + pp_row[PP_C] * b + pp_row[PP_KCTX] * ctx / R
    qbudget = max(0.0, maxtok - b)
    q_per_rep = dt * qbudget / (t_dec + pp_row[PP_PREFILL] * qbudget)
    tok = R * q_per_rep
    cap_tok = tok / max(pbar, 1.0)
    h = pp_row[PP_PREFILL] * pbar / R
    free_slots = R * pp_row[PP_MAXSEQ] - seqs
    need = pbar + obar
    blocked = 0.5 * (pbar * prompt_m2_ratio + obar)
    free_kv = R * (pp_row[PP_KV] - blocked) - ctx - ps_row[PS_WR]
    if seqs <= 0.0:
        free_kv = max(0.0, free_kv)
        cap = max(0.0, min(free_slots, free_kv / need, cap_tok))
        return cap, max(0.0, free_slots), free_kv, 0.0, free_kv, tok
    g = 0.0
    g_freed = 0.0
    for k in range(nb):
        j = PS_CLASS + N_CF * k + CF_IR
        sk = ps_row[j]
        if sk <= 0.0:
            continue
        wk = ps_row[j + 1]
        phi = sp[SP_CLASS + N_CP * k + CP_PHI]
        gk = phi * sk * sk / (t_dec * wk) if wk > 0.0 else sk / dt
        g += gk
        g_freed += gk * _freed_per_completion(
            sk,
            wk,
            ps_row[j + 2],
            phi,
            ps_row[PS_PSTAT + N_PT * k + PT_PSHIFT]
            if k < OUTPUT_CLASSES
            else sp[SP_CLASS + N_CP * k + CP_PSHIFT],
        )
    freed = g_freed / g if g > 0.0 else 0.0
    cap_slot = min((free_slots + g * dt) / (1.0 + g * h), free_slots + seqs)
    kv_a = max(0.0, free_kv + g * dt * freed)
    kv_c = g * freed * pp_row[PP_PREFILL] / R
    kv_a2 = max(0.0, free_kv + seqs * freed)
    cap_kv = min(kv_a / (need + kv_c * pbar), kv_a2 / need)
    cap = max(0.0, min(cap_slot, cap_kv, cap_tok))
    return cap, max(0.0, cap_slot), kv_a, kv_c, kv_a2, tok


@njit(inline="always", cache=True, error_model="numpy")
def _admissible(q, qhead, s, L, admit, queued, caps, cap_total, kv_a, kv_c, kv_a2, tok):
    """How many of ``admit`` requests (the slot bound), taken from the head of the queue ``q``
    in order, fit in the pools' KV and prefill budgets in tokens (_admission_cap's ``kv_a,
    kv_c, kv_a2, tok`` per pool, each pool taking its ``caps`` share of every cohort). Caps in
    requests of the head cohort's mean size would let through too many tokens behind a small
    head, and too few behind a large one. ``queued`` is the queue's (requests, prompt tokens,
    output tokens): when the slots take all of it and its tokens fit, no walk is needed."""
    P = caps.shape[0]
    qn, qp, qo = queued
    if admit >= qn - 1e-9:
        fits = True
        for p in range(P):
            if caps[p] > 0.0:
                f = caps[p] / cap_total
                if (
                    f * (qp + qo + kv_c[p] * qp) > kv_a[p]
                    or f * (qp + qo) > kv_a2[p]
                    or f * qp > tok[p]
                ):
                    fits = False
        if fits:
            return admit
    left = admit
    got = 0.0
    s_p = 0.0
    s_po = 0.0
    head = int(qhead)
    while left > 1e-12 and head <= s:
        hb = head % L
        have = q[0, hb]
        head += 1
        if have <= 0.0:
            continue
        pc = q[1, hb] / have
        poc = pc + q[2, hb] / have
        take = min(have, left)
        for p in range(P):
            if caps[p] <= 0.0:
                continue
            f = caps[p] / cap_total
            room_a = (kv_a[p] / f - s_po - kv_c[p] * s_p) / (poc + kv_c[p] * pc)
            room_a2 = (kv_a2[p] / f - s_po) / poc if poc > 0.0 else take
            room_t = (tok[p] / f - s_p) / pc if pc > 0.0 else take
            take = max(0.0, min(take, room_a, room_a2, room_t))
        got += take
        s_p += take * pc
        s_po += take * poc
        if take < min(have, left):
            break
        left -= take
    return got


@njit(inline="always", cache=True, error_model="numpy")
def _admit_classes(
    ps_row, n0, prompt0, output0, po0, n1, prompt1, output1, po1, pshift0, pshift1, nb
):
    """Add admitted requests to the ready buckets of the two output-length classes: ``n_k``
    requests with ``prompt_k`` and ``output_k`` tokens in all (each class as it queued) and
    ``po_k`` the sum of their prompt x output tokens. A new
    sequence holds its slot for its prefill iteration (the first token) and one iteration per
    further token, so its output counts whole, from the next sub-step (within this one the
    slots it took were freed by completions).

    They join their class's in-flight statistics (PS_PSTAT), whose pshift is set from them
    with Bessel's ``n / (n - 1)`` for a small sample; while fewer than two are in flight it is
    the workload's constant ``pshift_k``."""
    for k in range(OUTPUT_CLASSES):
        n = n0 if k == 0 else n1
        if n <= 1e-12:
            continue
        j = PS_CLASS + N_CF * k + CF_IR
        output = max(0.0, output0 if k == 0 else output1)
        prompt = max(0.0, prompt0 if k == 0 else prompt1)
        ps_row[j] += n
        ps_row[j + 1] += output
        ps_row[j + 2] += prompt
        jt = PS_PSTAT + N_PT * k
        n_was = ps_row[jt + PT_N]
        n_now = n_was + n
        inv = 1.0 / n_now
        mp = (n_was * ps_row[jt + PT_PROMPT] + prompt) * inv
        mo = (n_was * ps_row[jt + PT_OUTPUT] + output) * inv
        mpo = (n_was * ps_row[jt + PT_PO] + max(0.0, po0 if k == 0 else po1)) * inv
        ps_row[jt + PT_N] = n_now
        ps_row[jt + PT_PROMPT] = mp
        ps_row[jt + PT_OUTPUT] = mo
        ps_row[jt + PT_PO] = mpo
        if n_now >= 2.0 and mo > 0.0:
            ps_row[jt + PT_PSHIFT] = (mpo - mp * mo) * n_now / (mo * (n_now - 1.0))
        else:
            ps_row[jt + PT_PSHIFT] = pshift0 if k == 0 else pshift1
    _sync_totals(ps_row, nb)


@njit(inline="always", cache=True, error_model="numpy")
def _requeue_products(q, qb, row, j0, fn, rq, prompt, output):
    """The prompt x output sums (Q_PO0, Q_PO) of ``rq`` draining requests sent back to queue
    cohort ``qb`` (``fn`` of the group's, ``prompt`` and ``output`` tokens of all of them,
    class 0's at ``row[j0:]``): each class as its in-flight statistics have it
    (PS_PSTAT)."""
    n0 = row[j0] * fn
    total = 0.0
    for k in range(OUTPUT_CLASSES):
        n = n0 if k == 0 else rq - n0
        if n <= 1e-12:
            continue
        p = row[j0 + 2] * fn if k == 0 else max(0.0, prompt - row[j0 + 2] * fn)
        o = row[j0 + 1] * fn if k == 0 else max(0.0, output - row[j0 + 1] * fn)
        po = max(0.0, (p / n + row[PS_PSTAT + N_PT * k + PT_PSHIFT]) * o)
        if k == 0:
            q[Q_PO0, qb] += po
        total += po
    q[Q_PO, qb] += total


# --- batch requests (request class "batch"; see the module docstring) ----------------------
@njit(cache=True, error_model="numpy")
def _batch_expire(c, m, bring_i, step, LB):
    """Expire the batch cohorts that have waited the whole deadline (``LB`` decision steps)
    by the start of decision step ``step``, oldest first."""
    head = int(c[CS_BQHEAD])
    while head <= step - LB:
        slot = head % LB
        n = bring_i[BQ_N, slot]
        if n > 0.0:
            c[CS_B_EXPIRED] += n
            m[M_B_EXPIRED] += n
            c[CS_BQN] -= n
            c[CS_BQP] -= bring_i[BQ_PROMPT, slot]
            c[CS_BQO] -= bring_i[BQ_OUTPUT, slot]
        for r in range(N_BQ):
            bring_i[r, slot] = 0.0
        head += 1
    c[CS_BQHEAD] = head
    if c[CS_BQN] < 1e-9:  # rounding residue of an empty queue
        c[CS_BQN] = 0.0
        c[CS_BQP] = 0.0
        c[CS_BQO] = 0.0


@njit(inline="always", cache=True, error_model="numpy")
def _batch_requeue(c, m, bring_i, step, LB, n, prompt, output):
    """Return ``n`` batch sequences (``prompt`` context and ``output`` tokens still to
    generate) to the batch queue, into its oldest waiting cohort (this step's when none
    waits): their own arrival time is not kept, and the oldest cohort expires first, so a
    requeued request gains no deadline over the requests still waiting."""
    head = int(c[CS_BQHEAD])
    while head < step and bring_i[BQ_N, head % LB] <= 1e-12:
        head += 1
    c[CS_BQHEAD] = head
    slot = head % LB
    bring_i[BQ_N, slot] += n
    bring_i[BQ_PROMPT, slot] += prompt
    bring_i[BQ_OUTPUT, slot] += output
    c[CS_BQN] += n
    c[CS_BQP] += prompt
    c[CS_BQO] += output
    c[CS_B_REQUEUED] += n
    m[M_B_REQUEUED] += n


@njit(inline="always", cache=True, error_model="numpy")
def _batch_admit(c, bring_i, step, LB, pp, ps_i, dt, maxtok, sp, x_int, p_int, o_int, adm, shared):
    """Admit batch requests, oldest cohort first, into the room the interactive admissions of
    this sub-step left: per pool, the slots, KV and prefill budget of :func:`_admission_cap`
    less what the ``x_int[p]`` interactive requests (``p_int``, ``o_int`` tokens each) take.
    Pools that serve interactive requests too (``shared``: False while interactive requests
    are still queued after this sub-step's admission) take none; batch-only pools always may.
    Writes each pool's admitted requests into ``adm``; returns the requests admitted and
    their prompt and output tokens."""
    qn = c[CS_BQN]
    pb = max(c[CS_BQP] / qn, 1.0)
    ob = max(c[CS_BQO] / qn, 1.0)
    total = 0.0
    for p in range(pp.shape[0]):
        adm[p] = 0.0
        serves = pp[p, PP_SERVES]
        if serves == SERVES_INTERACTIVE or (serves == SERVES_ALL and not shared):
            continue
        if ps_i[p, PS_READY] <= 0.0:
            continue
        _, slot_cap, kva, kvc, kva2, tok = _admission_cap(
            pp[p], ps_i[p], dt, maxtok, sp, pb, ob, sp[SP_PROMPT_M2], N_BUCKETS
        )
        x = x_int[p]
        used = x * (p_int + o_int)
        room = min(
            slot_cap - x,
            (kva - used - kvc * x * p_int) / (pb + ob + kvc * pb),
            (kva2 - used) / (pb + ob),
            (tok - x * p_int) / pb,
        )
        if room > 0.0:
            adm[p] = room
            total += room
    take = min(total, qn)
    if take <= 1e-12:
        for p in range(pp.shape[0]):
            adm[p] = 0.0
        return 0.0, 0.0, 0.0
    for p in range(pp.shape[0]):
        adm[p] *= take / total
    got_n = 0.0
    got_p = 0.0
    got_o = 0.0
    head = int(c[CS_BQHEAD])
    need = take
    while need > 1e-12 and head <= step:
        slot = head % LB
        have = bring_i[BQ_N, slot]
        if have <= 1e-12:
            for r in range(N_BQ):
                bring_i[r, slot] = 0.0
            head += 1
            continue
        t = min(have, need)
        f = t / have
        tp = bring_i[BQ_PROMPT, slot] * f
        to = bring_i[BQ_OUTPUT, slot] * f
        got_n += t
        got_p += tp
        got_o += to
        need -= t
        if t >= have - 1e-12:
            for r in range(N_BQ):
                bring_i[r, slot] = 0.0
            head += 1
        else:
            bring_i[BQ_N, slot] = have - t
            bring_i[BQ_PROMPT, slot] -= tp
            bring_i[BQ_OUTPUT, slot] -= to
    c[CS_BQHEAD] = min(head, step)
    c[CS_BQN] = max(0.0, c[CS_BQN] - got_n)
    c[CS_BQP] = max(0.0, c[CS_BQP] - got_p)
    c[CS_BQO] = max(0.0, c[CS_BQO] - got_o)
    if got_n < take:  # rounding: what the walk found is what the pools take
        for p in range(pp.shape[0]):
            adm[p] *= got_n / take
    c[CS_B_ADMITTED] += got_n
    return got_n, got_p, got_o


@njit(inline="always", cache=True, error_model="numpy")
def _market(
    i, pp, spot, ps, drings, rng, m, pmet, dt, K, G, s0, dstep, price_scale, preempt_scale, batch
):
    """Market, at the start of the interval: each spot pool's price (its trace, or the
    mean-reverting process) and the preemption notices its ready replicas receive (they drain,
    and count in the step's metrics)."""
    nbk = N_BUCKETS if batch else OUTPUT_CLASSES
    P = pp.shape[0]
    for p in range(P):
        row = ps[i, p]
        if pp[p, PP_SPOT] > 0.0:
            if pp[p, PP_PRICE_TRACE] > 0.0:
                row[PS_PRICE] = spot[0, p, dstep] * price_scale
            else:
                # the whole process scaled: its mean, its noise and its floor
                h = dt * K / 3600.0
                mean = pp[p, PP_OU_MEAN] * price_scale
                rev = pp[p, PP_OU_REV]
                x = row[PS_PRICE] + rev * (mean - row[PS_PRICE]) * h
                x += pp[p, PP_OU_VOL] * price_scale * np.sqrt(h) * _normal(rng, i)
                row[PS_PRICE] = max(0.05 * mean, x)
            # a scaled chance past 1 is a certain preemption (_binomial takes p >= 1 as such)
            n_pre = _binomial(rng, i, row[PS_READY], spot[1, p, dstep] * preempt_scale)
            if n_pre > 0.0:
                nb = int(pp[p, PP_NOTICE_BINS])
                _to_drain(row, n_pre, RING_NOTICE, drings[i, p], (s0 + nb) % G, nbk)
                row[PS_NOTICED] += n_pre
                pmet[i, p, PM_PREEMPT] += n_pre
                m[M_PREEMPTIONS] += n_pre
        else:
            row[PS_PRICE] = pp[p, PP_PRICE]


@njit(inline="always", cache=True, error_model="numpy")
def _actions(
    i,
    actions,
    sp,
    pp,
    spot,
    cold,
    ps,
    srings,
    drings,
    rng,
    m,
    pmet,
    dt,
    H,
    G,
    s0,
    dstep,
    cold_scale,
    batch,
):
    """Actions: per pool a bounded replica change (start from the warm pool first, then cold
    starts within quota and spot capacity; or cancel starting replicas, then drain ready ones),
    then the warm-pool target (refill toward it or release the surplus)."""
    nbk = N_BUCKETS if batch else OUTPUT_CLASSES
    P = pp.shape[0]
    maxstep = int(sp[SP_MAXSTEP])
    for p in range(P):
        row = ps[i, p]
        delta = float(actions[i, p] - maxstep)
        quota = pp[p, PP_QUOTA]
        occupied = (
            row[PS_PROV]
            + row[PS_LOAD]
            + row[PS_READY]
            + row[PS_DRAIN]
            + row[PS_STANDBY]
            + row[PS_REFILL]
        )
        changed = 0.0
        if delta > 0.0:
            headroom = quota - occupied
            if pp[p, PP_SPOT] > 0.0:
                cap = np.floor(quota * spot[2, p, dstep] + 1e-9)
                running = row[PS_PROV] + row[PS_LOAD] + row[PS_READY] + row[PS_DRAIN]
                headroom = min(headroom, cap - running)
            n_new = max(0.0, min(delta, np.floor(headroom + 1e-9)))
            from_standby = min(n_new, row[PS_STANDBY])
            for _ in range(int(from_standby)):
                t = _draw_table(rng, i, cold[p, CT_WARM]) * cold_scale
                bins = max(1, int(t / dt + 0.5))
                t_done = s0 + min(bins, H - 1)
                srings[i, p, RING_LOAD_DONE, t_done % H] += 1.0
                row[PS_HORIZON_LOAD] = max(row[PS_HORIZON_LOAD], float(t_done))
            row[PS_STANDBY] -= from_standby
            row[PS_LOAD] += from_standby
            pmet[i, p, PM_WARM] += from_standby
            m[M_WARM_STARTS] += from_standby
            n_cold = n_new - from_standby
            if pp[p, PP_SPOT] > 0.0 and n_cold > 0.0:
                got = _binomial(rng, i, n_cold, pp[p, PP_FULFIL])
                m[M_UNFULFILLED] += n_cold - got
                n_cold = got
            for _ in range(int(n_cold)):
                t = _draw_table(rng, i, cold[p, CT_PROV]) * cold_scale
                bins = max(1, int(t / dt + 0.5))
                t_done = s0 + min(bins, H - 1)
                srings[i, p, RING_PROV_DONE, t_done % H] += 1.0
                row[PS_HORIZON_PROV] = max(row[PS_HORIZON_PROV], float(t_done))
            row[PS_PROV] += n_cold
            pmet[i, p, PM_COLD] += n_cold
            m[M_COLD_STARTS] += n_cold
            changed = from_standby + n_cold
        elif delta < 0.0:
            n_rm = -delta
            # a ring is scanned only when it holds replicas: scans are the costly part
            got = 0.0
            if row[PS_PROV] > 0.0:
                got = _cancel_starting(
                    srings[i, p, RING_PROV_DONE],
                    min(n_rm, row[PS_PROV]),
                    s0,
                    H,
                    row[PS_HORIZON_PROV],
                )
            row[PS_PROV] -= got
            rest = n_rm - got
            if rest > 0.0 and row[PS_LOAD] > 0.0:
                got2 = _cancel_starting(
                    srings[i, p, RING_LOAD_DONE],
                    min(rest, row[PS_LOAD]),
                    s0,
                    H,
                    row[PS_HORIZON_LOAD],
                )
                row[PS_LOAD] -= got2
                rest -= got2
                got += got2
            if rest > 0.0:
                n_drain = min(rest, row[PS_READY])
                gb = int(sp[SP_GRACE_BINS])
                _to_drain(row, n_drain, RING_GRACE, drings[i, p], (s0 + gb) % G, nbk)
                got += n_drain
            changed = got
        if changed > 0.0:
            m[M_SCALE_EVENTS] += 1.0
            m[M_REPLICAS_CHANGED] += changed
        # warm pool: refill toward the target or release the surplus
        warm_target = min(float(actions[i, P + p]), pp[p, PP_WARMMAX])
        have = row[PS_STANDBY] + row[PS_REFILL]
        if warm_target > have:
            occupied = (
                row[PS_PROV]
                + row[PS_LOAD]
                + row[PS_READY]
                + row[PS_DRAIN]
                + row[PS_STANDBY]
                + row[PS_REFILL]
            )
            n_fill = max(0.0, min(warm_target - have, np.floor(quota - occupied + 1e-9)))
            for _ in range(int(n_fill)):
                t = _draw_table(rng, i, cold[p, CT_PROV]) + _draw_table(rng, i, cold[p, CT_LOAD])
                t *= cold_scale
                bins = max(1, int(t / dt + 0.5))
                srings[i, p, RING_STANDBY_DONE, (s0 + min(bins, H - 1)) % H] += 1.0
            row[PS_REFILL] += n_fill
        elif warm_target < row[PS_STANDBY]:
            row[PS_STANDBY] = warm_target


@njit(cache=True, error_model="numpy")
def _drain_deadline(i, row, c, m, qring, bring, xg, xn, s, L, bstep, LB, nbk):
    """Drain deadlines due in sub-step ``s`` for one pool (``row``): of its ``D`` draining
    replicas, ``xg`` reach the scale-down grace deadline (their interactive sequences are
    dropped) and ``xn`` a spot notice's (theirs return to the queue, as a cohort of this
    sub-step); batch sequences go back to the batch queue at either. Rare: only sub-steps
    with a deadline call it."""
    D = row[PS_DRAIN]
    if D > 0.0:
        fg = min(xg, D) / D
        fn = min(xn, D - min(xg, D)) / D
        # batch sequences go back to the batch queue at either deadline (a batch runner
        # retries them); the interactive ones as before
        jb = PS_CLASS + N_CF * BATCH_BUCKET + CF_ID
        bi = row[jb]
        if bi > 0.0:
            fb = fg + fn
            _batch_requeue(c, m, bring[i], bstep, LB, bi * fb, row[jb + 2] * fb, row[jb + 1] * fb)
        di = row[PS_ID] - bi
        dw = row[PS_WD] - row[jb + 1]
        dc = row[PS_CD] - row[jb + 2]
        c[CS_DROPPED] += di * fg
        m[M_DROPPED] += di * fg
        rq = di * fn
        if rq > 0.0:
            qb = s % L
            qring[i, Q_N, qb] += rq
            qring[i, Q_PROMPT, qb] += dc * fn
            qring[i, Q_OUTPUT, qb] += dw * fn
            qring[i, Q_ARRIVED, qb] += rq
            j0 = PS_CLASS + CF_ID
            qring[i, Q_N0, qb] += row[j0] * fn
            qring[i, Q_PROMPT0, qb] += row[j0 + 2] * fn
            qring[i, Q_OUTPUT0, qb] += row[j0 + 1] * fn
            _requeue_products(qring[i], qb, row, j0, fn, rq, dc * fn, dw * fn)
            c[CS_QN] += rq
            c[CS_QP] += dc * fn
            c[CS_QO] += dw * fn
            c[CS_REQUEUED] += rq
            m[M_REQUEUED] += rq
            if c[CS_QHEAD] > s:
                c[CS_QHEAD] = s
        keep = 1.0 - fg - fn
        for kc in range(nbk):
            jc = PS_CLASS + N_CF * kc + CF_ID
            for fld in range(3):
                row[jc + fld] *= keep
        _sync_totals(row, nbk)
        row[PS_DRAIN] = D - min(xg + xn, D)
        row[PS_NOTICED] = max(0.0, row[PS_NOTICED] - xn)


@njit(cache=True, error_model="numpy")
def _drained_leave(i, p, row, drings, G, nbk):
    """A draining group empty enough leaves: its replicas go, the sequences they still hold
    finish with them (the ring entries of its deadlines are cleared). Returns the interactive
    and the batch sequences that finish so."""
    rest_b = row[PS_CLASS + N_CF * BATCH_BUCKET + CF_ID]
    rest_i = row[PS_ID] - rest_b
    for kc in range(nbk):
        jc = PS_CLASS + N_CF * kc + CF_ID
        for fld in range(3):
            row[jc + fld] = 0.0
    _sync_totals(row, nbk)
    row[PS_DRAIN] = 0.0
    row[PS_NOTICED] = 0.0
    for gslot in range(G):
        drings[i, p, RING_GRACE, gslot] = 0.0
        drings[i, p, RING_NOTICE, gslot] = 0.0
    return rest_i, rest_b


@njit(cache=True, error_model="numpy")
def _substeps(
    i,
    sp,
    pp,
    wl,
    prompt_q,
    cold,
    bwl,
    c,
    m,
    ps,
    qring,
    whist,
    srings,
    drings,
    rng,
    pmet,
    scr,
    bring,
    ep_tpot,
    dt,
    K,
    L,
    H,
    G,
    nbins,
    s0,
    off,
    bstep,
    LB,
    cache_hit,
    maxtok,
    prompt_m2,
    rate_scale,
    cold_scale,
    episode_stats,
    batch,
):
    """The interval's sub-steps, each: lifecycle transitions due now; arrivals into the
    sub-step's cohort (the cohort a timeout ago dropped first); admission (interactive, then
    batch into the room left); decode on ready and draining replicas with the admitted requests
    added; billing. Per-pool sums of the step go to the cluster's scratch rows ``scr``; returns
    the step's other sums: ``(base_w, base_sum, pre_sum, tok_ok, tok_all, util_acc, kv_acc,
    nb_used)``, ``nb_used`` the queue-age bins of ``whist`` written."""
    literally(batch)
    has_batch = batch
    nbk = N_BUCKETS if has_batch else OUTPUT_CLASSES
    P = pp.shape[0]
    # whist holds this step's admissions by queue age; bins at or past nb_used are zero
    nb_used = 0
    base_w = 0.0
    base_sum = 0.0
    pre_sum = 0.0
    tok_ok = 0.0
    tok_all = 0.0
    util_acc = 0.0
    kv_acc = 0.0
    # per-pool sums of this step, in the cluster's scratch rows (no allocation per step)
    scr[:, :] = 0.0
    tpot_tok = scr[SCR_TPOT_TOK]
    tpot_w = scr[SCR_TPOT_W]
    caps = scr[SCR_CAPS]
    kv_a = scr[SCR_KV_A]
    kv_c = scr[SCR_KV_C]
    kv_a2 = scr[SCR_KV_A2]
    tok_p = scr[SCR_TOK]
    adm_n = scr[SCR_ADM_N]  # this step's admissions per pool: count, prompt tokens, x t_dec
    adm_q = scr[SCR_ADM_Q]
    adm_td = scr[SCR_ADM_TD]
    adm_busy = scr[SCR_ADM_BUSY]  # x P(no idle replica)
    done_pool = scr[SCR_DONE]  # completions per pool
    rep_sub = scr[SCR_REP_SUB]  # ready replica-sub-steps
    for k in range(K):
        s = s0 + k
        h_slot = s % H
        g_slot = s % G
        # lifecycle transitions due now
        for p in range(P):
            row = ps[i, p]
            # a ring holds entries only while the pool has replicas in its state (reading an
            # empty one costs a cache miss per pool and sub-step)
            if row[PS_PROV] > 0.0:
                x = srings[i, p, RING_PROV_DONE, h_slot]
                if x > 0.0:
                    srings[i, p, RING_PROV_DONE, h_slot] = 0.0
                    row[PS_PROV] -= x
                    row[PS_LOAD] += x
                    for _ in range(int(x + 0.5)):
                        t = _draw_table(rng, i, cold[p, CT_LOAD]) * cold_scale
                        bins = max(1, int(t / dt + 0.5))
                        t_done = s + min(bins, H - 1)
                        srings[i, p, RING_LOAD_DONE, t_done % H] += 1.0
                        row[PS_HORIZON_LOAD] = max(row[PS_HORIZON_LOAD], float(t_done))
            if row[PS_LOAD] > 0.0:
                y = srings[i, p, RING_LOAD_DONE, h_slot]
                if y > 0.0:
                    srings[i, p, RING_LOAD_DONE, h_slot] = 0.0
                    row[PS_LOAD] -= y
                    row[PS_READY] += y
            if row[PS_REFILL] > 0.0:
                z = srings[i, p, RING_STANDBY_DONE, h_slot]
                if z > 0.0:
                    srings[i, p, RING_STANDBY_DONE, h_slot] = 0.0
                    row[PS_REFILL] -= z
                    row[PS_STANDBY] += z
            # drain deadlines: grace expiry drops what is left, a preemption requeues it
            if row[PS_DRAIN] > 0.0:
                xg = drings[i, p, RING_GRACE, g_slot]
                xn = drings[i, p, RING_NOTICE, g_slot]
                if xg > 0.0 or xn > 0.0:
                    drings[i, p, RING_GRACE, g_slot] = 0.0
                    drings[i, p, RING_NOTICE, g_slot] = 0.0
                    _drain_deadline(i, row, c, m, qring, bring, xg, xn, s, L, bstep, LB, nbk)

        # arrivals into this sub-step's cohort; the cohort a timeout ago is dropped first
        qb = s % L
        stale = qring[i, 0, qb]
        if stale > 0.0 and c[CS_QHEAD] <= s - L:
            c[CS_DROPPED] += stale
            m[M_DROPPED] += stale
            c[CS_QN] -= stale
            c[CS_QP] -= qring[i, 1, qb]
            c[CS_QO] -= qring[i, 2, qb]
            for qr in range(N_Q):
                qring[i, qr, qb] = 0.0
        if c[CS_QHEAD] <= s - L:
            c[CS_QHEAD] = s - L + 1
        wb = (off + s) % nbins
        mean_n = wl[0, wb] * rate_scale
        n_arr = _poisson(rng, i, mean_n) if sp[SP_STOCH] > 0.0 else mean_n
        if n_arr > 0.0:
            if mean_n > 0.0:
                # tokens follow the requests: per request as the bin holds them
                ratio = n_arr / wl[0, wb]
                pt = wl[WL_PROMPT, wb] * ratio
                ot = wl[WL_OUTPUT, wb] * ratio
                n0 = wl[WL_N0, wb] * ratio
                pt0 = wl[WL_PROMPT0, wb] * ratio
                ot0 = wl[WL_OUTPUT0, wb] * ratio
                po0 = wl[WL_PO0, wb] * ratio
                po = wl[WL_PO, wb] * ratio
            else:
                pt = n_arr * prompt_q[0, prompt_q.shape[1] // 2]
                ot = 0.0
                n0 = n_arr
                pt0 = pt
                ot0 = 0.0
                po0 = 0.0
                po = 0.0
            hits = n_arr * cache_hit
            c[CS_ARRIVED] += n_arr
            c[CS_HITS] += hits
            m[M_ARRIVED] += n_arr
            m[M_HITS] += hits
            keep = 1.0 - cache_hit
            qring[i, Q_N, qb] += n_arr * keep
            qring[i, Q_PROMPT, qb] += pt * keep
            qring[i, Q_OUTPUT, qb] += ot * keep
            qring[i, Q_ARRIVED, qb] += n_arr * keep
            qring[i, Q_N0, qb] += n0 * keep
            qring[i, Q_PROMPT0, qb] += pt0 * keep
            qring[i, Q_OUTPUT0, qb] += ot0 * keep
            qring[i, Q_PO0, qb] += po0 * keep
            qring[i, Q_PO, qb] += po * keep
            c[CS_QN] += n_arr * keep
            c[CS_QP] += pt * keep
            c[CS_QO] += ot * keep
        if has_batch:
            # batch arrivals (never answered by the response cache) join this step's cohort
            mean_b = bwl[BQ_N, wb] * rate_scale
            n_b = _poisson(rng, i, mean_b) if sp[SP_STOCH] > 0.0 else mean_b
            if n_b > 0.0 and mean_b > 0.0:
                ratio_b = n_b / bwl[BQ_N, wb]
                bslot = bstep % LB
                bp = bwl[BQ_PROMPT, wb] * ratio_b
                bo = bwl[BQ_OUTPUT, wb] * ratio_b
                bring[i, BQ_N, bslot] += n_b
                bring[i, BQ_PROMPT, bslot] += bp
                bring[i, BQ_OUTPUT, bslot] += bo
                c[CS_BQN] += n_b
                c[CS_BQP] += bp
                c[CS_BQO] += bo
                c[CS_B_ARRIVED] += n_b
                m[M_B_ARRIVED] += n_b

        # admission capacity per pool, counting the slots and KV this sub-step's completions
        # free: slots in requests; KV and prefill in tokens of the cohorts actually taken
        # (_admissible); the head cohort's mean size only splits the admissions among pools
        qn = c[CS_QN]
        pbar = c[CS_QP] / qn if qn > 1e-12 else 1.0
        obar = c[CS_QO] / qn if qn > 1e-12 else 1.0
        hb = int(c[CS_QHEAD]) % L
        if qring[i, 0, hb] > 1e-12:
            pbar = qring[i, 1, hb] / qring[i, 0, hb]
            obar = qring[i, 2, hb] / qring[i, 0, hb]
        cap_total = 0.0
        slot_total = 0.0
        for p in range(P):
            caps[p] = 0.0
        if qn > 1e-12:
            for p in range(P):
                cp, cs_p, kv_a[p], kv_c[p], kv_a2[p], tok_p[p] = _admission_cap(
                    pp[p], ps[i, p], dt, maxtok, sp, pbar, obar, prompt_m2, nbk
                )
                if cp > 0.0 and pp[p, PP_SERVES] != SERVES_BATCH:
                    caps[p] = cp
                    cap_total += cp
                    slot_total += cs_p
        admit = min(qn, slot_total)
        if admit > 1e-12:
            admit = _admissible(
                qring[i],
                c[CS_QHEAD],
                s,
                L,
                admit,
                (qn, c[CS_QP], c[CS_QO]),
                caps,
                cap_total,
                kv_a,
                kv_c,
                kv_a2,
                tok_p,
            )
        if admit > 1e-12:
            # FIFO: take whole cohorts from the head; record each cohort's age and delay. When
            # capacity binds, admissions spread evenly over the sub-step in queue order;
            # otherwise the queued cohorts go at its start. A cohort's requests arrived evenly
            # over their own sub-step.
            binding = admit < qn - 1e-9
            need = admit
            got_n = 0.0
            got_p = 0.0
            got_o = 0.0
            got_n0 = 0.0
            got_p0 = 0.0
            got_o0 = 0.0
            got_po0 = 0.0
            got_po = 0.0
            head = int(c[CS_QHEAD])
            while need > 1e-12 and head <= s:
                hb = head % L
                have = qring[i, 0, hb]
                if have <= 0.0:
                    for qr in range(N_Q):
                        qring[i, qr, hb] = 0.0
                    head += 1
                    continue
                take = min(have, need)
                f = take / have
                tp = qring[i, 1, hb] * f
                to = qring[i, 2, hb] * f
                age = s - head
                # FIFO: the requests taken now are the earliest of the cohort still queued, so
                # they arrived after the share already admitted; they leave in arrival order,
                # spread over the sub-step when capacity binds, at its start otherwise. The wait
                # for its iteration (_iteration_wait) comes on top, not counted here.
                delay = 0.0
                var = 0.0
                if age > 0:
                    orig = max(qring[i, 3, hb], have)
                    w_arr = take / orig
                    w_adm = take / admit if binding else 0.0
                    u_adm = (admit - need) / admit if binding else 0.0
                    delay = age + u_adm + 0.5 * w_adm - ((orig - have) / orig + 0.5 * w_arr)
                    delay = max(delay, 0.0)
                    var = (w_adm - w_arr) ** 2 / 12.0
                jb = min(age, L - 1)
                nb_used = max(nb_used, jb + 1)
                whist[i, 0, jb] += take
                whist[i, 1, jb] += take * delay
                whist[i, 2, jb] += take * (delay * delay + var)
                got_n += take
                got_p += tp
                got_o += to
                t0n = qring[i, Q_N0, hb] * f
                t0p = qring[i, Q_PROMPT0, hb] * f
                t0o = qring[i, Q_OUTPUT0, hb] * f
                got_n0 += t0n
                got_p0 += t0p
                got_o0 += t0o
                t0po = qring[i, Q_PO0, hb] * f
                tpo = qring[i, Q_PO, hb] * f
                got_po0 += t0po
                got_po += tpo
                need -= take
                if take >= have - 1e-12:
                    for qr in range(N_Q):
                        qring[i, qr, hb] = 0.0
                    head += 1
                else:
                    qring[i, Q_N, hb] = have - take
                    qring[i, Q_PROMPT, hb] -= tp
                    qring[i, Q_OUTPUT, hb] -= to
                    qring[i, Q_N0, hb] -= t0n
                    qring[i, Q_PROMPT0, hb] -= t0p
                    qring[i, Q_OUTPUT0, hb] -= t0o
                    qring[i, Q_PO0, hb] -= t0po
                    qring[i, Q_PO, hb] -= tpo
            c[CS_QHEAD] = head
            if head > s:
                # every cohort is empty: what the running sums still hold is rounding residue
                c[CS_QN] = 0.0
                c[CS_QP] = 0.0
                c[CS_QO] = 0.0
            else:
                c[CS_QN] = max(0.0, c[CS_QN] - got_n)
                c[CS_QP] = max(0.0, c[CS_QP] - got_p)
                c[CS_QO] = max(0.0, c[CS_QO] - got_o)
            c[CS_ADMITTED] += got_n
            m[M_ADMITTED] += got_n
            pa = got_p / got_n if got_n > 0.0 else 0.0
        else:
            got_n = 0.0
            got_n0 = 0.0
            got_p0 = 0.0
            got_o0 = 0.0
            got_po0 = 0.0
            got_po = 0.0
            got_p = 0.0
            got_o = 0.0
            pa = 0.0

        # batch requests take the room the interactive ones left (never while interactive
        # requests still wait, except on batch-only pools); their prefill shares the iterations
        b_adm = scr[SCR_B_ADM]
        got_bn = 0.0
        pb_adm = 0.0
        ob_adm = 0.0
        if has_batch and c[CS_BQN] > 1e-12:
            for p in range(P):
                # scratch row reused: this sub-step's interactive admissions per pool
                b_adm[p] = got_n * caps[p] / cap_total if got_n > 0.0 else 0.0
            x_int = scr[SCR_TPOT_VALS]  # free until the step metrics
            for p in range(P):
                x_int[p] = b_adm[p]
            got_bn, got_bp, got_bo = _batch_admit(
                c,
                bring[i],
                bstep,
                LB,
                pp,
                ps[i],
                dt,
                maxtok,
                sp,
                x_int,
                pa,
                got_o / got_n if got_n > 0.0 else 0.0,
                b_adm,
                c[CS_QN] <= 1e-9,
            )
            for p in range(P):
                x_int[p] = 0.0
            if got_bn > 0.0:
                pb_adm = got_bp / got_bn
                ob_adm = got_bo / got_bn
                m[M_B_ADMITTED] += got_bn

        # decode on ready and draining replicas, then add the admitted requests
        for p in range(P):
            row = ps[i, p]
            a = pp[p, PP_A]
            cc = pp[p, PP_C]
            kk = pp[p, PP_KCTX]
            pt_s = pp[p, PP_PREFILL]
            x = got_n * caps[p] / cap_total if got_n > 0.0 else 0.0
            R = row[PS_READY]
            q_tok = x * pa
            xb = b_adm[p] if got_bn > 0.0 else 0.0
            if xb > 0.0:
                q_tok += xb * pb_adm
            n_it = _iterations(a, cc, kk, pt_s, R, row[PS_IR], row[PS_CR], dt, q_tok)
            if R > 0.0:
                b = row[PS_IR] / R
                t_dec = a + cc * b + kk * row[PS_CR] / R
                busy = (
                    (n_it * t_dec + pt_s * q_tok / R) / dt
                    if row[PS_IR] > 0.0
                    else (pt_s * q_tok / R / dt)
                )
                util_acc += min(1.0, busy) * R
                kv_acc += min(1.0, (row[PS_CR] + row[PS_WR]) / (R * pp[p, PP_KV])) * R
                row[PS_BATCH] = b
                rep_sub[p] += R
                if x > 0.0:
                    # its own iteration; the wait before it is _iteration_wait's, at a busy
                    # replica (each sequence keeps one busy: all are while b >= 1)
                    base_sum += x * t_dec
                    # a request pulled by the least-loaded replica waits only if none is idle;
                    # one sent to a replica blindly waits whenever that replica is busy
                    if b >= 1.0:
                        adm_busy[p] += x
                    elif sp[SP_PER_REPLICA_QUEUES] > 0.0:
                        adm_busy[p] += x * b
                    else:
                        adm_busy[p] += x * b**R
                    pre_sum += x * pt_s
                    base_w += x
                    adm_n[p] += x
                    adm_q[p] += q_tok
                    adm_td[p] += x * t_dec
            dec, done, dec_b, done_b = _decode_classes(row, CF_IR, n_it, sp, nbk)
            tokens = dec
            # from here on dec and done are the interactive requests' (TPOT and attainment)
            dec -= dec_b
            done -= done_b
            if n_it > 0.0 and dec > 0.0:
                tpot = dt / n_it
                if episode_stats:
                    _tpot_lifetimes(row, tpot, dt, sp)
                tpot_tok[p] += dec * tpot
                tpot_w[p] += dec
                tok_all += dec
                if tpot <= sp[SP_TPOT]:
                    tok_ok += dec
            D = row[PS_DRAIN]
            n_d = _iterations(a, cc, kk, pt_s, D, row[PS_ID], row[PS_CD], dt, 0.0)
            dec_d, done_d, dec_db, done_db = _decode_classes(row, CF_ID, n_d, sp, nbk)
            _sync_totals(row, nbk)
            tokens_b = dec_b + dec_db
            done_bp = done_b + done_db
            dec_d -= dec_db
            done_d -= done_db
            if n_d > 0.0 and dec_d > 0.0:
                tpot = dt / n_d
                tpot_tok[p] += dec_d * tpot
                tpot_w[p] += dec_d
                tok_all += dec_d
                if tpot <= sp[SP_TPOT]:
                    tok_ok += dec_d
            tokens += dec_d + dec_db
            completed = done + done_d
            done_pool[p] += completed
            if episode_stats:
                ja = TPOT_BINS + (k * P + p) * TPOT_AT_FIELDS
                _note_tpot_completions(ep_tpot[i, ja : ja + TPOT_AT_FIELDS], row, completed)
            if D > 0.0 and row[PS_ID] < DRAIN_EMPTY_SEQS * D:
                # the group is empty enough: its replicas leave, the remainder finishes with them
                rest_i, rest_b = _drained_leave(i, p, row, drings, G, nbk)
                completed += rest_i
                done_bp += rest_b
            if x > 0.0:
                # this pool's share of the admitted requests, each class as it queued
                f_p = x / got_n
                _admit_classes(
                    row,
                    got_n0 * f_p,
                    got_p0 * f_p,
                    got_o0 * f_p,
                    got_po0 * f_p,
                    (got_n - got_n0) * f_p,
                    (got_p - got_p0) * f_p,
                    (got_o - got_o0) * f_p,
                    (got_po - got_po0) * f_p,
                    sp[SP_CLASS + CP_PSHIFT],
                    sp[SP_CLASS + N_CP + CP_PSHIFT],
                    nbk,
                )
            if xb > 0.0:
                jb = PS_CLASS + N_CF * BATCH_BUCKET + CF_IR
                row[jb] += xb
                row[jb + 1] += xb * ob_adm
                row[jb + 2] += xb * pb_adm
                _sync_totals(row, nbk)
            if has_batch:
                c[CS_B_COMPLETED] += done_bp
                m[M_B_COMPLETED] += done_bp
                m[M_B_TOKENS] += tokens_b
                pmet[i, p, PM_B_TOKENS] += tokens_b
            c[CS_COMPLETED] += completed
            m[M_COMPLETED] += completed
            m[M_TOKENS] += tokens
            pmet[i, p, PM_TOKENS] += tokens

        # billing for this sub-step (the billed states: names.BILLED_STATES)
        for p in range(P):
            row = ps[i, p]
            billed = row[PS_PROV] + row[PS_LOAD] + row[PS_READY] + row[PS_DRAIN] + row[PS_REFILL]
            cost = (billed * row[PS_PRICE] + row[PS_STANDBY] * pp[p, PP_HOLD]) * dt / 3600.0
            pmet[i, p, PM_COST] += cost
            pmet[i, p, PM_REPLICA_S] += billed * dt
            m[M_COST] += cost
    return base_w, base_sum, pre_sum, tok_ok, tok_all, util_acc, kv_acc, nb_used


@njit(inline="always", cache=True, error_model="numpy")
def _step_metrics(
    i,
    sp,
    pp,
    prompt_q,
    c,
    m,
    ps,
    whist,
    ep_whist,
    ep_tpot,
    pmet,
    rew,
    scr,
    buf,
    dt,
    K,
    sums,
    episode_stats,
    batch,
):
    """Step metrics, from the sub-steps' sums (``sums``, what :func:`_substeps` returns, and
    the per-pool rows of ``scr``): the pools' states and prices, TTFT (the step's admissions by
    queue age, the wait for the iteration in flight and the prefill) and TPOT percentiles, SLO
    attainment, queue and in-flight counts, utilization, cost, the arrival rate and its
    average, and the reward (written to ``rew[i]``)."""
    has_batch = batch
    base_w, base_sum, pre_sum, tok_ok, tok_all, util_acc, kv_acc, nb_used = sums
    P = pp.shape[0]
    tpot_tok = scr[SCR_TPOT_TOK]
    tpot_w = scr[SCR_TPOT_W]
    adm_n = scr[SCR_ADM_N]
    adm_q = scr[SCR_ADM_Q]
    adm_td = scr[SCR_ADM_TD]
    adm_busy = scr[SCR_ADM_BUSY]
    done_pool = scr[SCR_DONE]
    rep_sub = scr[SCR_REP_SUB]
    # buf: the cluster's scratch rows for this step's TTFT statistics (GR_*)
    nq = prompt_q.shape[1]
    step_tables = buf[GR_TABLES : GR_TABLES + 3, :nq]
    step_rows = buf[GR_ROWS, :3]
    parts = buf[GR_PARTS, :3]
    interval = dt * K
    P_total_ready = 0.0
    for p in range(P):
        row = ps[i, p]
        pmet[i, p, PM_PROV] = row[PS_PROV]
        pmet[i, p, PM_LOAD] = row[PS_LOAD]
        pmet[i, p, PM_READY] = row[PS_READY]
        pmet[i, p, PM_DRAIN] = row[PS_DRAIN]
        pmet[i, p, PM_STANDBY] = row[PS_STANDBY]
        pmet[i, p, PM_REFILL] = row[PS_REFILL]
        pmet[i, p, PM_NOTICED] = row[PS_NOTICED]
        pmet[i, p, PM_PRICE] = row[PS_PRICE]
        pmet[i, p, PM_TPOT] = tpot_tok[p] / tpot_w[p] if tpot_w[p] > 0.0 else 0.0
        P_total_ready += row[PS_READY]
    admitted = m[M_ADMITTED]
    m2_ratio = sp[SP_PROMPT_M2_CHUNK]
    if base_w > 0.0:
        c[CS_EP_PRE_SUM] += pre_sum
        c[CS_EP_BASE_W] += base_w
        # The wait for the iteration in flight and for the prompts taken with it, from the
        # whole step's admissions per pool (one second's count is too noisy): its chance pi
        # and its mean theta
        # two waits: the pickup alone (no prompt taken along), or the pickup and the shared
        # prefill; each with its mass and its mean in seconds
        mass_a = 0.0
        wait_a = 0.0
        mass_b = 0.0
        wait_b = 0.0
        for p in range(P):
            if adm_n[p] <= 0.0 or rep_sub[p] <= 0.0:
                continue
            pre_s = pp[p, PP_PREFILL] * adm_q[p] / adm_n[p]
            busy_p, some_p, pickup_p, shared_p = _iteration_wait(
                adm_n[p] / (rep_sub[p] * dt),
                pre_s,
                pre_s * pre_s * m2_ratio,
                adm_td[p] / adm_n[p],
                # a replica fed its own queue picks up only what was sent to it
                1.0 if sp[SP_PER_REPLICA_QUEUES] > 0.0 else rep_sub[p] / K,
                adm_busy[p] / adm_n[p],
            )
            mass_a += adm_n[p] * busy_p * (1.0 - some_p)
            wait_a += adm_n[p] * busy_p * (1.0 - some_p) * pickup_p
            mass_b += adm_n[p] * busy_p * some_p
            wait_b += adm_n[p] * busy_p * some_p * (pickup_p + shared_p)
        c[CS_EP_BASE_SUM] += base_sum
        pre_tok_s = pre_sum / base_w
        # five histogram rows: no wait, and for each wait the two table rows around its mean
        share_a = min(1.0, mass_a / base_w)
        share_b = min(1.0 - share_a, mass_b / base_w)
        ra, fa = _wait_rows(wait_a / mass_a / pre_tok_s if mass_a > 0.0 else 0.0)
        rb, fb = _wait_rows(wait_b / mass_b / pre_tok_s if mass_b > 0.0 else 0.0)
        share_0 = 1.0 - share_a - share_b
        # the episode's histogram keeps each wait as a mix of its two table rows
        for j in range(nb_used if episode_stats else 0):
            for z in range(3):
                w = whist[i, z, j]
                if w > 0.0:
                    ep_whist[i, 0, z, j] += w * share_0
                    ep_whist[i, 1 + ra, z, j] += w * share_a * (1.0 - fa)
                    ep_whist[i, 2 + ra, z, j] += w * share_a * fa
                    ep_whist[i, 1 + rb, z, j] += w * share_b * (1.0 - fb)
                    ep_whist[i, 2 + rb, z, j] += w * share_b * fb
        # the step's statistics take each wait's table between its two rows, quantile by
        # quantile: three tables to walk instead of five
        for g in range(nq):
            step_tables[0, g] = prompt_q[0, g]
            step_tables[1, g] = (1.0 - fa) * prompt_q[1 + ra, g] + fa * prompt_q[2 + ra, g]
            step_tables[2, g] = (1.0 - fb) * prompt_q[1 + rb, g] + fb * prompt_q[2 + rb, g]
        step_rows[0] = 0.0
        step_rows[1] = 1.0
        step_rows[2] = 2.0
        parts[0] = share_0
        parts[1] = share_a
        parts[2] = share_b
        t50, t95, t99, ok = _ttft_stats(
            whist[i : i + 1],
            step_tables,
            step_rows,
            parts,
            nb_used,
            dt,
            base_sum / base_w,
            pre_sum / base_w,
            sp[SP_TTFT],
            buf,
        )
    else:
        t50 = t95 = t99 = ok = 0.0
    for j in range(nb_used):
        whist[i, 0, j] = 0.0
        whist[i, 1, j] = 0.0
        whist[i, 2, j] = 0.0
    m[M_TTFT50] = t50
    m[M_TTFT95] = t95
    m[M_TTFT99] = t99
    tpot_vals = scr[SCR_TPOT_VALS]
    for p in range(P):
        tpot_vals[p] = pmet[i, p, PM_TPOT]
        if episode_stats and tpot_w[p] > 0.0 and done_pool[p] > 0.0:
            # the episode's TPOT is per request, as a client measures it
            share = 0.0
            var_it = 0.0
            if adm_n[p] > 0.0 and rep_sub[p] > 0.0:
                lam = adm_n[p] / (rep_sub[p] * dt)
                pre_s = pp[p, PP_PREFILL] * adm_q[p] / adm_n[p]
                share = min(lam * pre_s, PREFILL_SHARE_MAX)
                var_it = lam * tpot_vals[p] * pre_s * pre_s * m2_ratio / (1.0 - share * share)
            # sub-steps whose lifetime rows agree within TPOT_MERGE_TOL (one bin's width) are
            # added as one: their completion-weighted mean row, their completions (one call
            # per sub-step cost the single env 37% of its speed; merged, 17%)
            group = buf[GR_TPOT_GROUP, :TPOT_AT_FIELDS]  # completions, their weighted row sum
            group[:] = 0.0
            ref = 0
            for k in range(K):
                ja = TPOT_BINS + (k * P + p) * TPOT_AT_FIELDS
                w = ep_tpot[i, ja]
                if w <= 0.0:
                    continue
                if group[0] > 0.0:
                    close = True
                    for q in range(N_OUTPUT_Q):
                        r = ep_tpot[i, ref + 1 + q]
                        if abs(ep_tpot[i, ja + 1 + q] - r) > TPOT_MERGE_TOL * r:
                            close = False
                            break
                    if not close:
                        _add_tpot_group(ep_tpot[i, :TPOT_BINS], group, share, var_it, sp)
                if group[0] <= 0.0:
                    ref = ja
                group[0] += w
                for q in range(N_OUTPUT_Q):
                    group[1 + q] += w * ep_tpot[i, ja + 1 + q]
            if group[0] > 0.0:
                _add_tpot_group(ep_tpot[i, :TPOT_BINS], group, share, var_it, sp)
    m[M_TPOT50] = _weighted_quantile(tpot_vals, tpot_w, P, 0.50)
    m[M_TPOT95] = _weighted_quantile(tpot_vals, tpot_w, P, 0.95)
    m[M_TPOT99] = _weighted_quantile(tpot_vals, tpot_w, P, 0.99)
    tpot_share = tok_ok / tok_all if tok_all > 0.0 else 1.0
    good = min(ok * tpot_share, admitted)  # the CDF sum may pass the count by rounding
    demand = admitted + m[M_DROPPED]
    m[M_GOOD] = good
    m[M_VIOL] = max(0.0, demand - good)
    m[M_ATTAIN] = good / demand if demand > 0.0 else 1.0
    c[CS_GOOD] += good
    c[CS_VIOL] += m[M_VIOL]
    ep_demand = c[CS_GOOD] + c[CS_VIOL]
    m[M_ATTAIN_EP] = c[CS_GOOD] / ep_demand if ep_demand > 0.0 else 1.0
    inflight = 0.0
    for p in range(P):
        inflight += ps[i, p, PS_IR] + ps[i, p, PS_ID]
    m[M_QUEUE] = c[CS_QN]
    m[M_INFLIGHT] = inflight
    if has_batch:
        m[M_B_QUEUE] = c[CS_BQN]
        jb = PS_CLASS + N_CF * BATCH_BUCKET
        for p in range(P):
            m[M_B_INFLIGHT] += ps[i, p, jb + CF_IR] + ps[i, p, jb + CF_ID]
    m[M_UTIL] = util_acc / (K * P_total_ready) if P_total_ready > 0.0 else 0.0
    m[M_KV_UTIL] = kv_acc / (K * P_total_ready) if P_total_ready > 0.0 else 0.0
    c[CS_COST] += m[M_COST]
    m[M_COST_TOTAL] = c[CS_COST]
    rate = m[M_ARRIVED] / interval
    m[M_RATE_RPS] = rate
    alpha = 1.0 - np.exp(-interval / EWMA_HORIZON_S)
    c[CS_RATE_LAST] = rate
    c[CS_RATE_EWMA] += alpha * (rate - c[CS_RATE_EWMA])
    reward = (
        -(m[M_COST] + sp[SP_W_SLO] * m[M_VIOL] + sp[SP_W_CHURN] * m[M_REPLICAS_CHANGED])
        / sp[SP_RSCALE]
    )
    if has_batch:
        reward -= sp[SP_W_BATCH] * m[M_B_EXPIRED] / sp[SP_RSCALE]
    m[M_REWARD] = reward
    rew[i] = reward


@njit(cache=True, error_model="numpy")
def _step_cluster(i, actions, params, state, out, batch):
    """Advance cluster ``i`` by one decision interval (see the module docstring): market, batch
    queue, actions, the sub-steps, step metrics, observation.

    How the steps are called is measured (interleaved CPU-time A/B against the one-function
    kernel, ``azure-conv`` N=1024, one thread): the per-step ones (:func:`_market`,
    :func:`_actions`, :func:`_step_metrics`) are inlined, since as plain calls they cost about
    5%; :func:`_substeps` is one plain call whose loop keeps its hot body whole, since every
    array handed to a call costs a reference count taken and released (an inlined call binds its
    arguments by assignment, which numba counts too), and per sub-step that adds up (admission
    as an inlined function of its own: about 3.5% slower; billing as a plain one about 3%). Only
    rare paths (:func:`_drain_deadline`, :func:`_drained_leave`) are functions of their own
    inside the loop."""
    literally(batch)
    sp, pp, wl, prompt_q, spot, cold, obs_lo, obs_hi, bwl = params
    cs, ps, qring, whist, srings, drings, rng, ep_whist, ep_tpot, scratch, grid, bring = state
    obs, rew, met, pmet = out
    P = pp.shape[0]
    dt = sp[SP_DT]
    K = int(sp[SP_K])
    L = int(sp[SP_L])
    H = int(sp[SP_H])
    G = int(sp[SP_G])
    nbins = int(sp[SP_NBINS])
    nspot = int(sp[SP_NSPOT])
    cache_hit = sp[SP_CACHE]
    maxtok = sp[SP_MAXTOK]
    prompt_m2 = sp[SP_PROMPT_M2]
    c = cs[i]
    m = met[i]
    # the episode's latency histograms are kept only when the caller allocated them (no
    # observation, reward or step metric reads them; ClusterSimulator.episode_latency does)
    episode_stats = ep_tpot.shape[1] > 0
    for j in range(N_M):
        if j != M_COST_TOTAL and j != M_ATTAIN_EP:
            m[j] = 0.0
    for p in range(P):
        for j in range(N_PM):
            pmet[i, p, j] = 0.0

    s0 = int(c[CS_SUB])
    off = int(c[CS_OFF])
    # request classes: ``batch`` is a compile-time constant (step_clusters compiles the kernel
    # once per value), so without batch work none of their code is in it
    LB = int(sp[SP_BATCH_STEPS])
    bstep = int(c[CS_STEP])
    dstep = ((off + s0) // K) % nspot
    # the episode's multipliers (exactly 1 for the nominal scenario, which x * 1 leaves as is)
    rate_scale = c[CS_SCALES + SC_RATE]
    price_scale = c[CS_SCALES + SC_SPOT_PRICE]
    preempt_scale = c[CS_SCALES + SC_PREEMPT]
    cold_scale = c[CS_SCALES + SC_COLD_START]
    # the steps, their arguments packed (one a line would hide the sequence)
    # fmt: off
    _market(
        i, pp, spot, ps, drings, rng, m, pmet, dt, K, G, s0, dstep, price_scale, preempt_scale,
        batch
    )
    # batch queue: cohorts past the deadline expire; this step's arrivals join a new one
    if batch:
        _batch_expire(c, m, bring[i], bstep, LB)
    _actions(
        i, actions, sp, pp, spot, cold, ps, srings, drings, rng, m, pmet, dt, H, G, s0, dstep,
        cold_scale, batch
    )
    # per-pool sums of this step, in the cluster's scratch rows (no allocation per step)
    scr = scratch[i]
    sums = _substeps(
        i, sp, pp, wl, prompt_q, cold, bwl, c, m, ps, qring, whist, srings, drings, rng, pmet, scr,
        bring, ep_tpot, dt, K, L, H, G, nbins, s0, off, bstep, LB, cache_hit, maxtok, prompt_m2,
        rate_scale, cold_scale, episode_stats, batch
    )
    c[CS_SUB] = s0 + K
    c[CS_STEP] += 1.0
    _step_metrics(
        i, sp, pp, prompt_q, c, m, ps, whist, ep_whist, ep_tpot, pmet, rew, scr, grid[i], dt, K,
        sums, episode_stats, batch
    )
    # fmt: on
    _write_obs(i, sp, pp, wl, c, ps, m, obs, obs_lo, obs_hi, spot)


# --- observation writers ----------------------------------------------------------------------
# The observation's formulas (layout, names and bounds: rlscale.envs.observation). Compiled into
# the kernel's step, and run as plain Python by the decision service (``.py_func``: no
# compilation at serve time), so a served policy sees what the env showed it. They live in this
# file because numba caches the kernel by this file alone.
SECONDS_PER_DAY = 86400.0
SECONDS_PER_WEEK = 7 * SECONDS_PER_DAY
IN_FLIGHT_SCALE_S = 60.0  # in-flight sequences are scaled by a minute of the reference rate
OBS_CLUSTER_ENTRIES = 17
OBS_POOL_ENTRIES = 9
OBS_BATCH_ENTRIES = 2


@njit(cache=True, error_model="numpy")
def write_cluster_features(
    o,
    arrival_rate_rps,
    arrival_rate_ewma_rps,
    forecast_rps,
    queue,
    in_flight,
    compute_util,
    kv_util,
    ttft_p50_s,
    ttft_p95_s,
    tpot_p95_s,
    slo_attainment,
    dropped,
    interval_s,
    time_of_week_s,
    reference_rps,
    cache_hit_ratio,
    queue_timeout_s,
    ttft_target_s,
    tpot_target_s,
):
    """Write the cluster-wide entries (observation.CLUSTER_FEATURES) into the start of ``o``.

    Rates in req/s before the response cache, except ``forecast_rps`` (after it, as the
    servers see it); latencies in seconds; ``dropped`` counted over the last interval of
    ``interval_s``; ``time_of_week_s`` since Monday 00:00.
    """
    ref = reference_rps
    o[0] = arrival_rate_rps / ref
    o[1] = arrival_rate_ewma_rps / ref
    o[2] = (arrival_rate_rps - arrival_rate_ewma_rps) / ref
    o[3] = forecast_rps / ref
    o[4] = queue / (ref * queue_timeout_s)
    o[5] = in_flight / (ref * IN_FLIGHT_SCALE_S)
    o[6] = compute_util
    o[7] = kv_util
    o[8] = ttft_p50_s / ttft_target_s
    o[9] = ttft_p95_s / ttft_target_s
    o[10] = tpot_p95_s / tpot_target_s
    o[11] = slo_attainment
    # dropped / (requests reaching the servers + dropped): both are counts a live cluster has
    reached = arrival_rate_rps * interval_s * (1.0 - cache_hit_ratio) + dropped
    o[12] = dropped / reached if reached > 0.0 else 0.0
    tow = time_of_week_s % SECONDS_PER_WEEK
    o[13] = math.sin(2.0 * math.pi * tow / SECONDS_PER_DAY)
    o[14] = math.cos(2.0 * math.pi * tow / SECONDS_PER_DAY)
    o[15] = math.sin(2.0 * math.pi * tow / SECONDS_PER_WEEK)
    o[16] = math.cos(2.0 * math.pi * tow / SECONDS_PER_WEEK)


@njit(cache=True, error_model="numpy")
def write_pool_features(
    o,
    p,
    starting,
    ready,
    draining,
    standby,
    refilling,
    preempt_notices,
    price_usd_h,
    spot_capacity_share,
    batch_per_replica,
    quota,
    on_demand_price_usd_h,
    max_num_seqs,
):
    """Write pool ``p``'s entries (observation.POOL_FEATURES: replica counts by state, its
    price, the spot market's capacity share, running sequences per ready replica)."""
    j = OBS_CLUSTER_ENTRIES + OBS_POOL_ENTRIES * p
    o[j + 0] = starting / quota
    o[j + 1] = ready / quota
    o[j + 2] = draining / quota
    o[j + 3] = standby / quota
    o[j + 4] = refilling / quota
    o[j + 5] = preempt_notices / quota
    o[j + 6] = price_usd_h / on_demand_price_usd_h
    o[j + 7] = spot_capacity_share
    o[j + 8] = batch_per_replica / max_num_seqs


@njit(cache=True, error_model="numpy")
def write_batch_features(o, j, batch_queue, batch_arrival_rate_rps, reference_rps, deadline_s):
    """Write the request-class entries (observation.BATCH_FEATURES) at ``o[j:]``: the batch
    queue and arrival rate (req/s)."""
    o[j + 0] = batch_queue / (reference_rps * deadline_s)
    o[j + 1] = batch_arrival_rate_rps / reference_rps


@njit(cache=True, error_model="numpy")
def clip_observation(o, low, high):
    """Every entry into its bounds; a non-finite entry (a 0/0 of an empty pool) becomes 0."""
    for j in range(o.shape[0]):
        v = o[j]
        if not np.isfinite(v):
            v = 0.0
        o[j] = min(max(v, low[j]), high[j])


@njit(cache=True, error_model="numpy")
def _write_obs(i, sp, pp, wl, c, ps, m, obs, obs_lo, obs_hi, spot):
    """Cluster i's observation, from the numbers a live cluster reports (rlscale.envs.
    observation holds the layout and the formulas, shared with the decision service)."""
    P = pp.shape[0]
    dt = sp[SP_DT]
    K = int(sp[SP_K])
    nbins = int(sp[SP_NBINS])
    bin_now = int(c[CS_OFF]) + int(c[CS_SUB])
    o = obs[i]
    write_cluster_features(
        o,
        c[CS_RATE_LAST],
        c[CS_RATE_EWMA],
        wl[WL_FORECAST, bin_now % nbins] * c[CS_SCALES + SC_RATE] * (1.0 - sp[SP_CACHE]),
        c[CS_QN],
        m[M_INFLIGHT],
        m[M_UTIL],
        m[M_KV_UTIL],
        m[M_TTFT50],
        m[M_TTFT95],
        m[M_TPOT95],
        m[M_ATTAIN],
        m[M_DROPPED],
        K * dt,
        sp[SP_TOW0] + bin_now * dt,
        sp[SP_REF_RPS],
        sp[SP_CACHE],
        sp[SP_TIMEOUT],
        sp[SP_TTFT],
        sp[SP_TPOT],
    )
    dstep = (bin_now // K) % int(sp[SP_NSPOT])
    for p in range(P):
        row = ps[i, p]
        write_pool_features(
            o,
            p,
            row[PS_PROV] + row[PS_LOAD],
            row[PS_READY],
            row[PS_DRAIN],
            row[PS_STANDBY],
            row[PS_REFILL],
            row[PS_NOTICED],
            row[PS_PRICE],
            spot[2, p, dstep],
            row[PS_BATCH],
            pp[p, PP_QUOTA],
            pp[p, PP_PRICE],
            pp[p, PP_MAXSEQ],
        )
    if sp[SP_BATCH] > 0.0:
        write_batch_features(
            o,
            OBS_CLUSTER_ENTRIES + OBS_POOL_ENTRIES * P,
            c[CS_BQN],
            m[M_B_ARRIVED] / (K * dt),
            sp[SP_REF_RPS],
            sp[SP_BATCH_STEPS] * K * dt,
        )
    clip_observation(o, obs_lo, obs_hi)


@njit(parallel=True, cache=True, error_model="numpy")
def _step_parallel(actions, params, state, out):
    for i in prange(actions.shape[0]):
        _step_cluster(i, actions, params, state, out, False)


@njit(cache=True, error_model="numpy")
def _step_serial(actions, params, state, out):
    for i in range(actions.shape[0]):
        _step_cluster(i, actions, params, state, out, False)


# the same with batch work: _step_cluster is compiled once per value of its last argument, so
# without batch work the kernel holds none of the batch code (it cost ~5% CPU when present)
@njit(parallel=True, cache=True, error_model="numpy")
def _step_parallel_batch(actions, params, state, out):
    for i in prange(actions.shape[0]):
        _step_cluster(i, actions, params, state, out, True)


@njit(cache=True, error_model="numpy")
def _step_serial_batch(actions, params, state, out):
    for i in range(actions.shape[0]):
        _step_cluster(i, actions, params, state, out, True)


PARALLEL_MIN_CLUSTERS = 16
"""Below this many clusters, thread start-up costs more than it saves."""


def step_clusters(actions, params: tuple, state: tuple, out: tuple) -> None:
    """Advance every cluster by one decision interval, in place (see the module docstring).

    :param actions: int64 [N, 2 * pools], the env's actions.
    :param params: ``(sp, pp, wl, prompt_q, spot, cold, obs_lo, obs_hi, bwl)``, read only.
    :param state: ``(cs, ps, qring, whist, srings, drings, rng, ep_whist, ep_tpot, scratch,
        grid, bring)``; ``ep_whist`` and ``ep_tpot`` empty (last axis 0) to keep no episode
        latency histograms (what only :func:`episode_latency` reads).
    :param out: ``(obs, rew, met, pmet)``, written for this step.
    """
    parallel = actions.shape[0] >= PARALLEL_MIN_CLUSTERS
    if params[0][SP_BATCH] > 0.0:
        kernel = _step_parallel_batch if parallel else _step_serial_batch
    else:
        kernel = _step_parallel if parallel else _step_serial
    kernel(actions, params, state, out)


@njit(cache=True, error_model="numpy")
def episode_latency(sp, prompt_q, cs_row, ep_whist_row, ep_tpot_row):
    """Episode TTFT and TPOT p50/p95/p99 of one cluster in seconds, then the TTFT attainment
    and the mean TTFT (the order of ``names.EPISODE_LATENCY_KEYS``).

    The attainment (entry 6) is the share of requests that reached the servers (admitted or
    dropped) whose first token came within the TTFT target; 1 when none did. The mean (entry
    7) is over admitted requests: their mean queueing delay, the mean wait for and run of their
    iteration, and the mean prefill tokens of their wait rows.
    """
    out = np.zeros(8)
    out[6] = 1.0
    if cs_row[CS_EP_BASE_W] > 0.0:
        w = cs_row[CS_EP_BASE_W]
        t50, t95, t99, ok = _ttft_stats(
            ep_whist_row,
            prompt_q,
            np.arange(ep_whist_row.shape[0]),
            np.ones(ep_whist_row.shape[0]),
            ep_whist_row.shape[2],
            sp[SP_DT],
            cs_row[CS_EP_BASE_SUM] / w,
            cs_row[CS_EP_PRE_SUM] / w,
            sp[SP_TTFT],
            np.empty((N_GR, TTFT_GRID)),
        )
        out[0] = t50
        out[1] = t95
        out[2] = t99
        reached = cs_row[CS_ADMITTED] + cs_row[CS_DROPPED]
        if reached > 0.0:
            out[6] = min(1.0, ok / reached)
        count = 0.0
        delay = 0.0
        tokens = 0.0
        for r in range(ep_whist_row.shape[0]):
            n_r = 0.0
            for j in range(ep_whist_row.shape[2]):
                n_r += ep_whist_row[r, 0, j]
                delay += ep_whist_row[r, 1, j]
            if n_r > 0.0:
                count += n_r
                tokens += n_r * prompt_q[r].mean()
        if count > 0.0:
            out[7] = (
                delay / count * sp[SP_DT]
                + cs_row[CS_EP_BASE_SUM] / w
                + cs_row[CS_EP_PRE_SUM] / w * tokens / count
            )
    ep_tpot_row = ep_tpot_row[:TPOT_BINS]  # the bins (the step scratch follows)
    total = ep_tpot_row.sum()
    if total > 0.0:
        levels = (0.50, 0.95, 0.99)
        for li in range(3):
            acc = 0.0
            for b in range(TPOT_BINS):
                w = ep_tpot_row[b]
                if w > 0.0 and acc + w >= levels[li] * total:
                    # log-linear within the bin: the share of its weight below the level
                    f = (levels[li] * total - acc) / w
                    out[3 + li] = TPOT_MIN_S * np.exp((b + f) / TPOT_BINS * TPOT_LOG_SPAN)
                    break
                acc += w
    return out


@njit(cache=True, error_model="numpy")
def reset_cluster(i, offset_bins, seed, scales, params, state, out) -> None:
    """Start cluster i afresh at workload bin ``offset_bins`` with its own random stream and
    the episode's multipliers ``scales`` ([N_SCALES], SC_* order; ones for the nominal
    scenario)."""
    sp, pp, wl, _, spot, _, obs_lo, obs_hi, _ = params
    cs, ps, qring, whist, srings, drings, rng, ep_whist, ep_tpot, _, _, bring = state
    obs, _, met, pmet = out
    P = pp.shape[0]
    for j in range(cs.shape[1]):
        cs[i, j] = 0.0
    cs[i, CS_OFF] = float(offset_bins)
    for k in range(N_SCALES):
        cs[i, CS_SCALES + k] = scales[k]
    price_scale = scales[SC_SPOT_PRICE]
    rng[i] = np.uint64(seed)
    for p in range(P):
        for j in range(ps.shape[2]):
            ps[i, p, j] = 0.0
        ps[i, p, PS_READY] = pp[p, PP_INIT]
        if pp[p, PP_SPOT] > 0.0 and pp[p, PP_PRICE_TRACE] == 0.0:
            ps[i, p, PS_PRICE] = pp[p, PP_OU_MEAN] * price_scale
        elif pp[p, PP_SPOT] > 0.0:
            K = int(sp[SP_K])
            ps[i, p, PS_PRICE] = spot[0, p, (offset_bins // K) % int(sp[SP_NSPOT])] * price_scale
        else:
            ps[i, p, PS_PRICE] = pp[p, PP_PRICE]
    qring[i, :, :] = 0.0
    bring[i, :, :] = 0.0
    whist[i, :, :] = 0.0
    srings[i, :, :, :] = 0.0
    drings[i, :, :, :] = 0.0
    met[i, :] = 0.0
    met[i, M_ATTAIN] = 1.0
    met[i, M_ATTAIN_EP] = 1.0
    pmet[i, :, :] = 0.0
    ep_whist[i, :, :, :] = 0.0
    ep_tpot[i, :] = 0.0
    # the first observation sees the rate of the interval just before the episode starts
    K = int(sp[SP_K])
    nbins = int(sp[SP_NBINS])
    recent = 0.0
    for k in range(K):
        recent += wl[0, (offset_bins - K + k) % nbins] if offset_bins >= K else wl[0, k % nbins]
    rate = recent * scales[SC_RATE] / (K * sp[SP_DT])
    cs[i, CS_RATE_LAST] = rate
    cs[i, CS_RATE_EWMA] = rate
    _write_obs(i, sp, pp, wl, cs[i], ps, met[i], obs, obs_lo, obs_hi, spot)
