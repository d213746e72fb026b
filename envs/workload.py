"""Workloads on the simulator's sub-step grid: replayed traces and synthetic seasonal load.

The simulator never sees individual requests. A workload is binned once, at scenario load, into
per-sub-step arrays that every simulated cluster shares; clusters differ by their episode start
offset and, for stochastic workloads, by their own Poisson draws.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

QUANTILE_LEVELS = 16
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
        forecast_rps: float64 [T], a causal forecast, made at bin t, of the mean arrival rate (req/s)
            over the next control interval. It may use only data before t, plus announced events.
        prompt_quantiles: float64 [QUANTILE_LEVELS], prompt-token quantiles at levels
            (k + 0.5) / QUANTILE_LEVELS over the whole series.
        tenant_names: tenant / client ids; ``("default",)`` when the source has none.
        tenant_token_share: float32 [ceil(T / substeps_per_interval), n_tenants]; each row sums
            to 1 (uniform where no tokens arrived): the share of tokens of each tenant per interval.
        start_s_of_week: seconds since Monday 00:00 at bin 0 (time-of-day / week features).
        gaps: bool [T], bins inside collection gaps of the source (ServeGen empty windows).
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
