"""An exported policy: an ONNX model plus a manifest, run with onnxruntime (no torch).

An artifact is a folder with two files::

    manifest.json   what the model is and how to feed it (:class:`PolicyManifest`)
    model.onnx      observation (float32, [batch, obs_dim]) -> action (int64, [batch, 2P])

The model holds everything learned, observation normalization included, and returns the env's
``MultiDiscrete`` action: per pool, the replica change plus ``max_step``, then per pool the
warm-pool size. The manifest holds everything needed to build the observation from a live
cluster's raw metrics (reference rate, SLO targets, quotas, on-demand prices), the sha256 of
the model file, and where the policy came from.

:func:`load_onnx_policy` verifies an artifact before anything runs it: the manifest parses and
matches this version's observation layout, the model's checksum matches the manifest, and the
model loads, has the declared input and output, and answers a probe batch with actions inside
the action space. Anything else is an :class:`ArtifactError` naming the file and the problem.
The verified bytes are the bytes loaded, so a file replaced during loading cannot slip in.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)

from rlscale.agents.base import ClusterState, Decision, Memory
from rlscale.agents.registry import PolicyKind, register
from rlscale.common.budgets import BudgetConfig
from rlscale.envs.observation import (
    observation_names,
    observation_size,
    write_batch_features,
    write_budget_features,
    write_cluster_features,
    write_pool_features,
)
from rlscale.envs.scenario import Scenario, ScenarioError

FORMAT = "rlscale-policy/1"
MANIFEST_NAME = "manifest.json"
MODEL_NAME = "model.onnx"
MAX_MODEL_BYTES = 256 * 2**20
"""Larger files are refused before they are read (a scaling policy is kilobytes to megabytes)."""


class ArtifactError(ValueError):
    """A policy artifact that cannot be served: unreadable, inconsistent or corrupt."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelFile(_Strict):
    """The ONNX file and its interface."""

    file: str = MODEL_NAME
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    input: str = "observation"
    output: str = "action"

    @field_validator("file")
    @classmethod
    def _inside(cls, value: str) -> str:
        rel = Path(value)
        if not value or rel.is_absolute() or ".." in rel.parts:
            raise ValueError("model.file must be inside the artifact folder")
        return value


class PoolLayout(_Strict):
    """A pool as the policy was trained on it (observation scaling uses these numbers)."""

    name: str
    purchase: Literal["on_demand", "spot"]
    quota: int = Field(ge=1)
    on_demand_price_usd_h: float = Field(gt=0)
    max_num_seqs: int = Field(ge=1)
    warm_pool_max: int = Field(ge=0)


class ObservationLayout(_Strict):
    """How raw metrics become the normalized observation (see ``envs/simulator.py``)."""

    names: list[str]
    low: list[float]
    high: list[float]
    reference_rps: float = Field(gt=0)
    queue_timeout_s: float = Field(gt=0)
    ttft_target_s: float = Field(gt=0)
    tpot_target_s: float = Field(gt=0)
    cache_hit_ratio: float = Field(ge=0, lt=1)
    budget: BudgetConfig | None = Field(
        default=None,
        description=(
            "the spend budget the policy observes (its spent share and the time left in its "
            "period, the layout's last entries); the service feeds them from its spend meter's "
            "budget of this name"
        ),
    )
    batch_window_s: float | None = Field(
        default=None,
        gt=0,
        description=(
            "the batch requests' completion window (s) the policy was trained with, as the "
            "simulator counts it; set: the policy observes the batch entries (batch_queue / "
            "(reference rate x this window), batch arrival rate / reference rate, after the "
            "pools'), and the service feeds them from the request's batch_queue and "
            "batch_arrival_rate_rps"
        ),
    )
    _low: np.ndarray = PrivateAttr()
    _high: np.ndarray = PrivateAttr()

    @model_validator(mode="before")
    @classmethod
    def _no_episode_inputs(cls, raw: Any) -> Any:
        # exports before the observation lost its entries without a live counterpart fed them
        # constants; say so rather than "extra inputs are not permitted"
        old = sorted(
            {"episode_progress", "budget_spent"} & set(raw if isinstance(raw, dict) else ())
        )
        if old:
            raise ValueError(
                f"the policy was exported for an older observation layout (with {old}, which a "
                "live cluster does not report); export it again"
            )
        return raw

    def model_post_init(self, context: Any) -> None:
        # the bounds as arrays once: the layout is frozen, and every decision clips to them
        self._low = np.asarray(self.low, dtype=np.float64)
        self._high = np.asarray(self.high, dtype=np.float64)

    @property
    def low_array(self) -> np.ndarray:
        """``low`` as a float64 array."""
        return self._low

    @property
    def high_array(self) -> np.ndarray:
        """``high`` as a float64 array."""
        return self._high


