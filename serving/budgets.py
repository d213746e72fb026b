"""Spend and budgets in the decision service: metered from the replicas clusters report.

Every decision's input tells the service what the cluster runs now: replicas per pool and
state, and each pool's hourly price (a spot pool's current price when the request gives one,
else the scenario's list price). :class:`SpendMeter` turns that into a cost rate (USD/h) and
integrates it between one observation of a cluster and the next, in the metrics' own time:

- billed as the simulator bills: every replica provisioning, loading, ready, draining or
  refilling the warm pool at the pool's price, every standby replica at the pool's
  ``warm_holding_usd_h``;
- a gap between two observations longer than ``max_gap_s`` (the staleness bound) is metered
  only for its first ``max_gap_s`` at the last known rate; the rest is counted as unmetered
  seconds in ``/metrics``, never guessed, and the budgets covering the cluster are metered
  whole again only from their next period;
- an observation no newer than the cluster's last one (a stale or repeated snapshot) adds
  nothing.

Per tenant: when the request carries ``tenant_rates_rps`` (the Prometheus source fills it from
``--prometheus-tenant-query``), the interval's spend is split by each tenant's share of the
requests; without it, that spend is counted as unallocated (and tenant budgets say their
figure is incomplete), so tenant spend plus unallocated spend always sums to the total.

A budget (hour, day or calendar month, UTC; global or one tenant's; all clusters or one) is
*reported*, never enforced: :func:`budget_statuses` gives its spend in the current period, the
burn rate, the spend projected at the period's end at that rate, and whether that breaks the
limit. Nothing here overrides a decision. A policy trained to observe a budget
(:mod:`rlscale.envs.budgets`) is fed it by :meth:`SpendMeter.observed_budget`, only while its
period's spend is known whole, and refused at load without it (:func:`check_observed_budget`).

A restart loses nothing shorter than the staleness bound when the meter keeps its state in a
SQLite file (:class:`SpendStore`, ``rlscale serve --budget-state FILE``): each period's spend
and each cluster's last observation are written after every metered observation and read back
at start, so the first observation after the restart meters the gap as if the service had not
stopped. Without the file, a period that began before the start is not metered whole, and a
policy that observes its budget is served by the fallback until the next period.
"""

from __future__ import annotations

import datetime as dt
import json
import math
import sqlite3
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated

import yaml
from prometheus_client import CollectorRegistry, Counter, Gauge
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from rlscale.agents.base import BudgetState, ClusterState
from rlscale.common.budgets import BudgetConfig, period_bounds
from rlscale.envs.names import BILLED_STATES
from rlscale.envs.scenario import Scenario
from rlscale.serving.limits import (
    CLUSTER_FORGET_AFTER_S,
    MAX_BUDGETS,
    MAX_TENANTS_TRACKED,
    OTHER_TENANT,
)
from rlscale.serving.schemas import BudgetStatus


class BudgetError(ValueError):
    """A budgets file that cannot be read or does not validate."""


class BudgetsFile(BaseModel):
    """The ``--budgets`` file: ``budgets: [{name, period, limit_usd, tenant?, cluster?}]``."""

    model_config = ConfigDict(extra="forbid", strict=True)

    budgets: Annotated[list[BudgetConfig], Field(max_length=MAX_BUDGETS)]

    @model_validator(mode="after")
    def _unique_names(self) -> BudgetsFile:
        names = [b.name for b in self.budgets]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ValueError(f"budget names must be unique; given twice: {twice}")
        return self


def load_budgets(path: str | Path) -> list[BudgetConfig]:
    """The budgets of a YAML (or JSON) file.

    :raises BudgetError: unreadable, not YAML, or not a valid budgets file (the message names
        the field).
    """
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as err:
        raise BudgetError(f"budgets file {path}: {err}") from None
    try:
        return BudgetsFile.model_validate(raw).budgets
    except ValidationError as err:
        raise BudgetError(f"budgets file {path}: {err}") from None


