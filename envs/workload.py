"""Workloads on the simulator's sub-step grid: replayed traces and synthetic seasonal load.

The simulator never sees individual requests. A workload is binned once, at scenario load, into
per-sub-step arrays that every simulated cluster shares; clusters differ by their episode start
offset and, for stochastic workloads, by their own Poisson draws.

:func:`build_workload` is the entry point. How each source becomes a series:

- Recorded traces (``azure``, ``mooncake``, ``csv``): timestamps are stretched by ``time_scale``,
  the window ``[window_start_h, window_start_h + window_hours)`` of that stretched trace is cut,
  then ``rate_scale`` (or the scale that ``target_mean_rps`` implies) is applied: below 1 each
  request is kept with that probability; above 1 the window is superposed with
  ``floor(rate_scale)`` copies of itself, copy ``k >= 1`` shifted circularly by a uniform random
  offset, plus one more shifted copy thinned to the fractional part. Shifted copies keep the
  trace's burst shapes and token mix while spreading bursts, which a plain copy would stack.
- ``servegen``: each client window is an independent stationary renewal process with the
  window's law and rate (see :func:`rlscale.envs.traces.sample_renewal_arrivals`), sampled only
  inside the selected window. ``time_scale`` stretches windows and divides rates;
  ``target_mean_rps`` sets the mean over the whole window, gap bins included, so it equals
  ``WorkloadSeries.mean_rps`` in expectation. Client windows busy enough that one bin holds many
  gaps (see :data:`DENSE_MIN_PER_BIN`) get their per-bin counts from the renewal central limit
  law instead (normal, mean ``rate*dt``, variance ``cv^2*rate*dt``), which keeps m-small at its
  native ~1,200 req/s affordable. Windows where every client is empty are collection gaps: no
  arrivals, ``gaps`` set, and the forecast treats them as missing. Token lengths are drawn per
  request from ``prompt_tokens`` / ``output_tokens``.
- ``synthetic``: the expected rate on every bin; the simulator draws Poisson counts per cluster.
  Token sums are the expected count times the mean length. The forecast is what an operator
  knows in advance: the seasonal profile times the announced bursts, without the noise and the
  unannounced bursts.

Recorded traces and ServeGen get :func:`causal_forecast_rps` of their own arrivals.

The week clock (``start_s_of_week``) comes from ``start_weekday`` / ``start_hour`` plus the window
start; trace timestamps are not used for it, so the same trace can be replayed as any weekday.
``cache_hit_ratio`` is applied by the simulator, not here.
"""

from __future__ import annotations

import math
import os
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.signal import lfilter
from scipy.special import ndtr, ndtri

from .dynamics import (
    CP_OUTPUT,
    CP_PHI,
    CP_PROMPT,
    CP_PSHIFT,
    CP_SHARE,
    N_CP,
    N_OUTPUT_Q,
    OUTPUT_CLASSES,
)
from .scenario import LengthDistribution, ScenarioError, SyntheticLoad, WorkloadConfig
from .traces import (
    ServeGenTrace,
    TraceRequests,
    law_cv,
    read_servegen,
    read_trace,
    sample_renewal_arrivals,
)

QUANTILE_LEVELS = 64
"""Number of prompt-length quantiles carried for latency percentiles."""


@dataclass(frozen=True)
class WorkloadSeries:
    """Arrivals binned on the sub-step grid.

    Attributes:
        name: human-readable source, e.g. ``azure:AzureLLMInferenceTrace_conv.csv``.
        substep_s: width of one bin in seconds.
        control_interval_s: decision interval the forecast and tenant shares are built for.
        arrivals: float64 [T], requests arriving in each bin (after rate/time scaling, before the
            response cache). For a stochastic workload this is the expected count.
        prompt_tokens: float64 [T], summed prompt tokens of those arrivals.
        output_tokens: float64 [T], summed output tokens of those arrivals.
        stochastic: when True the simulator draws Poisson(arrivals[t]) per cluster; when False
            the arrivals replay exactly as recorded.
        forecast_rps: float64 [T], a causal forecast, made at bin t, of the mean arrival rate
            (req/s) over the next control interval. It may use only data before t, plus announced
            events.
        prompt_quantiles: float64 [QUANTILE_LEVELS], prompt-token quantiles at levels
            (k + 0.5) / QUANTILE_LEVELS over the whole series.
        tenant_names: tenant / client ids; ``("default",)`` when the source has none.
        tenant_token_share: float32 [ceil(T / substeps_per_interval), n_tenants]; each row sums
            to 1 (uniform where no tokens arrived): the share of tokens of each tenant per interval.
        tenant_request_share: as ``tenant_token_share``, the share of requests; None where the
            source does not say (then the token share stands in for it).
        start_s_of_week: seconds since Monday 00:00 at bin 0 (time-of-day / week features).
        gaps: bool [T], bins inside collection gaps of the source (ServeGen empty windows).
        output_classes: float64 [OUTPUT_CLASSES, N_CP], the requests split by output length
            (shorter and longer than the median), one row per class in the kernel's ``CP_*``
            order: share of requests; mean output and mean prompt over the workload's; the
            residual ratio ``E[o^2] / (2 E[o]^2)`` (a request holds its slot for ``o``
            iterations, so this is the mean remaining output of the sequences in flight over a
            new one's: 1/2 when all are equal, 1 for exponential lengths); and
            ``E[p o] / E[o] - E[p]``, how far the prompts in flight, which stay in proportion
            to ``o``, lie from the class's mean prompt. See :func:`output_classes`.
        output_quantiles: float64 [N_OUTPUT_Q], output-token quantiles at levels
            (k + 0.5) / N_OUTPUT_Q (how many iterations a request's TPOT averages over).
        output_class_bins: float64 [5, T], of each bin's arrivals those in output class 0
            (the shorter answers), their prompt and output tokens and their sum of prompt x
            output tokens, then that sum over all the bin's arrivals (how prompt and output
            lengths go together in each window, which sets what completions free); None where
            the source has no per-request lengths (the classes then arrive in their overall
            proportions).
        batch_bins: float64 [3, T], batch requests (request class ``batch``) arriving in each
            bin, their prompt and output tokens; None when the workload has none. Every other
            per-bin field (arrivals, tokens, forecast, output classes) is the interactive
            requests'; the tenant shares count both classes' tokens (both are billed).
        batch_class: float64 [N_CP], the batch requests' output-length parameters in the
            kernel's ``CP_*`` order (one class: share 1, ratios 1, their own ``phi`` and prompt
            shift); None without batch requests.
    """

    name: str
    substep_s: float
    control_interval_s: float
    arrivals: np.ndarray
    prompt_tokens: np.ndarray
    output_tokens: np.ndarray
    stochastic: bool
    forecast_rps: np.ndarray
    prompt_quantiles: np.ndarray
    tenant_names: tuple[str, ...]
    tenant_token_share: np.ndarray
    start_s_of_week: float
    gaps: np.ndarray
    output_classes: np.ndarray | None = None
    output_quantiles: np.ndarray | None = None
    output_class_bins: np.ndarray | None = None
    tenant_request_share: np.ndarray | None = None
    batch_bins: np.ndarray | None = None
    batch_class: np.ndarray | None = None

    @property
    def n_bins(self) -> int:
        """Number of sub-step bins."""
        return int(self.arrivals.shape[0])

    @property
    def duration_s(self) -> float:
        """Length of the series in seconds."""
        return self.n_bins * self.substep_s

    @property
    def mean_rps(self) -> float:
        """Mean arrival rate over the whole series, requests per second."""
        return float(self.arrivals.sum() / max(self.duration_s, 1e-9))


