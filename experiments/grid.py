"""The evaluation grid: which policies, and every episode as an independent task.

A :class:`PolicySpec` names a policy of the registry (:mod:`rlscale.agents.registry`) and its
parameters. :func:`grid_tasks` expands specs, seeds and held-out windows into
:class:`EpisodeTask` s in a fixed order; each is independent of the others (its own seed, its
own window, a policy built from its spec), so any backend of :mod:`rlscale.common.backends`
runs them in any order and where it likes, and the results are the same.

A worker's state is an :class:`EpisodeRunner`: one simulator of the scenario and every policy
built once (a policy holds only its configuration, so one object serves every episode; an
exported policy is verified and loaded once per worker, not per episode). A policy of kind
``ORACLE`` plans one window with foresight: it is built for each task, from the task's
``start_step`` and ``seed``, and that solve is part of the task.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from rlscale.agents.registry import PolicyKind, baselines, entry
from rlscale.envs.scenario import Scenario, ScenarioError

if TYPE_CHECKING:
    from rlscale.agents.base import Policy
    from rlscale.agents.observe import EpisodeResult
    from rlscale.common.backends import Job

WindowMode = Literal["all", "cycle"]


@dataclass(frozen=True)
class PolicySpec:
    """One policy of the comparison.

    :param name: registry name (:func:`rlscale.agents.registry.known_policies`).
    :param params: parameters for :func:`make_policy`: a dict, a JSON file (such as a tuning
        result), or None for the policy's defaults.
    :param label: the name shown in results and plots (default ``name``).
    """

    name: str
    params: dict[str, Any] | str | Path | None = None
    label: str = ""

    @property
    def display(self) -> str:
        """The label, or the registry name when no label was given."""
        return self.label or self.name

    @property
    def per_episode(self) -> bool:
        """Built for each episode with its ``start_step`` and ``seed`` (the oracle plans each
        window with perfect foresight)."""
        return entry(self.name).per_episode

    def params_dict(self) -> dict[str, Any]:
        """The parameters as a dict (a JSON file read, a tuning result's ``params`` taken)."""
        if self.params is None:
            return {}
        if isinstance(self.params, dict):
            return dict(self.params)
        path = Path(self.params)
        try:
            raw = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise ScenarioError(
                f"--policy {self.name}={path}: cannot read parameters: {err}"
            ) from None
        if isinstance(raw, dict) and "params" in raw:
            raw = raw["params"]  # a tuning result file
        if not isinstance(raw, dict):
            raise ScenarioError(f"--policy {self.name}={path}: expected a JSON object")
        return raw


def parse_policy_arg(text: str, *, fetch_dir: str | Path | None = None) -> PolicySpec:
    """``NAME``, ``NAME=ARTIFACT`` (a JSON parameter file), ``onnx=FOLDER`` (an exported
    policy: its folder, ``manifest.json`` or ``model.onnx``), or ``ppo=SPEC`` as a
    :class:`PolicySpec`.

    ``ppo=SPEC`` is an exported policy wherever it is: ``models:/NAME@ALIAS``,
    ``models:/NAME/N``, the id of the MLflow run that logged it, or an export folder. A
    registered one is downloaded (into ``fetch_dir``, default a temporary folder that lives
    as long as the process) and evaluated as ``onnx=FOLDER``; its label says which version,
    ``ppo[rlscale-policy@champion=v3]``.

    :raises ScenarioError: a malformed argument, a missing file or folder, or a registry that
        cannot give the policy (the message says which and why).
    """
    name, sep, artifact = text.partition("=")
    name = name.strip()
    if not name or (sep and not artifact.strip()):
        raise ScenarioError(f"--policy expects NAME or NAME=PARAMS.json, got {text!r}")
    if name == "onnx":
        folder = Path(artifact.strip()) if sep else None
        if folder is None or not folder.exists():
            raise ScenarioError(f"--policy onnx=FOLDER: no exported policy at {folder}")
        label = (folder if folder.is_dir() else folder.parent).name
        return PolicySpec(name, {"artifact": str(folder)}, label=f"onnx[{label}]")
    if name == PPO:
        if not sep:
            raise ScenarioError(f"--policy ppo=SPEC: {PPO_SPEC_FORMS}")
        return _exported_spec(artifact.strip(), fetch_dir)
    params = Path(artifact.strip()) if sep else None
    if params is not None and not params.is_file():
        raise ScenarioError(f"--policy {name}={params}: no such file")
    return PolicySpec(name, params)


PPO = "ppo"
PPO_SPEC_FORMS = "SPEC is models:/NAME@ALIAS, models:/NAME/N, an MLflow run id, or an export folder"
_FETCH_DIRS: list[Any] = []
"""Temporary folders of downloaded policies, removed when the process ends."""


def _exported_spec(spec: str, fetch_dir: str | Path | None) -> PolicySpec:
    """``ppo=SPEC`` as an ``onnx`` :class:`PolicySpec` on a local folder."""
    from rlscale.training.model_registry import fetch_policy, is_model_uri, is_run_id

    local = Path(spec).expanduser()
    if local.exists():
        label = (local if local.is_dir() else local.parent).name
        return PolicySpec("onnx", {"artifact": str(local)}, label=f"{PPO}[{label}]")
    if not (is_model_uri(spec) or is_run_id(spec)):
        raise ScenarioError(f"--policy ppo={spec}: no such folder; {PPO_SPEC_FORMS}")
    import tempfile

    if fetch_dir is None:
        _FETCH_DIRS.append(tempfile.TemporaryDirectory(prefix="rlscale-evaluate-"))
        fetch_dir = _FETCH_DIRS[-1].name
    from rlscale.agents.onnx_policy import ArtifactError
    from rlscale.common.tracking import tracking_uri

    try:
        from mlflow.exceptions import MlflowException
    except ModuleNotFoundError:
        raise ScenarioError(
            f"--policy ppo={spec} needs the MLflow client: pip install 'rlscale[registry]'"
        ) from None
    try:
        Path(fetch_dir).mkdir(parents=True, exist_ok=True)
        fetched = fetch_policy(spec, tempfile.mkdtemp(prefix="policy-", dir=fetch_dir))
    except (MlflowException, ArtifactError, OSError) as err:
        raise ScenarioError(
            f"--policy ppo={spec}: cannot fetch it from the registry at {tracking_uri()}: {err}"
        ) from None
    return PolicySpec(
        "onnx",
        {"artifact": str(fetched.folder), "origin": fetched.origin},
        label=f"{PPO}[{fetched.label}]",
    )


def with_labels(specs: Sequence[PolicySpec]) -> list[PolicySpec]:
    """Specs with unique labels: a repeated name gets its parameter file's stem, then a count."""
    names = [s.name for s in specs]
    out: list[PolicySpec] = []
    seen: set[str] = set()
    for spec in specs:
        label = spec.display
        if not spec.label and names.count(spec.name) > 1 and isinstance(spec.params, str | Path):
            label = f"{spec.name}[{Path(spec.params).stem}]"
        base, k = label, 2
        while label in seen:
            label, k = f"{base}#{k}", k + 1
        seen.add(label)
        out.append(replace(spec, label=label))
    return out


@dataclass(frozen=True)
class EpisodeTask:
    """One cell of the grid: a policy on one held-out window under one seed."""

    spec: PolicySpec
    seed: int
    start_step: int
    record: bool = False
    """Keep the per-step timeline (one episode per policy feeds the load/capacity plot)."""


def grid_tasks(
    specs: Sequence[PolicySpec],
    seeds: Sequence[int],
    test_starts: Sequence[int],
    windows: WindowMode = "all",
) -> list[EpisodeTask]:
    """The evaluation grid, in a fixed order; the first episode of each policy is recorded."""
    if windows not in ("all", "cycle"):
        raise ScenarioError(f"windows must be 'all' or 'cycle', got {windows!r}")
    if not test_starts:
        raise ScenarioError("no held-out windows to evaluate on")
    tasks: list[EpisodeTask] = []
    for spec in specs:
        for k, seed in enumerate(seeds):
            if windows == "all":
                starts: Sequence[int] = test_starts
            else:
                starts = (test_starts[k % len(test_starts)],)
            for w, start in enumerate(starts):
                tasks.append(EpisodeTask(spec, int(seed), int(start), record=k == 0 and w == 0))
    return tasks


class EpisodeRunner:
    """A worker's state for an evaluation grid: a simulator of the scenario, policies built
    once each, and :meth:`run` for one :class:`EpisodeTask`."""

    def __init__(self, scenario: Scenario) -> None:
        from rlscale.envs.simulator import ClusterSimulator

        self.scenario = scenario
        self.sim = ClusterSimulator(scenario, 1)
        self._policies: dict[str, Policy] = {}

    def policy(self, spec: PolicySpec) -> Policy:
        """``spec``'s policy, built on first use (for the oracle: its defaults, unplanned).

        :raises ScenarioError: parameters or a scenario the policy refuses.
        """
        from rlscale.agents.registry import make_policy

        if spec.display not in self._policies:
            self._policies[spec.display] = make_policy(spec.name, self.scenario, spec.params_dict())
        return self._policies[spec.display]

    def run(self, task: EpisodeTask) -> EpisodeResult:
        """Run one grid cell; a per-episode policy (the oracle) is planned for it here. The
        result carries the CPU time of both, measured in the worker that ran them."""
        from rlscale.agents.observe import run_episode
        from rlscale.agents.registry import make_policy

        tic = time.process_time()
        if task.spec.per_episode:
            params = {**task.spec.params_dict(), "start_step": task.start_step, "seed": task.seed}
            policy = make_policy(task.spec.name, self.scenario, params)
        else:
            policy = self.policy(task.spec)
        result = run_episode(
            policy, self.sim, seed=task.seed, start_step=task.start_step, record=task.record
        )
        return replace(result, cpu_s=time.process_time() - tic)


def run_episode_task(runner: EpisodeRunner, task: EpisodeTask) -> EpisodeResult:
    """:meth:`EpisodeRunner.run` as a module-level function, so workers can unpickle it."""
    return runner.run(task)


def episode_job(scenario: Scenario) -> Job:
    """The evaluation grid of ``scenario`` as a backend job (see :mod:`rlscale.common.backends`)."""
    from rlscale.common.backends import Job

    return Job(setup=EpisodeRunner, run=run_episode_task, context=scenario)


def default_policies() -> list[PolicySpec]:
    """The registered baselines (what ``--policy`` defaults to)."""
    return [PolicySpec(name) for name in baselines()]


def baseline_specs(scenario: Scenario, tuning_dir: Path) -> tuple[list[PolicySpec], str]:
    """The baselines to compare with, and a note saying which: the tuned ones (every
    ``<policy>.json`` in ``tuning_dir``, as ``rlscale tune-baseline`` writes them), else every
    baseline with its defaults. Baselines that refuse the scenario are left out and named in
    the note.

    :raises ScenarioError: no baseline can run the scenario.
    """
    from rlscale.agents.registry import make_policy

    names = baselines()
    tuned = [n for n in names if (tuning_dir / f"{n}.json").is_file()]
    if tuned:
        specs = [PolicySpec(n, tuning_dir / f"{n}.json", label=f"{n}[tuned]") for n in tuned]
        note = f"tuned baselines from {tuning_dir}: {', '.join(tuned)}"
    else:
        specs = [PolicySpec(n) for n in names]
        note = (
            f"no tuned baselines in {tuning_dir} (run rlscale tune-baseline --scenario "
            f"{scenario.name} --policy all): every baseline with its defaults"
        )
    kept, refused = [], []
    for spec in specs:
        try:
            make_policy(spec.name, scenario, spec.params_dict())
            kept.append(spec)
        except ScenarioError as err:
            refused.append(f"{spec.display} ({err})")
    if refused:
        note += f"; left out, they cannot run this scenario: {'; '.join(refused)}"
    if not kept:
        raise ScenarioError(f"no baseline can run scenario {scenario.name}: {note}")
    return kept, note


def oracle_name() -> str | None:
    """The registered policy of kind ``ORACLE`` (the lower bound on cost), if any."""
    from rlscale.agents.registry import policies_of_kind

    oracles = policies_of_kind(PolicyKind.ORACLE)
    return oracles[0] if oracles else None
