"""Spot markets: price paths, preemptions with notice, availability and unfulfilled requests."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class SpotMarket:
    """Spot behaviour of one pool on the decision-interval grid.

    Attributes:
        price_usd_h: float64 [T_dec] price of one replica from a trace (tiled to the horizon),
            or None when the price follows a mean-reverting (Ornstein-Uhlenbeck) process.
        ou_mean_usd_h, ou_reversion_per_h, ou_vol_usd_h: that process's long-run mean,
            reversion speed and volatility (per sqrt hour).
        preempt_prob: float64 [T_dec], probability that a running spot replica receives a
            preemption notice during each interval.
        capacity_share: float64 [T_dec] in [0, 1], share of the pool's quota that the market
            can supply in each interval (1 where no availability trace applies).
        fulfil_prob: probability that one spot request is fulfilled at all.
        notice_s: seconds between the notice and the instance being taken.
    """

    price_usd_h: np.ndarray | None
    ou_mean_usd_h: float
    ou_reversion_per_h: float
    ou_vol_usd_h: float
    preempt_prob: np.ndarray
    capacity_share: np.ndarray
    fulfil_prob: float
    notice_s: float