DAY_S = 86400.0
WEEK_S = 7 * DAY_S

EWMA_TAU_S = 300.0
"""Time constant of the short-series forecast: an exponentially weighted mean of ~5 minutes."""

SEASONAL_MIN_S = 2 * DAY_S
"""Series at least this long get the seasonal-naive forecast once a day of history exists."""

SEASONAL_RATIO_BOUNDS = (0.25, 4.0)
"""Clip of the today/yesterday level ratio, so one quiet hour yesterday cannot explode it."""

DENSE_MIN_PER_BIN = 50.0
"""A ServeGen client window with at least this many expected arrivals per bin (and at least
DENSE_CV_FACTOR * cv^2) is drawn per bin, not per request."""

DENSE_CV_FACTOR = 25.0
"""With >= 25 cv^2 expected arrivals per bin a bin's count is near-normal and bins are nearly
independent; burstier client windows stay request by request."""

_SAMPLE_CHUNK = 1 << 21
"""Expected requests (or dense bins) drawn at once, per thread: bounds memory."""

_SAMPLE_THREADS = 4
"""Most threads drawing ServeGen chunks at once."""

_Z90 = float(ndtri(0.9))


# --- token lengths ------------------------------------------------------------------------------


def _lognormal(dist: LengthDistribution) -> tuple[float, float]:
    mu = math.log(dist.median)
    return mu, (math.log(dist.p90) - mu) / _Z90


def draw_lengths(rng: np.random.Generator, dist: LengthDistribution, n: int) -> np.ndarray:
    """``n`` whole token counts from the lognormal (median, p90), clipped to ``[1, max]``."""
    mu, sigma = _lognormal(dist)
    out = np.exp(mu + sigma * rng.standard_normal(n))
    return np.clip(np.rint(out), 1.0, dist.max)


def length_quantiles(dist: LengthDistribution, levels: np.ndarray) -> np.ndarray:
    """Quantiles of the clipped lognormal at ``levels`` (in (0, 1))."""
    mu, sigma = _lognormal(dist)
    return np.clip(np.exp(mu + sigma * ndtri(np.asarray(levels, dtype=np.float64))), 1.0, dist.max)


def length_moments(dist: LengthDistribution) -> tuple[float, float]:
    """Mean and standard deviation of the lognormal clipped to ``[1, max]`` (closed form)."""
    mu, sigma = _lognormal(dist)
    lo, hi = 1.0, float(dist.max)
    if sigma == 0.0:
        return float(np.clip(math.exp(mu), lo, hi)), 0.0

    def partial(r: int) -> float:
        # E[X^r; lo < X < hi] of a lognormal
        a = (math.log(lo) - mu - r * sigma**2) / sigma
        b = (math.log(hi) - mu - r * sigma**2) / sigma
        return math.exp(r * mu + 0.5 * (r * sigma) ** 2) * float(ndtr(b) - ndtr(a))

    p_lo = float(ndtr((math.log(lo) - mu) / sigma))
    p_hi = 1.0 - float(ndtr((math.log(hi) - mu) / sigma))
    m1 = p_lo * lo + partial(1) + p_hi * hi
    m2 = p_lo * lo**2 + partial(2) + p_hi * hi**2
    return m1, math.sqrt(max(m2 - m1 * m1, 0.0))


def shorter_answers(output: np.ndarray) -> np.ndarray:
    """Which requests are in output class 0: at or below the median output."""
    o = np.asarray(output, dtype=np.float64)
    return o <= np.median(o) if o.size else np.zeros(0, dtype=bool)


