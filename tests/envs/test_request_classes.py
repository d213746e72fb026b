"""Request classes (interactive and batch): every request of each class is accounted for,
batch work takes only the room interactive work leaves, a preempted batch request returns to
its queue, and traces mark classes with a ``class`` column."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from test_properties import scenarios

from rlscale.agents.observe import run_episode
from rlscale.agents.registry import baselines, make_policy
from rlscale.envs.scenario import ScenarioError, scenario_from_dict
from rlscale.envs.simulator import ClusterSimulator
from rlscale.envs.traces import read_csv_trace

pytestmark = pytest.mark.needs_data

H100 = {"profile": "h100x1-llama3-8b", "price_usd_h": 4.0}


def _check_accounting(sim: ClusterSimulator) -> None:
    """Per class: every request that arrived is served, dropped (expired), or still queued or
    in flight; the classes' costs sum to the bill."""
    c = sim.counters(0)
    interactive = c["completed"] + c["queued"] + c["in_flight"] + c["dropped"] + c["cache_hits"]
    assert interactive == pytest.approx(c["arrived"], rel=1e-9, abs=1e-6)
    b = sim.batch_counters(0)
    assert min(b.values()) >= -1e-9, b
    batch = b["completed"] + b["expired"] + b["queued"] + b["in_flight"]
    assert batch == pytest.approx(b["arrived"], rel=1e-9, abs=1e-6), b
    by_class = sim.class_costs(0)
    assert sum(by_class.values()) == pytest.approx(
        sim.cluster(0).episode_cost_usd, rel=1e-9, abs=1e-9
    )
    assert min(by_class.values()) >= -1e-9
    # per-tenant metering counts both classes' tokens and still allocates the whole bill
    assert sum(sim.tenant_costs(0).values()) == pytest.approx(
        sim.cluster(0).episode_cost_usd, rel=1e-9, abs=1e-9
    )


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(scenario=scenarios(batch=True), seed=st.integers(0, 2**31 - 1), act=st.integers(0, 1000))
def test_every_class_is_accounted_for_under_random_actions(scenario, seed, act):
    sim = ClusterSimulator(scenario)
    assert sim.has_batch
    sim.reset_cluster(0, np.random.default_rng(seed))
    nvec = sim.action_nvec
    rng = np.random.default_rng(act)
    while not sim.truncated()[0]:
        sim.step(rng.integers(0, nvec)[None, :])
        _check_accounting(sim)
    # the workload has batch work (the draws may still bring none at a low rate)
    assert sim.workload.batch_bins is not None and sim.workload.batch_bins[0].sum() > 0


@settings(
    max_examples=20,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    scenario=scenarios(batch=True, on_demand_first=True),
    policy=st.sampled_from(baselines()),
    seed=st.integers(0, 1000),
)
def test_every_class_is_accounted_for_under_the_baselines(scenario, policy, seed):
    try:
        pol = make_policy(policy, scenario)
    except ScenarioError:  # a policy that needs pools this scenario lacks
        assume(False)
    sim = ClusterSimulator(scenario)
    result = run_episode(pol, sim, seed=seed)
    _check_accounting(sim)
    s = result.summary
    assert s["batch"]["arrived"] == sim.batch_counters(0)["arrived"]
    assert 0.0 <= s["batch_attainment"] <= 1.0
    assert sum(s["cost_by_class_usd"].values()) == pytest.approx(s["cost_usd"], rel=1e-9)


def _write(path, rows, header="timestamp_s,prompt_tokens,output_tokens,class"):
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


def _trace(tmp_path, name, *, rps, batch_rps, seconds=900, seed=3, with_class=True):
    """A trace of steady interactive load and (marked) batch load; without the class column
    only the interactive rows."""
    rng = np.random.default_rng(seed)
    rows = []
    for rate, cls in ((rps, "interactive"), (batch_rps, "batch")):
        n = int(rate * seconds)
        times = rng.uniform(0.0, seconds, n)
        prompts = rng.integers(200, 1500, n)
        outputs = rng.integers(20, 300, n)
        for t, p, o in zip(times, prompts, outputs, strict=True):
            if with_class:
                rows.append((t, f"{t:.3f},{p},{o},{cls}"))
            elif cls == "interactive":
                rows.append((t, f"{t:.3f},{p},{o}"))
    rows.sort()
    header = "timestamp_s,prompt_tokens,output_tokens" + (",class" if with_class else "")
    return str(_write(tmp_path / f"{name}.csv", [r for _, r in rows], header))


def _scenario(path, pools, *, batch=True, deadline_h=0.1, hours=0.2):
    workload = {"kind": "csv", "path": path}
    if batch:
        workload["batch"] = {"deadline_h": deadline_h}
    return scenario_from_dict(
        {
            "name": "classes",
            "episode_hours": hours,
            "workload": workload,
            "slo": {"ttft_s": 2.0, "timeout_s": 60},
            "pools": pools,
        }
    )


