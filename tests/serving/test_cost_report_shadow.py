"""``rlscale cost-report --shadow``: a shadow database written by the decision service itself,
metered again from its rows; the figures match the service's own spend counters."""

from __future__ import annotations

import datetime as dt
import itertools
import json

import pytest
from prometheus_client.parser import text_string_to_metric_families

from rlscale.cli import main
from rlscale.envs.scenario import load_scenario
from rlscale.experiments.cost_report import check_sums
from rlscale.serving.schemas import RecommendationRequest
from rlscale.serving.service import DecisionService, load_policy
from rlscale.serving.shadow import ShadowLog
from rlscale.serving.shadow_cost import UNALLOCATED, shadow_costs
from rlscale.serving.shadow_report import ShadowReportError

SCENARIO = "azure-conv"  # pools h100 (4 USD/h, holding 0.40), a100, h100-spot
T0 = dt.datetime(2026, 3, 10, 12, 0, tzinfo=dt.UTC).timestamp()
STALENESS_S = 60.0
SPOT_USD_H = 2.4


class Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def _body(i: int, t: float) -> RecommendationRequest:
    """Decision ``i``: two to four h100s, a spot replica half of the time, a replica starting
    now and then, a warm standby; tenants' rates except in decisions 40-59."""
    h100 = 2 + (i // 20) % 3
    body = {
        "cluster_id": "prod",
        "timestamp": t,
        "arrival_rate_rps": 20.0 + (i % 10),
        "pools": [
            {
                "name": "h100",
                "replicas": {
                    "ready": h100,
                    "provisioning": 1 if i % 15 == 0 else 0,
                    "draining": 1 if i % 25 == 0 else 0,
                    "standby": 1,
                },
            },
            {"name": "a100", "replicas": {"ready": 0}},
            {
                "name": "h100-spot",
                "replicas": {"ready": i % 2},
                "spot_price_usd_h": SPOT_USD_H,
            },
        ],
    }
    if not 40 <= i < 60:
        body["tenant_rates_rps"] = {"acme": 12.0, "globex": 6.0 + (i % 3), "initech": 1.0}
    return RecommendationRequest.model_validate(body)


def _times() -> list[float]:
    """120 decisions 30 s apart, with one 10-minute silence (beyond the staleness bound)."""
    out, t = [], T0
    for i in range(120):
        out.append(t)
        t += 600.0 if i == 80 else 30.0
    return out


@pytest.fixture(scope="module")
def shadow_db(tmp_path_factory):
    """The database a real DecisionService wrote, and the service (for its counters)."""
    path = tmp_path_factory.mktemp("shadow-cost") / "shadow.db"
    scenario = load_scenario(SCENARIO)
    clock = Clock(T0)
    shadow = ShadowLog(path, clock=clock)
    service = DecisionService(
        scenario,
        load_policy("hpa", scenario),
        load_policy("hpa", scenario),
        max_staleness_s=STALENESS_S,
        shadow=shadow,
        clock=clock,
    )
    for i, t in enumerate(_times()):
        clock.t = t + 0.5
        service.decide_and_record(_body(i, t))
    shadow.close()
    return path, service


def _counter(service, name: str, **labels) -> float:
    text = service.recorder.metrics.exposition().decode()
    total = 0.0
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                total += s.value
    return total


def test_shadow_costs_match_what_the_service_metered(shadow_db):
    path, service = shadow_db
    entry = shadow_costs(path, load_scenario(SCENARIO), max_gap_s=STALENESS_S)
    assert entry["cluster"] == "prod"
    spent = _counter(service, "rlscale_spend_usd_total", cluster="prod")
    assert spent > 0
    assert entry["bill_usd"] == pytest.approx(spent, rel=1e-9)
    for tenant in ("acme", "globex", "initech"):
        live = _counter(service, "rlscale_tenant_spend_usd_total", cluster="prod", tenant=tenant)
        assert entry["tenants"][tenant]["cost_usd"] == pytest.approx(live, rel=1e-9)
    unallocated = _counter(service, "rlscale_unallocated_spend_usd_total", cluster="prod")
    assert entry["tenants"][UNALLOCATED]["cost_usd"] == pytest.approx(unallocated, rel=1e-9)
    # the silence: 600 s, of which the staleness bound is metered
    assert entry["unmetered_s"] == pytest.approx(600.0 - STALENESS_S)
    assert _counter(service, "rlscale_unmetered_seconds_total", cluster="prod") == pytest.approx(
        entry["unmetered_s"]
    )


def test_shadow_costs_split_by_pool_purchase_and_idle(shadow_db):
    path, _ = shadow_db
    sc = load_scenario(SCENARIO)
    entry = shadow_costs(path, sc, max_gap_s=STALENESS_S)
    # by hand: every observation's rate over the time it holds
    times = _times()
    h100 = spot = 0.0
    for i, (t, nxt) in enumerate(itertools.pairwise(times)):
        hours = min(nxt - t, STALENESS_S) / 3600.0
        b = _body(i, t).pools
        r = b[0].replicas
        h100 += ((r.ready + r.provisioning + r.draining) * 4.0 + r.standby * 0.40) * hours
        spot += b[2].replicas.ready * SPOT_USD_H * hours
    assert entry["by_pool_usd"]["h100"] == pytest.approx(h100, rel=1e-9)
    assert entry["by_pool_usd"]["h100-spot"] == pytest.approx(spot, rel=1e-9)
    assert entry["by_pool_usd"]["a100"] == 0.0
    assert entry["by_purchase_usd"] == pytest.approx({"on_demand": h100, "spot": spot})
    # 20-29 req/s on 2-5 ready replicas of ~18-30 req/s each: partly idle, never wholly
    for tenant, v in entry["tenants"].items():
        assert 0.0 < v["idle_usd"] < v["cost_usd"], tenant
    shares = {t: v["idle_usd"] / v["cost_usd"] for t, v in entry["tenants"].items()}
    assert max(shares.values()) - min(shares.values()) < 0.2


def test_cost_report_cli_on_the_shadow_db(shadow_db, tmp_path, parse_html, capsys):
    path, _ = shadow_db
    out = tmp_path / "cost"
    argv = ["cost-report", "--shadow", str(path), "--scenario", SCENARIO, "--out", str(out)]
    assert main([*argv, "--max-gap-s", str(STALENESS_S), "--top-tenants", "2"]) == 0
    capsys.readouterr()
    report = json.loads((out / "cost_report.json").read_text())
    assert check_sums(report) == []
    entry = report["entries"]["prod"]
    assert set(entry["tenants"]) == {"acme", "globex", "other"}  # initech + unallocated
    tl = entry["timeline"]
    for key in ("by_pool_usd", "by_purchase_usd", "by_tenant_usd"):
        assert sum(map(sum, tl[key].values())) == pytest.approx(entry["bill_usd"], rel=1e-9)
    page = parse_html((out / "cost_report.html").read_text())
    assert len(page.images) == 1
    tenants = next(t for t in page.tables if t[0][0] == "Tenant")
    assert [r[0] for r in tenants[1:]] == ["acme", "globex", "other"]


def test_shadow_errors_exit_2(shadow_db, tmp_path, capsys):
    path, _ = shadow_db
    not_db = tmp_path / "not.db"
    not_db.write_text("hello, not sqlite " * 100)
    cases = {
        "is not a readable shadow database": [str(not_db)],
        "has no decisions in": [str(path), "--cluster", "nowhere"],
    }
    for message, args in cases.items():
        argv = ["cost-report", "--shadow", *args, "--scenario", SCENARIO, "--out", str(tmp_path)]
        assert main(argv) == 2
        assert message in capsys.readouterr().err
    with pytest.raises(ShadowReportError, match="max_gap_s must be > 0"):
        shadow_costs(path, load_scenario(SCENARIO), max_gap_s=0.0)


def test_shadow_report_shows_the_spend_per_tenant_with_its_idle_share(
    shadow_db, tmp_path, parse_html
):
    from rlscale.serving.shadow_report import shadow_report

    path, service = shadow_db
    summary = shadow_report(path, SCENARIO, out_dir=tmp_path)
    spend = summary["spend"]
    # the report meters with the service's default gap, the service here ran with 60 s: the
    # same bound (2 control intervals of 30 s)
    assert spend["bill_usd"] == pytest.approx(
        _counter(service, "rlscale_spend_usd_total", cluster="prod"), rel=1e-9
    )
    page = parse_html((tmp_path / "shadow_report.html").read_text())
    assert "spend" in page.ids
    table = next(t for t in page.tables if t[0][0] == "Tenant")
    rows = {r[0]: r[1:] for r in table[1:]}
    assert set(rows) == {"acme", "globex", "initech", UNALLOCATED}
    acme = spend["tenants"]["acme"]
    assert rows["acme"][2] == f"{100 * acme['idle_usd'] / acme['cost_usd']:.2f}%"
    assert json.loads((tmp_path / "shadow_summary.json").read_text())["spend"] == spend