def output_classes(prompt: np.ndarray, output: np.ndarray) -> np.ndarray:
    """The output-length classes of requests (see :class:`WorkloadSeries`), from their lengths.

    Requests at or below the median output form the first class (:func:`shorter_answers`),
    the rest the second. A class with no request keeps a zero share and neutral ratios; one of
    requests that generate no token (prompt-only) keeps neutral ratios of its output.
    """
    p = np.asarray(prompt, dtype=np.float64)
    o = np.asarray(output, dtype=np.float64)
    table = np.zeros((OUTPUT_CLASSES, N_CP))
    table[:, CP_SHARE] = 1.0 / OUTPUT_CLASSES
    table[:, CP_OUTPUT] = 1.0
    table[:, CP_PROMPT] = 1.0
    table[:, CP_PHI] = 1.0
    if o.size == 0 or o.mean() <= 0.0:
        return table
    cls = np.where(shorter_answers(o), 0, 1)
    p_mean = max(p.mean(), 1e-9)
    for k in range(OUTPUT_CLASSES):
        sel = cls == k
        if not sel.any():
            table[k, CP_SHARE] = 0.0
            continue
        ok, pk = o[sel], p[sel]
        table[k, CP_SHARE] = sel.mean()
        table[k, CP_OUTPUT] = ok.mean() / o.mean()
        table[k, CP_PROMPT] = pk.mean() / p_mean
        if ok.sum() > 0.0:  # a class of prompt-only requests decodes nothing: neutral ratios
            table[k, CP_PHI] = (ok**2).mean() / (2.0 * ok.mean() ** 2)
            table[k, CP_PSHIFT] = (pk * ok).sum() / ok.sum() - pk.mean()
    return table


def _neutral_class() -> np.ndarray:
    """[N_CP] one class of all requests with memoryless output lengths."""
    row = np.ones(N_CP)
    row[CP_PSHIFT] = 0.0
    return row


def batch_class_params(prompt: np.ndarray, output: np.ndarray) -> np.ndarray:
    """[N_CP] the batch requests as one output-length class (see :class:`WorkloadSeries`)."""
    p = np.asarray(prompt, dtype=np.float64)
    o = np.asarray(output, dtype=np.float64)
    row = _neutral_class()
    if o.size and o.mean() > 0.0:
        row[CP_PHI] = (o**2).mean() / (2.0 * o.mean() ** 2)
        row[CP_PSHIFT] = (p * o).sum() / o.sum() - p.mean()
    return row


def mixture_class_params(classes: np.ndarray, mean_prompt: float) -> np.ndarray:
    """[N_CP] :func:`batch_class_params` of requests drawn from the output-length classes
    ``classes`` (a random share of the workload), mean prompt ``mean_prompt`` tokens."""
    s, o, pr = classes[:, CP_SHARE], classes[:, CP_OUTPUT], classes[:, CP_PROMPT]
    row = _neutral_class()
    so = float((s * o).sum())
    if so > 0.0:
        row[CP_PHI] = float((s * classes[:, CP_PHI] * o**2).sum()) / so**2
        shift = (s * o * (classes[:, CP_PSHIFT] + pr * mean_prompt)).sum() / so
        row[CP_PSHIFT] = float(shift - mean_prompt * (s * pr).sum())
    return row


def distribution_output_classes(dist: LengthDistribution, levels: int = 4096) -> np.ndarray:
    """:func:`output_classes` of a configured output distribution, prompts drawn apart."""
    o = length_quantiles(dist, (np.arange(levels) + 0.5) / levels)
    return output_classes(np.ones_like(o), o)


def _quantile_levels() -> np.ndarray:
    return (np.arange(QUANTILE_LEVELS) + 0.5) / QUANTILE_LEVELS


# --- forecast -----------------------------------------------------------------------------------


def _ewma_rps(x: np.ndarray, w: np.ndarray, substep_s: float) -> np.ndarray:
    """Exponentially weighted mean rate over bins strictly before t, skipping gap bins."""
    beta = math.exp(-substep_s / EWMA_TAU_S)
    num = lfilter([1.0 - beta], [1.0, -beta], x * w)
    den = lfilter([1.0 - beta], [1.0, -beta], w)
    out = np.zeros_like(x)
    with np.errstate(invalid="ignore", divide="ignore"):
        out[1:] = np.where(den[:-1] > 0, num[:-1] / den[:-1], 0.0) / substep_s
    return out


