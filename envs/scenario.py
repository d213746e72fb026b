"""Scenario files: the typed schema of a simulated cluster, its workload, SLO and reward.

A scenario is a YAML file (see ``experiments/scenarios/``). Every section is a pydantic model
that forbids unknown keys, so a typo such as ``qouta:`` fails with the key and the file named
instead of silently falling back to a default.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Annotated, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from rlscale.common.budgets import BudgetConfig

_PACKAGE_DIR = Path(__file__).resolve().parent
_REPO_DIR = _PACKAGE_DIR.parent
SCENARIO_DIR = _REPO_DIR / "experiments" / "scenarios"
PROFILE_DIR = _REPO_DIR / "experiments" / "profiles"
COLDSTART_DIR = _REPO_DIR / "experiments" / "coldstart"
"""Shipped cold-start duration tables, fitted from the public data (envs/coldstart.py)."""

DATA_ENV_VAR = "RLSCALE_DATA"


class ScenarioError(ValueError):
    """A scenario, trace or profile that cannot be used; the message names the field and value."""


def data_root() -> Path:
    """Where the public datasets are: ``$RLSCALE_DATA``, else ``../shared/data`` by the repo."""
    env = os.environ.get(DATA_ENV_VAR)
    if env:
        return Path(env).expanduser().resolve()
    return (_REPO_DIR.parent / "shared" / "data").resolve()


def resolve_data_path(path: str | Path) -> Path:
    """An absolute path as given; a relative one below :func:`data_root`, else below the cwd."""
    p = Path(path).expanduser()
    if p.is_absolute():
        return p
    under_data = data_root() / p
    if under_data.exists():
        return under_data
    if p.exists():
        return p.resolve()
    return under_data


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


PositiveFloat = Annotated[float, Field(gt=0)]
NonNegFloat = Annotated[float, Field(ge=0)]
Share = Annotated[float, Field(ge=0, le=1)]


class LengthDistribution(_Strict):
    """Token lengths for traces that do not record them: a lognormal set by median and p90."""

    median: PositiveFloat
    p90: PositiveFloat
    max: PositiveFloat = 32768

    @model_validator(mode="after")
    def _ordered(self) -> LengthDistribution:
        if self.p90 < self.median:
            raise ValueError(f"p90 ({self.p90}) must be >= median ({self.median})")
        return self


class Burst(_Strict):
    """A promotion or incident: load multiplied for a while, announced (forecastable) or not."""

    day: NonNegFloat = Field(description="day of the episode the burst starts on (0-based)")
    hour: Annotated[float, Field(ge=0, lt=24)] = 12.0
    duration_h: PositiveFloat = 2.0
    multiplier: PositiveFloat = 3.0
    announced: bool = True


class SyntheticLoad(_Strict):
    """Seasonal synthetic load: base rate x daily x weekly profile x noise, plus bursts."""

    base_rate_rps: PositiveFloat = 20.0
    daily_amplitude: Share = 0.6
    peak_hour: Annotated[float, Field(ge=0, lt=24)] = 14.0
    weekend_factor: PositiveFloat = 0.7
    noise_cv: NonNegFloat = 0.1
    noise_corr_s: PositiveFloat = 600.0
    bursts: list[Burst] = Field(default_factory=list)
    random_bursts_per_week: NonNegFloat = 0.0
    days: PositiveFloat = 14.0


TraceFormat = Literal["azure", "mooncake", "servegen", "csv"]


REQUEST_CLASSES = ("interactive", "batch")
"""Request classes: interactive requests have TTFT and TPOT targets (the SLO); batch requests
a completion deadline (``workload.batch.deadline_h``), as batch APIs offer."""


class BatchConfig(_Strict):
    """Batch requests in the workload: a share of the arrivals, or a trace's ``class`` column.

    Batch requests wait in their own queue and take the room interactive requests leave (or a
    pool with ``serves: batch``); one still queued at its deadline expires, as a batch API's
    unfinished requests do at the end of its completion window.
    """

    share: Annotated[float, Field(ge=0, lt=1)] = Field(
        default=0.0,
        description="share of the arrivals that are batch requests (drawn per request for a "
        "trace without a class column; a trace with one gives its own classes)",
    )
    deadline_h: PositiveFloat = Field(
        default=24.0, description="completion window: a request still queued this long expires"
    )
    expired_usd: NonNegFloat = Field(
        default=0.01, description="reward lost per expired batch request, USD"
    )


class WorkloadConfig(_Strict):
    """Where requests come from: a recorded trace replayed, or synthetic seasonal load."""

    kind: Literal["azure", "mooncake", "servegen", "csv", "synthetic"]
    path: str | None = Field(
        default=None, description="trace file or folder; relative to $RLSCALE_DATA"
    )
    time_scale: PositiveFloat = Field(default=1.0, description=">1 stretches the trace in time")
    rate_scale: PositiveFloat = Field(default=1.0, description="multiplies the arrival rate")
    target_mean_rps: PositiveFloat | None = Field(
        default=None, description="rescale the rate so the mean over the window is this (ServeGen)"
    )
    window_start_h: NonNegFloat = 0.0
    window_hours: PositiveFloat | None = None
    cache_hit_ratio: Annotated[float, Field(ge=0, lt=1)] = 0.0
    prompt_tokens: LengthDistribution = LengthDistribution(median=1000, p90=3000)
    output_tokens: LengthDistribution = LengthDistribution(median=150, p90=500)
    synthetic: SyntheticLoad | None = None
    start_weekday: Annotated[int, Field(ge=0, le=6)] = 0
    start_hour: Annotated[float, Field(ge=0, lt=24)] = 0.0
    batch: BatchConfig | None = Field(
        default=None, description="batch requests (request class 'batch'); none when absent"
    )

    @model_validator(mode="after")
    def _source(self) -> WorkloadConfig:
        if self.kind == "synthetic":
            if self.path is not None:
                raise ValueError("workload.path is for traces; a synthetic workload takes none")
        elif self.path is None:
            raise ValueError(f"workload.kind '{self.kind}' needs workload.path (a trace file)")
        if self.synthetic is not None and self.kind != "synthetic":
            raise ValueError("workload.synthetic is only for kind: synthetic")
        return self


class SpotConfig(_Strict):
    """Spot market of one pool: price from a trace or a mean-reverting process; preemptions."""

    price: Literal["trace", "ou"] = "ou"
    price_trace: str = "aws_spot_price_gpu_2022-05-31/aws_spot_prices_gpu_2022-05-31.tsv"
    instance_type: str | None = Field(default=None, description="row filter for the price trace")
    availability_zone: str | None = None
    mean_discount: Annotated[float, Field(gt=0, lt=1)] = 0.35
    reversion_per_h: PositiveFloat = 0.5
    volatility: NonNegFloat = 0.1
    preemption: Literal["trace", "hazard"] = "hazard"
    preemption_trace: str = (
        "spot_traces_skypilot/preemption/1-node/aws-04-22-2023/us-east-1c_v100_1.json"
    )
    hazard_per_h: NonNegFloat = 0.1
    notice_s: NonNegFloat = 120.0
    fulfil_prob: Share = 0.9


class PoolConfig(_Strict):
    """One pool: an instance type bought on demand or on spot."""

    name: str
    profile: str = Field(description="throughput profile name in experiments/profiles/")
    purchase: Literal["on_demand", "spot"] = "on_demand"
    price_usd_h: PositiveFloat = Field(description="on-demand hourly price of one replica")
    quota: Annotated[int, Field(ge=1)]
    initial_replicas: Annotated[int, Field(ge=0)] = 0
    warm_pool_max: Annotated[int, Field(ge=0)] = 0
    warm_holding_usd_h: NonNegFloat = 0.0
    spot: SpotConfig | None = None
    serves: Literal["all", "interactive", "batch"] = Field(
        default="all",
        description="request classes the pool admits: 'all' admits batch requests into the "
        "room interactive ones leave",
    )

    @model_validator(mode="after")
    def _consistent(self) -> PoolConfig:
        if self.initial_replicas + self.warm_pool_max > self.quota:
            raise ValueError(
                f"pool '{self.name}': initial_replicas ({self.initial_replicas}) + "
                f"warm_pool_max ({self.warm_pool_max}) exceed quota ({self.quota})"
            )
        if self.purchase == "on_demand" and self.spot is not None:
            raise ValueError(f"pool '{self.name}': a spot section needs purchase: spot")
        if self.purchase == "spot" and self.warm_pool_max > 0:
            # a stopped spot instance cannot be held in reserve: its capacity goes back
            raise ValueError(f"pool '{self.name}': warm pools are for on-demand pools only")
        return self


class Distribution(_Strict):
    """A positive duration in seconds: lognormal by median and p90, or empirical from data."""

    median_s: PositiveFloat | None = None
    p90_s: PositiveFloat | None = None
    data: Literal["serverlessllm", "alibaba_basemodel"] | None = None
    scale: PositiveFloat = 1.0

    @model_validator(mode="after")
    def _one_source(self) -> Distribution:
        parametric = self.median_s is not None or self.p90_s is not None
        if parametric == (self.data is not None):
            raise ValueError("give either median_s and p90_s, or data, for a duration")
        if parametric and (
            self.median_s is None or self.p90_s is None or self.p90_s < self.median_s
        ):
            raise ValueError(
                f"a lognormal duration needs median_s <= p90_s (got {self.median_s}, {self.p90_s})"
            )
        return self


class ColdStartConfig(_Strict):
    """Cold start = provisioning + image pull + weight load; a warm start skips the first two."""

    provisioning: Distribution = Distribution(median_s=60, p90_s=120)
    image_pull: Distribution = Distribution(median_s=40, p90_s=90)
    weight_load: Distribution = Distribution(data="serverlessllm")
    engine_warmup: Distribution = Distribution(median_s=20, p90_s=40)


class SLOConfig(_Strict):
    """Latency targets; requests waiting longer than the timeout are dropped (violations)."""

    ttft_s: PositiveFloat = 2.0
    tpot_s: PositiveFloat = 0.1
    target_attainment: Share = 0.99
    timeout_s: PositiveFloat = 60.0


class RewardConfig(_Strict):
    """reward = -(cost_usd + slo_violation_usd * violations + churn_usd * scale_events) / scale."""

    slo_violation_usd: NonNegFloat = 0.01
    churn_usd: NonNegFloat = 0.02
    scale: PositiveFloat = 1.0


BudgetMode = Literal["report", "penalty", "cap"]
"""What a scenario does with a budget: report its spend, charge a penalty on spend over it,
or cap spend at it (:mod:`rlscale.envs.budgets`)."""


class ScenarioBudget(BudgetConfig):
    """A spend limit per period, as the decision service's ``--budgets`` file writes it
    (:class:`~rlscale.common.budgets.BudgetConfig`), plus what the simulator does with it.

    Periods are UTC hours, days and calendar months of the simulated clock, which starts on
    Monday 2024-01-01 00:00 UTC (:data:`rlscale.envs.budgets.SIM_EPOCH_UNIX_S`); an episode's
    first period starts with nothing spent.
    """

    mode: BudgetMode = Field(
        default="report",
        description=(
            "report: metered and reported; penalty: the reward pays penalty_usd_per_usd for "
            "every USD spent over the limit in a period; cap: the period's spend never exceeds "
            "the limit (scale-ups are cut and replicas stopped, most expensive first)"
        ),
    )
    penalty_usd_per_usd: NonNegFloat = Field(
        default=0.0, description="mode penalty: reward USD charged per USD over the limit"
    )
    observed: bool = Field(
        default=False,
        description=(
            "the policy observes this budget: its spent share and the time left in its period "
            "(two entries appended to the observation; a served policy is fed them from the "
            "service's spend meter)"
        ),
    )

    @model_validator(mode="after")
    def _consistent(self) -> ScenarioBudget:
        if self.cluster is not None:
            raise ValueError(
                f"budget '{self.name}': cluster is for the service's budgets file; a scenario "
                "simulates one cluster"
            )
        if self.tenant is not None and (self.mode != "report" or self.observed):
            raise ValueError(
                f"budget '{self.name}': a tenant's budget is metered and reported; mode "
                f"penalty or cap, and observed, are for a global budget (no tenant)"
            )
        if self.mode == "penalty" and self.penalty_usd_per_usd <= 0.0:
            raise ValueError(f"budget '{self.name}': mode penalty needs penalty_usd_per_usd > 0")
        if self.mode != "penalty" and self.penalty_usd_per_usd > 0.0:
            raise ValueError(
                f"budget '{self.name}': penalty_usd_per_usd is for mode penalty (mode is "
                f"{self.mode})"
            )
        return self


ScaleRange = tuple[float, float]
"""``[lo, hi]``: an episode's multiplier is drawn between them (``[x, x]`` fixes it at x)."""

