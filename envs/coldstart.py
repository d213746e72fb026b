"""Cold-start durations of a new replica: provisioning, image pull, weight load, warm-up."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

COLD_START_LEVELS = 32
"""Number of quantiles per duration table; the simulator draws by inverse CDF on them."""


@dataclass(frozen=True)
class ColdStartModel:
    """Quantile tables (seconds, at levels (k + 0.5) / COLD_START_LEVELS) of each phase.

    Attributes:
        provisioning_s: node provisioning (requested -> node running).
        loading_s: image pull + weight load + engine warm-up (node running -> ready).
        warm_start_s: weight load + engine warm-up from a stopped standby replica.
    """

    provisioning_s: np.ndarray
    loading_s: np.ndarray
    warm_start_s: np.ndarray
