"""A policy that observes a spend budget, served: the service feeds it from its spend meter,
refuses it at load without a matching budget, and falls back (never scaling down) when the
budget's spend is not known whole."""

from __future__ import annotations

import datetime as dt
from dataclasses import replace

import pytest

from rlscale.common.budgets import BudgetConfig
from rlscale.envs.scenario import load_scenario
from rlscale.serving.budgets import BudgetError, SpendStore
from rlscale.serving.schemas import RecommendationRequest
from rlscale.serving.service import DecisionService, load_policy

SCENARIO = "synthetic-4day-budget"
T0 = dt.datetime(2026, 3, 10, 12, 0, tzinfo=dt.UTC).timestamp()
MIDNIGHT = dt.datetime(2026, 3, 11, 0, 0, tzinfo=dt.UTC).timestamp()
_SHIPPED = load_scenario(SCENARIO).budgets[0]
DAILY = BudgetConfig(name=_SHIPPED.name, period=_SHIPPED.period, limit_usd=_SHIPPED.limit_usd)
"""The scenario's observed budget, as the service's --budgets file writes it."""


class Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


class Spy:
    """The served policy, recording the states it decided on."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.name = inner.name
        self.manifest = inner.manifest
        self.states = []

    def initial_memory(self):
        return self.inner.initial_memory()

    def decide(self, state, memory):
        self.states.append(state)
        return self.inner.decide(state, memory)


@pytest.fixture(scope="module")
def policy_folder(exported_policy):
    return exported_policy(0, SCENARIO)


def _service(policy_folder, budgets, staleness_s: float = 60.0, state=None, **kw):
    scenario = load_scenario(SCENARIO)
    loaded = load_policy(str(policy_folder), scenario)
    spy = Spy(loaded.policy)
    clock = Clock(T0)
    service = DecisionService(
        scenario,
        replace(loaded, policy=spy),
        load_policy("hpa", scenario),
        max_staleness_s=staleness_s,
        budgets=budgets,
        budget_state=None if state is None else SpendStore(state),
        clock=clock,
        **kw,
    )
    return service, clock, spy


def _decide(service, clock, t, *, h100=4, rate=1.0, cluster="c1"):
    clock.t = t
    body = {
        "cluster_id": cluster,
        "timestamp": t,
        "arrival_rate_rps": rate,
        "pools": [
            {"name": "h100", "replicas": {"ready": h100}},
            {"name": "a100", "replicas": {"ready": 0}},
        ],
    }
    return service.decide(RecommendationRequest.model_validate(body))


def test_the_export_names_the_observed_budget(policy_folder):
    from rlscale.agents.onnx_policy import read_manifest

    budget = read_manifest(policy_folder).observation.budget
    assert budget == DAILY  # the scenario's budget, in the service's schema


@pytest.mark.parametrize(
    ("budgets", "match"),
    [
        ([], rf"observes budget 'daily' \(day, {DAILY.limit_usd:g} USD, global\).*has none"),
        ([BudgetConfig(name="other", period="day", limit_usd=1.0)], "add a budget named 'daily'"),
        (
            [BudgetConfig(name="daily", period="hour", limit_usd=DAILY.limit_usd)],
            "must be day and global",
        ),
        (
            [BudgetConfig(name="daily", period="day", limit_usd=DAILY.limit_usd, tenant="acme")],
            "must be day and global",
        ),
    ],
)
def test_a_policy_whose_budget_is_not_configured_is_refused_at_load(policy_folder, budgets, match):
    with pytest.raises(BudgetError, match=match):
        _service(policy_folder, budgets)


def test_the_swap_to_such_a_policy_is_refused_and_the_old_one_keeps_serving(policy_folder):
    scenario = load_scenario(SCENARIO)
    service = DecisionService(scenario, load_policy("hpa", scenario), load_policy("hpa", scenario))
    with pytest.raises(BudgetError, match="add a budget named 'daily'"):
        service.swap_policy(load_policy(str(policy_folder), scenario))
    assert service.policy_version.startswith("hpa")


def test_a_period_not_metered_whole_falls_back_without_scaling_down(policy_folder):
    """Started at noon, the service has not seen the morning's spend: it does not guess."""
    service, clock, spy = _service(policy_folder, [DAILY])
    out = _decide(service, clock, T0, h100=4, rate=0.1)  # the HPA would scale far down
    assert out.source == "fallback"
    assert "budget_unknown" in out.causes
    assert out.replicas["h100"] >= 4
    assert spy.states == []


