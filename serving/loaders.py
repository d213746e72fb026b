"""Policies by spec string: ``NAME``, ``NAME=params.json``, an exported folder, ``models:/``.

:func:`load_policy` resolves a spec with the first registered loader whose ``matches`` holds;
a new kind (another model format, another registry) plugs in with
:func:`register_policy_loader` without touching the service. Each kind may also give a cheap
signature of what the spec points at now, which the hot-reload watcher polls.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rlscale.agents.base import Policy
from rlscale.envs.scenario import Scenario, ScenarioError


@dataclass(frozen=True)
class LoadedPolicy:
    """A policy ready to decide, with the version reported in every answer."""

    policy: Policy
    version: str
    """``NAME@<12 hex>`` of its config (a baseline) or of its model file (an export)."""
    spec: str
    kind: str
    origin: str = ""
    """Where it was loaded from, when the spec does not say (``models:/NAME/VERSION``)."""


PolicyLoader = Callable[[str, Scenario], LoadedPolicy]
Signature = Callable[[str], Any]


@dataclass(frozen=True)
class _PolicyKind:
    kind: str
    matches: Callable[[str], bool]
    load: PolicyLoader
    signature: Signature | None


_LOADERS: list[_PolicyKind] = []
ARTIFACT_KINDS = ("onnx", "mlflow")
"""Kinds whose loading can fail at run time (a file being replaced, a registry away)."""


def register_policy_loader(
    kind: str,
    matches: Callable[[str], bool],
    load: PolicyLoader,
    signature: Signature | None = None,
) -> None:
    """Resolve specs for which ``matches(spec)`` holds with ``load``; later ones win.

    :param signature: a cheap fingerprint of what the spec points at now (file times, the
        version an alias names); when it changes, the service reloads. None: never reloads.
    """
    _LOADERS.insert(0, _PolicyKind(kind, matches, load, signature))


def policy_version(name: str, config: dict[str, Any]) -> str:
    """A stable version string from a policy's name and parameters."""
    digest = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode()).hexdigest()
    return f"{name}@{digest[:12]}"


def _file_signature(*paths: Path) -> tuple:
    out = []
    for path in paths:
        try:
            st = path.stat()  # follows symlinks: a ConfigMap's ..data swap is a change
            # ctime too: a copy that keeps the old mtime (cp -p, tar) still changes it
            out.append(
                (str(path), st.st_mtime_ns, st.st_ctime_ns, st.st_size, st.st_ino, st.st_dev)
            )
        except OSError:
            out.append((str(path), None))
    return tuple(out)


def _load_baseline(spec: str, scenario: Scenario) -> LoadedPolicy:
    from rlscale.agents.registry import make_policy

    name, _, params = spec.partition("=")
    policy = make_policy(name, scenario, params or None)
    return LoadedPolicy(policy, policy_version(policy.name, policy.config()), spec, "baseline")


def _baseline_signature(spec: str) -> tuple:
    _, _, params = spec.partition("=")
    return _file_signature(Path(params)) if params else ()


def _is_artifact(spec: str) -> bool:
    """A path, not ``NAME`` or ``NAME=params.json``: a folder (even one still empty, whose
    files are on their way), a ``manifest.json`` or a ``.onnx`` file."""
    if "=" in spec:
        return False
    return "/" in spec or spec.endswith(".onnx") or Path(spec).is_dir()


def _load_onnx(spec: str, scenario: Scenario) -> LoadedPolicy:
    from rlscale.agents.onnx_policy import load_onnx_policy

    policy = load_onnx_policy(spec, pools=[p.name for p in scenario.pools])
    return LoadedPolicy(policy, policy.version, spec, "onnx")


def _onnx_signature(spec: str) -> tuple:
    from rlscale.agents.onnx_policy import artifact_paths, read_manifest

    manifest_path, folder = artifact_paths(spec)
    try:
        model = folder / read_manifest(manifest_path).model.file
    except ValueError:
        return _file_signature(manifest_path)
    return _file_signature(manifest_path, model)


def check_registry_spec(spec: str) -> None:
    """A ``models:/`` spec is well formed and the MLflow client is installed (no network).

    :raises ScenarioError: otherwise.
    """
    from rlscale.training.model_registry import parse_model_uri, registry_client

    parse_model_uri(spec)
    registry_client()


def _registered_version(spec: str) -> str:
    from rlscale.training.model_registry import registered_version

    return registered_version(spec)


def _load_registered(spec: str, scenario: Scenario) -> LoadedPolicy:
    """Download the version ``spec`` names and load it as an ONNX artifact."""
    import tempfile

    from rlscale.agents.onnx_policy import load_onnx_policy
    from rlscale.training.model_registry import fetch_policy

    with tempfile.TemporaryDirectory(prefix="rlscale-policy-") as tmp:
        fetched = fetch_policy(spec, tmp)
        # the verified bytes are held in memory: the download can go
        policy = load_onnx_policy(fetched.folder, pools=[p.name for p in scenario.pools])
    return LoadedPolicy(policy, policy.version, spec, "mlflow", origin=fetched.origin)


register_policy_loader("baseline", lambda spec: True, _load_baseline, _baseline_signature)
register_policy_loader("onnx", _is_artifact, _load_onnx, _onnx_signature)
register_policy_loader(
    "mlflow", lambda spec: spec.startswith("models:/"), _load_registered, _registered_version
)


def _kind_of(spec: str) -> _PolicyKind:
    for kind in _LOADERS:
        if kind.matches(spec):
            return kind
    raise ScenarioError(f"no loader for policy '{spec}'")  # unreachable: baseline matches all


def policy_kind(spec: str) -> str:
    """The kind of loader ``spec`` resolves to (``baseline``, ``onnx``, ``mlflow``, ...)."""
    return _kind_of(spec).kind


def policy_signature(spec: str) -> Any:
    """What ``spec`` points at now (None: this kind never reloads); may raise while a
    registry is unreachable."""
    kind = _kind_of(spec)
    return kind.signature(spec) if kind.signature is not None else None


def load_policy(spec: str, scenario: Scenario) -> LoadedPolicy:
    """The policy a spec names: ``NAME``, ``NAME=params.json``, an exported artifact (its
    folder, ``manifest.json`` or ``.onnx``), or ``models:/NAME@ALIAS`` / ``models:/NAME/N``.

    :raises ScenarioError: unknown policy, unreadable parameters, or a bad registry URI.
    :raises ArtifactError: an artifact that fails verification (a ``ValueError``).
    """
    return _kind_of(spec).load(spec, scenario)