def _run(sim, actions, steps=None):
    sim.reset_cluster(0, np.random.default_rng(0), start_step=0)
    infos = []
    for _ in range(steps or sim.episode_steps):
        sim.step(actions[None, :])
        infos.append(sim.step_info(0))
    return infos


INTERACTIVE_KEYS = (
    "slo/attainment",
    "latency/ttft_p95_s",
    "latency/tpot_p95_s",
    "requests/arrived",
    "requests/admitted",
    "requests/completed",
    "requests/dropped",
    "load/queue",
    "cost/usd",
)


def test_batch_on_its_own_pool_leaves_the_interactive_numbers_bit_identical(tmp_path):
    pools = [
        {"name": "od", **H100, "quota": 4, "initial_replicas": 1, "serves": "interactive"},
        {"name": "batch", **H100, "quota": 4, "initial_replicas": 1, "serves": "batch"},
    ]
    with_batch = ClusterSimulator(
        _scenario(_trace(tmp_path, "both", rps=6.0, batch_rps=4.0), pools)
    )
    without = ClusterSimulator(
        _scenario(
            _trace(tmp_path, "inter", rps=6.0, batch_rps=4.0, with_class=False),
            pools,
            batch=False,
        )
    )
    assert with_batch.has_batch and not without.has_batch
    noop = with_batch.noop_action()
    a, b = _run(with_batch, noop), _run(without, noop)
    for step_a, step_b in zip(a, b, strict=True):
        for key in INTERACTIVE_KEYS:
            assert step_a[key] == step_b[key], key
    assert sum(s["batch/completed"] for s in a) > 0.9 * with_batch.batch_counters(0)["arrived"]


def test_batch_waits_while_interactive_requests_queue_on_a_shared_pool(tmp_path):
    # one small shared pool far below the interactive load: the interactive queue never
    # empties, so no batch request is admitted after the first sub-steps
    pools = [{"name": "od", **H100, "quota": 1, "initial_replicas": 1}]
    sim = ClusterSimulator(
        _scenario(_trace(tmp_path, "over", rps=120.0, batch_rps=5.0, seconds=900), pools)
    )
    infos = _run(sim, sim.noop_action(), steps=15)
    assert all(s["load/queue"] > 0 for s in infos[1:])
    assert sum(s["batch/admitted"] for s in infos[1:]) == 0.0
    assert infos[-1]["batch/queue"] > 0
    _check_accounting(sim)


def test_batch_fills_the_room_interactive_requests_leave_on_a_shared_pool(tmp_path):
    pools = [{"name": "od", **H100, "quota": 2, "initial_replicas": 2}]
    path = _trace(tmp_path, "light", rps=2.0, batch_rps=3.0)
    sim = ClusterSimulator(_scenario(path, pools))
    infos = _run(sim, sim.noop_action())
    b = sim.batch_counters(0)
    assert b["completed"] > 0.9 * b["arrived"] and b["expired"] == 0.0
    # co-batching is not free: the shared iterations are longer than without the batch work
    alone = ClusterSimulator(_scenario(path.replace(".csv", ".csv"), pools))
    assert alone.has_batch
    no_batch = ClusterSimulator(
        _scenario(
            _trace(tmp_path, "light-i", rps=2.0, batch_rps=3.0, with_class=False),
            pools,
            batch=False,
        )
    )
    base = _run(no_batch, no_batch.noop_action())
    tpot = np.mean([s["latency/tpot_p95_s"] for s in infos[2:]])
    tpot_alone = np.mean([s["latency/tpot_p95_s"] for s in base[2:]])
    assert tpot > tpot_alone


def test_a_preempted_batch_request_returns_to_the_batch_queue(tmp_path):
    pools = [
        {"name": "od", **H100, "quota": 2, "initial_replicas": 1, "serves": "interactive"},
        {
            "name": "spot",
            **H100,
            "purchase": "spot",
            "quota": 4,
            "initial_replicas": 2,
            "serves": "batch",
            "spot": {"hazard_per_h": 60.0, "notice_s": 0, "fulfil_prob": 1.0},
        },
    ]
    sim = ClusterSimulator(_scenario(_trace(tmp_path, "pre", rps=2.0, batch_rps=8.0), pools))
    keep_spot = sim.noop_action()
    keep_spot[1] += 2  # ask for two more spot replicas every step: preempted ones come back
    infos = _run(sim, keep_spot)
    b = sim.batch_counters(0)
    assert sum(s["spot/preemptions"] for s in infos) > 0
    assert b["requeued"] > 0 and sum(s["batch/requeued"] for s in infos) == pytest.approx(
        b["requeued"]
    )
    # requeued requests are admitted again: admissions exceed the arrivals they came from
    assert b["admitted"] > b["completed"] + b["in_flight"] - 1e-6
    assert sim.counters(0)["requeued"] == 0.0  # no interactive request ran on spot
    _check_accounting(sim)


