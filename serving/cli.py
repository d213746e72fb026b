"""``rlscale serve``: the decision service under uvicorn.

The scenario file (``--scenario``) describes the *live* cluster's pools: their names, quotas,
warm-pool sizes, throughput profiles and list prices, as it describes a simulated one. Point it
at a YAML that matches the cluster you serve; the request's pool names must be its pool names.

Also runnable as ``python -m rlscale.serving.cli`` (the same options, no subcommand).
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import sys
from pathlib import Path

from rlscale.serving.base import TOKEN_ENV_VAR
from rlscale.serving.limits import (
    MAX_CLUSTERS,
    SHADOW_MAX_AGE_S,
    SHADOW_MAX_BYTES,
    STALENESS_INTERVALS,
)

DEFAULT_SERVE_SCENARIO = "azure-conv"


def _pool_ints(items: list[str], flag: str) -> dict[str, int]:
    out: dict[str, int] = {}
    for item in items:
        name, sep, value = item.partition("=")
        try:
            out[name] = int(value)
        except ValueError:
            sep = ""
        if not sep or not name:
            raise argparse.ArgumentTypeError(f"{flag} expects POOL=N, got '{item}'")
    return out


def _add_serve_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--policy",
        default="hpa",
        help=(
            "policy to serve: a baseline NAME or NAME=params.json, an exported policy folder "
            "(manifest.json + model.onnx), or models:/NAME@ALIAS from the MLflow registry "
            "(default hpa)"
        ),
    )
    p.add_argument(
        "--reload-interval-s",
        type=float,
        default=30.0,
        help=(
            "how often to check whether the policy's files or registry alias changed; a new "
            "policy is verified and swapped in, a bad one refused (default 30)"
        ),
    )
    p.add_argument(
        "--fallback",
        default="hpa",
        help="rule-based scaler for stale or bad input, NAME[=params.json] (default hpa)",
    )
    p.add_argument(
        "--scenario",
        default=DEFAULT_SERVE_SCENARIO,
        help=(
            "shipped scenario name or YAML path describing the live cluster's pools, quotas "
            f"and profiles (default {DEFAULT_SERVE_SCENARIO})"
        ),
    )
    p.add_argument(
        "--shadow-db", type=Path, default=None, help="record every decision in this SQLite file"
    )
    p.add_argument(
        "--shadow-max-age-days",
        type=float,
        default=SHADOW_MAX_AGE_S / 86400,
        help=f"prune shadow rows older than this (default {SHADOW_MAX_AGE_S / 86400:g})",
    )
    p.add_argument(
        "--shadow-max-mb",
        type=float,
        default=SHADOW_MAX_BYTES / 2**20,
        help=(
            "prune the oldest shadow rows while they take more than this many MiB "
            f"(default {SHADOW_MAX_BYTES / 2**20:g})"
        ),
    )
    p.add_argument(
        "--insecure-no-auth",
        action="store_true",
        help=(
            f"serve /v1/* to anyone; without it, the service refuses to start unless "
            f"{TOKEN_ENV_VAR} holds a non-empty token"
        ),
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8080)
    p.add_argument(
        "--max-staleness-s",
        type=float,
        default=None,
        help=(
            "metrics older than this go to the fallback, and KEDA gets no number from them "
            f"(its fallback applies); default {STALENESS_INTERVALS} of the scenario's control "
            "intervals"
        ),
    )
    p.add_argument(
        "--max-clusters",
        type=int,
        default=MAX_CLUSTERS,
        help=f"clusters tracked at once; a new one is refused (429) (default {MAX_CLUSTERS})",
    )
    p.add_argument("--max-step-up", type=int, default=4, help="replicas added per decision")
    p.add_argument("--max-step-down", type=int, default=2, help="replicas removed per decision")
    p.add_argument(
        "--min-replicas", action="append", default=[], metavar="POOL=N", help="repeatable"
    )
    p.add_argument(
        "--max-replicas",
        action="append",
        default=[],
        metavar="POOL=N",
        help="repeatable; default the pool's quota",
    )
    p.add_argument(
        "--max-total-replicas", type=int, default=None, help="quota on the sum over pools"
    )
    p.add_argument(
        "--grpc-port",
        type=int,
        default=None,
        help="also serve KEDA's external scaler gRPC protocol on this port",
    )
    p.add_argument("--grpc-tls-cert", type=Path, default=None, help="PEM certificate (gRPC TLS)")
    p.add_argument("--grpc-tls-key", type=Path, default=None, help="PEM private key (gRPC TLS)")
    p.add_argument(
        "--grpc-tls-client-ca",
        type=Path,
        default=None,
        help="PEM CA that client certificates must chain to (mutual TLS)",
    )
    p.add_argument(
        "--prometheus-url",
        default=None,
        help="poll cluster metrics from Prometheus' query API (for KEDA, which pushes none)",
    )
    p.add_argument("--prometheus-interval-s", type=float, default=15.0)
    p.add_argument(
        "--cluster-id",
        default="default",
        help=(
            "the cluster_id the Prometheus poller's decisions are filed under (a ScaledObject's "
            "'cluster' metadata names it; default 'default')"
        ),
    )
    p.add_argument(
        "--prometheus-query",
        action="append",
        default=[],
        metavar="FIELD=PROMQL",
        help=(
            "replace or add the PromQL of one request field, e.g. queue=sum(my_queue), or "
            "batch_queue=sum(batch_worker_queue_length) for a policy trained with batch work; "
            "repeatable"
        ),
    )
    p.add_argument(
        "--prometheus-tenant-query",
        default=None,
        metavar="PROMQL",
        help=(
            "each tenant's request rate as a vector by tenant, e.g. "
            "'sum by (tenant) (rate(gateway_requests_total[1m]))': spend is allocated to "
            "tenants by request share (default: none; spend is counted unallocated)"
        ),
    )
    p.add_argument(
        "--tenant-label",
        default="tenant",
        help="the label naming the tenant in --prometheus-tenant-query's answer (default tenant)",
    )
    p.add_argument(
        "--budgets",
        type=Path,
        default=None,
        metavar="YAML",
        help=(
            "spend budgets to report in every answer and in /metrics (never enforced): "
            "'budgets: [{name, period: hour|day|month, limit_usd, tenant?, cluster?}]'"
        ),
    )
    p.add_argument(
        "--budget-state",
        type=Path,
        default=None,
        metavar="SQLITE",
        help=(
            "keep the spend meter's periods in this SQLite file, so a restart shorter than "
            "the staleness bound loses no spend (without it a period that began before the "
            "start is not metered whole)"
        ),
    )
    p.add_argument(
        "--deployment",
        action="append",
        default=[],
        metavar="POOL=NAME",
        help="the pool's Deployment in kube-state-metrics (default: the pool's name)",
    )
    p.add_argument("--log-level", default="info")


def add_serve_parser(sub: argparse._SubParsersAction) -> argparse.ArgumentParser:
    """The ``serve`` subcommand."""
    p = sub.add_parser(
        "serve",
        help="serve scaling recommendations over HTTP",
        description=(
            "Start the decision service: POST /v1/recommendations, /healthz, /readyz, /metrics. "
            "Requests to /v1/* need 'Authorization: Bearer $RLSCALE_API_TOKEN'; without that "
            "variable the service does not start, unless --insecure-no-auth. --scenario "
            "describes the live cluster's pools."
        ),
    )
    _add_serve_arguments(p)
    return p


def _prometheus_queries(items: list[str]) -> dict[str, str]:
    """The Prometheus source's PromQL per request field: the defaults, with each
    ``FIELD=PROMQL`` of ``--prometheus-query`` replacing or adding one.

    :raises ValueError: an item without ``=``, or a field the request does not have.
    """
    from rlscale.serving.prometheus_source import DEFAULT_QUERIES, QUERYABLE_FIELDS

    queries = dict(DEFAULT_QUERIES)
    for item in items:
        name, sep, promql = item.partition("=")
        if not sep or not promql:
            raise ValueError(f"--prometheus-query expects FIELD=PROMQL, got {item!r}")
        if name not in QUERYABLE_FIELDS:
            raise ValueError(
                f"--prometheus-query {name!r}: no such request field; the fields are "
                f"{sorted(QUERYABLE_FIELDS)}"
            )
        queries[name] = promql
    return queries


def run_serve(args: argparse.Namespace) -> int:
    """Build the service from ``args`` and run uvicorn until stopped; returns the exit code."""
    import uvicorn

    from rlscale.envs.scenario import ScenarioError, load_scenario
    from rlscale.serving.app import NoTokenError, create_app
    from rlscale.serving.budgets import SpendStore, load_budgets
    from rlscale.serving.reload import start_policy
    from rlscale.serving.service import DecisionService, default_guardrails, load_policy
    from rlscale.serving.shadow import ShadowLog, ShadowLogError

    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(message)s")
    token = os.environ.get(TOKEN_ENV_VAR) or None  # an empty token is none
    if token is None and not args.insecure_no_auth:
        print(
            f"rlscale serve: {TOKEN_ENV_VAR} is not set (or empty): set it to a secret token, "
            "or pass --insecure-no-auth to serve /v1/* to anyone",
            file=sys.stderr,
        )
        return 2
    try:
        queries = _prometheus_queries(args.prometheus_query)
        scenario = load_scenario(args.scenario)
        rails = default_guardrails(
            scenario,
            min_replicas=_pool_ints(args.min_replicas, "--min-replicas"),
            max_replicas=_pool_ints(args.max_replicas, "--max-replicas"),
            max_step_up=args.max_step_up,
            max_step_down=args.max_step_down,
            max_total_replicas=args.max_total_replicas,
        )
        fallback = load_policy(args.fallback, scenario)
        budgets = load_budgets(args.budgets) if args.budgets is not None else []
        budget_state = SpendStore(args.budget_state) if args.budget_state is not None else None
        shadow = (
            ShadowLog(
                args.shadow_db,
                max_age_s=args.shadow_max_age_days * 86400,
                max_bytes=int(args.shadow_max_mb * 2**20),
            )
            if args.shadow_db is not None
            else None
        )
        service, reloader, startup_error = start_policy(
            lambda policy: DecisionService(
                scenario,
                policy,
                fallback,
                guardrails=rails,
                max_staleness_s=args.max_staleness_s,
                max_clusters=args.max_clusters,
                shadow=shadow,
                budgets=budgets,
                budget_state=budget_state,
            ),
            args.policy,
            scenario,
            interval_s=args.reload_interval_s,
        )
        app = create_app(
            service, token=token, insecure_no_auth=args.insecure_no_auth, reloader=reloader
        )
    except (
        ScenarioError,
        ShadowLogError,
        NoTokenError,
        ValueError,
        argparse.ArgumentTypeError,
    ) as err:
        print(f"rlscale serve: {err}", file=sys.stderr)
        return 2
    log = logging.getLogger("rlscale.serving")
    if startup_error:
        log.error(
            "policy %s not loaded (%s): serving the fallback %s, not ready; retrying every %g s",
            args.policy,
            startup_error,
            fallback.version,
            args.reload_interval_s,
        )
    else:
        log.info("serving policy %s", service.policy_version)
    blind = [b.name for b in budgets if b.tenant is not None]
    if blind and args.prometheus_url and not args.prometheus_tenant_query:
        log.warning(
            "tenant budgets %s stay unknown: the Prometheus source has no "
            "--prometheus-tenant-query (pushes may still carry tenant_rates_rps)",
            blind,
        )
    if token is None:
        log.warning("--insecure-no-auth: /v1/* accepts requests from anyone, without a token")
    # Everything loaded so far (numba, scipy, pydantic, the policy: ~130k objects) lives as
    # long as the process; a full collection walking it stalls every request for ~65 ms on a
    # small machine. Frozen, collections only look at what requests allocate. Before any
    # thread starts, so nothing half-built is frozen.
    gc.collect()
    gc.freeze()
    grpc_server = None
    if args.grpc_port is not None:
        from rlscale.serving.keda_grpc import serve_grpc

        try:
            grpc_server = serve_grpc(
                service,
                args.host,
                args.grpc_port,
                tls_cert=args.grpc_tls_cert,
                tls_key=args.grpc_tls_key,
                tls_client_ca=args.grpc_tls_client_ca,
            )
        except (OSError, ValueError) as err:
            print(f"rlscale serve: gRPC on port {args.grpc_port}: {err}", file=sys.stderr)
            return 2
    source = None
    if args.prometheus_url:
        from rlscale.serving.prometheus_source import PrometheusSource

        deployments = dict(item.partition("=")[::2] for item in args.deployment)
        source = PrometheusSource(
            args.prometheus_url.rstrip("/"),
            service.pools(),
            service.decide_and_record,
            queries=queries,
            deployment_of=deployments,
            interval_s=args.prometheus_interval_s,
            cluster_id=args.cluster_id,
            tenant_query=args.prometheus_tenant_query,
            tenant_label=args.tenant_label,
        )
        source.start()
    if shadow is not None:
        shadow.start_pruning()
    reloader.start()
    try:
        uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level.lower())
    finally:
        reloader.stop()
        if source is not None:
            source.stop()
        if grpc_server is not None:
            grpc_server.stop(grace=2.0).wait(5.0)
        if shadow is not None:
            shadow.close()
        if budget_state is not None:
            budget_state.close()
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m rlscale.serving.cli [options]``."""
    p = argparse.ArgumentParser(prog="rlscale-serve", description=__doc__)
    _add_serve_arguments(p)
    return run_serve(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
