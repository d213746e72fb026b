"""Spot markets: price paths, preemptions with notice, availability and unfulfilled requests."""

from __future__ import annotations

import csv
import json
import math
from collections import Counter
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np

from .datasets import fetch_hint
from .scenario import ScenarioError, SpotConfig, data_root, resolve_data_path


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


PRICE_COLUMNS = (
    "AvailabilityZoneId",
    "InstanceType",
    "ProductDescription",
    "SpotPrice",
    "Timestamp",
)
PRICE_PRODUCT = "Linux/UNIX"


def _data_path(rel: str, data_dir: Path | None) -> Path:
    if data_dir is not None and not Path(rel).is_absolute():
        return Path(data_dir) / rel
    return resolve_data_path(rel)


def _hint(path: Path) -> str:
    """How to get a missing trace file: the dataset to fetch when it is below the data root."""
    try:
        return fetch_hint(path.resolve().relative_to(data_root()))
    except ValueError:
        return f"it is not below the data root {data_root()}"


def read_price_trace(path: Path) -> list[dict[str, str]]:
    """The ``Linux/UNIX`` rows of an AWS ``describe-spot-price-history`` TSV.

    :raises ScenarioError: file missing or a required column absent (named with the file).
    """
    if not path.is_file():
        raise ScenarioError(f"spot.price_trace: file {path} is missing; {_hint(path)}")
    with path.open(newline="") as fh:
        reader = csv.DictReader(fh, delimiter="\t")
        header = list(reader.fieldnames or [])
        missing = [c for c in PRICE_COLUMNS if c not in header]
        if missing:
            raise ScenarioError(
                f"spot.price_trace: {path} lacks column(s) {missing}; header is {header}"
            )
        return [row for row in reader if row["ProductDescription"] == PRICE_PRODUCT]


def _timestamp_s(row: dict[str, str], path: Path) -> float:
    try:
        return datetime.fromisoformat(row["Timestamp"]).timestamp()
    except ValueError:
        raise ScenarioError(
            f"spot.price_trace: {path}: bad Timestamp {row['Timestamp']!r}"
        ) from None


def trace_price_shape(
    path: Path,
    instance_type: str | None,
    availability_zone: str | None,
    *,
    control_interval_s: float,
) -> np.ndarray:
    """Spot price of one instance type and zone on the interval grid, divided by its mean.

    The price is a step function (each row is the price from its ``Timestamp`` on), sampled at
    the start of every interval from the first to the last timestamp of the file; before the
    series' first row its first price is assumed. Dividing by the path's own time-mean keeps
    only the shape: the level comes from the scenario's discount, because the trace's
    instance type is rarely the pool's GPU, and a zone premium (p3.2xlarge costs 3.06 $/h in
    use1-az1 but 0.918 elsewhere) says nothing about the pool.

    :param availability_zone: zone id (e.g. ``use1-az2``); None picks the zone with the most
        rows for that type (ties: the first by name).
    :raises ScenarioError: no ``instance_type``, or an instance type / zone the file does not
        have (the message lists the ones it has).
    """
    all_rows = read_price_trace(path)
    types = sorted({r["InstanceType"] for r in all_rows})
    if instance_type is None:
        raise ScenarioError(
            f"spot.price: trace needs spot.instance_type; {path} has {PRICE_PRODUCT} rows "
            f"for {types}"
        )
    rows = [r for r in all_rows if r["InstanceType"] == instance_type]
    if not rows:
        raise ScenarioError(
            f"spot.instance_type '{instance_type}' is not in {path} ({PRICE_PRODUCT}); "
            f"available: {types}"
        )
    per_zone = Counter(r["AvailabilityZoneId"] for r in rows)
    if availability_zone is None:
        availability_zone = min(per_zone, key=lambda z: (-per_zone[z], z))
    elif availability_zone not in per_zone:
        raise ScenarioError(
            f"spot.availability_zone '{availability_zone}' has no {instance_type} rows in {path}; "
            f"zones: {sorted(per_zone)}"
        )
    # The grid spans the whole collection window, not just this series' rows.
    all_times = [_timestamp_s(r, path) for r in all_rows]
    start_s, end_s = min(all_times), max(all_times)
    series = sorted(
        (_timestamp_s(r, path), float(r["SpotPrice"]))
        for r in rows
        if r["AvailabilityZoneId"] == availability_zone
    )
    times = np.array([t for t, _ in series])
    prices = np.array([p for _, p in series])
    if not np.all(prices > 0):
        raise ScenarioError(f"spot.price_trace: {path}: non-positive SpotPrice for {instance_type}")
    n = max(1, math.ceil((end_s - start_s) / control_interval_s))
    grid = start_s + control_interval_s * np.arange(n)
    idx = np.clip(np.searchsorted(times, grid, side="right") - 1, 0, None)
    path_usd_h = prices[idx]
    return path_usd_h / path_usd_h.mean()


