"""Policies by name: the one list that evaluation, tuning, sweeps and the service read.

Every policy module registers itself on import with :func:`register`: its name, a factory
``(scenario, params) -> Policy``, what kind of policy it is (:class:`PolicyKind`) and, for a
tunable baseline, its parameter space. Nothing else lists policies:

- ``rlscale evaluate`` runs :func:`baselines` by default and picks the best baseline among them;
  a policy of kind ``ORACLE`` is built per episode (it plans one window with foresight).
- ``rlscale tune-baseline`` searches :func:`param_space` of a baseline.
- ``rlscale serve`` and the promotion gate build policies with :func:`make_policy`.

The built-in policies live in :data:`BUILTIN_MODULES`, imported on first use; lists come in
that order (then in registration order), whichever module a program happened to import first.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rlscale.agents.base import Policy
from rlscale.envs.scenario import Scenario, ScenarioError

if TYPE_CHECKING:
    from rlscale.envs.simulator import ClusterSimulator

PolicyFactory = Callable[[Scenario, dict[str, Any]], Policy]
ParamSpace = dict[str, list[Any]]
ParamSpaceFn = Callable[["ClusterSimulator"], ParamSpace]
"""A space that depends on the cluster (``static``: one pool held at 1..quota replicas)."""

BUILTIN_MODULES = (
    "static",
    "hpa",
    "keda",
    "knative",
    "rayserve",
    "predictive",
    "spot_aware",
    "oracle",
    "onnx_policy",
)
"""Modules of ``rlscale.agents`` whose policies register on import, in the order lists show."""


class PolicyKind(StrEnum):
    """What a registered policy is, which decides where it takes part."""

    BASELINE = "baseline"
    """A rule-based scaler: evaluated by default, tunable, a candidate for best baseline."""
    ORACLE = "oracle"
    """Plans one episode with perfect foresight: built anew for every (window, seed)."""
    EXPORTED = "exported"
    """A trained policy's artifact (``onnx=FOLDER``): needs its artifact to be built."""


@dataclass(frozen=True)
class PolicyEntry:
    """One registered policy."""

    name: str
    factory: PolicyFactory
    kind: PolicyKind
    param_space: ParamSpace | ParamSpaceFn | None
    module: str
    """The module that registered it (orders the built-ins)."""
    seq: int
    """Registration count (orders policies registered outside the built-ins)."""

    @property
    def per_episode(self) -> bool:
        """Built for each episode with its ``start_step`` and ``seed`` (the oracle)."""
        return self.kind is PolicyKind.ORACLE


_ENTRIES: dict[str, PolicyEntry] = {}
_BUILTIN_LOADED = False


def register(
    name: str,
    factory: PolicyFactory,
    *,
    kind: PolicyKind = PolicyKind.BASELINE,
    param_space: ParamSpace | ParamSpaceFn | None = None,
) -> None:
    """Make ``name`` resolvable by :func:`make_policy` (registering a name again replaces it).

    :param factory: builds the policy from a scenario and a parameter dict; raises
        :class:`ScenarioError` for parameters or scenarios it cannot take.
    :param kind: what the policy is (:class:`PolicyKind`).
    :param param_space: a baseline's tuning grid, parameter -> candidate values, or a function
        of the cluster simulator that returns one.
    """
    if not name or not isinstance(name, str):
        raise ValueError(f"a policy name must be a non-empty string, got {name!r}")
    kind = PolicyKind(kind)
    module = sys._getframe(1).f_globals.get("__name__", "")
    _ENTRIES[name] = PolicyEntry(name, factory, kind, param_space, module, len(_ENTRIES))


def _order(entry: PolicyEntry) -> tuple[int, int]:
    short = entry.module.rpartition(".")[2]
    rank = BUILTIN_MODULES.index(short) if short in BUILTIN_MODULES else len(BUILTIN_MODULES)
    return rank, entry.seq


def _entries() -> list[PolicyEntry]:
    _load_builtin()
    return sorted(_ENTRIES.values(), key=_order)


def entry(name: str) -> PolicyEntry:
    """The registration of ``name``.

    :raises ScenarioError: unknown name (listing the known ones).
    """
    _load_builtin()
    if name not in _ENTRIES:
        raise ScenarioError(f"unknown policy '{name}'; known: {known_policies()}")
    return _ENTRIES[name]


def known_policies() -> list[str]:
    """Every name :func:`make_policy` resolves, sorted."""
    return sorted(e.name for e in _entries())


def policies_of_kind(kind: PolicyKind) -> list[str]:
    """The registered policies of ``kind``, built-ins first in :data:`BUILTIN_MODULES` order."""
    return [e.name for e in _entries() if e.kind is PolicyKind(kind)]


def baselines() -> list[str]:
    """The rule-based scalers: what evaluation runs by default and tuning's ``all`` means."""
    return policies_of_kind(PolicyKind.BASELINE)


def param_space(name: str, sim: ClusterSimulator | None = None) -> ParamSpace:
    """The tuning grid of baseline ``name`` (a cluster-dependent one needs ``sim``).

    :raises ScenarioError: unknown name, or a policy registered without a space.
    """
    space = entry(name).param_space
    if callable(space):
        if sim is None:
            raise ScenarioError(f"policy '{name}''s parameter space depends on the cluster")
        space = space(sim)
    if not isinstance(space, dict) or not space:
        raise ScenarioError(f"policy '{name}' has no parameter space to tune")
    return space


def make_policy(
    name: str, scenario: Scenario, params: dict[str, Any] | str | Path | None = None
) -> Policy:
    """The policy ``name`` for ``scenario``, with ``params`` (a dict, or a JSON file of them).

    :raises ScenarioError: unknown name (listing the known ones) or unreadable params.
    """
    factory = entry(name).factory
    if isinstance(params, str | Path):
        path = Path(params)
        try:
            params = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise ScenarioError(f"cannot read policy parameters from {path}: {err}") from None
        if isinstance(params, dict) and "params" in params:
            params = params["params"]  # a tuning result file
    return factory(scenario, dict(params or {}))


def _load_builtin() -> None:
    global _BUILTIN_LOADED
    if _BUILTIN_LOADED:
        return
    _BUILTIN_LOADED = True
    import importlib

    for module in BUILTIN_MODULES:
        importlib.import_module(f"rlscale.agents.{module}")
