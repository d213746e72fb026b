"""Spend metering and budgets in the decision service: figures, projections, tenants, and that
budgets never change a decision. The last tests run a real ``rlscale serve`` and a real
Prometheus."""

from __future__ import annotations

import datetime as dt
import math
import shutil
import time
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from rlscale.envs.scenario import load_scenario
from rlscale.serving.budgets import (
    BudgetConfig,
    BudgetError,
    load_budgets,
    period_bounds,
)
from rlscale.serving.schemas import RecommendationRequest
from rlscale.serving.service import DecisionService, load_policy

T0 = dt.datetime(2026, 3, 10, 12, 0, tzinfo=dt.UTC).timestamp()
"""A fixed noon, UTC: the hour ends at 13:00, the day 24 h after midnight."""
H100_USD_H = 4.0
SPOT_USD_H = 2.4
HOLD_USD_H = 0.40  # azure-conv's h100 warm_holding_usd_h


class Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def _service(budgets: list[BudgetConfig] | None = None, staleness_s: float = 60.0, **kw):
    scenario = load_scenario("azure-conv")
    clock = Clock(T0)
    service = DecisionService(
        scenario,
        load_policy("hpa", scenario),
        load_policy("hpa", scenario),
        max_staleness_s=staleness_s,
        budgets=budgets,
        clock=clock,
        **kw,
    )
    return service, clock


def _body(t: float, *, h100=2, spot=0, standby=0, rate=10.0, cluster="c1", tenants=None):
    body = {
        "cluster_id": cluster,
        "timestamp": t,
        "arrival_rate_rps": rate,
        "pools": [
            {"name": "h100", "replicas": {"ready": h100, "standby": standby}},
            {"name": "a100", "replicas": {"ready": 0}},
            {"name": "h100-spot", "replicas": {"ready": spot}, "spot_price_usd_h": SPOT_USD_H},
        ],
    }
    if tenants is not None:
        body["tenant_rates_rps"] = tenants
    return RecommendationRequest.model_validate(body)


def _decide(service, clock, t, **kw):
    clock.t = t
    return service.decide(_body(t, **kw))


def _sample(service, name: str, **labels) -> float:
    text = service.recorder.metrics.exposition().decode()
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
    raise AssertionError(f"no sample {name}{labels} in /metrics")


def test_periods_are_utc_hours_days_and_calendar_months():
    t = dt.datetime(2024, 2, 29, 23, 59, 59, tzinfo=dt.UTC).timestamp()
    midnight = dt.datetime(2024, 2, 29, tzinfo=dt.UTC).timestamp()
    assert period_bounds(t, "hour") == (midnight + 23 * 3600, midnight + 86400)
    assert period_bounds(t, "day") == (midnight, midnight + 86400)
    start, end = period_bounds(t, "month")
    assert start == dt.datetime(2024, 2, 1, tzinfo=dt.UTC).timestamp()
    assert end == dt.datetime(2024, 3, 1, tzinfo=dt.UTC).timestamp()  # a leap February


def test_bad_budget_files_name_the_problem(tmp_path):
    bad = tmp_path / "b.yaml"
    bad.write_text("budgets:\n  - {name: x, period: week, limit_usd: 5}\n")
    with pytest.raises(BudgetError, match="period"):
        load_budgets(bad)
    bad.write_text("budgets:\n  - {name: x, period: day, limit_usd: 5}\n" * 1)
    assert load_budgets(bad)[0].limit_usd == 5
    bad.write_text(
        "budgets:\n  - {name: x, period: day, limit_usd: 5}\n  - {name: x, period: hour,"
        " limit_usd: 1}\n"
    )
    with pytest.raises(BudgetError, match="given twice"):
        load_budgets(bad)
    bad.write_text("budgets:\n  - {name: x, period: day, limit_usd: -1}\n")
    with pytest.raises(BudgetError, match="limit_usd"):
        load_budgets(bad)
    with pytest.raises(BudgetError, match=r"nope\.yaml"):
        load_budgets(tmp_path / "nope.yaml")


