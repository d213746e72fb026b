"""``rlscale bench serve``: a short run against a real service process."""

from __future__ import annotations

import argparse
import json
import os

import pytest

from rlscale.serving.bench import add_bench_serve_parser, bench_serve, run_bench_serve


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_bench_serve_short_run() -> None:
    rate, seconds = 50, 1.0
    result = bench_serve(rate_rps=rate, seconds=seconds, warmup_s=0.2, policy_calls=2000)
    assert result["scenario"] == "azure-conv" and result["policy"] == "hpa"
    assert result["decision_source"] == "policy"  # valid bodies reach the policy
    for key in ("recommendations", "trivial"):
        r = result[key]
        assert set(r) >= {"p50_ms", "p99_ms", "throughput_rps", "errors", "requests"}
        assert r["errors"] == 0
        assert r["requests"] == pytest.approx(rate * seconds, rel=0.2)
        assert 0 < r["p50_ms"] <= r["p99_ms"] < 1000
        assert r["throughput_rps"] == pytest.approx(rate, rel=0.2)
    inf = result["policy_inference"]
    assert inf["calls"] == 2000 and 0 < inf["p50_us"] <= inf["p99_us"] < 100_000
    assert result["targets"] == {"p99_ms": 5.0, "policy_p99_us": 100.0}
    assert result["cpus"] >= 1
    json.dumps(result)  # JSON-able
    assert _gone(result["server_pid"])  # stopped and reaped


def test_bench_serve_cli_prints_json_last(capsys: pytest.CaptureFixture[str]) -> None:
    parser = argparse.ArgumentParser()
    add_bench_serve_parser(parser.add_subparsers(dest="bench_target"))
    args = parser.parse_args(
        ["serve", "--rate", "20", "--seconds", "0.5", "--warmup", "0", "--policy-calls", "100"]
    )
    assert run_bench_serve(args) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    result = json.loads(last)
    assert result["recommendations"]["errors"] == 0
    assert _gone(result["server_pid"])


def test_bench_serve_bad_policy_exits_2() -> None:
    parser = argparse.ArgumentParser()
    add_bench_serve_parser(parser.add_subparsers(dest="bench_target"))
    args = parser.parse_args(["serve", "--policy", "no-such-policy", "--seconds", "0.1"])
    assert run_bench_serve(args) == 2


def test_bench_serve_rejects_bad_rate() -> None:
    with pytest.raises(ValueError):
        bench_serve(rate_rps=0)


def test_bench_serve_rejects_no_clusters() -> None:
    with pytest.raises(ValueError):
        bench_serve(clusters=0)
