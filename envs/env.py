"""The Gymnasium environment: one simulated GPU inference cluster under an autoscaling policy."""

from __future__ import annotations

from typing import Any, ClassVar

import gymnasium as gym
import numpy as np

from rlscale.envs.scenario import Scenario
from rlscale.envs.simulator import ClusterSimulator
from rlscale.envs.workload import WorkloadSeries

DEFAULT_SCENARIO = "azure-conv"


class InferenceClusterEnv(gym.Env):
    """Autoscale a GPU cluster serving an LLM, against latency SLOs and cost.

    ## Description
    Requests of a replayed trace or of synthetic seasonal load arrive at a cluster of replicas
    drawn from several pools (an instance type bought on demand or on spot). Each decision step
    (the scenario's ``control_interval_s``, 30 s by default) the agent changes the replica count
    of every pool and sets each pool's warm-pool size. The simulator then advances the cluster
    in 1 s sub-steps with a fluid model of continuous batching (see ``rlscale.envs.dynamics``):
    requests queue, are admitted while sequence slots, KV cache and the prefill budget allow,
    decode at a speed fitted from measured vLLM data, and are dropped past the timeout. New
    replicas take minutes to provision and load the model; removed replicas drain; spot replicas
    may be preempted after a notice.

    ## Action Space
    ``MultiDiscrete([2m+1] * pools + [w_p + 1 for each pool])`` with ``m`` the scenario's
    ``max_step`` and ``w_p`` a pool's ``warm_pool_max``:

    | index | meaning |
    |-------|---------|
    | 0 .. P-1 | replica change of pool p: ``action - m`` (so ``m`` means no change) |
    | P .. 2P-1 | warm-pool size of pool p (standby replicas that start fast) |

    Changes beyond a pool's quota (or the spot market's capacity) are clipped. A removal cancels
    starting replicas first (newest first), then drains ready ones.

    ## Observation Space
    ``Box(low, high, (17 + 9 * pools,), float32)``; every entry is clipped to its bounds.
    Rates are divided by the workload's mean arrival rate (the reference rate). Every entry is
    a number a live cluster reports, so a served policy sees what it trained on: the layout and
    formulas live in :mod:`rlscale.envs.observation`, shared by the kernel and the service.

    | index | name | range | meaning |
    |-------|------|-------|---------|
    | 0 | arrival_rate | [0, 50] | arrival rate over the last interval / reference |
    | 1 | arrival_rate_ewma | [0, 50] | 5-minute EWMA of that rate / reference |
    | 2 | arrival_trend | [-50, 50] | last-interval rate minus its EWMA / reference |
    | 3 | forecast_rate | [0, 50] | forecast rate of the next interval / reference |
    | 4 | queue | [0, 50] | queued requests / (reference x timeout) |
    | 5 | in_flight | [0, 50] | sequences decoding / (reference x 60 s) |
    | 6 | compute_util | [0, 1] | busy share of ready replicas' time |
    | 7 | kv_util | [0, 1] | share of ready replicas' KV cache held |
    | 8 | ttft_p50 | [0, 100] | TTFT p50 / TTFT target |
    | 9 | ttft_p95 | [0, 100] | TTFT p95 / TTFT target |
    | 10 | tpot_p95 | [0, 100] | TPOT p95 / TPOT target |
    | 11 | slo_attainment | [0, 1] | share of the interval's requests meeting the SLO |
    | 12 | drop_share | [0, 1] | dropped / (requests reaching the servers + dropped) |
    | 13-14 | day_sin, day_cos | [-1, 1] | time of day |
    | 15-16 | week_sin, week_cos | [-1, 1] | time of week |
    | 17+9p+0 | starting | [0, 1] | provisioning + loading replicas / quota |
    | 17+9p+1 | ready | [0, 1] | ready replicas / quota |
    | 17+9p+2 | draining | [0, 1] | draining replicas / quota |
    | 17+9p+3 | standby | [0, 1] | warm-pool standby replicas / quota |
    | 17+9p+4 | refilling | [0, 1] | warm-pool replicas being prepared / quota |
    | 17+9p+5 | preempt_notice | [0, 1] | replicas under a preemption notice / quota |
    | 17+9p+6 | price_ratio | [0, 5] | current hourly price / on-demand price |
    | 17+9p+7 | spot_capacity | [0, 1] | share of quota the market can supply |
    | 17+9p+8 | batch_fill | [0, 1] | sequences per ready replica / max_num_seqs |
    | last-1 | budget/spent_share | [0, 2] | observed budget: period's spend / limit |
    | last | budget/time_left_share | [0, 1] | observed budget: share of its period left |

    The two budget entries exist only when the scenario marks a budget ``observed``
    (:mod:`rlscale.envs.budgets`); otherwise the layout ends with the last pool's.
    ``env.observation_names`` names every entry (``POOL/feature`` for a pool's).

    ## Rewards
    ``-(cost_usd + slo_violation_usd * violations + churn_usd * replicas_changed) / scale``
    per step, with the weights of the scenario's ``reward`` section. A violation is a request
    dropped at the timeout or served outside the TTFT or TPOT target. A budget in ``penalty``
    mode also charges ``penalty_usd_per_usd`` per USD its period's spend goes over the limit;
    one in ``cap`` mode cuts the action so that the spend never does. Cost and SLO attainment
    are always reported separately in ``info``.

    ## Starting State
    Each pool holds its ``initial_replicas`` ready and an empty queue. The episode starts at a
    decision step drawn uniformly among those whose whole episode lies in the chosen part of
    the workload's split (``split``, the training part by default; see
    :mod:`rlscale.envs.splits`). ``options={"start_step": k}`` pins it, inside that part.
    With ``randomize=True`` the episode also draws its multipliers of the arrival rate, the
    spot price, the preemption chance and the cold-start durations from the scenario's
    ``randomization`` ranges (domain randomization; see below).

    ## Episode End
    Never terminated; truncated after the split's episode length: the scenario's
    ``episode_hours``, shortened to half the workload when the workload holds fewer than two
    episodes (as evaluation does), or ``episode_hours`` itself with ``split="all"``.

    ## Info
    Namespaced metrics of the step: ``cost/usd``, ``cost/total_usd``, ``cost/by_pool_usd``,
    ``slo/attainment``, ``slo/attainment_episode``, ``latency/ttft_p95_s`` (p50/p95/p99 of TTFT
    and TPOT), ``replicas`` (pool -> state -> count), ``scale/cold_starts``,
    ``spot/preemptions``, request counters, ``cost/budget_spent`` (cost so far / ``budget_usd``)
    when the scenario sets a budget, per budget of its ``budgets`` section ``budget/NAME/...``
    (spend, limit, breaches; ``budget/cap_bound`` under a cap), and at the episode's end
    ``cost/by_tenant_usd``. With
    ``randomize=True``, the reset's info and the episode's last carry the episode's multipliers:
    ``randomization/rate_scale``, ``randomization/spot_price_scale``,
    ``randomization/preemption_scale``, ``randomization/cold_start_scale``.

    ## Arguments
    * ``scenario``: a shipped scenario name (see ``rlscale.envs.list_scenarios()``), a YAML
      path or a :class:`~rlscale.envs.scenario.Scenario`. Default ``"azure-conv"``.
    * ``workload``: a prebuilt :class:`~rlscale.envs.workload.WorkloadSeries` replacing the
      scenario's workload (a user's own trace).
    * ``workload_seed``: seed of the workload's own sampling (ServeGen, synthetic noise).
    * ``split``: where episodes lie: ``"train"`` (default; never a held-out or validation
      window), ``"validation"``, ``"heldout"``, or ``"all"`` (the whole trace).
    * ``randomize``: domain randomization for training (default ``False``). Each episode draws
      a multiplier of the arrival rate (and its tokens and forecast), of the spot prices, of
      the preemption chance and of the cold-start durations from the ranges of the scenario's
      ``randomization`` section (1 for a range it leaves out); the draws are reproducible for a
      seed and do not change the episode's window or the simulator's own random stream.
      ``False`` runs the scenario as written (evaluation), as does a scenario without the
      section.

    >>> import gymnasium as gym
    >>> import rlscale.envs
    >>> env = gym.make("rlscale/InferenceCluster-v0", scenario="azure-conv")
    >>> obs, info = env.reset(seed=0)
    >>> obs, reward, terminated, truncated, info = env.step(env.unwrapped.noop_action())
    >>> reward < 0 and not terminated
    True
    >>> env = gym.make("rlscale/InferenceCluster-v0", scenario="azure-conv", randomize=True)
    >>> obs, info = env.reset(seed=0)
    >>> 0.8 <= info["randomization/rate_scale"] <= 1.25
    True

    ## Version History
    * v0: initial version; episodes lie in the training part of the split by default; no
      observation without a live counterpart (``episode_progress`` and ``budget_spent`` gone);
      ``randomize`` for domain randomization (off by default: nominal runs are unchanged).
    """

    metadata: ClassVar[dict[str, Any]] = {"render_modes": []}

    def __init__(
        self,
        *,
        scenario: str | Scenario = DEFAULT_SCENARIO,
        workload: WorkloadSeries | None = None,
        workload_seed: int = 0,
        split: str = "train",
        randomize: bool = False,
        render_mode: str | None = None,
    ) -> None:
        if render_mode is not None:
            raise ValueError(f"render_mode {render_mode!r} is not supported; this env has none")
        self.render_mode = None
        self.sim = ClusterSimulator(
            scenario,
            1,
            workload=workload,
            workload_seed=workload_seed,
            split=split,
            randomize=randomize,
        )
        self.scenario = self.sim.scenario
        self.observation_space, self.action_space = self.sim.spaces()
        self.observation_names = self.sim.observation_names
        self._ready = False

    def noop_action(self) -> np.ndarray:
        """The action that changes no replica count and keeps no warm pool."""
        return self.sim.noop_action()

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray, dict[str, Any]]:
        """Start an episode; ``options={"start_step": k}`` pins its start in the workload."""
        super().reset(seed=seed)
        start = None
        if options:
            unknown = set(options) - {"start_step"}
            if unknown:
                raise ValueError(f"unknown reset options {sorted(unknown)}; known: ['start_step']")
            start = options.get("start_step")
        self.sim.reset_cluster(0, self.np_random, start_step=start)
        self._ready = True
        info = {"replicas": self.sim.replicas(0), "start_step": int(self.sim.start_steps[0])}
        info.update(self.sim.randomization_info(0))
        return self.sim.obs[0].copy(), info

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        """Apply ``action`` and advance one control interval."""
        assert self._ready, "Call reset before using step"
        a = np.asarray(action, dtype=np.int64)
        if a.shape != self.action_space.shape:
            raise ValueError(
                f"action of shape {a.shape} is not in {self.action_space} "
                f"(shape {self.action_space.shape})"
            )
        self.sim.step(a[None, :])  # refuses, naming the entry, an action outside the space
        truncated = bool(self.sim.truncated()[0])
        info = self.sim.step_info(0)
        if truncated:
            info["cost/by_tenant_usd"] = self.sim.tenant_costs(0)
            info.update(self.sim.randomization_info(0))
            self._ready = False
        return self.sim.obs[0].copy(), float(self.sim.rewards[0]), False, truncated, info