RANDOMIZED_SCALES = ("rate_scale", "spot_price_scale", "preemption_scale", "cold_start_scale")
"""The multipliers an episode may draw, in the order the kernel stores them."""


class MixedWorkload(_Strict):
    """Another workload some training clusters run instead of the scenario's own (same pools,
    SLO and everything else): ``share`` of them, each on the training part of its own split."""

    share: Annotated[float, Field(gt=0, lt=1)] = Field(
        description="share of the training clusters that run this workload, in (0, 1)"
    )
    workload: WorkloadConfig


class RandomizationConfig(_Strict):
    """Domain randomization: the ranges each training episode draws its multipliers from.

    Only a simulator built with ``randomize=True`` draws them (training); otherwise, and for a
    range left out, the multiplier is 1 and the scenario runs as written. Each cluster draws
    its own at every reset (:mod:`rlscale.envs.randomization`).
    """

    rate_scale: ScaleRange | None = Field(
        default=None,
        description="multiplies the arrival rate (and so the tokens) and its forecast; > 0",
    )
    spot_price_scale: ScaleRange | None = Field(
        default=None,
        description="multiplies every spot pool's price path (trace or process); > 0",
    )
    preemption_scale: ScaleRange | None = Field(
        default=None,
        description=(
            "multiplies the chance of a spot preemption per step; >= 0 (0: none); a chance "
            "of 1 (a trace's certain loss) stays 1"
        ),
    )
    cold_start_scale: ScaleRange | None = Field(
        default=None,
        description="multiplies provisioning, weight-loading and warm-start durations; > 0",
    )
    workloads: list[MixedWorkload] = Field(
        default_factory=list,
        description=(
            "other workloads mixed into training, each on a share of the clusters; the "
            "scenario's own workload keeps the rest (the shares sum to less than 1)"
        ),
    )
    sampling: Literal["log_uniform", "uniform"] = Field(
        default="log_uniform",
        description=(
            "how a multiplier is drawn in [lo, hi]: log_uniform (as likely to halve as to "
            "double; needs lo > 0 unless lo == hi) or uniform"
        ),
    )

    @field_validator(*RANDOMIZED_SCALES)
    @classmethod
    def _ordered_range(cls, value: ScaleRange | None, info: ValidationInfo) -> ScaleRange | None:
        if value is None:
            return None
        name = info.field_name
        lo, hi = value
        if not (math.isfinite(lo) and math.isfinite(hi)):
            raise ValueError(f"{name} [{lo}, {hi}] must be finite numbers")
        if name == "preemption_scale":
            if lo < 0.0:
                raise ValueError(f"{name} [{lo}, {hi}]: lo must be >= 0 (0: no preemptions)")
        elif lo <= 0.0:
            raise ValueError(f"{name} [{lo}, {hi}]: lo must be > 0 (a multiplier)")
        if lo > hi:
            raise ValueError(f"{name} [{lo}, {hi}]: lo must be <= hi; write it as [{hi}, {lo}]")
        return value

    @model_validator(mode="after")
    def _own_workload_keeps_a_share(self) -> RandomizationConfig:
        total = sum(w.share for w in self.workloads)
        if self.workloads and total >= 1.0:
            raise ValueError(
                f"randomization.workloads: shares sum to {total:g}; they must sum to less "
                f"than 1 (the scenario's own workload keeps the rest)"
            )
        return self

    @model_validator(mode="after")
    def _log_uniform_needs_positive(self) -> RandomizationConfig:
        if self.sampling == "log_uniform":
            for name in RANDOMIZED_SCALES:
                r = getattr(self, name)
                if r is not None and r[0] == 0.0 and r[1] > 0.0:
                    raise ValueError(
                        f"{name} [{r[0]}, {r[1]}]: log_uniform sampling needs lo > 0; give a "
                        f"positive lo, or sampling: uniform"
                    )
        return self


