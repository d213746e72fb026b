"""``shadow_report``: agreement numbers on a hand-built shadow log, the replay, the files."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from rlscale.envs.scenario import ScenarioError
from rlscale.serving.schemas import RecommendationRequest, RecommendationResponse
from rlscale.serving.shadow import ShadowLog
from rlscale.serving.shadow_report import ShadowReportError, shadow_report

SCENARIO = "synthetic-2week"  # pools h100, a100, h100-spot; 30 s interval, 1 s sub-step
T0 = 1767225600.0
N = 200


def _record(log: ShadowLog, i: int, cluster: str, rec: dict, prod: dict | None, rate: float):
    t = T0 + 30.0 * i
    req = RecommendationRequest(
        cluster_id=cluster,
        timestamp=t,
        arrival_rate_rps=rate,
        pools=[{"name": p, "replicas": {"ready": 1}} for p in ("h100", "a100", "h100-spot")],
        production_decision=prod,
    )
    resp = RecommendationResponse(
        decision_id=f"{cluster}-{i:04d}",
        cluster_id=cluster,
        replicas=rec,
        warm_pool={p: 0 for p in rec},
        source="policy",
        policy_version="test@1",
        decided_at=t + 0.2,
    )
    log.record(req, resp)


def _rate(i: int) -> float:
    # a day-like swing compressed into the log: 4 .. 16 req/s
    return 10.0 + 6.0 * math.sin(2.0 * math.pi * i / 100.0)


def build_log(path: Path) -> None:
    """200 decisions of 'prod-eu' 30 s apart, and 3 of a smaller cluster.

    Recommendation: h100 = ceil(rate / 4), a100 = 0, h100-spot = 1. Production equals it except
    h100 + 1 where i % 7 == 0, h100 + 5 at i == 100, a100 = 1 where i % 10 == 0; no production
    decision where i % 20 == 19.
    """
    log = ShadowLog(path)
    for i in range(N):
        rate = _rate(i)
        rec = {"h100": math.ceil(rate / 4.0), "a100": 0, "h100-spot": 1}
        prod = dict(rec)
        if i % 7 == 0:
            prod["h100"] += 1
        if i == 100:
            prod["h100"] += 5
        if i % 10 == 0:
            prod["a100"] = 1
        _record(log, i, "prod-eu", rec, None if i % 20 == 19 else prod, rate)
    for i in range(3):
        _record(log, i, "small", {"h100": 1}, {"h100": 1}, 1.0)
    log.close()


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> tuple[dict, Path]:
    tmp = tmp_path_factory.mktemp("shadow")
    build_log(tmp / "shadow.db")
    out = tmp / "report"
    return shadow_report(tmp / "shadow.db", SCENARIO, out_dir=out, seed=1), out


def test_agreement_matches_hand_counts(report):
    s, _ = report
    assert s["cluster"] == "prod-eu"  # the cluster with most rows
    assert s["clusters"] == {"prod-eu": N, "small": 3}
    assert s["decisions"] == N
    ag = s["agreement"]
    # compared: the 190 decisions with i % 20 != 19
    assert ag["compared"] == 190
    # h100 differs at multiples of 7 (29 of 0..196) but 119 (no production): 28 x 1 replica,
    # plus i = 100 (by 5): 29 decisions, 33 replicas
    h = ag["per_pool"]["h100"]
    assert h["compared"] == 190
    assert h["agreement"] == pytest.approx(161 / 190)
    assert h["mean_abs_diff"] == pytest.approx(33 / 190)
    assert h["max_abs_diff"] == 5
    # a100 differs at multiples of 10 (20, none has i % 20 == 19), by 1
    a = ag["per_pool"]["a100"]
    assert a["agreement"] == pytest.approx(170 / 190)
    assert a["mean_abs_diff"] == pytest.approx(20 / 190)
    assert ag["per_pool"]["h100-spot"]["agreement"] == 1.0
    # overall: any pool differs where i % 7 == 0 (28) or i % 10 == 0 (20), both at 0, 70, 140;
    # i = 100 is already a multiple of 10
    assert ag["agreement"] == pytest.approx((190 - 45) / 190)
    assert ag["mean_abs_diff"] == pytest.approx((33 + 20) / 190)
    top = ag["largest_differences"][0]
    assert top["decision_id"] == "prod-eu-0100"
    assert top["total_abs_diff"] == 6
    assert top["offset_s"] == 3000.0
    assert top["recommended"]["h100"] + 5 == top["production"]["h100"]


def test_replay_ran(report):
    s, _ = report
    rp = s["replay"]
    assert rp["steps"] == N
    assert rp["mean_rate_rps"] == pytest.approx(10.0, rel=0.05)
    for label in ("recommended", "production"):
        r = rp[label]
        assert r["cost_usd"] > 0
        assert 0.0 <= r["slo_attainment"] <= 1.0
        assert r["ttft_p95_s"] is not None and r["ttft_p95_s"] >= 0
    # production runs more h100 (never fewer) and an a100 every 10th decision: it costs more
    assert rp["production"]["cost_usd"] > rp["recommended"]["cost_usd"]
    assert rp["production_skipped"] is None
    assert "Estimate" in rp["caveat"]


def test_files_written(report):
    s, out = report
    page = (out / "shadow_report.html").read_text()
    assert page.count("data:image/png;base64,") == 3
    assert "<script" not in page and "http://" not in page and "https://" not in page
    assert "prod-eu-0100" in page
    assert json.loads((out / "shadow_summary.json").read_text()) == s


def test_no_production_decisions_skips_that_replay(tmp_path):
    log = ShadowLog(tmp_path / "s.db")
    for i in range(20):
        _record(log, i, "c", {"h100": 2, "a100": 0, "h100-spot": 0}, None, 5.0)
    log.close()
    s = shadow_report(tmp_path / "s.db", SCENARIO, out_dir=tmp_path / "o")
    assert s["agreement"]["compared"] == 0 and s["agreement"]["agreement"] is None
    assert s["replay"]["production"] is None
    assert "no decision carries a production_decision" in s["replay"]["production_skipped"]
    assert s["replay"]["recommended"]["cost_usd"] > 0
    assert (tmp_path / "o" / "shadow_report.html").is_file()


def test_errors(tmp_path):
    with pytest.raises(ShadowReportError, match="no shadow database"):
        shadow_report(tmp_path / "missing.db", SCENARIO, out_dir=tmp_path / "o")
    assert not (tmp_path / "missing.db").exists()
    ShadowLog(tmp_path / "empty.db").close()
    with pytest.raises(ShadowReportError, match="no decisions"):
        shadow_report(tmp_path / "empty.db", SCENARIO, out_dir=tmp_path / "o")
    log = ShadowLog(tmp_path / "tpu.db")
    _record(log, 0, "c", {"tpu-v5": 2}, None, 5.0)
    log.close()
    with pytest.raises(ShadowReportError, match="tpu-v5"):
        shadow_report(tmp_path / "tpu.db", SCENARIO, out_dir=tmp_path / "o")
    with pytest.raises(ShadowReportError, match="clusters"):
        shadow_report(tmp_path / "tpu.db", SCENARIO, cluster="nope", out_dir=tmp_path / "o")
    assert issubclass(ShadowReportError, ScenarioError)  # rlscale's CLI exits 2 on it