def observed_budget_of(policy: object) -> BudgetConfig | None:
    """The budget an exported policy observes (its manifest's), or None."""
    manifest = getattr(policy, "manifest", None)
    observation = getattr(manifest, "observation", None)
    return getattr(observation, "budget", None)


def check_observed_budget(observed: BudgetConfig | None, budgets: list[BudgetConfig]) -> None:
    """A policy that observes a budget is served only with that budget configured: one of
    the same name and period, global (no tenant). Its limit is the service's (the share the
    policy sees is of the live limit).

    :raises BudgetError: no such budget, or one that counts something else; the message
        names what the policy was trained on and what is configured.
    """
    if observed is None:
        return
    match = next((b for b in budgets if b.name == observed.name), None)
    trained = f"budget '{observed.name}' ({observed.period}, {observed.limit_usd:g} USD, global)"
    configured = [f"{b.name} ({b.period}, tenant {b.tenant})" for b in budgets] or "none"
    if match is None:
        raise BudgetError(
            f"the policy observes {trained}; the service's --budgets has {configured}: add a "
            f"budget named '{observed.name}' with period {observed.period}"
        )
    if match.period != observed.period or match.tenant is not None:
        raise BudgetError(
            f"the policy observes {trained}; the service's budget '{match.name}' is "
            f"{match.period}, tenant {match.tenant}: it must be {observed.period} and global"
        )


def pool_cost_rates_usd_h(
    state: ClusterState, holding_usd_h: Mapping[str, float]
) -> dict[str, float]:
    """What each pool of the cluster in ``state`` costs per hour now (USD/h)."""
    rates = {}
    for p in state.pools:
        billed = sum(getattr(p, s) for s in BILLED_STATES)
        rates[p.name] = billed * p.price_usd_h + p.standby * holding_usd_h.get(p.name, 0.0)
    return rates


def cost_rate_usd_h(state: ClusterState, holding_usd_h: Mapping[str, float]) -> float:
    """What the cluster in ``state`` costs per hour now (USD/h)."""
    return sum(pool_cost_rates_usd_h(state, holding_usd_h).values())


def tenant_shares(rates_rps: Mapping[str, float] | None) -> dict[str, float] | None:
    """Each tenant's share of the requests, or None when the rates cannot give one (none
    given, a rate not finite or negative, or no requests at all)."""
    if not rates_rps:
        return None
    if any(not math.isfinite(r) or r < 0 for r in rates_rps.values()):
        return None
    total = sum(rates_rps.values())
    if not (total > 0 and math.isfinite(total)):
        return None
    return {t: r / total for t, r in rates_rps.items()}