class ActionLayout(_Strict):
    """The model's output: ``MultiDiscrete(nvec)``."""

    max_step: int = Field(ge=1)
    nvec: list[int]


class PolicyManifest(_Strict):
    """``manifest.json`` of a policy artifact."""

    format: Literal["rlscale-policy/1"] = FORMAT
    name: str = Field(min_length=1, max_length=128)
    created_at: str
    model: ModelFile
    pools: list[PoolLayout] = Field(min_length=1)
    observation: ObservationLayout
    action: ActionLayout
    training: dict[str, Any] = Field(default_factory=dict)
    """Provenance: algorithm, scenario, timesteps, MLflow run; informative only."""

    @model_validator(mode="after")
    def _consistent(self) -> PolicyManifest:
        pool_names = [p.name for p in self.pools]
        if len(set(pool_names)) != len(pool_names):
            raise ValueError(f"pool names repeat: {pool_names}")
        obs = self.observation
        expected = observation_names(
            pool_names, obs.budget is not None, batch=obs.batch_window_s is not None
        )
        if obs.names != expected:
            diff = next(
                (i for i, (a, b) in enumerate(zip(obs.names, expected, strict=False)) if a != b),
                min(len(obs.names), len(expected)),
            )
            raise ValueError(
                f"observation layout differs from this version's at entry {diff} "
                f"({len(obs.names)} entries, expected {len(expected)}): the policy was "
                "exported for another observation layout; export it again"
            )
        n = len(expected)
        if len(obs.low) != n or len(obs.high) != n:
            raise ValueError(f"observation bounds need {n} entries each")
        if any(not (lo <= hi) for lo, hi in zip(obs.low, obs.high, strict=True)):
            raise ValueError("observation low must be <= high everywhere")
        want = [2 * self.action.max_step + 1] * len(self.pools)
        want += [p.warm_pool_max + 1 for p in self.pools]
        if self.action.nvec != want:
            raise ValueError(f"action nvec {self.action.nvec} != {want} for these pools")
        return self

    @property
    def pool_names(self) -> list[str]:
        """Pool names in observation and action order."""
        return [p.name for p in self.pools]

    @property
    def version(self) -> str:
        """``NAME@<12 hex of the model's sha256>``: a new model is a new version."""
        return f"{self.name}@{self.model.sha256[:12]}"


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def observation_from_state(state: ClusterState, manifest: PolicyManifest) -> np.ndarray:
    """The normalized observation the policy was trained on, from a live cluster's state.

    Written by the simulator's own code (:mod:`rlscale.envs.observation`, run here as plain
    Python), with the scaling constants of the manifest: entry for entry what the kernel
    observes for a cluster in the same state.

    A policy trained with batch work (``batch_window_s`` in its layout) gets the batch entries
    from ``state.batch_queue`` and ``state.batch_arrival_rate_rps``, scaled by the window it
    was trained with; the service decides with it only when the request gave both (else
    ``batch_unknown``: the fallback decides).

    :raises ValueError: the policy observes a budget and ``state.budget`` is not that budget
        (the service then falls back rather than guess a spend).
    """
    lay = manifest.observation
    n_pools = len(manifest.pools)
    batch = lay.batch_window_s is not None
    x = np.empty(observation_size(n_pools, lay.budget is not None, batch=batch), dtype=np.float64)
    _CLUSTER(
        x,
        state.arrival_rate_rps,
        state.arrival_rate_ewma_rps,
        state.forecast_rps,
        state.queue,
        state.in_flight,
        state.gpu_util,
        state.kv_util,
        state.ttft_p50_s,
        state.ttft_p95_s,
        state.tpot_p95_s,
        state.slo_attainment,
        state.dropped,
        state.interval_s,
        state.time_of_week_s,
        lay.reference_rps,
        lay.cache_hit_ratio,
        lay.queue_timeout_s,
        lay.ttft_target_s,
        lay.tpot_target_s,
    )
    for j, layout in enumerate(manifest.pools):
        p = state.pool(layout.name)
        _POOL(
            x,
            j,
            p.starting,
            p.ready,
            p.draining,
            p.standby,
            p.refilling,
            p.preempt_notices,
            p.price_usd_h,
            p.spot_capacity_share,
            p.batch_per_replica,
            float(layout.quota),
            layout.on_demand_price_usd_h,
            float(layout.max_num_seqs),
        )
    if batch:
        _BATCH(
            x,
            observation_size(n_pools),  # the batch entries follow the pools'
            state.batch_queue,
            state.batch_arrival_rate_rps,
            lay.reference_rps,
            lay.batch_window_s,
        )
    if lay.budget is not None:
        b = state.budget
        if b is None or b.name != lay.budget.name:
            raise ValueError(
                f"the policy observes budget '{lay.budget.name}' and the state carries "
                f"{'none' if b is None else repr(b.name)}"
            )
        write_budget_features(x, b.spend_usd, b.limit_usd, b.time_left_s, b.period_s)
    # observation.clip_observation's rule, vectorized: its loop in Python costs more than the
    # model (a decision's budget is 100 us)
    x[~np.isfinite(x)] = 0.0
    np.minimum(x, lay.high_array, out=x)
    np.maximum(x, lay.low_array, out=x)
    return x.astype(np.float32)