class Scenario(_Strict):
    """A whole simulated deployment: workload, pools, cold starts, SLO, reward and horizon."""

    name: str
    description: str = ""
    control_interval_s: PositiveFloat = 30.0
    substep_s: PositiveFloat = 1.0
    episode_hours: PositiveFloat = 24.0
    workload: WorkloadConfig
    pools: list[PoolConfig] = Field(min_length=1)
    cold_start: ColdStartConfig = ColdStartConfig()
    slo: SLOConfig = SLOConfig()
    reward: RewardConfig = RewardConfig()
    max_step: Annotated[int, Field(ge=1, le=64)] = 2
    drain_grace_s: NonNegFloat = 120.0
    max_batched_tokens: Annotated[int, Field(ge=16)] = Field(
        default=8192, description="vLLM scheduler token budget of one iteration (decode + prefill)"
    )
    budget_usd: PositiveFloat | None = Field(
        default=None,
        description=(
            "an episode's spending budget, reported as cost/budget_spent (cost so far / budget) "
            "in every step's info; not a policy input (a live cluster has no episode budget)"
        ),
    )
    budgets: list[ScenarioBudget] = Field(
        default_factory=list,
        description=(
            "spend limits per hour, day or month, global or per tenant: reported, charged as "
            "a penalty, or capped (rlscale.envs.budgets); at most one observed"
        ),
    )
    routing: Literal["least_loaded", "random", "round_robin"] = Field(
        default="least_loaded",
        description=(
            "how requests reach replicas: least_loaded, one queue that every replica pulls from "
            "(a gateway that knows each replica's load); random or round_robin, a queue per "
            "replica fed blindly (a plain Kubernetes Service in front of vLLM pods)"
        ),
    )
    randomization: RandomizationConfig | None = Field(
        default=None,
        description=(
            "ranges of the multipliers a training episode draws (domain randomization); used "
            "only when the simulator is built with randomize=True"
        ),
    )

    @model_validator(mode="after")
    def _grid(self) -> Scenario:
        ratio = self.control_interval_s / self.substep_s
        if abs(ratio - round(ratio)) > 1e-9:
            raise ValueError(
                f"control_interval_s ({self.control_interval_s}) must be a whole multiple of "
                f"substep_s ({self.substep_s})"
            )
        names = [p.name for p in self.pools]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"pool names must be unique; repeated: {dupes}")
        budget_names = [b.name for b in self.budgets]
        twice = sorted({n for n in budget_names if budget_names.count(n) > 1})
        if twice:
            raise ValueError(f"budget names must be unique; repeated: {twice}")
        observed = [b.name for b in self.budgets if b.observed]
        if len(observed) > 1:
            raise ValueError(f"at most one budget can be observed; observed: {observed}")
        r = self.randomization
        if r is not None and not any(p.purchase == "spot" for p in self.pools):
            for name in ("spot_price_scale", "preemption_scale"):
                if getattr(r, name) is not None:
                    raise ValueError(
                        f"randomization.{name} is set but no pool is spot; remove it or add a "
                        f"spot pool"
                    )
        return self

    @property
    def substeps_per_step(self) -> int:
        """Sub-steps in one decision step."""
        return round(self.control_interval_s / self.substep_s)

    @property
    def episode_steps(self) -> int:
        """Decision steps in one episode."""
        return max(1, round(self.episode_hours * 3600.0 / self.control_interval_s))

    def pool(self, name: str) -> PoolConfig:
        """The pool of that name; a clear error listing the known ones otherwise."""
        for p in self.pools:
            if p.name == name:
                return p
        raise ScenarioError(
            f"unknown pool '{name}'; this scenario has {[p.name for p in self.pools]}"
        )


