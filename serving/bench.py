"""``rlscale bench serve``: latency and throughput of the decision service over HTTP.

Starts the service (``python -m rlscale.serving.cli``) as a subprocess on a free loopback port,
then drives it from another process with an *open-loop* load generator: request ``i`` is due at
``t0 + i / rate`` whatever happened to earlier ones, and its latency is measured from that due
time, so a slow server cannot hide its queueing by slowing the client (no coordinated omission).
The generator uses httpx with keep-alive over a few connections and sends valid bodies with
fresh timestamps. It measures ``POST /v1/recommendations`` and then ``GET /healthz`` (a trivial
endpoint of the same app: the floor set by uvicorn, FastAPI and the client), one after the
other. Finally it times the policy's own ``decide`` in process, without HTTP or guardrails.

Numbers are wall-clock on this machine, with client and server on the same cores.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import multiprocessing as mp
import os
import signal
import socket
import subprocess
import sys
import time
from typing import Any

import numpy as np

TARGET_P99_MS = 5.0
TARGET_POLICY_P99_US = 100.0
_TOKEN = "rlscale-bench-token"
_CONNECTIONS = 4
_REQUEST_TIMEOUT_S = 5.0


# --- the request body --------------------------------------------------------------------------


def request_body(scenario: Any, *, rate_rps: float = 10.0) -> dict[str, Any]:
    """A well-formed, fresh request for ``scenario``'s pools (a loaded :class:`Scenario`)."""
    pools = []
    for p in scenario.pools:
        pm: dict[str, Any] = {"name": p.name, "replicas": {"ready": max(p.initial_replicas, 1)}}
        if p.purchase == "spot":
            pm["spot_price_usd_h"] = round(0.4 * p.price_usd_h, 4)
        pools.append(pm)
    return {
        "cluster_id": "bench",
        "timestamp": time.time(),
        "arrival_rate_rps": rate_rps,
        "queue": 0,
        "in_flight": 5,
        "gpu_util": 0.5,
        "kv_util": 0.1,
        "ttft_p50_s": 0.2,
        "ttft_p95_s": 0.6,
        "tpot_p95_s": 0.03,
        "slo_attainment": 1.0,
        "pools": pools,
    }


# --- the load generator (runs in its own process) ----------------------------------------------


async def _drive(
    base: str,
    path: str,
    method: str,
    body: dict[str, Any] | None,
    rate_rps: float,
    seconds: float,
    warmup_s: float,
    clusters: int = 1,
) -> dict[str, Any]:
    import httpx

    url = base + path
    headers = {"Authorization": f"Bearer {_TOKEN}", "Content-Type": "application/json"}
    limits = httpx.Limits(max_connections=_CONNECTIONS, max_keepalive_connections=_CONNECTIONS)
    n_warm = round(rate_rps * warmup_s)
    n = n_warm + round(rate_rps * seconds)
    latency = np.full(n, np.nan)
    status = np.zeros(n, dtype=np.int32)  # 0: transport error or timeout
    done = np.zeros(n)
    lag = np.full(n, np.nan)  # due time to the request's start: the generator's own delay

    async with httpx.AsyncClient(
        headers=headers, limits=limits, timeout=_REQUEST_TIMEOUT_S
    ) as client:

        async def one(i: int, due: float) -> None:
            lag[i] = time.perf_counter() - due
            try:
                if body is None:
                    r = await client.request(method, url)
                else:
                    body["timestamp"] = time.time()
                    body["cluster_id"] = f"bench-{i % clusters}"
                    r = await client.request(method, url, content=json.dumps(body).encode())
                await r.aread()
                status[i] = r.status_code
            except httpx.HTTPError:
                status[i] = 0
            done[i] = time.perf_counter()
            latency[i] = done[i] - due

        # open the connections before the clock starts
        await asyncio.gather(*(client.get(f"{base}/healthz") for _ in range(_CONNECTIONS)))
        t0 = time.perf_counter() + 0.05
        tasks = []
        for i in range(n):
            due = t0 + i / rate_rps
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(i, due)))
        await asyncio.gather(*tasks)

    measured = slice(n_warm, n)
    lat = latency[measured]
    ok = status[measured] == 200
    start = t0 + n_warm / rate_rps
    window = max(float(np.nanmax(done[measured])) - start, 1e-9) if n > n_warm else 1e-9
    return {
        "requests": int(n - n_warm),
        "errors": int((~ok).sum()),
        "p50_ms": round(float(np.nanpercentile(lat, 50)) * 1e3, 3) if len(lat) else None,
        "p99_ms": round(float(np.nanpercentile(lat, 99)) * 1e3, 3) if len(lat) else None,
        "max_ms": round(float(np.nanmax(lat)) * 1e3, 3) if len(lat) else None,
        "throughput_rps": round(float(ok.sum()) / window, 2),
        "client_lag_p99_ms": (
            round(float(np.nanpercentile(lag[measured], 99)) * 1e3, 3) if len(lat) else None
        ),
    }