def test_batch_requests_past_their_deadline_expire(tmp_path):
    pools = [{"name": "od", **H100, "quota": 2, "initial_replicas": 1, "serves": "interactive"}]
    path = _trace(tmp_path, "nobatchpool", rps=1.0, batch_rps=2.0)
    sim = ClusterSimulator(_scenario(path, pools, deadline_h=0.05))
    _run(sim, sim.noop_action())
    b = sim.batch_counters(0)
    assert b["completed"] == 0.0 and b["expired"] > 0.0 and b["queued"] > 0.0
    # only what arrived within the last window (3 min of the 12) is still queued
    assert b["queued"] < 0.35 * b["arrived"]
    _check_accounting(sim)


def test_csv_class_column(tmp_path):
    rows = ["0.5,100,10,a,batch", "1.0,200,20,b,", "2.0,300,30,a,interactive"]
    req = read_csv_trace(
        _write(tmp_path / "t.csv", rows, "timestamp_s,prompt_tokens,output_tokens,tenant,class")
    )
    assert req.batch.tolist() == [True, False, False]
    assert req.tenant_names == ("a", "b")
    swapped = ["0.5,100,10,batch,a", "1.0,200,20,,b"]
    req = read_csv_trace(
        _write(tmp_path / "s.csv", swapped, "timestamp_s,prompt_tokens,output_tokens,class,tenant")
    )
    assert req.batch.tolist() == [True, False] and req.tenant_names == ("a", "b")
    assert (
        read_csv_trace(
            _write(tmp_path / "n.csv", ["0,1,1"], "timestamp_s,prompt_tokens,output_tokens")
        ).batch
        is None
    )


def test_csv_class_column_rejects_unknown_classes_and_headers(tmp_path):
    with pytest.raises(
        ScenarioError,
        match=r"line 3: field 'class' must be one of interactive, batch \(got 'offline'\)",
    ):
        read_csv_trace(_write(tmp_path / "bad.csv", ["0,1,1,batch", "1,1,1,offline"]))
    with pytest.raises(ScenarioError, match="expected the header"):
        read_csv_trace(
            _write(
                tmp_path / "dup.csv",
                ["0,1,1,batch,batch"],
                "timestamp_s,prompt_tokens,output_tokens,class,class",
            )
        )


def test_a_classed_trace_needs_a_batch_section(tmp_path):
    path = _trace(tmp_path, "c", rps=1.0, batch_rps=1.0)
    pools = [{"name": "od", **H100, "quota": 1, "initial_replicas": 1}]
    with pytest.raises(ScenarioError, match=r"no workload\.batch section"):
        ClusterSimulator(_scenario(path, pools, batch=False))


def test_batch_share_splits_the_arrivals(tmp_path):
    path = _trace(tmp_path, "plain", rps=4.0, batch_rps=0.0, with_class=False)
    pools = [{"name": "od", **H100, "quota": 1, "initial_replicas": 1}]
    plain = ClusterSimulator(_scenario(path, pools, batch=False)).workload
    sc = _scenario(path, pools)
    sc = sc.model_copy(
        update={
            "workload": sc.workload.model_copy(
                update={"batch": sc.workload.batch.model_copy(update={"share": 0.25})}
            )
        }
    )
    wl = ClusterSimulator(sc).workload
    total = plain.arrivals.sum()
    assert wl.arrivals.sum() + wl.batch_bins[0].sum() == total
    assert wl.batch_bins[0].sum() / total == pytest.approx(0.25, abs=0.03)


def test_the_observation_shows_the_batch_backlog_only_with_batch_work(tmp_path):
    from rlscale.envs.env import InferenceClusterEnv
    from rlscale.envs.observation import BATCH_FEATURES, observation_names

    pools = [{"name": "od", **H100, "quota": 2, "initial_replicas": 1, "serves": "interactive"}]
    path = _trace(tmp_path, "obs", rps=1.0, batch_rps=2.0)
    env = InferenceClusterEnv(scenario=_scenario(path, pools, deadline_h=0.1))
    names = [f[0] for f in BATCH_FEATURES]
    assert env.observation_names[-2:] == names
    assert env.observation_names[:-2] == observation_names(["od"])
    env.reset(seed=0)
    noop = env.sim.noop_action()
    for _ in range(5):
        obs, *_ = env.step(noop)
    assert env.observation_space.contains(obs)
    sim = env.sim
    queued = sim.batch_counters(0)["queued"]
    assert queued > 0
    deadline_s = 0.1 * 3600.0
    assert obs[-2] == pytest.approx(queued / (sim.reference_rps * deadline_s), rel=1e-5)
    assert obs[-1] > 0.0
    plain = InferenceClusterEnv(
        scenario=_scenario(
            _trace(tmp_path, "obs-i", rps=1.0, batch_rps=0.0, with_class=False),
            pools,
            batch=False,
        )
    )
    assert plain.observation_names == observation_names(["od"])