def test_the_policy_is_fed_the_meters_spend_once_a_period_is_metered_whole(policy_folder):
    service, clock, spy = _service(policy_folder, [DAILY])
    t = MIDNIGHT - 120.0
    outs = []
    while t <= MIDNIGHT + 300.0:  # metering before midnight covers the next day whole
        outs.append((t, _decide(service, clock, t, h100=4, rate=6.0)))
        t += 30.0
    before = [o for s, o in outs if s < MIDNIGHT]
    after = [o for s, o in outs if s >= MIDNIGHT]
    assert all("budget_unknown" in o.causes for o in before)
    assert all(o.source == "policy" and "budget_unknown" not in o.causes for o in after)
    state = spy.states[-1]
    status = next(b for b in after[-1].budgets if b.name == "daily")
    assert state.budget.spend_usd == pytest.approx(status.spend_usd)
    assert status.spend_usd == pytest.approx(4 * 4.0 * 300.0 / 3600.0)  # 4 H100 since 00:00
    assert state.budget.limit_usd == DAILY.limit_usd
    assert state.budget.time_left_s == pytest.approx(86400.0 - 300.0)
    assert state.budget.period_s == 86400.0


def test_a_silent_cluster_makes_the_global_budget_unknown(policy_folder):
    """Another cluster counted by the budget not heard from within the staleness bound: its
    spend since is unmetered, so the budget's spend is a lower bound and is not fed."""
    service, clock, _ = _service(policy_folder, [DAILY], staleness_s=60.0)
    t = MIDNIGHT - 60.0
    _decide(service, clock, t, cluster="c2")
    for k in range(4):
        _decide(service, clock, t + 30.0 * k)
    out = _decide(service, clock, MIDNIGHT + 30.0)
    assert out.source == "fallback" and "budget_unknown" in out.causes
    assert out.replicas["h100"] >= 4
    _decide(service, clock, MIDNIGHT + 45.0, cluster="c2")  # heard from again
    out = _decide(service, clock, MIDNIGHT + 60.0)
    # c2's spend from 00:00 to 00:00:45 was not metered: the day stays a lower bound
    assert out.source == "fallback" and "budget_unknown" in out.causes
    assert out.replicas["h100"] >= 4
    t = MIDNIGHT + 86400.0 - 60.0
    while t <= MIDNIGHT + 86400.0 + 30.0:  # both heard from through the next midnight
        _decide(service, clock, t, cluster="c2")
        out = _decide(service, clock, t)
        t += 30.0
    assert out.source == "policy"


def test_the_hot_reload_refuses_such_a_policy_and_keeps_serving(policy_folder):
    """A reload to a policy whose budget is not configured is refused (not retried as a
    transient error), and the policy already serving stays."""
    from rlscale.serving.reload import PolicyReloader

    scenario = load_scenario(SCENARIO)
    service = DecisionService(scenario, load_policy("hpa", scenario), load_policy("hpa", scenario))
    before = service.policy_version
    event = PolicyReloader(service, str(policy_folder), scenario).check()
    assert event.result == "refused"
    assert "BudgetError" in event.error and "add a budget named 'daily'" in event.error
    assert service.policy_version == before