def _loadgen_main(jobs: list[dict[str, Any]], out: mp.Queue) -> None:
    """Entry point of the load-generator process: run ``jobs`` in turn, put results on ``out``."""
    try:
        results = [asyncio.run(_drive(**job)) for job in jobs]
        out.put(("ok", results))
    except BaseException as err:  # report anything to the parent rather than hang it
        out.put(("error", f"{type(err).__name__}: {err}"))


# --- the server --------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _start_server(
    scenario: str, policy: str, extra: list[str], timeout_s: float = 30.0
) -> tuple[subprocess.Popen, str]:
    import httpx

    port = _free_port()
    argv = [sys.executable, "-m", "rlscale.serving.cli", "--port", str(port)]
    argv += ["--scenario", scenario, "--policy", policy, *extra, "--log-level", "warning"]
    env = {**os.environ, "RLSCALE_API_TOKEN": _TOKEN}
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
            raise RuntimeError(f"service exited with {proc.returncode}: {err[-2000:]}")
        try:
            if httpx.get(f"{url}/healthz", timeout=1.0).status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    _stop_server(proc)
    raise RuntimeError(f"service not healthy after {timeout_s} s")


def _stop_server(proc: subprocess.Popen) -> None:
    """SIGTERM by pid, SIGKILL after 5 s; reaps the process."""
    if proc.poll() is None:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)
    if proc.stderr is not None:
        proc.stderr.close()


# --- the policy alone --------------------------------------------------------------------------


def bench_policy(scenario: Any, policy: str, calls: int = 20_000) -> dict[str, Any]:
    """p50/p99 of ``policy.decide(state, memory)`` in process, on states the service builds.

    The states advance by one control interval per call, with a varying arrival rate, so
    stateful policies (HPA's stabilization windows) see a realistic history.
    """
    from rlscale.serving.schemas import RecommendationRequest
    from rlscale.serving.service import DecisionService, load_policy

    loaded = load_policy(policy, scenario)
    service = DecisionService(scenario, loaded, load_policy("hpa", scenario))
    base = service.to_state(RecommendationRequest.model_validate(request_body(scenario)))
    rng = np.random.default_rng(0)
    rates = 10.0 * (1.0 + 0.5 * np.sin(np.arange(calls) / 50.0)) + rng.normal(0, 0.5, calls)
    states = [
        dataclasses.replace(
            base,
            time_s=base.time_s + i * base.interval_s,
            time_of_week_s=(base.time_of_week_s + i * base.interval_s) % (7 * 86400.0),
            arrival_rate_rps=max(float(r), 0.0),
            arrival_rate_ewma_rps=max(float(r), 0.0),
            forecast_rps=max(float(r), 0.0),
        )
        for i, r in enumerate(rates)
    ]
    pol = loaded.policy
    memory = pol.initial_memory()
    for s in states[:200]:  # warm-up
        _, memory = pol.decide(s, memory)
    memory = pol.initial_memory()
    took = np.empty(calls, dtype=np.int64)
    clock = time.perf_counter_ns
    for i, s in enumerate(states):
        t = clock()
        _, memory = pol.decide(s, memory)
        took[i] = clock() - t
    return {
        "p50_us": round(float(np.percentile(took, 50)) / 1e3, 2),
        "p99_us": round(float(np.percentile(took, 99)) / 1e3, 2),
        "calls": calls,
    }


# --- the benchmark -----------------------------------------------------------------------------