class SpendMetrics:
    """The spend and budget series, in the service's registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.spend = Counter(
            "rlscale_spend_usd",
            "Spend metered from the replicas each cluster reports, at their prices (USD).",
            ["cluster"],
            registry=registry,
        )
        self.tenant_spend = Counter(
            "rlscale_tenant_spend_usd",
            "Spend allocated to a tenant by its share of the cluster's requests (USD).",
            ["cluster", "tenant"],
            registry=registry,
        )
        self.unallocated = Counter(
            "rlscale_unallocated_spend_usd",
            "Spend metered while no per-tenant request rates were known (USD).",
            ["cluster"],
            registry=registry,
        )
        self.unmetered = Counter(
            "rlscale_unmetered_seconds",
            "Time between observations beyond the staleness bound: not metered, not guessed.",
            ["cluster"],
            registry=registry,
        )
        self.rate = Gauge(
            "rlscale_spend_rate_usd_per_hour",
            "The cluster's cost rate at its latest observation (USD/h).",
            ["cluster"],
            registry=registry,
        )
        self.tenant_rates_known = Gauge(
            "rlscale_tenant_rates_available",
            "1 when the cluster's latest observation carried usable per-tenant request rates.",
            ["cluster"],
            registry=registry,
        )
        labels = ["budget", "period", "tenant"]
        self.limit = Gauge(
            "rlscale_budget_limit_usd", "The budget's limit.", labels, registry=registry
        )
        self.period_spend = Gauge(
            "rlscale_budget_spend_usd",
            "Spend counted against the budget in its current period.",
            labels,
            registry=registry,
        )
        self.burn = Gauge(
            "rlscale_budget_burn_rate_usd_per_hour",
            "The current cost rate of what the budget covers.",
            labels,
            registry=registry,
        )
        self.projected = Gauge(
            "rlscale_budget_projected_spend_usd",
            "Spend at the period's end if the burn rate holds.",
            labels,
            registry=registry,
        )
        self.remaining = Gauge(
            "rlscale_budget_period_remaining_seconds",
            "Time left in the budget's period.",
            labels,
            registry=registry,
        )
        self.breach = Gauge(
            "rlscale_budget_projected_breach",
            "1 when the projected spend is over the limit.",
            labels,
            registry=registry,
        )
        self.known = Gauge(
            "rlscale_budget_known",
            "1 when the budget's figures are complete (a tenant budget needs per-tenant rates).",
            labels,
            registry=registry,
        )

    def forget(self, cluster: str) -> None:
        """Remove every series of ``cluster`` (a cluster the service forgot: its last values
        would stand, and its names would pile up)."""
        for metric, names in (
            (self.spend, ("cluster",)),
            (self.tenant_spend, ("cluster", "tenant")),
            (self.unallocated, ("cluster",)),
            (self.unmetered, ("cluster",)),
            (self.rate, ("cluster",)),
            (self.tenant_rates_known, ("cluster",)),
        ):
            label_sets = {
                tuple(sample.labels[name] for name in names)
                for family in metric.collect()
                for sample in family.samples
                if sample.labels.get("cluster") == cluster
            }
            for values in label_sets:
                metric.remove(*values)

    def show(self, status: BudgetStatus) -> None:
        """Set one budget's gauges."""
        labels = (status.name, status.period, status.tenant or "")
        self.limit.labels(*labels).set(status.limit_usd)
        self.period_spend.labels(*labels).set(status.spend_usd)
        self.burn.labels(*labels).set(status.burn_rate_usd_h)
        self.projected.labels(*labels).set(status.projected_spend_usd)
        self.remaining.labels(*labels).set(status.period_end_s - status.as_of_s)
        self.breach.labels(*labels).set(float(status.projected_breach))
        self.known.labels(*labels).set(float(status.known))


@dataclass
class _Cluster:
    time_s: float
    rate_usd_h: float
    shares: dict[str, float] | None
    held: tuple[str, ...] = ()
    """Pools whose replicas or spot price were not reported validly: metered at the count the
    service holds them at, at the list price."""


@dataclass
class _Ledger:
    """One budget's current period."""

    config: BudgetConfig
    period_start_s: float = -math.inf
    period_end_s: float = -math.inf
    spend_usd: float = 0.0
    unallocated_usd: float = 0.0
    """A tenant budget: spend of this period no tenant shares were known for."""
    metered_since_s: float = math.inf
    """Since when this meter counts the budget's spend (spend before it is unknown)."""

    def roll_to(self, time_s: float) -> None:
        """Start the period holding ``time_s`` when it is past the current one."""
        if time_s >= self.period_end_s:
            self.period_start_s, self.period_end_s = period_bounds(time_s, self.config.period)
            self.spend_usd = self.unallocated_usd = 0.0