def test_the_meter_fed_the_simulators_states_sees_the_budget_the_simulator_observes():
    """The same cluster, simulated and reported to the service step by step: the service's
    spend meter (replicas held between reports) meters the day's spend the kernel bills (per
    sub-step) to within a percent, and the budget entries it would feed a policy are the
    simulator's own: the time left exactly, the spent share to within 0.01."""
    import numpy as np

    from rlscale.agents.observe import observe
    from rlscale.envs.budgets import SIM_EPOCH_UNIX_S
    from rlscale.envs.observation import write_budget_features
    from rlscale.envs.simulator import ClusterSimulator

    sim = ClusterSimulator(SCENARIO, 1)
    start = 2880 - 20  # 23:50 on the workload's first day: the meter starts before midnight
    sim.reset_cluster(0, np.random.default_rng(0), start_step=start)
    assert sim.budget_ledger.now_unix_s()[0] == SIM_EPOCH_UNIX_S + start * 30.0
    clock = Clock(0.0)
    scenario = sim.scenario
    service = DecisionService(
        scenario, None, load_policy("hpa", scenario), budgets=[DAILY], clock=clock
    )
    rng = np.random.default_rng(1)
    P = len(sim.pools)
    checked = 0
    for step in range(20 + 240):  # to 02:00
        t = float(sim.budget_ledger.now_unix_s()[0])
        clock.t = t
        service.decide(RecommendationRequest.from_state(observe(sim, 0), timestamp=t))
        fed = service.spend.observed_budget("default", DAILY.name, t)
        if step >= 20:  # a whole day metered
            assert fed is not None
            mine = observe(sim, 0).budget
            assert fed.time_left_s == mine.time_left_s and fed.period_s == mine.period_s
            o_service, o_sim = np.zeros(2), np.zeros(2)
            write_budget_features(o_service, fed.spend_usd, fed.limit_usd, fed.time_left_s, 86400)
            write_budget_features(o_sim, mine.spend_usd, mine.limit_usd, mine.time_left_s, 86400)
            np.testing.assert_allclose(o_service, sim.obs[0, -2:], atol=0.01)
            np.testing.assert_allclose(o_sim, sim.obs[0, -2:], rtol=1e-6)
            checked += 1
        action = sim.noop_action()
        if rng.random() < 0.2:
            action[:P] = rng.integers(0, 2 * scenario.max_step + 1, P)
        sim.step(action[None, :])
    assert checked == 240
    billed = sim.step_info(0)[f"budget/{DAILY.name}/spend_usd"]
    assert billed > 20.0  # replicas ran
    assert fed.spend_usd == pytest.approx(billed, rel=0.01)


def _run(service, clock, start, end, step=30.0, **kw):
    outs, t = [], start
    while t <= end:
        outs.append(_decide(service, clock, t, **kw))
        t += step
    return outs


@pytest.mark.parametrize("downtime_s", [45.0, 600.0])
def test_a_restart_with_the_budget_state_resumes_the_period(policy_folder, tmp_path, downtime_s):
    """Metered whole since before midnight, the service restarts at 01:00 with its state file:
    the first observation after it meters the stop as if the service had not stopped (at the
    last rate, for at most the staleness bound, 60 s), so a short stop loses nothing and the
    policy keeps deciding on the same spend as a service that never stopped. A longer stop
    leaves spend unmetered, as a cluster silent that long would: the fallback decides."""
    state = tmp_path / "spend.sqlite"
    first, clock, _ = _service(policy_folder, [DAILY], state=state)
    _run(first, clock, MIDNIGHT - 60.0, MIDNIGHT + 3600.0, h100=4, rate=6.0)
    first.spend.store.close()
    again, clock2, spy = _service(policy_folder, [DAILY], state=state)
    never, clock3, _ = _service(policy_folder, [DAILY])
    _run(never, clock3, MIDNIGHT - 60.0, MIDNIGHT + 3600.0, h100=4, rate=6.0)
    back = MIDNIGHT + 3600.0 + downtime_s
    out = _decide(again, clock2, back, h100=4, rate=6.0)
    reference = next(b for b in _decide(never, clock3, back).budgets if b.name == "daily")
    status = next(b for b in out.budgets if b.name == "daily")
    assert status.spend_usd == pytest.approx(4 * 4.0 * (3600.0 + min(downtime_s, 60.0)) / 3600)
    assert status.spend_usd == pytest.approx(reference.spend_usd, rel=1e-12)
    if downtime_s <= 60.0:
        assert status.metered_since_s == MIDNIGHT and status.notes == []
        assert out.source == "policy" and spy.states[-1].budget.spend_usd == status.spend_usd
    else:  # a stop past the bound left spend unmetered: the day is not known whole
        assert status.metered_since_s == back and "is not metered" in status.notes[-1]
        assert reference.metered_since_s == back  # nor for a service that never stopped
        assert out.source == "fallback" and "budget_unknown" in out.causes