def test_spend_is_the_reported_replicas_at_their_prices():
    service, clock = _service()
    _decide(service, clock, T0, h100=2, spot=1, standby=1)
    _decide(service, clock, T0 + 30, h100=3)
    # the first 30 s ran 2 H100 on demand, 1 spot at its reported price, 1 standby held
    first = (2 * H100_USD_H + SPOT_USD_H + HOLD_USD_H) * 30 / 3600
    assert _sample(service, "rlscale_spend_usd_total", cluster="c1") == pytest.approx(first)
    assert _sample(service, "rlscale_spend_rate_usd_per_hour", cluster="c1") == pytest.approx(
        3 * H100_USD_H
    )
    # no tenant rates: all of it unallocated, and said so
    assert _sample(service, "rlscale_unallocated_spend_usd_total", cluster="c1") == pytest.approx(
        first
    )
    assert _sample(service, "rlscale_tenant_rates_available", cluster="c1") == 0.0


def test_a_pool_whose_count_is_missing_is_metered_at_its_held_count_and_said_so():
    """The service holds a pool of unreported replicas at its last known-good count; its spend
    is metered at that count (an estimate), so the budgets say known: false until the cluster
    reports the pool again."""
    daily = BudgetConfig(name="daily", period="day", limit_usd=1000.0)
    service, clock = _service([daily])
    _decide(service, clock, T0, h100=3)
    body = _body(T0 + 30).model_dump()
    body["pools"][0]["replicas"] = {}  # the h100 count is missing
    clock.t = T0 + 30
    held = service.decide(RecommendationRequest.model_validate(body))
    status = held.budgets[0]
    assert not status.known and any("prices of h100" in n for n in status.notes)
    assert status.burn_rate_usd_h == pytest.approx(3 * H100_USD_H)  # held at 3
    again = _decide(service, clock, T0 + 60, h100=3).budgets[0]
    assert again.known and not any("prices of" in n for n in again.notes)
    assert again.spend_usd == pytest.approx(3 * H100_USD_H * 60 / 3600)


def test_a_budget_the_burn_rate_would_break_is_reported_in_the_answer_and_metrics():
    budgets = [
        BudgetConfig(name="hourly", period="hour", limit_usd=5.0),
        BudgetConfig(name="daily", period="day", limit_usd=500.0),
    ]
    service, clock = _service(budgets, staleness_s=1800.0)
    _decide(service, clock, T0, h100=2)  # 8 USD/h from noon
    out = _decide(service, clock, T0 + 900, h100=2)  # 12:15, 2 USD spent
    hourly, daily = out.budgets
    assert hourly.spend_usd == pytest.approx(2.0)
    assert hourly.burn_rate_usd_h == pytest.approx(8.0)
    assert hourly.projected_spend_usd == pytest.approx(2.0 + 8.0 * 0.75)  # 8 > 5
    assert hourly.projected_breach and hourly.known
    assert hourly.period_end_s == T0 + 3600
    # the day: 2 USD so far + 8 USD/h for the 11.75 h left = 96 < 500
    assert daily.projected_spend_usd == pytest.approx(2.0 + 8.0 * 11.75)
    assert not daily.projected_breach
    labels = {"budget": "hourly", "period": "hour", "tenant": ""}
    assert _sample(service, "rlscale_budget_projected_breach", **labels) == 1.0
    assert _sample(service, "rlscale_budget_projected_spend_usd", **labels) == pytest.approx(8.0)
    assert _sample(service, "rlscale_budget_limit_usd", **labels) == 5.0
    assert _sample(service, "rlscale_budget_period_remaining_seconds", **labels) == 2700
    assert _sample(service, "rlscale_budget_projected_breach", budget="daily") == 0.0