def preemption_trace(path: Path, *, control_interval_s: float) -> tuple[np.ndarray, np.ndarray]:
    """Preemption probability and capacity share per interval from a SkyPilot trace (untiled).

    Each tick ``i`` (``gap_seconds`` apart) holds a count of spot instances. A fall from
    ``n[i-1]`` to ``n[i]`` loses the share ``(n[i-1] - n[i]) / n[i-1]`` of running instances; a
    rise loses none. Ticks fall into interval ``floor(i * gap / interval)``; an interval's
    preemption probability is ``1 - prod(1 - share)`` over its ticks (intervals with no tick,
    when the interval is shorter than the gap, lose nothing). The capacity share is the lowest
    count in the interval (the last one held where it has no tick) over the trace's maximum.

    :raises ScenarioError: file missing, not JSON, or ``metadata.gap_seconds`` / ``data`` absent
        or invalid (the message names the key and the file).
    """
    if not path.is_file():
        raise ScenarioError(f"spot.preemption_trace: file {path} is missing; {_hint(path)}")
    try:
        doc = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise ScenarioError(f"spot.preemption_trace: {path} is not valid JSON: {err}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("metadata"), dict):
        raise ScenarioError(
            f"spot.preemption_trace: {path} needs an object with 'metadata' and 'data' keys"
        )
    gap = doc["metadata"].get("gap_seconds")
    if isinstance(gap, bool) or not isinstance(gap, int | float) or not gap > 0:
        raise ScenarioError(
            f"spot.preemption_trace: {path}: 'metadata.gap_seconds' must be a positive number "
            f"(got {gap!r})"
        )
    data = doc.get("data")
    if not isinstance(data, list) or not data:
        raise ScenarioError(f"spot.preemption_trace: {path}: 'data' must be a non-empty list")
    try:
        counts = np.asarray(data, dtype=float)
    except (TypeError, ValueError):
        raise ScenarioError(
            f"spot.preemption_trace: {path}: 'data' must hold instance counts (numbers)"
        ) from None
    if counts.ndim != 1 or not np.all(np.isfinite(counts)) or np.any(counts < 0):
        raise ScenarioError(
            f"spot.preemption_trace: {path}: 'data' must be a flat list of counts >= 0"
        )

    prev, cur = counts[:-1], counts[1:]
    lost = np.zeros_like(counts)
    with np.errstate(divide="ignore", invalid="ignore"):
        lost[1:] = np.where(prev > 0, np.maximum(prev - cur, 0.0) / prev, 0.0)
    interval_of_tick = np.floor(np.arange(counts.size) * gap / control_interval_s).astype(np.int64)
    n_intervals = int(interval_of_tick[-1]) + 1
    survival = np.ones(n_intervals)
    np.multiply.at(survival, interval_of_tick, 1.0 - lost)
    # interval_of_tick is non-decreasing: the last tick at or before each interval gives the
    # count held through an interval with no tick of its own.
    last_tick = np.searchsorted(interval_of_tick, np.arange(n_intervals), side="right") - 1
    held = counts[last_tick]
    lowest = np.full(n_intervals, np.inf)
    np.minimum.at(lowest, interval_of_tick, counts)
    count = np.where(np.isfinite(lowest), lowest, held)
    peak = counts.max()
    capacity = count / peak if peak > 0 else np.zeros(n_intervals)
    return 1.0 - survival, capacity


def build_spot_market(
    cfg: SpotConfig,
    *,
    on_demand_price_usd_h: float,
    n_steps: int,
    control_interval_s: float,
    seed: int = 0,
    data_dir: Path | None = None,
) -> SpotMarket:
    """The spot market of one pool on the decision-interval grid (``n_steps`` intervals).

    Price: ``ou`` leaves ``price_usd_h`` None and sets the Ornstein-Uhlenbeck process the
    simulator draws from: mean ``on_demand * mean_discount`` (``mean_discount`` is the spot
    price as a share of on-demand: 0.35 means spot costs 35% of on-demand), reversion
    ``reversion_per_h``, volatility ``volatility * mean`` per sqrt hour. ``trace`` takes the
    shape of a recorded price path (:func:`trace_price_shape`) scaled to that same mean.

    Preemption: ``hazard`` gives ``1 - exp(-hazard_per_h * interval_h)`` in every interval and
    full capacity; ``trace`` replays a SkyPilot trace (:func:`preemption_trace`). Trace-based
    series repeat (tile) to ``n_steps``.

    :param cfg: the pool's spot section.
    :param on_demand_price_usd_h: the pool's on-demand hourly price of one replica.
    :param n_steps: length of the per-interval series.
    :param control_interval_s: the decision interval.
    :param seed: accepted for the simulator's per-pool seeding; every mode built here is
        deterministic (the OU path itself is drawn by the simulator), so it changes nothing yet.
    :param data_dir: shared data folder for relative trace paths; None means ``$RLSCALE_DATA``.
    :raises ScenarioError: bad arguments, or a trace that is missing or malformed.
    """
    del seed  # see the docstring: nothing random is drawn here
    if not on_demand_price_usd_h > 0:
        raise ScenarioError(f"on_demand_price_usd_h must be > 0 (got {on_demand_price_usd_h})")
    if n_steps < 1:
        raise ScenarioError(f"n_steps must be >= 1 (got {n_steps})")
    if not control_interval_s > 0:
        raise ScenarioError(f"control_interval_s must be > 0 (got {control_interval_s})")

    mean_usd_h = on_demand_price_usd_h * cfg.mean_discount
    price_usd_h = None
    if cfg.price == "trace":
        shape = trace_price_shape(
            _data_path(cfg.price_trace, data_dir),
            cfg.instance_type,
            cfg.availability_zone,
            control_interval_s=control_interval_s,
        )
        price_usd_h = np.resize(shape * mean_usd_h, n_steps)

    if cfg.preemption == "trace":
        prob, capacity = preemption_trace(
            _data_path(cfg.preemption_trace, data_dir), control_interval_s=control_interval_s
        )
        preempt_prob = np.resize(prob, n_steps)
        capacity_share = np.resize(capacity, n_steps)
    else:
        interval_h = control_interval_s / 3600.0
        preempt_prob = np.full(n_steps, -math.expm1(-cfg.hazard_per_h * interval_h))
        capacity_share = np.ones(n_steps)

    return SpotMarket(
        price_usd_h=price_usd_h,
        ou_mean_usd_h=mean_usd_h,
        ou_reversion_per_h=cfg.reversion_per_h,
        ou_vol_usd_h=cfg.volatility * mean_usd_h,
        preempt_prob=preempt_prob,
        capacity_share=capacity_share,
        fulfil_prob=cfg.fulfil_prob,
        notice_s=cfg.notice_s,
    )