@dataclass
class SpendMeter:
    """Meters each cluster's spend and tracks the budgets; see the module docstring. Not
    thread-safe: the service calls it under its lock.

    :param budgets: the limits to report.
    :param holding_usd_h: each pool's warm-pool holding price (USD/h per standby replica).
    :param max_gap_s: a gap between observations is metered for at most this long.
    :param metrics: where the series go; None: nowhere.
    """

    budgets: list[BudgetConfig]
    holding_usd_h: dict[str, float]
    max_gap_s: float
    metrics: SpendMetrics | None = None
    store: SpendStore | None = None
    """Where the meter's state is kept across restarts; None: memory only."""
    forget_after_s: float = CLUSTER_FORGET_AFTER_S
    """A cluster silent this long (in the metrics time of the others) is dropped: its burn rate
    and notes leave the budgets, whose current period is then not metered whole."""
    _clusters: dict[str, _Cluster] = field(default_factory=dict)
    _ledgers: list[_Ledger] = field(default_factory=list)
    _tenants: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        self._ledgers = [_Ledger(b) for b in self.budgets]
        # a budget's own tenant is always tracked by name: pooled into _other behind other
        # names, its spend would read 0 and look complete
        self._tenants.update(b.tenant for b in self.budgets if b.tenant is not None)
        if self.store is not None:
            self.store.restore(self._ledgers, self._clusters)
            self._tenants.update(
                t for c in self._clusters.values() for t in (c.shares or {}) if t != OTHER_TENANT
            )

    def forget(self, cluster: str) -> None:
        """Stop tracking a cluster the service has forgotten: it leaves the budgets' burn
        rates and notes, and its per-cluster series leave ``/metrics`` (the spend already
        counted stays in the budgets' periods)."""
        self._clusters.pop(cluster, None)
        if self.metrics is not None:
            self.metrics.forget(cluster)
        if self.store is not None:
            self.store.forget(cluster)

    def _drop_silent(self, cluster: str, time_s: float) -> None:
        """Drop a cluster silent past ``forget_after_s`` (decommissioned, or restored from the
        state file and never heard from again): it would keep the budgets unknown for good.
        Its spend since it fell silent was not metered, so their period is not whole."""
        self.forget(cluster)
        self._metered_from(cluster, time_s)

    def _metered_from(self, cluster: str, time_s: float, *, first: bool = False) -> None:
        """The budgets covering ``cluster`` count its spend whole from ``time_s`` on (moved
        only forward; with ``first``, only for budgets that counted nothing yet)."""
        for ledger in self._ledgers:
            if ledger.config.cluster not in (None, cluster):
                continue
            if ledger.metered_since_s == math.inf or (
                not first and ledger.metered_since_s < time_s
            ):
                ledger.metered_since_s = time_s

    @classmethod
    def for_scenario(
        cls,
        scenario: Scenario,
        budgets: list[BudgetConfig],
        max_gap_s: float,
        metrics: SpendMetrics | None = None,
        store: SpendStore | None = None,
        forget_after_s: float = CLUSTER_FORGET_AFTER_S,
    ) -> SpendMeter:
        """A meter for the scenario's pools."""
        holding = {p.name: p.warm_holding_usd_h for p in scenario.pools}
        return cls(list(budgets), holding, max_gap_s, metrics, store, forget_after_s)

    def observe(
        self,
        cluster: str,
        state: ClusterState,
        time_s: float,
        tenant_rates_rps: Mapping[str, float] | None,
        held: tuple[str, ...] = (),
    ) -> list[BudgetStatus]:
        """Meter ``cluster`` up to ``time_s`` (when its metrics were measured), take ``state``
        as what it runs from then on, and return the statuses of the budgets covering it.

        :param held: pools whose replicas or spot price the cluster did not report validly
            (``state`` has them at their last known-good count, at the list price): their
            spend is an estimate, so the budgets covering the cluster say ``known: false``
            until it reports them again.
        """
        last = self._clusters.get(cluster)
        if not math.isfinite(time_s) or (last is not None and time_s <= last.time_s):
            # nothing new: a stale, repeated or undated snapshot meters nothing
            as_of = last.time_s if last is not None else -math.inf
            return self.statuses(cluster, as_of) if math.isfinite(as_of) else []
        if last is not None:
            gap_s = time_s - last.time_s
            metered_s = min(gap_s, self.max_gap_s)
            self._accrue(cluster, last, last.time_s + metered_s)
            if gap_s > metered_s:
                if self.metrics is not None:
                    self.metrics.unmetered.labels(cluster).inc(gap_s - metered_s)
                # the gap's rest is not metered: what the budgets covering the cluster count
                # is metered whole only from now on, as after a restart without the state
                self._metered_from(cluster, time_s)
        for other, seen in list(self._clusters.items()):
            if other != cluster and time_s - seen.time_s > self.forget_after_s:
                self._drop_silent(other, time_s)
        self._metered_from(cluster, time_s, first=True)  # counted from the first observation on
        shares = self._bounded(tenant_shares(tenant_rates_rps))
        now = _Cluster(time_s, cost_rate_usd_h(state, self.holding_usd_h), shares, tuple(held))
        self._clusters[cluster] = now
        if self.metrics is not None:
            self.metrics.rate.labels(cluster).set(now.rate_usd_h)
            self.metrics.tenant_rates_known.labels(cluster).set(float(shares is not None))
        if self.store is not None:
            self.store.save(self._ledgers, cluster, now)
        return self.statuses(cluster, time_s)

    def statuses(self, cluster: str, as_of_s: float) -> list[BudgetStatus]:
        """The budgets covering ``cluster``, as of ``as_of_s`` (also shown in the metrics)."""
        out = []
        for ledger in self._ledgers:
            if ledger.config.cluster not in (None, cluster):
                continue
            status = self._status(ledger, as_of_s)
            if self.metrics is not None:
                self.metrics.show(status)
            out.append(status)
        return out

    def observed_budget(self, cluster: str, name: str, as_of_s: float) -> BudgetState | None:
        """The budget ``name`` as a policy observes it (:class:`~rlscale.agents.base.
        BudgetState`), or None when its spend is not known whole: no such budget for this
        cluster, a cluster it counts not heard from within the staleness bound, per-tenant
        shares missing, a period that began before this meter started counting (after a
        restart the period's earlier spend is unknown), or ``as_of_s`` before the period the
        meter counts (an older snapshot arriving late). The caller falls back; nothing is
        guessed."""
        ledger = next((g for g in self._ledgers if g.config.name == name), None)
        if ledger is None or ledger.config.cluster not in (None, cluster):
            return None
        status = self._status(ledger, as_of_s)
        if not status.known or status.notes or ledger.metered_since_s > ledger.period_start_s:
            return None  # the notes say why (a silent cluster, a period not metered whole)
        if as_of_s < ledger.period_start_s:
            return None  # a snapshot from before the period the meter counts: not known now
        return BudgetState(
            name=status.name,
            spend_usd=status.spend_usd,
            limit_usd=status.limit_usd,
            time_left_s=max(ledger.period_end_s - as_of_s, 0.0),
            period_s=ledger.period_end_s - ledger.period_start_s,
        )

    def _bounded(self, shares: dict[str, float] | None) -> dict[str, float] | None:
        """Tenants beyond the tracked number are pooled as :data:`OTHER_TENANT`."""
        if shares is None:
            return None
        out: dict[str, float] = {}
        for tenant, share in shares.items():
            if tenant not in self._tenants and len(self._tenants) < MAX_TENANTS_TRACKED:
                self._tenants.add(tenant)
            key = tenant if tenant in self._tenants else OTHER_TENANT
            out[key] = out.get(key, 0.0) + share
        return out

    def _accrue(self, cluster: str, seg: _Cluster, end_s: float) -> None:
        """Add the spend of ``seg``'s rate from its time to ``end_s``."""
        usd = seg.rate_usd_h * (end_s - seg.time_s) / 3600.0
        if self.metrics is not None and usd > 0:
            self.metrics.spend.labels(cluster).inc(usd)
            if seg.shares is None:
                self.metrics.unallocated.labels(cluster).inc(usd)
            else:
                for tenant, share in seg.shares.items():
                    self.metrics.tenant_spend.labels(cluster, tenant).inc(usd * share)
        for ledger in self._ledgers:
            cfg = ledger.config
            if cfg.cluster not in (None, cluster):
                continue
            t = seg.time_s
            while t < end_s:  # split at period boundaries
                ledger.roll_to(t)
                piece_end = min(end_s, ledger.period_end_s)
                piece = seg.rate_usd_h * (piece_end - t) / 3600.0
                if cfg.tenant is None:
                    ledger.spend_usd += piece
                elif seg.shares is None:
                    ledger.unallocated_usd += piece
                else:
                    ledger.spend_usd += piece * seg.shares.get(cfg.tenant, 0.0)
                t = piece_end

    def _status(self, ledger: _Ledger, as_of_s: float) -> BudgetStatus:
        cfg = ledger.config
        ledger.roll_to(as_of_s)
        burn = 0.0
        notes = []
        missing_shares = ledger.unallocated_usd > 0
        estimated = False
        for name, c in self._clusters.items():
            if cfg.cluster not in (None, name):
                continue
            if as_of_s - c.time_s > self.max_gap_s:
                notes.append(f"cluster '{name}' not heard from for {as_of_s - c.time_s:.0f} s")
                continue
            if c.held:
                estimated = True
                notes.append(
                    f"cluster '{name}' did not report valid replicas or prices of "
                    f"{', '.join(c.held)}: metered at the count the service holds them at, "
                    "at the list price"
                )
            if cfg.tenant is None:
                burn += c.rate_usd_h
            elif c.shares is None:
                missing_shares = True
                notes.append(f"cluster '{name}' reports no per-tenant request rates")
            else:
                burn += c.rate_usd_h * c.shares.get(cfg.tenant, 0.0)
        if ledger.unallocated_usd > 0:
            notes.append(
                f"{ledger.unallocated_usd:.4f} USD of this period's spend had no tenant shares"
            )
        since = ledger.metered_since_s
        if ledger.period_start_s < since < math.inf:
            notes.append(
                f"spend before {_utc(since)} is not metered (the service started after the "
                "period began, without --budget-state, or a cluster it counts was silent past "
                "the staleness bound)"
            )
        left_h = max(ledger.period_end_s - as_of_s, 0.0) / 3600.0
        projected = ledger.spend_usd + burn * left_h
        return BudgetStatus(
            name=cfg.name,
            period=cfg.period,
            tenant=cfg.tenant,
            cluster=cfg.cluster,
            limit_usd=cfg.limit_usd,
            spend_usd=ledger.spend_usd,
            burn_rate_usd_h=burn,
            projected_spend_usd=projected,
            period_end_s=ledger.period_end_s,
            as_of_s=as_of_s,
            projected_breach=projected > cfg.limit_usd,
            known=not estimated and (cfg.tenant is None or not missing_shares),
            metered_since_s=max(since, ledger.period_start_s) if since < math.inf else None,
            notes=notes,
        )