def test_a_new_period_starts_from_zero_and_splits_the_interval():
    service, clock = _service([BudgetConfig(name="h", period="hour", limit_usd=100.0)])
    _decide(service, clock, T0 + 3600 - 10, h100=2)  # 12:59:50
    out = _decide(service, clock, T0 + 3600 + 20, h100=2)  # 13:00:20
    # only the 20 s after 13:00 count in the new hour
    assert out.budgets[0].spend_usd == pytest.approx(8.0 * 20 / 3600)
    assert out.budgets[0].period_end_s == T0 + 7200


def test_gaps_beyond_the_staleness_bound_are_unmetered_not_guessed():
    service, clock = _service(staleness_s=60.0)
    _decide(service, clock, T0, h100=2)
    _decide(service, clock, T0 + 600, h100=2)
    assert _sample(service, "rlscale_spend_usd_total", cluster="c1") == pytest.approx(8 * 60 / 3600)
    assert _sample(service, "rlscale_unmetered_seconds_total", cluster="c1") == 540
    # a stale or repeated snapshot meters nothing
    _decide(service, clock, T0 + 600, h100=8)
    clock.t = T0 + 700
    service.decide(_body(T0 + 500, h100=8))
    assert _sample(service, "rlscale_spend_rate_usd_per_hour", cluster="c1") == 8.0


def test_tenant_spend_is_the_request_share_and_sums_to_the_total():
    budgets = [
        BudgetConfig(name="acme-day", period="day", limit_usd=10.0, tenant="acme"),
        BudgetConfig(name="all-day", period="day", limit_usd=1000.0),
    ]
    service, clock = _service(budgets)
    _decide(service, clock, T0, h100=2, tenants={"acme": 3.0, "globex": 1.0})
    out = _decide(service, clock, T0 + 60, h100=2, tenants={"acme": 3.0, "globex": 1.0})
    total = 8.0 * 60 / 3600
    acme = _sample(service, "rlscale_tenant_spend_usd_total", tenant="acme")
    globex = _sample(service, "rlscale_tenant_spend_usd_total", tenant="globex")
    assert acme == pytest.approx(0.75 * total) and globex == pytest.approx(0.25 * total)
    tenant_budget = out.budgets[0]
    assert tenant_budget.known and tenant_budget.burn_rate_usd_h == pytest.approx(6.0)
    # 6 USD/h for the 11.98 h left of the day breaks acme's 10 USD
    assert tenant_budget.projected_breach
    # the rates stop coming: that interval is unallocated, and the tenant budget says so
    _decide(service, clock, T0 + 120, h100=2)
    out = _decide(service, clock, T0 + 180, h100=2, tenants={"acme": 1.0})
    unallocated = _sample(service, "rlscale_unallocated_spend_usd_total", cluster="c1")
    assert unallocated == pytest.approx(total)
    tenants = sum(
        _sample(service, "rlscale_tenant_spend_usd_total", tenant=t) for t in ("acme", "globex")
    )
    spent = _sample(service, "rlscale_spend_usd_total", cluster="c1")
    assert tenants + unallocated == pytest.approx(spent) == pytest.approx(3 * total)
    acme_budget, everyone = out.budgets
    assert not acme_budget.known and "no tenant shares" in acme_budget.notes[0]
    assert everyone.known
    assert _sample(service, "rlscale_budget_known", budget="acme-day") == 0.0


def test_budgets_never_change_a_decision():
    """Two services, one with budgets that are all breached, one without: the same answers,
    through fresh, missing, stale and invalid input."""
    tight = [
        BudgetConfig(name="h", period="hour", limit_usd=0.01),
        BudgetConfig(name="t", period="day", limit_usd=0.01, tenant="acme"),
    ]
    plain, plain_clock = _service()
    budgeted, budget_clock = _service(tight)
    steps = [
        (T0, {"h100": 2, "rate": 10.0}),
        (T0 + 30, {"h100": 2, "rate": 80.0, "tenants": {"acme": 5.0}}),
        (T0 + 60, {"h100": 6, "rate": 1.0}),
        (T0 + 90, {"h100": 6, "rate": -3.0}),  # invalid
        (T0 + 120, {"h100": 5, "rate": math.nan, "tenants": {"acme": -1.0}}),
        (T0 + 150, {"h100": 5, "rate": 0.5}),
    ]
    for t, kw in steps:
        plain_clock.t = budget_clock.t = t + 5
        a = plain.decide(_body(t, **kw))
        b = budgeted.decide(_body(t, **kw))
        assert (a.replicas, a.warm_pool, a.source, a.causes) == (
            b.replicas,
            b.warm_pool,
            b.source,
            b.causes,
        )
        assert a.budgets == [] and len(b.budgets) == 2 and b.budgets[0].projected_breach
    # stale metrics (far past the staleness bound): the same too
    for clock in (plain_clock, budget_clock):
        clock.t = T0 + 1000
    a, b = plain.decide(_body(T0 + 150)), budgeted.decide(_body(T0 + 150))
    assert "stale_metrics" in a.causes and (a.replicas, a.source) == (b.replicas, b.source)