# the kernel's compiled writers, as the plain Python they were compiled from: no JIT at serve time
_CLUSTER = write_cluster_features.py_func
_POOL = write_pool_features.py_func
_BATCH = write_batch_features.py_func


class OnnxPolicy:
    """A verified exported policy; implements :class:`rlscale.agents.base.Policy`.

    Stateless between decisions (the memory is empty): everything it knows is in the
    observation. Build it with :func:`load_onnx_policy`.
    """

    def __init__(self, manifest: PolicyManifest, session: Any, source: str) -> None:
        self.manifest = manifest
        self.name = manifest.name
        self.version = manifest.version
        self.source = source
        self._session = session
        self._input = manifest.model.input
        self._output = manifest.model.output
        self._pool_names = manifest.pool_names
        self._reason = f"onnx {self.version}"

    def initial_memory(self) -> Memory:
        """Nothing to carry."""
        return {}

    def act(self, observations: np.ndarray) -> np.ndarray:
        """Raw model actions (int64, [batch, 2P]) for a batch of observations."""
        x = np.ascontiguousarray(observations, dtype=np.float32)
        return np.asarray(self._session.run([self._output], {self._input: x})[0])

    def decide(self, state: ClusterState, memory: Memory) -> tuple[Decision, Memory]:
        """The model's action for ``state`` as target replicas and warm-pool sizes."""
        m = self.manifest
        action = self.act(observation_from_state(state, m)[None, :])[0].tolist()
        P = len(m.pools)
        pools = {p.name: p for p in state.pools}
        replicas: dict[str, int] = {}
        warm: dict[str, int] = {}
        for j, name in enumerate(self._pool_names):
            pool = pools.get(name) or state.pool(name)  # state.pool names the known ones
            replicas[name] = max(0, round(pool.desired) + action[j] - m.action.max_step)
            warm[name] = action[P + j]
        return Decision(replicas, warm, reason=self._reason), memory

    def config(self) -> dict[str, Any]:
        """The artifact's identity (what tuning and reports record)."""
        return {
            "artifact": self.source,
            "version": self.version,
            "sha256": self.manifest.model.sha256,
        }


def artifact_paths(path: str | Path) -> tuple[Path, Path]:
    """``(manifest, folder)`` of an artifact given as its folder, manifest or model file."""
    p = Path(path)
    if p.is_dir():
        return p / MANIFEST_NAME, p
    if p.suffix == ".onnx":
        return p.parent / MANIFEST_NAME, p.parent
    return p, p.parent


def read_manifest(path: str | Path) -> PolicyManifest:
    """The manifest of the artifact at ``path``, validated.

    :raises ArtifactError: missing, unreadable or invalid manifest.
    """
    manifest_path, _ = artifact_paths(path)
    try:
        raw = json.loads(manifest_path.read_bytes())
    except FileNotFoundError:
        raise ArtifactError(f"{manifest_path}: no manifest (is this a policy artifact?)") from None
    except (OSError, ValueError) as err:
        raise ArtifactError(f"{manifest_path}: unreadable manifest: {err}") from None
    try:
        return PolicyManifest.model_validate(raw)
    except ValidationError as err:
        problems = "; ".join(
            f"{'.'.join(str(x) for x in e['loc']) or 'manifest'}: {e['msg']}" for e in err.errors()
        )
        raise ArtifactError(f"{manifest_path}: invalid manifest: {problems}") from None