def test_without_the_state_a_restart_falls_back_for_the_period(policy_folder, tmp_path):
    first, clock, _ = _service(policy_folder, [DAILY], state=tmp_path / "spend.sqlite")
    _run(first, clock, MIDNIGHT - 60.0, MIDNIGHT + 600.0, h100=4, rate=6.0)
    again, clock2, spy = _service(policy_folder, [DAILY])
    out = _decide(again, clock2, MIDNIGHT + 630.0, h100=4, rate=0.1)
    status = next(b for b in out.budgets if b.name == "daily")
    assert status.metered_since_s == MIDNIGHT + 630.0 and "is not metered" in status.notes[-1]
    assert out.source == "fallback" and "budget_unknown" in out.causes
    assert out.replicas["h100"] >= 4 and spy.states == []


def test_a_budget_that_counts_something_else_starts_afresh(policy_folder, tmp_path):
    state = tmp_path / "spend.sqlite"
    first, clock, _ = _service(policy_folder, [DAILY], state=state)
    _run(first, clock, MIDNIGHT - 60.0, MIDNIGHT + 600.0, h100=4, rate=6.0)
    first.spend.store.close()
    hourly = BudgetConfig(name=DAILY.name, period="hour", limit_usd=5.0)
    meter = SpendStore(state)
    from rlscale.serving.budgets import SpendMeter

    fresh = SpendMeter([hourly], {"h100": 0.0, "a100": 0.0}, 60.0, store=meter)
    assert all(not s.spend_usd for s in fresh.statuses("c1", MIDNIGHT + 630.0))


def test_a_budget_state_that_is_not_sqlite_is_a_clear_error(tmp_path):
    bad = tmp_path / "spend.sqlite"
    bad.write_text("not a database, " * 100)
    with pytest.raises(BudgetError, match=r"budget state .*spend\.sqlite"):
        SpendStore(bad)


def test_a_restored_cluster_never_heard_from_again_stops_blocking_the_budget(
    policy_folder, tmp_path
):
    """c2 was metered before the restart and is gone after it: while it may still report it
    keeps the budget unknown; once silent past forget_after_s it is dropped, its silence
    leaves that day not metered whole (fallback), and the next day is fed to the policy."""
    state = tmp_path / "spend.sqlite"
    first, clock, _ = _service(policy_folder, [DAILY], state=state)
    for t in (MIDNIGHT - 90.0, MIDNIGHT - 60.0):
        _decide(first, clock, t, cluster="c2")
        _decide(first, clock, t, cluster="c1", h100=4, rate=6.0)
    first.spend.store.close()
    again, clock, spy = _service(policy_folder, [DAILY], state=state, forget_after_s=600.0)
    assert _decide(again, clock, MIDNIGHT - 30.0, h100=4, rate=6.0).source == "fallback"
    out = _decide(again, clock, MIDNIGHT + 300.0, h100=4, rate=6.0)
    assert "budget_unknown" in out.causes  # c2 silent, not yet dropped
    out = _decide(again, clock, MIDNIGHT + 660.0, h100=4, rate=6.0)
    status = next(b for b in out.budgets if b.name == "daily")
    assert not any("c2" in n for n in status.notes)  # dropped
    assert status.metered_since_s == MIDNIGHT + 660.0 and out.source == "fallback"
    nxt = MIDNIGHT + 86400.0
    for t in (nxt - 60.0, nxt - 30.0, nxt, nxt + 30.0):
        out = _decide(again, clock, t, h100=4, rate=6.0)
    assert out.source == "policy" and spy.states[-1].budget is not None