def test_a_budgets_tenant_keeps_its_name_behind_a_flood_of_other_tenants():
    # 300 other names first: the tracked set fills, later names are pooled as _other, but a
    # budget's own tenant is never pooled (its spend would read 0 and look complete)
    service, clock = _service(
        [BudgetConfig(name="a", period="day", limit_usd=100.0, tenant="acme")]
    )
    flood = {f"t{k}": 1.0 for k in range(256)}
    _decide(service, clock, T0, tenants=flood)
    _decide(service, clock, T0 + 30, tenants={f"u{k}": 1.0 for k in range(44)})
    _decide(service, clock, T0 + 60, tenants={"acme": 1.0})
    status = _decide(service, clock, T0 + 90, tenants={"acme": 1.0}).budgets[0]
    assert status.known and status.spend_usd == pytest.approx(2 * H100_USD_H * 30 / 3600)
    assert status.burn_rate_usd_h == pytest.approx(2 * H100_USD_H)
    assert _sample(service, "rlscale_tenant_spend_usd_total", tenant="_other") > 0.0


def test_shadow_only_pushes_are_not_a_bill_nor_an_slo_reading():
    service, clock = _service([BudgetConfig(name="h", period="hour", limit_usd=1.0)])
    for t in (T0, T0 + 30):
        clock.t = t
        body = _body(t, cluster="mirror").model_copy(
            update={"shadow_only": True, "slo_attainment": 0.5}
        )
        assert service.decide(body).budgets == []
    text = service.recorder.metrics.exposition().decode()
    assert 'cluster="mirror"' not in text  # no spend, no rate, no attainment series
    steering = _decide(service, clock, T0 + 60)
    assert steering.budgets[0].spend_usd == 0.0  # the first observation of the real cluster


def test_a_forgotten_cluster_leaves_the_budgets_and_metrics():
    service, clock = _service(
        [BudgetConfig(name="h", period="hour", limit_usd=1.0)], max_clusters=2, forget_after_s=120.0
    )
    for t, cluster in ((T0, "old"), (T0 + 30, "old"), (T0 + 40, "b")):
        clock.t = t
        service.decide(_body(t, cluster=cluster).model_copy(update={"slo_attainment": 0.9}))
    assert 'cluster="old"' in service.recorder.metrics.exposition().decode()
    # "old" falls silent; a third cluster takes its place once it is forgettable
    clock.t = T0 + 200
    status = service.decide(_body(T0 + 200, cluster="new")).budgets[0]
    assert not any("'old'" in note for note in status.notes)
    text = service.recorder.metrics.exposition().decode()
    assert 'cluster="old"' not in text and 'cluster="new"' in text
    # what "old" spent in this hour stays counted
    assert status.spend_usd >= 2 * H100_USD_H * 30 / 3600


def test_rates_that_overflow_or_name_the_pool_are_refused():
    from pydantic import ValidationError

    from rlscale.serving.budgets import tenant_shares

    assert tenant_shares({"a": 1e308, "b": 1e308}) is None  # the sum overflows: no shares
    with pytest.raises(ValidationError, match="_other"):
        _body(T0, tenants={"_other": 1.0})