def _format_validation_error(err: ValidationError, source: str) -> str:
    lines = [f"invalid scenario {source}:"]
    for e in err.errors():
        where = ".".join(str(x) for x in e["loc"]) or "(top level)"
        if e["type"] == "extra_forbidden":
            lines.append(f"  - unknown key '{where}' (check its spelling)")
        else:
            value = e.get("input")
            shown = "" if isinstance(value, dict | list) else f" (got {value!r})"
            lines.append(f"  - {where}: {e['msg']}{shown}")
    return "\n".join(lines)


def scenario_from_dict(raw: dict, source: str = "<dict>") -> Scenario:
    """Validate a mapping as a :class:`Scenario`; errors name each bad key and value."""
    if not isinstance(raw, dict):
        raise ScenarioError(
            f"invalid scenario {source}: expected a mapping, got {type(raw).__name__}"
        )
    try:
        return Scenario.model_validate(raw)
    except ValidationError as err:
        raise ScenarioError(_format_validation_error(err, source)) from None


def list_scenarios() -> list[str]:
    """Names of the scenarios that ship with the project."""
    return sorted(p.stem for p in SCENARIO_DIR.glob("*.yaml"))


def scenario_path(name_or_path: str | Path) -> Path:
    """The YAML file of a shipped scenario's name, or ``name_or_path`` itself as a file.

    :raises ScenarioError: neither a file nor a shipped name.
    """
    path = Path(name_or_path)
    if not path.suffix and not path.is_file():
        # a bare name is a shipped scenario, even if a folder of that name is in the cwd
        path = SCENARIO_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        raise ScenarioError(
            f"no scenario '{name_or_path}': not a file, and not one of {list_scenarios()}"
        )
    return path


def load_scenario(name_or_path: str | Path | Scenario) -> Scenario:
    """A shipped scenario by name, or a YAML file by path."""
    if isinstance(name_or_path, Scenario):
        return name_or_path
    path = scenario_path(name_or_path)
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ScenarioError(f"scenario {path} is not valid YAML: {err}") from None
    return scenario_from_dict(raw, str(path))