def causal_forecast_rps(
    arrivals: np.ndarray,
    *,
    substep_s: float,
    control_interval_s: float,
    gaps: np.ndarray | None = None,
) -> np.ndarray:
    """Forecast made at bin ``t``, from bins before ``t`` only, of the mean rate (req/s) over the
    next control interval.

    Short series: an exponentially weighted mean with a :data:`EWMA_TAU_S` time constant (0 at
    bin 0, where nothing is known). Series of at least :data:`SEASONAL_MIN_S`, once a day and an
    hour of history exist: seasonal naive, i.e. yesterday's rate around the same interval (a
    window of max(interval, 5 min) centred on it) times the ratio of the last hour's rate to the
    same hour yesterday. Gap bins are treated as missing, not as zero load.

    :param arrivals: requests per bin.
    :param substep_s: bin width in seconds.
    :param control_interval_s: the horizon of the forecast.
    :param gaps: optional bool mask of bins with no data.
    :return: float64 [T] forecast rate in requests per second.
    """
    x = np.asarray(arrivals, dtype=np.float64)
    n = x.shape[0]
    w = np.ones(n) if gaps is None else (~np.asarray(gaps, dtype=bool)).astype(np.float64)
    out = _ewma_rps(x, w, substep_s)
    if n * substep_s < SEASONAL_MIN_S:
        return out
    day = round(DAY_S / substep_s)
    hour = round(3600.0 / substep_s)
    horizon = max(1, round(control_interval_s / substep_s))
    width = max(horizon, round(300.0 / substep_s))
    csum_x = np.concatenate(([0.0], np.cumsum(x * w)))
    csum_w = np.concatenate(([0.0], np.cumsum(w)))
    t = np.arange(n)

    def mean_rps(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
        lo = np.clip(lo, 0, n)
        hi = np.clip(hi, 0, n)
        seen = csum_w[hi] - csum_w[lo]
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(seen > 0, (csum_x[hi] - csum_x[lo]) / (seen * substep_s), np.nan)

    # yesterday's window ends at most (horizon + width) / 2 bins past t - day: still before t
    centre = t - day + horizon // 2
    yesterday_next = mean_rps(centre - width // 2, centre - width // 2 + width)
    last_hour = mean_rps(t - hour, t)
    yesterday_hour = mean_rps(t - day - hour, t - day)
    with np.errstate(invalid="ignore", divide="ignore"):
        ratio = np.clip(last_hour / yesterday_hour, *SEASONAL_RATIO_BOUNDS)
        seasonal = yesterday_next * ratio
    ok = (t >= day + hour) & np.isfinite(seasonal) & (yesterday_hour > 0)
    return np.where(ok, seasonal, out)


# --- binning ------------------------------------------------------------------------------------


@dataclass
class _Bins:
    """Per-bin sums, accumulated chunk by chunk."""

    arrivals: np.ndarray
    prompt_tokens: np.ndarray
    output_tokens: np.ndarray
    tenant_tokens: np.ndarray  # [intervals, tenants]
    tenant_requests: np.ndarray | None = None  # [intervals, tenants]; None: one tenant

    @classmethod
    def empty(cls, n_bins: int, per_interval: int, n_tenants: int) -> _Bins:
        rows = -(-n_bins // per_interval)
        z = np.zeros(n_bins)
        tenants = np.zeros((rows, n_tenants))
        return cls(z, z.copy(), z.copy(), tenants, tenants.copy())

    def add(
        self,
        bins: np.ndarray,
        count: np.ndarray | None,
        prompt: np.ndarray,
        output: np.ndarray,
        tenant: np.ndarray,
        per_interval: int,
    ) -> None:
        """Add requests (``count=None``, one per entry) or per-bin counts to ``bins``."""
        n = self.arrivals.shape[0]
        self.arrivals += np.bincount(bins, weights=count, minlength=n)
        self.prompt_tokens += np.bincount(bins, weights=prompt, minlength=n)
        self.output_tokens += np.bincount(bins, weights=output, minlength=n)
        rows, n_ten = self.tenant_tokens.shape
        cell = (bins // per_interval) * n_ten + tenant
        self.tenant_tokens += np.bincount(
            cell, weights=prompt + output, minlength=rows * n_ten
        ).reshape(rows, n_ten)
        if self.tenant_requests is not None:
            self.tenant_requests += np.bincount(
                cell, weights=count, minlength=rows * n_ten
            ).reshape(rows, n_ten)


def _shares(tenant_tokens: np.ndarray) -> np.ndarray:
    total = tenant_tokens.sum(axis=1, keepdims=True)
    uniform = np.full_like(tenant_tokens, 1.0 / tenant_tokens.shape[1])
    with np.errstate(invalid="ignore", divide="ignore"):
        share = np.where(total > 0, tenant_tokens / total, uniform)
    return share.astype(np.float32)


# --- windows and scales -------------------------------------------------------------------------


def _select_window(
    cfg: WorkloadConfig, length_s: float, substep_s: float, *, what: str, last_is_request: bool
) -> tuple[float, int]:
    """(start_s, n_bins) of the configured window inside a source ``length_s`` long.

    For a recorded trace ``length_s`` is the time of its last request, which must land in a bin.
    """
    start_s = cfg.window_start_h * 3600.0
    shown = (
        f"workload.window_start_h={cfg.window_start_h}, window_hours={cfg.window_hours} "
        f"(time_scale={cfg.time_scale})"
    )
    if start_s > length_s or (start_s == length_s and not last_is_request):
        raise ScenarioError(
            f"{shown} starts past the end of {what}, which is {length_s / 3600:.4g} h long"
        )
    if cfg.window_hours is None:
        span = length_s - start_s
        n_bins = (
            math.floor(span / substep_s) + 1
            if last_is_request
            else math.ceil(span / substep_s - 1e-9)
        )
        return start_s, max(n_bins, 1)
    end_s = start_s + cfg.window_hours * 3600.0
    if end_s > length_s + substep_s + 1e-9:
        raise ScenarioError(
            f"{shown} ends at {end_s / 3600:.4g} h, past the end of {what}, which is "
            f"{length_s / 3600:.4g} h long"
        )
    return start_s, max(1, math.ceil(cfg.window_hours * 3600.0 / substep_s - 1e-9))


def _rate_scale(cfg: WorkloadConfig, expected_requests: float, span_s: float, what: str) -> float:
    """``rate_scale``, or the scale that makes the window's mean rate ``target_mean_rps``."""
    if cfg.target_mean_rps is None:
        return cfg.rate_scale
    if cfg.rate_scale != 1.0:
        raise ScenarioError(
            f"workload.rate_scale={cfg.rate_scale} and target_mean_rps={cfg.target_mean_rps} both "
            "set the rate; give one of them"
        )
    if expected_requests <= 0:
        raise ScenarioError(
            f"workload.target_mean_rps={cfg.target_mean_rps}: the selected window of {what} has "
            "no requests to scale"
        )
    return cfg.target_mean_rps * span_s / expected_requests


def _week_start_s(cfg: WorkloadConfig, window_start_s: float) -> float:
    return ((cfg.start_weekday * 24 + cfg.start_hour) * 3600.0 + window_start_s) % WEEK_S


def _rescale_requests(
    req: TraceRequests,
    mask: np.ndarray,
    offset_s: float,
    span_s: float,
    scale: float,
    rng: np.random.Generator,
) -> tuple[np.ndarray, ...]:
    """Time (from the window start), prompt, output and tenant of the window's requests after
    thinning or superposition (see the module docstring)."""
    t = req.time_s[mask] - offset_s
    fields = (req.prompt_tokens[mask], req.output_tokens[mask], req.tenant[mask])
    if req.batch is not None:
        fields = (*fields, req.batch[mask])
    if scale == 1.0:
        return (t, *fields)
    parts: list[tuple[np.ndarray, ...]] = []
    for k in range(math.ceil(scale)):
        keep_p = min(1.0, scale - k)
        keep = np.ones(t.shape[0], dtype=bool) if keep_p >= 1.0 else rng.random(t.shape[0]) < keep_p
        shift = 0.0 if k == 0 else rng.uniform(0.0, span_s)
        parts.append(((t[keep] + shift) % span_s, *(f[keep] for f in fields)))
    return tuple(np.concatenate(col) for col in zip(*parts, strict=True))


# --- sources ------------------------------------------------------------------------------------


@dataclass
class _Built:
    name: str
    bins: _Bins
    stochastic: bool
    forecast_rps: np.ndarray
    prompt_quantiles: np.ndarray
    tenant_names: tuple[str, ...]
    start_s_of_week: float
    gaps: np.ndarray
    output_classes: np.ndarray | None = None
    output_quantiles: np.ndarray | None = None
    output_class_bins: np.ndarray | None = None
    batch_bins: np.ndarray | None = None
    batch_class: np.ndarray | None = None


def _build_recorded(
    cfg: WorkloadConfig, substep_s: float, per_interval: int, rng: np.random.Generator
) -> _Built:
    assert cfg.path is not None
    req = read_trace(cfg.kind, cfg.path)
    what = f"trace {req.source}"
    req = req.time_scaled(cfg.time_scale)
    start_s, n_bins = _select_window(
        cfg, float(req.time_s[-1]), substep_s, what=what, last_is_request=True
    )
    span_s = n_bins * substep_s
    mask = (req.time_s >= start_s) & (req.time_s < start_s + span_s)
    n_in = int(mask.sum())
    if n_in == 0:
        raise ScenarioError(
            f"workload.window_start_h={cfg.window_start_h}, window_hours={cfg.window_hours}: "
            f"no request of {what} ({req.time_s[-1] / 3600:.4g} h long) falls in the window"
        )
    scale = _rate_scale(cfg, n_in, span_s, what)
    t, prompt, output, tenant, *marked = _rescale_requests(req, mask, start_s, span_s, scale, rng)
    bins = _Bins.empty(n_bins, per_interval, len(req.tenant_names))
    bin_idx = np.minimum((t / substep_s).astype(np.int64), n_bins - 1)
    # request classes: the trace's own, else a drawn share (drawn last: the rest is as without)
    share = cfg.batch.share if cfg.batch is not None else 0.0
    is_batch = marked[0] if marked else (rng.random(t.shape[0]) < share if share > 0 else None)
    batch_bins = batch_class = None
    if is_batch is not None and is_batch.any():
        both = _Bins.empty(n_bins, per_interval, len(req.tenant_names))
        both.add(bin_idx, None, prompt, output, tenant.astype(np.int64), per_interval)
        bi, bp, bo = bin_idx[is_batch], prompt[is_batch], output[is_batch]
        batch_bins = np.stack(
            [
                np.bincount(bi, minlength=n_bins).astype(np.float64),
                np.bincount(bi, weights=bp, minlength=n_bins),
                np.bincount(bi, weights=bo, minlength=n_bins),
            ]
        )
        batch_class = batch_class_params(bp, bo)
        keep = ~is_batch
        t, prompt, output, tenant, bin_idx = (a[keep] for a in (t, prompt, output, tenant, bin_idx))
        if t.size == 0:
            raise ScenarioError(f"{what}: every request in the window is a batch request")
    bins.add(bin_idx, None, prompt, output, tenant.astype(np.int64), per_interval)
    if batch_bins is not None:
        # the tenants are billed for both classes' tokens
        bins.tenant_tokens = both.tenant_tokens
        bins.tenant_requests = both.tenant_requests
    short = shorter_answers(output)
    class_bins = np.stack(
        [
            np.bincount(bin_idx, weights=short.astype(np.float64), minlength=n_bins),
            np.bincount(bin_idx, weights=np.where(short, prompt, 0.0), minlength=n_bins),
            np.bincount(bin_idx, weights=np.where(short, output, 0.0), minlength=n_bins),
            np.bincount(bin_idx, weights=np.where(short, prompt * output, 0.0), minlength=n_bins),
            np.bincount(bin_idx, weights=prompt * output, minlength=n_bins),
        ]
    )
    gaps = np.zeros(n_bins, dtype=bool)
    quantiles = (
        np.quantile(prompt, _quantile_levels()) if prompt.size else np.zeros(QUANTILE_LEVELS)
    )
    return _Built(
        name=f"{cfg.kind}:{Path(req.source).name}",
        bins=bins,
        stochastic=False,
        forecast_rps=causal_forecast_rps(
            bins.arrivals, substep_s=substep_s, control_interval_s=per_interval * substep_s
        ),
        prompt_quantiles=quantiles,
        tenant_names=req.tenant_names,
        start_s_of_week=_week_start_s(cfg, start_s),
        gaps=gaps,
        output_classes=output_classes(prompt, output),
        output_class_bins=class_bins,
        output_quantiles=(
            np.quantile(output, (np.arange(N_OUTPUT_Q) + 0.5) / N_OUTPUT_Q) if output.size else None
        ),
        batch_bins=batch_bins,
        batch_class=batch_class,
    )


def _servegen_segments(
    sg: ServeGenTrace, cfg: WorkloadConfig, start_s: float, end_s: float
) -> dict[str, np.ndarray]:
    """The non-empty client windows that overlap ``[start_s, end_s)``, clipped to it."""
    ts = cfg.time_scale
    win_lo = sg.window_start_s * ts
    win_hi = win_lo + sg.window_s * ts
    client, window = np.nonzero(sg.law > 0)
    lo = np.maximum(win_lo[window], start_s)
    hi = np.minimum(win_hi[window], end_s)
    keep = hi > lo
    client, window, lo, hi = client[keep], window[keep], lo[keep], hi[keep]
    return {
        "client": client,
        "lo_s": lo - start_s,
        "hi_s": hi - start_s,
        "rate": sg.rate[client, window] / ts,
        "law": sg.law[client, window],
        "shape": sg.shape[client, window],
    }


def _servegen_gap_bins(
    sg: ServeGenTrace, cfg: WorkloadConfig, start_s: float, n_bins: int, substep_s: float
) -> np.ndarray:
    ts = cfg.time_scale
    gaps = np.zeros(n_bins, dtype=bool)
    for w in np.flatnonzero(sg.gaps):
        lo = (sg.window_start_s[w] * ts - start_s) / substep_s
        hi = lo + sg.window_s * ts / substep_s
        a, b = max(0, math.floor(lo + 1e-9)), min(n_bins, math.ceil(hi - 1e-9))
        if a < b:
            gaps[a:b] = True
    return gaps


def _sample_sparse(
    seg: dict[str, np.ndarray],
    idx: np.ndarray,
    cfg: WorkloadConfig,
    bins: _Bins,
    substep_s: float,
    per_interval: int,
    rng: np.random.Generator,
) -> None:
    """Request by request, in chunks of about :data:`_SAMPLE_CHUNK` expected requests.

    Each chunk has its own generator spawned from ``rng``, so the result does not depend on how
    many threads draw them; numpy's generators release the GIL while drawing, which is most of
    the work (a 14-day ServeGen series at 20 req/s is ~24M requests and ~28M gamma/Weibull gaps).
    """
    n_bins = bins.arrivals.shape[0]
    expected = seg["rate"][idx] * (seg["hi_s"][idx] - seg["lo_s"][idx])
    chunk_of = np.floor(np.cumsum(expected) / _SAMPLE_CHUNK).astype(np.int64)
    parts = [idx[chunk_of == c] for c in np.unique(chunk_of)]

    def draw(part: np.ndarray, part_rng: np.random.Generator) -> tuple[np.ndarray, ...]:
        t, s = sample_renewal_arrivals(
            part_rng,
            seg["lo_s"][part],
            seg["hi_s"][part] - seg["lo_s"][part],
            seg["rate"][part],
            seg["law"][part],
            seg["shape"][part],
        )
        n = t.shape[0]
        b = np.minimum((t / substep_s).astype(np.int64), n_bins - 1)
        prompt = draw_lengths(part_rng, cfg.prompt_tokens, n)
        output = draw_lengths(part_rng, cfg.output_tokens, n)
        return b, prompt, output, seg["client"][part][s]

    workers = max(1, min(_SAMPLE_THREADS, os.cpu_count() or 1, len(parts)))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        pending: deque[Future[tuple[np.ndarray, ...]]] = deque()
        # at most workers + 1 chunks in flight bounds memory to a few chunks of requests
        for part, part_rng in zip(parts, rng.spawn(len(parts)), strict=True):
            if len(pending) > workers:
                b, prompt, output, tenant = pending.popleft().result()
                bins.add(b, None, prompt, output, tenant, per_interval)
            pending.append(pool.submit(draw, part, part_rng))
        while pending:
            b, prompt, output, tenant = pending.popleft().result()
            bins.add(b, None, prompt, output, tenant, per_interval)


def _sample_dense(
    seg: dict[str, np.ndarray],
    idx: np.ndarray,
    cfg: WorkloadConfig,
    bins: _Bins,
    substep_s: float,
    per_interval: int,
    rng: np.random.Generator,
) -> None:
    """Per-bin counts from the renewal central limit law (see the module docstring)."""
    n_bins = bins.arrivals.shape[0]
    p_mean, p_sd = length_moments(cfg.prompt_tokens)
    o_mean, o_sd = length_moments(cfg.output_tokens)
    first = np.floor(seg["lo_s"][idx] / substep_s).astype(np.int64)
    last = np.minimum(np.ceil(seg["hi_s"][idx] / substep_s).astype(np.int64), n_bins)
    n_per = np.maximum(last - first, 0)
    chunk_of = np.floor(np.cumsum(n_per) / _SAMPLE_CHUNK).astype(np.int64)
    cv = law_cv(seg["law"][idx], seg["shape"][idx])
    for c in np.unique(chunk_of):
        sel = np.flatnonzero(chunk_of == c)
        rep = np.repeat(sel, n_per[sel])
        starts = np.cumsum(n_per[sel]) - n_per[sel]
        b = first[rep] + np.arange(rep.shape[0]) - np.repeat(starts, n_per[sel])
        j = idx[rep]
        cover = np.minimum((b + 1) * substep_s, seg["hi_s"][j]) - np.maximum(
            b * substep_s, seg["lo_s"][j]
        )
        mean = seg["rate"][j] * np.maximum(cover, 0.0)
        count = np.maximum(
            np.rint(mean + cv[rep] * np.sqrt(mean) * rng.standard_normal(mean.shape)), 0
        )
        root = np.sqrt(count)
        prompt = np.clip(
            count * p_mean + root * p_sd * rng.standard_normal(count.shape),
            count,
            count * cfg.prompt_tokens.max,
        )
        output = np.clip(
            count * o_mean + root * o_sd * rng.standard_normal(count.shape),
            count,
            count * cfg.output_tokens.max,
        )
        bins.add(b, count, prompt, output, seg["client"][j], per_interval)


def _build_servegen(
    cfg: WorkloadConfig, substep_s: float, per_interval: int, rng: np.random.Generator
) -> _Built:
    assert cfg.path is not None
    sg = read_servegen(cfg.path)
    what = f"ServeGen folder {sg.source}"
    length_s = sg.duration_s * cfg.time_scale
    start_s, n_bins = _select_window(cfg, length_s, substep_s, what=what, last_is_request=False)
    span_s = n_bins * substep_s
    seg = _servegen_segments(sg, cfg, start_s, min(start_s + span_s, length_s))
    if seg["client"].size == 0:
        raise ScenarioError(
            f"workload.window_start_h={cfg.window_start_h}, window_hours={cfg.window_hours}: "
            f"every client of {what} is empty in the window (a collection gap)"
        )
    expected = float(np.sum(seg["rate"] * (seg["hi_s"] - seg["lo_s"])))
    seg["rate"] = seg["rate"] * _rate_scale(cfg, expected, span_s, what)
    per_bin = seg["rate"] * substep_s
    cv = law_cv(seg["law"], seg["shape"])
    dense = (per_bin >= DENSE_MIN_PER_BIN) & (per_bin >= DENSE_CV_FACTOR * cv**2)
    bins = _Bins.empty(n_bins, per_interval, len(sg.client_names))
    _sample_sparse(seg, np.flatnonzero(~dense), cfg, bins, substep_s, per_interval, rng)
    _sample_dense(seg, np.flatnonzero(dense), cfg, bins, substep_s, per_interval, rng)
    gaps = _servegen_gap_bins(sg, cfg, start_s, n_bins, substep_s)
    return _Built(
        name=f"servegen:{Path(sg.source).name}",
        bins=bins,
        stochastic=False,
        forecast_rps=causal_forecast_rps(
            bins.arrivals,
            substep_s=substep_s,
            control_interval_s=per_interval * substep_s,
            gaps=gaps,
        ),
        prompt_quantiles=length_quantiles(cfg.prompt_tokens, _quantile_levels()),
        tenant_names=sg.client_names,
        start_s_of_week=_week_start_s(cfg, start_s),
        gaps=gaps,
        output_classes=distribution_output_classes(cfg.output_tokens),
        output_quantiles=length_quantiles(
            cfg.output_tokens, (np.arange(N_OUTPUT_Q) + 0.5) / N_OUTPUT_Q
        ),
    )


def _ou_lognormal_noise(
    rng: np.random.Generator, n: int, cv: float, corr_s: float, substep_s: float
) -> np.ndarray:
    """Mean-one multiplicative noise: exp of a stationary AR(1) with coefficient of variation cv."""
    if cv == 0.0:
        return np.ones(n)
    s2 = math.log1p(cv * cv)
    rho = math.exp(-substep_s / corr_s)
    eps = rng.standard_normal(n)
    # a first input of eps0 / sqrt(1 - rho^2) starts the filter in its stationary law
    eps[0] /= math.sqrt(1.0 - rho * rho)
    z = lfilter([math.sqrt((1.0 - rho * rho) * s2)], [1.0, -rho], eps)
    return np.exp(z - 0.5 * s2)


def _burst_factor(n: int, bursts: list[tuple[float, float, float]], substep_s: float) -> np.ndarray:
    """Overlapping bursts do not compound: the largest multiplier applies."""
    out = np.ones(n)
    for start_s, duration_s, mult in bursts:
        a = max(0, round(start_s / substep_s))
        b = min(n, max(a + 1, round((start_s + duration_s) / substep_s)))
        if a < n:
            out[a:b] = np.maximum(out[a:b], mult)
    return out


def synthetic_rates(
    syn: SyntheticLoad,
    *,
    substep_s: float,
    n_bins: int,
    week_start_s: float,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Rate (req/s) of a synthetic load on ``n_bins`` bins from the episode start.

    Returns:
        (rate, known): ``rate`` includes noise and all bursts; ``known`` is what an operator can
        forecast: the seasonal profile times the announced bursts.
    """
    noise_ss, burst_ss = np.random.SeedSequence(seed).spawn(2)
    t = (np.arange(n_bins) + 0.5) * substep_s
    s_of_week = (week_start_s + t) % WEEK_S
    hour = (s_of_week % DAY_S) / 3600.0
    weekend = s_of_week >= 5 * DAY_S  # Saturday and Sunday, Monday = day 0
    profile = (
        syn.base_rate_rps
        * (1.0 + syn.daily_amplitude * np.cos(2.0 * np.pi * (hour - syn.peak_hour) / 24.0))
        * np.where(weekend, syn.weekend_factor, 1.0)
    )
    announced = [
        (b.day * DAY_S + b.hour * 3600.0, b.duration_h * 3600.0, b.multiplier)
        for b in syn.bursts
        if b.announced
    ]
    hidden = [
        (b.day * DAY_S + b.hour * 3600.0, b.duration_h * 3600.0, b.multiplier)
        for b in syn.bursts
        if not b.announced
    ]
    brng = np.random.default_rng(burst_ss)
    for _ in range(brng.poisson(syn.random_bursts_per_week * syn.days / 7.0)):
        hidden.append(
            (
                brng.uniform(0.0, syn.days * DAY_S),
                brng.uniform(0.5, 3.0) * 3600.0,
                brng.uniform(2.0, 4.0),
            )
        )
    known = profile * _burst_factor(n_bins, announced, substep_s)
    noise = _ou_lognormal_noise(
        np.random.default_rng(noise_ss), n_bins, syn.noise_cv, syn.noise_corr_s, substep_s
    )
    rate = profile * _burst_factor(n_bins, announced + hidden, substep_s) * noise
    return rate, known


def _build_synthetic(cfg: WorkloadConfig, substep_s: float, per_interval: int, seed: int) -> _Built:
    syn = cfg.synthetic or SyntheticLoad()
    if cfg.time_scale != 1.0:
        raise ScenarioError(
            f"workload.time_scale={cfg.time_scale} applies to recorded traces; for synthetic load "
            "change synthetic.days or the daily profile"
        )
    length_s = syn.days * DAY_S
    what = f"the synthetic load (synthetic.days={syn.days})"
    start_s, n_bins = _select_window(cfg, length_s, substep_s, what=what, last_is_request=False)
    first = round(start_s / substep_s)
    # the horizon past the window lets the last forecasts see announced events after it
    rate, known = synthetic_rates(
        syn,
        substep_s=substep_s,
        n_bins=first + n_bins + per_interval,
        week_start_s=_week_start_s(cfg, 0.0),
        seed=seed,
    )
    rate = rate[first : first + n_bins]
    known = known[first:]
    scale = _rate_scale(cfg, float(rate.sum() * substep_s), n_bins * substep_s, what)
    rate, known = rate * scale, known * scale
    arrivals = rate * substep_s
    csum = np.concatenate(([0.0], np.cumsum(known)))
    idx = np.arange(n_bins)
    forecast = (csum[idx + per_interval] - csum[idx]) / per_interval
    p_mean, _ = length_moments(cfg.prompt_tokens)
    o_mean, _ = length_moments(cfg.output_tokens)
    rows = -(-n_bins // per_interval)
    bins = _Bins(arrivals, arrivals * p_mean, arrivals * o_mean, np.ones((rows, 1)))
    return _Built(
        name=f"synthetic:base={syn.base_rate_rps:g}rps,days={syn.days:g}",
        bins=bins,
        stochastic=True,
        forecast_rps=forecast,
        prompt_quantiles=length_quantiles(cfg.prompt_tokens, _quantile_levels()),
        tenant_names=("default",),
        start_s_of_week=_week_start_s(cfg, start_s),
        gaps=np.zeros(n_bins, dtype=bool),
        output_classes=distribution_output_classes(cfg.output_tokens),
        output_quantiles=length_quantiles(
            cfg.output_tokens, (np.arange(N_OUTPUT_Q) + 0.5) / N_OUTPUT_Q
        ),
    )


def build_workload(
    cfg: WorkloadConfig, *, substep_s: float, control_interval_s: float, seed: int = 0
) -> WorkloadSeries:
    """Bin a scenario's workload onto the sub-step grid (see the module docstring).

    :param cfg: the scenario's ``workload`` section.
    :param substep_s: bin width in seconds (the simulator's sub-step).
    :param control_interval_s: decision interval; sets the forecast horizon and the rows of
        ``tenant_token_share``. Rounded to a whole number of bins.
    :param seed: seeds every random choice (ServeGen arrivals, rate-scaling copies, synthetic
        noise and unannounced bursts); the same seed gives the same series.
    :return: the binned series, shared by all simulated clusters.
    :raises ScenarioError: a missing or malformed trace, or a window outside it.
    """
    if not (substep_s > 0 and control_interval_s >= substep_s):
        raise ScenarioError(
            f"substep_s ({substep_s}) must be positive and at most control_interval_s "
            f"({control_interval_s})"
        )
    per_interval = max(1, round(control_interval_s / substep_s))
    rng = np.random.default_rng(np.random.SeedSequence(seed))
    if cfg.kind == "synthetic":
        built = _build_synthetic(cfg, substep_s, per_interval, seed)
    elif cfg.kind == "servegen":
        built = _build_servegen(cfg, substep_s, per_interval, rng)
    else:
        built = _build_recorded(cfg, substep_s, per_interval, rng)
    if cfg.batch is not None and cfg.batch.share > 0 and built.batch_bins is None:
        _split_batch_share(built, cfg.batch.share)
    return WorkloadSeries(
        name=built.name,
        substep_s=float(substep_s),
        control_interval_s=float(control_interval_s),
        arrivals=built.bins.arrivals,
        prompt_tokens=built.bins.prompt_tokens,
        output_tokens=built.bins.output_tokens,
        stochastic=built.stochastic,
        forecast_rps=built.forecast_rps,
        prompt_quantiles=np.asarray(built.prompt_quantiles, dtype=np.float64),
        tenant_names=built.tenant_names,
        tenant_token_share=_shares(built.bins.tenant_tokens),
        start_s_of_week=float(built.start_s_of_week),
        gaps=built.gaps,
        output_classes=built.output_classes,
        output_quantiles=built.output_quantiles,
        output_class_bins=built.output_class_bins,
        tenant_request_share=(
            None if built.bins.tenant_requests is None else _shares(built.bins.tenant_requests)
        ),
        batch_bins=built.batch_bins,
        batch_class=built.batch_class,
    )


def _split_batch_share(built: _Built, share: float) -> None:
    """Make ``share`` of every bin's arrivals batch requests (a source without per-request
    lengths: synthetic load, ServeGen); the interactive rest keeps the bin's mix."""
    b = built.bins
    built.batch_bins = np.stack([b.arrivals, b.prompt_tokens, b.output_tokens]) * share
    keep = 1.0 - share
    b.arrivals = b.arrivals * keep
    b.prompt_tokens = b.prompt_tokens * keep
    b.output_tokens = b.output_tokens * keep
    built.forecast_rps = built.forecast_rps * keep
    if built.output_class_bins is not None:
        built.output_class_bins = built.output_class_bins * keep
    n = max(float(built.batch_bins[0].sum()), 1e-12)
    classes = built.output_classes
    if classes is None:
        built.batch_class = _neutral_class()
    else:
        built.batch_class = mixture_class_params(classes, float(built.batch_bins[1].sum()) / n)