# --- the real server -----------------------------------------------------------------------


def test_served_answers_and_metrics_carry_the_budgets(server_factory, tmp_path, auth):
    budgets = tmp_path / "budgets.yaml"
    budgets.write_text(
        "budgets:\n"
        "  - {name: hourly, period: hour, limit_usd: 1.0}\n"
        "  - {name: acme-month, period: month, limit_usd: 100000.0, tenant: acme}\n"
    )
    server = server_factory("--policy", "hpa", "--insecure-no-auth", "--budgets", str(budgets))
    now = time.time()
    url = server.url + "/v1/recommendations"
    for t in (now - 20, now - 10):
        body = _body(t, h100=2, cluster="live", tenants={"acme": 1.0, "globex": 1.0})
        r = httpx.post(url, json=body.model_dump(), headers=auth, timeout=10)
        assert r.status_code == 200, r.text
    hourly, acme = r.json()["budgets"]
    assert hourly["name"] == "hourly" and hourly["burn_rate_usd_h"] == pytest.approx(8.0)
    # the hour's spend counts only the part of the 10 s after the hour began (a run at the turn
    # of the hour sees the interval split)
    hour_start = (now - 10) // 3600 * 3600
    assert hourly["spend_usd"] == pytest.approx(
        8.0 * ((now - 10) - max(now - 20, hour_start)) / 3600
    )
    assert hourly["projected_breach"] is (hourly["projected_spend_usd"] > 1.0)
    assert acme["known"] and acme["burn_rate_usd_h"] == pytest.approx(4.0)
    assert not acme["projected_breach"]
    text = httpx.get(server.url + "/metrics", timeout=10).text
    assert 'rlscale_tenant_spend_usd_total{cluster="live",tenant="acme"}' in text
    assert 'rlscale_budget_limit_usd{budget="hourly",period="hour",tenant=""} 1.0' in text