def load_onnx_policy(path: str | Path, *, pools: list[str] | None = None) -> OnnxPolicy:
    """Load and verify the artifact at ``path`` (folder, manifest or model file).

    :param pools: the pool names the caller serves, in order; the artifact must match them.
    :raises ArtifactError: see the module docstring.
    """
    manifest_path, folder = artifact_paths(path)
    manifest = read_manifest(manifest_path)
    if pools is not None and list(pools) != manifest.pool_names:
        raise ArtifactError(
            f"{manifest_path}: policy pools {manifest.pool_names} differ from the "
            f"scenario's {list(pools)}"
        )
    rel = Path(manifest.model.file)
    model_path = folder / rel
    inside = model_path.resolve().is_relative_to(folder.resolve())
    if rel.is_absolute() or ".." in rel.parts or not inside:
        raise ArtifactError(f"{manifest_path}: model.file must be inside the artifact folder")
    try:
        size = model_path.stat().st_size
        if size > MAX_MODEL_BYTES:
            raise ArtifactError(
                f"{model_path}: {size} bytes, more than a policy needs ({MAX_MODEL_BYTES})"
            )
        blob = model_path.read_bytes()
    except OSError as err:
        raise ArtifactError(f"{model_path}: unreadable model: {err}") from None
    digest = hashlib.sha256(blob).hexdigest()
    if digest != manifest.model.sha256:
        raise ArtifactError(
            f"{model_path}: checksum mismatch: sha256 {digest[:12]}... but the manifest says "
            f"{manifest.model.sha256[:12]}... (corrupt, or replaced without its manifest)"
        )
    session = _session(blob, model_path)
    policy = OnnxPolicy(manifest, session, str(folder))
    _probe(policy, model_path)
    return policy


def _session(blob: bytes, model_path: Path) -> Any:
    try:
        import onnxruntime as ort
    except ModuleNotFoundError:
        raise ArtifactError(
            "onnxruntime is not installed: pip install 'rlscale[serve]' to run ONNX policies"
        ) from None
    opts = ort.SessionOptions()
    # one decision at a time, on a small machine: no thread pools spinning beside uvicorn
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.log_severity_level = 3
    try:
        return ort.InferenceSession(blob, sess_options=opts, providers=["CPUExecutionProvider"])
    except Exception as err:  # onnxruntime raises its own exception types
        raise ArtifactError(f"{model_path}: not a loadable ONNX model: {err}") from None


def _probe(policy: OnnxPolicy, model_path: Path) -> None:
    """The model's interface is the manifest's, and it answers inside the action space."""
    m = policy.manifest
    sess = policy._session
    inputs = {i.name: i for i in sess.get_inputs()}
    outputs = {o.name for o in sess.get_outputs()}
    if list(inputs) != [m.model.input]:
        raise ArtifactError(
            f"{model_path}: inputs {list(inputs)}, the manifest declares [{m.model.input!r}]"
        )
    if m.model.output not in outputs:
        raise ArtifactError(f"{model_path}: no output {m.model.output!r} (has {sorted(outputs)})")
    dim = inputs[m.model.input].shape[-1]
    n_obs = len(m.observation.names)
    if isinstance(dim, int) and dim != n_obs:
        raise ArtifactError(f"{model_path}: input width {dim}, the manifest's layout has {n_obs}")
    lo = np.asarray(m.observation.low, dtype=np.float32)
    hi = np.asarray(m.observation.high, dtype=np.float32)
    probe = np.stack([lo, hi, (lo + hi) / 2, np.clip(np.zeros_like(lo), lo, hi)])
    try:
        action = policy.act(probe)
    except Exception as err:
        raise ArtifactError(f"{model_path}: the model fails on a probe batch: {err}") from None
    nvec = np.asarray(m.action.nvec)
    if action.shape != (probe.shape[0], nvec.size) or action.dtype.kind not in "iu":
        raise ArtifactError(
            f"{model_path}: answers {action.dtype} {action.shape}, expected integer actions "
            f"of shape (batch, {nvec.size})"
        )
    if (action < 0).any() or (action >= nvec).any():
        raise ArtifactError(f"{model_path}: actions outside MultiDiscrete({nvec.tolist()})")


def _factory(scenario: Scenario, params: dict[str, Any]) -> OnnxPolicy:
    if "artifact" not in params:
        raise ScenarioError("policy 'onnx' needs its artifact: onnx=FOLDER")
    try:
        return load_onnx_policy(params["artifact"], pools=[p.name for p in scenario.pools])
    except ArtifactError as err:
        raise ScenarioError(str(err)) from None


register("onnx", _factory, kind=PolicyKind.EXPORTED)
