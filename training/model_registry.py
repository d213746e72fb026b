"""Exported policies in the MLflow model registry: what a reference names, and its files.

A registered policy is referred to as ``models:/NAME@ALIAS`` (what an alias names now),
``models:/NAME/N`` (one version), or by the id of the MLflow run that logged it under
``policy/`` (what :func:`rlscale.training.export.register_policy` does). :func:`fetch_policy`
turns any of them into a local artifact folder; the service (``serving/loaders.py``), the
evaluation (``--policy ppo=SPEC``) and the promotion gate all read the registry through it.

Only the manifest and the model file it names are downloaded, never whatever else the folder
holds; the folder is not verified here: :func:`rlscale.agents.onnx_policy.load_onnx_policy`
does that when the policy is loaded.

MLflow is imported only when the registry is read (``pip install 'rlscale[registry]'``).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rlscale.agents.onnx_policy import MANIFEST_NAME, ArtifactError, read_manifest
from rlscale.envs.scenario import ScenarioError

DEFAULT_MODEL_NAME = "rlscale-policy"
"""The registered model trained policies become versions of."""
CHAMPION_ALIAS = "champion"
"""The alias a service follows (``models:/rlscale-policy@champion``)."""
CHALLENGER_ALIAS = "challenger"
"""The alias training moves to a new version; ``rlscale promote`` judges it."""

MODELS_SCHEME = "models:/"
POLICY_ARTIFACT_PATH = "policy"
"""Where :func:`~rlscale.training.export.register_policy` logs the folder in its run."""

_RUN_ID = re.compile(r"^[0-9a-f]{32}$")

REGISTRY_HTTP_TIMEOUT_S = "10"
REGISTRY_HTTP_RETRIES = "2"


def is_model_uri(spec: str) -> bool:
    """``spec`` is a ``models:/`` reference."""
    return spec.startswith(MODELS_SCHEME)


def is_run_id(spec: str) -> bool:
    """``spec`` looks like an MLflow run id (32 lowercase hex digits)."""
    return bool(_RUN_ID.match(spec))


def parse_model_uri(spec: str) -> tuple[str, str | None, str | None]:
    """``models:/NAME@ALIAS`` or ``models:/NAME/VERSION`` -> (name, alias, version).

    :raises ScenarioError: anything else, saying which forms are expected.
    """
    rest = spec[len(MODELS_SCHEME) :] if is_model_uri(spec) else ""
    name, at, alias = rest.partition("@")
    if at:
        if not name or not alias or "/" in alias:
            raise ScenarioError(f"policy '{spec}': expected models:/NAME@ALIAS")
        return name, alias, None
    name, slash, version = rest.rpartition("/")
    if not slash or not name or not version.isdigit():
        raise ScenarioError(f"policy '{spec}': expected models:/NAME@ALIAS or models:/NAME/N")
    return name, None, version


def registry_client(tracking_uri: str | None = None) -> Any:
    """An ``MlflowClient`` of ``tracking_uri`` (default: see
    :func:`rlscale.common.tracking.tracking_uri`), with short HTTP timeouts.

    :raises ScenarioError: the MLflow client is not installed.
    """
    # a registry away must not hold a decision service for minutes (MLflow's defaults retry
    # for long); the operator's own settings win
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", REGISTRY_HTTP_TIMEOUT_S)
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", REGISTRY_HTTP_RETRIES)
    # two small files: a progress bar per file is noise in a service's log and a CLI's output
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    try:
        from mlflow import MlflowClient
    except ModuleNotFoundError:
        raise ScenarioError(
            "models:/ policies need the MLflow client: pip install 'rlscale[registry]'"
        ) from None
    from rlscale.common.tracking import tracking_uri as default_uri

    return MlflowClient(tracking_uri=default_uri(tracking_uri))


def registered_version(spec: str, client: Any | None = None) -> str:
    """The registry version ``spec`` (``models:/...``) names now: an alias is resolved."""
    name, alias, version = parse_model_uri(spec)
    if version is not None:
        return version
    return str((client or registry_client()).get_model_version_by_alias(name, alias).version)


@dataclass(frozen=True)
class FetchedPolicy:
    """A registered policy's files on this machine, and where they came from."""

    folder: Path
    origin: str
    """``models:/NAME/N`` for a registry reference, ``runs:/RUN_ID/policy`` for a run id."""
    label: str
    """Short, for tables: ``NAME@ALIAS=vN``, ``NAME/N`` or ``run=<first 8 of the id>``."""
    name: str | None = None
    version: str | None = None
    run_id: str | None = None


def fetch_policy(spec: str, dst_dir: str | Path, *, client: Any | None = None) -> FetchedPolicy:
    """Download the policy ``spec`` names (``models:/NAME@ALIAS``, ``models:/NAME/N`` or a
    run id) into ``dst_dir``: its manifest and the model file the manifest names.

    :raises ScenarioError: a malformed reference, or no MLflow client installed.
    :raises ArtifactError: a manifest that does not parse or names a file outside its folder.
    :raises mlflow.exceptions.MlflowException: the registry is unreachable, or the name, alias,
        version or run does not exist.
    """
    client = client or registry_client()
    if is_model_uri(spec):
        name, alias, version = parse_model_uri(spec)
        mv = (
            client.get_model_version_by_alias(name, alias)
            if alias
            else client.get_model_version(name, version)
        )
        version = str(mv.version)
        source = client.get_model_version_download_uri(name, version)
        label = f"{name}@{alias}=v{version}" if alias else f"{name}/{version}"
        origin, run_id = f"{MODELS_SCHEME}{name}/{version}", mv.run_id
    elif is_run_id(spec):
        run = client.get_run(spec)  # a missing run fails here, with MLflow's own message
        source = f"{run.info.artifact_uri}/{POLICY_ARTIFACT_PATH}"
        name = version = None
        label, origin, run_id = f"run={spec[:8]}", f"runs:/{spec}/{POLICY_ARTIFACT_PATH}", spec
    else:
        raise ScenarioError(
            f"policy '{spec}': expected models:/NAME@ALIAS, models:/NAME/N or an MLflow run id"
        )
    folder = _download(source.rstrip("/"), Path(dst_dir), spec)
    return FetchedPolicy(folder, origin, label, name, version, run_id)


def _download(source: str, dst: Path, spec: str) -> Path:
    from mlflow.artifacts import download_artifacts

    dst.mkdir(parents=True, exist_ok=True)
    download_artifacts(artifact_uri=f"{source}/{MANIFEST_NAME}", dst_path=str(dst))
    manifest = read_manifest(dst)
    model_file = Path(manifest.model.file)
    if model_file.is_absolute() or ".." in model_file.parts:
        raise ArtifactError(f"{spec}: model.file must be inside the artifact folder")
    target = dst / model_file.parent
    target.mkdir(parents=True, exist_ok=True)
    download_artifacts(artifact_uri=f"{source}/{model_file.as_posix()}", dst_path=str(target))
    return dst