def _utc(time_s: float) -> str:
    return dt.datetime.fromtimestamp(time_s, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


_STORE_SCHEMA = """
CREATE TABLE IF NOT EXISTS budget_ledgers (
    name TEXT PRIMARY KEY, counts TEXT NOT NULL, period_start_s REAL, period_end_s REAL,
    spend_usd REAL NOT NULL, unallocated_usd REAL NOT NULL, metered_since_s REAL
);
CREATE TABLE IF NOT EXISTS metered_clusters (
    cluster TEXT PRIMARY KEY, time_s REAL NOT NULL, rate_usd_h REAL NOT NULL, shares TEXT,
    held TEXT
);
"""


def _counts(cfg: BudgetConfig) -> str:
    """What a budget's ledger counts: its period, tenant and cluster (the limit may change
    across a restart; a budget renamed or counting something else starts afresh)."""
    return json.dumps([cfg.period, cfg.tenant, cfg.cluster])


class SpendStore:
    """A :class:`SpendMeter`'s state in a SQLite file: each budget's current period (spend,
    unallocated spend, since when it is metered whole) and each cluster's last observation
    (time, cost rate, tenant shares, pools held at their known-good count). Written after
    every metered observation, read back at start.

    :raises BudgetError: the file cannot be opened as such a store.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        try:
            self._db = sqlite3.connect(self.path, check_same_thread=False)
            # a commit per observation, inside the service's lock: no fsync of a rollback
            # journal each time (as the shadow log)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_STORE_SCHEMA)
            columns = [r[1] for r in self._db.execute("PRAGMA table_info(metered_clusters)")]
            if "held" not in columns:  # a file written before held pools were kept
                self._db.execute("ALTER TABLE metered_clusters ADD COLUMN held TEXT")
                self._db.commit()
        except sqlite3.Error as err:
            raise BudgetError(f"budget state {self.path}: {err}") from None

    def restore(self, ledgers: list[_Ledger], clusters: dict[str, _Cluster]) -> None:
        """Load the stored periods of ``ledgers`` that count what they counted before, and
        the clusters' last observations.

        :raises BudgetError: the file's tables are not such a store's (another layout).
        """
        try:
            self._restore(ledgers, clusters)
        except (sqlite3.Error, IndexError, TypeError, ValueError) as err:
            raise BudgetError(f"budget state {self.path}: {err}") from None

    def _restore(self, ledgers: list[_Ledger], clusters: dict[str, _Cluster]) -> None:
        with self._lock:
            rows = self._db.execute("SELECT * FROM budget_ledgers").fetchall()
            kept = {r[0]: r for r in rows}
            restored = []
            for ledger in ledgers:
                row = kept.get(ledger.config.name)
                if row is None or row[1] != _counts(ledger.config):
                    continue
                (ledger.period_start_s, ledger.period_end_s, ledger.spend_usd) = row[2:5]
                ledger.unallocated_usd = row[5]
                ledger.metered_since_s = math.inf if row[6] is None else row[6]
                restored.append(ledger.config.name)
            # a row not restored stops here (this run meters other budgets): kept, it would be
            # restored by a later run that configures the budget again, as a period metered
            # whole that missed everything spent in between
            with self._db:
                self._db.executemany(
                    "DELETE FROM budget_ledgers WHERE name = ?",
                    [(name,) for name in kept if name not in restored],
                )
            for name, time_s, rate, shares, held in self._db.execute(
                "SELECT cluster, time_s, rate_usd_h, shares, held FROM metered_clusters"
            ):
                clusters[name] = _Cluster(
                    time_s,
                    rate,
                    None if shares is None else json.loads(shares),
                    () if held is None else tuple(json.loads(held)),
                )

    def save(self, ledgers: list[_Ledger], cluster: str, last: _Cluster) -> None:
        """Write every ledger and ``cluster``'s last observation, in one transaction."""
        with self._lock, self._db:
            self._db.executemany(
                "INSERT OR REPLACE INTO budget_ledgers VALUES (?, ?, ?, ?, ?, ?, ?)",
                [
                    (
                        g.config.name,
                        _counts(g.config),
                        g.period_start_s,
                        g.period_end_s,
                        g.spend_usd,
                        g.unallocated_usd,
                        None if g.metered_since_s == math.inf else g.metered_since_s,
                    )
                    for g in ledgers
                ],
            )
            self._db.execute(
                "INSERT OR REPLACE INTO metered_clusters VALUES (?, ?, ?, ?, ?)",
                (
                    cluster,
                    last.time_s,
                    last.rate_usd_h,
                    None if last.shares is None else json.dumps(last.shares),
                    json.dumps(list(last.held)) if last.held else None,
                ),
            )

    def forget(self, cluster: str) -> None:
        with self._lock, self._db:
            self._db.execute("DELETE FROM metered_clusters WHERE cluster = ?", (cluster,))

    def close(self) -> None:
        with self._lock:
            self._db.close()