def _cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def bench_serve(
    *,
    scenario: str = "azure-conv",
    policy: str = "hpa",
    rate_rps: float = 200.0,
    seconds: float = 10.0,
    warmup_s: float = 1.0,
    policy_calls: int = 20_000,
    clusters: int = 1000,
    server_args: tuple[str, ...] = (),
    progress: bool = False,
) -> dict[str, Any]:
    """Benchmark the service over HTTP and the policy in process; see the module docstring.

    :param rate_rps: open-loop request rate of each phase.
    :param seconds: measured time of each phase, after ``warmup_s`` of unmeasured requests.
    :param clusters: requests cycle over this many ``cluster_id`` values, as from a fleet of
        clusters each calling every ``clusters / rate_rps`` s. Policy memory is per cluster:
        with 1, the HPA's 300 s stabilization window holds every request of the run.
    :param server_args: extra ``rlscale serve`` options (e.g. ``--shadow-db PATH``).
    :returns: a JSON-able dict; ``server_pid`` is the (stopped) service's pid.
    """
    import httpx

    from rlscale.envs.scenario import load_scenario

    if not rate_rps > 0 or not seconds > 0 or warmup_s < 0 or clusters < 1:
        raise ValueError("rate_rps and seconds must be > 0, warmup_s >= 0, clusters >= 1")
    sc = load_scenario(scenario)
    body = request_body(sc)

    def say(msg: str) -> None:
        if progress:
            print(f"bench serve: {msg}", file=sys.stderr, flush=True)

    say(f"starting the service ({scenario}, {policy})")
    proc, url = _start_server(scenario, policy, list(server_args))
    try:
        # one request first: the body must reach the policy, not the fallback
        first = httpx.post(
            f"{url}/v1/recommendations",
            json=request_body(sc),
            headers={"Authorization": f"Bearer {_TOKEN}"},
            timeout=_REQUEST_TIMEOUT_S,
        )
        first.raise_for_status()
        source = first.json()["source"]
        common = {"rate_rps": rate_rps, "seconds": seconds, "warmup_s": warmup_s}
        jobs = [
            {
                "base": url,
                "path": "/v1/recommendations",
                "method": "POST",
                "body": body,
                "clusters": clusters,
                **common,
            },
            {"base": url, "path": "/healthz", "method": "GET", "body": None, **common},
        ]
        say(f"driving {rate_rps:g} req/s for {warmup_s:g}+{seconds:g} s per endpoint")
        ctx = mp.get_context("spawn")
        out = ctx.Queue()
        gen = ctx.Process(target=_loadgen_main, args=(jobs, out), daemon=True)
        gen.start()
        try:
            kind, payload = out.get(timeout=2 * (seconds + warmup_s) + 60)
        finally:
            gen.join(timeout=10)
            if gen.is_alive():
                gen.kill()
                gen.join(timeout=5)
        if kind != "ok":
            raise RuntimeError(f"load generator failed: {payload}")
        recs, trivial = payload
    finally:
        _stop_server(proc)
    say(f"timing {policy}.decide in process ({policy_calls} calls)")
    inference = bench_policy(sc, policy, policy_calls)
    return {
        "scenario": scenario,
        "policy": policy,
        "rate_rps": rate_rps,
        "seconds": seconds,
        "warmup_s": warmup_s,
        "connections": _CONNECTIONS,
        "clusters": clusters,
        "decision_source": source,
        "recommendations": recs,
        "trivial": trivial,
        "policy_inference": inference,
        "targets": {"p99_ms": TARGET_P99_MS, "policy_p99_us": TARGET_POLICY_P99_US},
        "meets_targets": bool(
            recs["errors"] == 0
            and recs["p99_ms"] is not None
            and recs["p99_ms"] < TARGET_P99_MS
            and inference["p99_us"] < TARGET_POLICY_P99_US
        ),
        "cpus": _cpus(),
        "server_pid": proc.pid,
    }


# --- command line ------------------------------------------------------------------------------


def add_bench_serve_parser(bsub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """The ``bench serve`` subcommand, under ``bench``'s subparsers."""
    p = bsub.add_parser(
        "serve",
        help="decision-service latency and throughput over HTTP, and policy inference time",
        description=__doc__.split("\n\n")[1] if __doc__ else None,
    )
    p.add_argument("--scenario", default="azure-conv", help="scenario served (default azure-conv)")
    p.add_argument(
        "--policy",
        default="hpa",
        help="policy served: NAME[=params.json] or an exported policy folder (default hpa)",
    )
    p.add_argument("--rate", type=float, default=200.0, help="open-loop requests/s (default 200)")
    p.add_argument("--seconds", type=float, default=10.0, help="measured time per endpoint")
    p.add_argument("--warmup", type=float, default=1.0, help="unmeasured warm-up per endpoint")
    p.add_argument(
        "--clusters",
        type=int,
        default=1000,
        help="distinct cluster_ids the requests cycle over (default 1000)",
    )
    p.add_argument("--policy-calls", type=int, default=20_000, help="in-process decide calls")
    return p


def run_bench_serve(args: argparse.Namespace) -> int:
    """Run the benchmark; prints one JSON object as the last line; returns the exit code."""
    from rlscale.envs.scenario import ScenarioError

    try:
        result = bench_serve(
            scenario=args.scenario,
            policy=args.policy,
            rate_rps=args.rate,
            seconds=args.seconds,
            warmup_s=args.warmup,
            policy_calls=args.policy_calls,
            clusters=args.clusters,
            progress=True,
        )
    except (ScenarioError, ValueError, RuntimeError) as err:
        print(f"rlscale bench serve: {err}", file=sys.stderr)
        return 2
    print(json.dumps(result))
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m rlscale.serving.bench [options]``."""
    p = argparse.ArgumentParser(prog="rlscale-bench-serve")
    sub = p.add_subparsers(dest="bench_target", required=True)
    add_bench_serve_parser(sub)
    return run_bench_serve(p.parse_args(["serve", *(argv if argv is not None else sys.argv[1:])]))


if __name__ == "__main__":
    sys.exit(main())