def test_serve_refuses_a_bad_budgets_file(tmp_path):
    import subprocess
    import sys

    bad = tmp_path / "budgets.yaml"
    bad.write_text("budgets: [{name: x, period: fortnight, limit_usd: 1}]\n")
    out = subprocess.run(
        [sys.executable, "-m", "rlscale.serving.cli", "--insecure-no-auth", "--budgets", str(bad)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2 and "budgets file" in out.stderr and "period" in out.stderr


PROMETHEUS = shutil.which("prometheus")


@pytest.mark.skipif(
    PROMETHEUS is None, reason="no prometheus binary (Debian package 'prometheus'); CI installs it"
)
def test_tenant_rates_from_prometheus_and_a_failing_tenant_query(
    metrics_endpoint, prometheus_server, tmp_path: Path
):
    import prometheus_client

    from rlscale.serving.prometheus_source import DEFAULT_POOL_QUERIES, PrometheusSource

    reg = prometheus_client.CollectorRegistry()
    success = prometheus_client.Counter("vllm:request_success", "done", registry=reg)
    gateway = prometheus_client.Gauge("gateway_rps", "rate", ["tenant"], registry=reg)
    gateway.labels(tenant="acme").set(3.0)
    gateway.labels(tenant="globex").set(1.0)
    ready = prometheus_client.Gauge(
        "kube_deployment_status_replicas_ready", "ready", ["deployment"], registry=reg
    )
    for name, n in (("h100", 2), ("a100", 0), ("h100-spot", 0)):
        ready.labels(deployment=name).set(n)
    endpoint = metrics_endpoint(reg, success)
    endpoint.rate_rps = 5.0
    prom = prometheus_server(endpoint.port)
    prom.start()
    scenario = load_scenario("azure-conv")
    service = DecisionService(
        scenario,
        load_policy("hpa", scenario),
        load_policy("hpa", scenario),
        budgets=[BudgetConfig(name="acme", period="day", limit_usd=1e6, tenant="acme")],
    )
    queries = {"arrival_rate_rps": "sum(rate(vllm:request_success_total[5s]))"}
    source = PrometheusSource(
        prom.url,
        service.pools(),
        service.decide_and_record,
        queries=queries,
        pool_queries={"ready": DEFAULT_POOL_QUERIES["ready"]},
        tenant_query="sum by (tenant) (gateway_rps)",
    )
    deadline = time.monotonic() + 20
    while True:  # until the scrapes have filled the rate window
        out = source.poll_once()
        if out is not None and out.budgets and out.budgets[0].known:
            break
        assert time.monotonic() < deadline, (source.last_error, source.tenant_error)
        time.sleep(1.0)
    time.sleep(1.0)
    out = source.poll_once()
    assert out.source == "policy" and out.budgets[0].known
    acme = _sample(service, "rlscale_tenant_spend_usd_total", tenant="acme")
    globex = _sample(service, "rlscale_tenant_spend_usd_total", tenant="globex")
    assert acme == pytest.approx(3 * globex) and acme > 0
    # a tenant query that fails: the decision is unchanged, the metrics and budget say so
    source.tenant_query = "sum by (tenant) (gateway_rps"  # a PromQL syntax error
    time.sleep(1.0)
    broken = source.poll_once()
    assert "parse error" in source.tenant_error or "unclosed" in source.tenant_error
    assert broken.source == "policy" and broken.replicas == out.replicas
    assert _sample(service, "rlscale_tenant_rates_available", cluster="default") == 0.0
    time.sleep(1.0)
    later = source.poll_once()
    assert not later.budgets[0].known
    assert _sample(service, "rlscale_unallocated_spend_usd_total", cluster="default") > 0


@pytest.mark.parametrize("before_s", [1e-7, 4e-7, 6e-7, 1e-3])
@pytest.mark.parametrize("period", ["hour", "day", "month"])
def test_a_time_just_before_a_boundary_is_in_the_period_that_holds_it(period, before_s):
    """The period of a time a fraction of a microsecond before midnight ends at midnight:
    datetime rounds a float timestamp to the microsecond (to midnight here), and a period
    taken from the rounded time starts after the time it holds."""
    t = dt.datetime(2026, 3, 1, tzinfo=dt.UTC).timestamp() - before_s
    start, end = period_bounds(t, period)
    assert start <= t < end


def test_a_period_with_an_unmetered_gap_is_not_metered_whole():
    """A cluster silent past the staleness bound: the gap beyond the bound is not metered,
    so once it reports again the period's spend lacks that time. The budget must not read
    as metered whole (a budget-observing policy would be fed a spend short of the truth)."""
    from rlscale.serving.budgets import SpendMeter

    daily = BudgetConfig(name="daily", period="day", limit_usd=100.0)
    service, clock = _service([daily], staleness_s=60.0)
    midnight = dt.datetime(2026, 3, 11, tzinfo=dt.UTC).timestamp()
    for k in range(5):  # metered since before midnight: the day is whole
        _decide(service, clock, midnight - 60.0 + 30.0 * k, h100=2)
    meter: SpendMeter = service.spend
    assert meter.observed_budget("c1", "daily", midnight + 60.0) is not None
    out = _decide(service, clock, midnight + 60.0 + 600.0, h100=2)  # silent for 600 s
    status = next(b for b in out.budgets if b.name == "daily")
    assert status.spend_usd == pytest.approx(8.0 * 120.0 / 3600.0)  # 540 s not metered
    assert status.metered_since_s > status.period_end_s - 86400.0
    assert status.notes, "a period with an unmetered gap says so"
    assert meter.observed_budget("c1", "daily", midnight + 660.0) is None
    # the next period is metered whole again
    _decide(service, clock, midnight + 86400.0 - 30.0, h100=2)
    _decide(service, clock, midnight + 86400.0 + 30.0, h100=2)
    assert meter.observed_budget("c1", "daily", midnight + 86400.0 + 30.0) is not None


def test_a_budget_dropped_from_the_file_and_added_back_does_not_restore_a_stale_period(tmp_path):
    """The state file keeps a budget's period while the budget is configured. One dropped
    (renamed, removed) for a while and configured again must start afresh: its old row
    stopped at the rename, and the spend metered meanwhile went to other budgets, so
    restoring it would read a period metered whole with the spend before the restart
    missing."""
    from rlscale.serving.budgets import SpendStore

    state = tmp_path / "spend.sqlite"
    midnight = dt.datetime(2026, 3, 11, tzinfo=dt.UTC).timestamp()

    def run(budget: BudgetConfig, start: float, end: float):
        service, clock = _service([budget], staleness_s=900.0, budget_state=SpendStore(state))
        t = start
        while t <= end:
            _decide(service, clock, t, h100=2)
            t += 600.0
        service.spend.store.close()
        return service.spend

    daily = BudgetConfig(name="daily", period="day", limit_usd=100.0)
    renamed = BudgetConfig(name="daily-2", period="day", limit_usd=100.0)
    first = run(daily, midnight - 600.0, midnight + 600.0)  # day 1, metered whole
    assert first.observed_budget("c1", "daily", midnight + 600.0) is not None
    run(renamed, midnight + 1200.0, midnight + 86400.0 + 43200.0)  # on to noon of day 2
    back = run(daily, midnight + 86400.0 + 43800.0, midnight + 86400.0 + 43800.0)
    fed = back.observed_budget("c1", "daily", midnight + 86400.0 + 43800.0)
    # the morning of day 2 was metered under the other name: this one's day is not whole
    assert fed is None


def test_a_held_pool_stays_said_so_across_a_restart_with_the_budget_state(tmp_path):
    """A cluster last seen with a pool held at its known-good count: its spend rate is an
    estimate. After a restart with the state file, the budgets covering it still say
    known: false (with the note) until the cluster reports the pool again."""
    from rlscale.serving.budgets import SpendStore

    state = tmp_path / "spend.sqlite"
    daily = BudgetConfig(name="daily", period="day", limit_usd=1000.0)
    service, clock = _service([daily], budget_state=SpendStore(state))
    _decide(service, clock, T0, h100=3)
    body = _body(T0 + 30).model_dump()
    body["pools"][0]["replicas"] = {}  # the h100 count is missing
    clock.t = T0 + 30
    assert not service.decide(RecommendationRequest.model_validate(body)).budgets[0].known
    service.spend.store.close()
    again, _ = _service([daily], budget_state=SpendStore(state))
    status = again.spend.statuses("c1", T0 + 45)[0]
    assert not status.known and any("prices of h100" in n for n in status.notes)
    assert again.spend.observed_budget("c1", "daily", T0 + 45) is None
    again.spend.store.close()


def test_a_budget_state_written_before_held_pools_were_kept_still_opens(tmp_path):
    import sqlite3

    from rlscale.serving.budgets import SpendStore

    state = tmp_path / "spend.sqlite"
    old = sqlite3.connect(state)
    old.executescript(
        "CREATE TABLE metered_clusters (cluster TEXT PRIMARY KEY, time_s REAL NOT NULL, "
        "rate_usd_h REAL NOT NULL, shares TEXT);"
        "INSERT INTO metered_clusters VALUES ('c1', 1.0, 8.0, NULL);"
    )
    old.commit()
    old.close()
    daily = BudgetConfig(name="daily", period="day", limit_usd=1000.0)
    service, clock = _service([daily], budget_state=SpendStore(state))
    _decide(service, clock, T0, h100=3)
    assert service.spend.statuses("c1", T0)[0].burn_rate_usd_h == pytest.approx(12.0)
    service.spend.store.close()


def test_a_snapshot_older_than_the_meters_period_is_not_fed_a_budget():
    """Metrics measured before midnight, arriving after an observation past it (fresh by the
    service's clock, older than the cluster's last): the meter's day is the new one, and
    that spend at the old time read as a time left longer than the period (the simulator
    never observes that). The period the snapshot is in is no longer known: nothing is fed."""
    daily = BudgetConfig(name="daily", period="day", limit_usd=100.0)
    service, clock = _service([daily], staleness_s=60.0)
    midnight = dt.datetime(2026, 3, 11, tzinfo=dt.UTC).timestamp()
    for k in range(4):
        _decide(service, clock, midnight - 90.0 + 30.0 * k, h100=2)
    _decide(service, clock, midnight + 10.0, h100=2)
    assert service.spend.observed_budget("c1", "daily", midnight + 10.0) is not None
    fed = service.spend.observed_budget("c1", "daily", midnight - 5.0)
    assert fed is None or fed.time_left_s <= fed.period_s


@pytest.mark.parametrize("price", [5e4, -3.0, math.inf])
def test_an_invalid_spot_price_is_not_metered_as_known_spend(price):
    """A spot price out of range (or not finite) makes the decision hold, and must not turn
    into spend counted as known: metered at the pool's list price (as a missing one is), and
    the budgets say known: false until the pool's price is valid again. Clipped to 1e4 USD/h
    and counted as known, one bad report inflated the period's spend for the rest of it, and
    a budget-observing policy would decide on that at the next valid report."""
    daily = BudgetConfig(name="daily", period="day", limit_usd=1000.0)
    service, clock = _service([daily])
    _decide(service, clock, T0, h100=0, spot=4)
    body = _body(T0 + 30, h100=0, spot=4).model_dump()
    body["pools"][2]["spot_price_usd_h"] = price
    clock.t = T0 + 30
    bad = service.decide(RecommendationRequest.model_validate(body)).budgets[0]
    assert not bad.known and any("h100-spot" in n for n in bad.notes)
    assert bad.burn_rate_usd_h == pytest.approx(4 * 4.0)  # the list price
    assert service.spend.observed_budget("c1", "daily", T0 + 30) is None
    after = _decide(service, clock, T0 + 60, h100=0, spot=4).budgets[0]
    # 30 s at the spot price given, 30 s at the list price in place of the invalid one
    assert after.spend_usd == pytest.approx(4 * (SPOT_USD_H + 4.0) * 30 / 3600)
    assert after.known


def test_a_failing_budget_state_never_fails_a_decision(tmp_path):
    """The state file failing (disk full, locked by another process, closed) is logged, never
    a failed decision: not when a cluster is metered, nor when one is forgotten to make room
    for another (decide never raises for a request that parsed, the table full aside)."""
    import sqlite3

    from rlscale.serving.budgets import SpendStore

    store = SpendStore(tmp_path / "spend.sqlite")
    service, clock = _service(
        [BudgetConfig(name="h", period="hour", limit_usd=100.0)],
        max_clusters=1,
        forget_after_s=120.0,
        budget_state=store,
    )
    _decide(service, clock, T0, cluster="old")

    def broken(*args, **kwargs):
        raise sqlite3.OperationalError("database or disk is full")

    store.save = broken
    store.forget = broken
    out = _decide(service, clock, T0 + 30, cluster="old")  # metering fails: still an answer
    assert out.replicas
    out = _decide(service, clock, T0 + 300, cluster="new")  # "old" forgotten for "new"
    assert out.replicas and out.cluster_id == "new"
    assert 'cluster="old"' not in service.recorder.metrics.exposition().decode()


def test_a_budget_state_of_another_layout_is_a_clear_error(tmp_path):
    """A SQLite file whose tables have another layout is refused at start as a BudgetError
    naming the file (what rlscale serve reports as a bad argument), not a traceback."""
    import sqlite3

    from rlscale.serving.budgets import SpendMeter, SpendStore

    state = tmp_path / "spend.sqlite"
    other = sqlite3.connect(state)
    other.executescript(
        "CREATE TABLE budget_ledgers (name TEXT PRIMARY KEY);"
        "INSERT INTO budget_ledgers VALUES ('daily');"
    )
    other.commit()
    other.close()
    daily = BudgetConfig(name="daily", period="day", limit_usd=100.0)
    with pytest.raises(BudgetError, match=r"budget state .*spend\.sqlite"):
        SpendMeter([daily], {}, 60.0, store=SpendStore(state))
