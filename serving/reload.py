"""Hot reload: watch what the policy spec points at and swap in a new policy once verified.

A :class:`PolicyReloader` polls the spec's signature (:func:`policy_signature`: the artifact's
file times and sizes, or the version a registry alias names) every ``interval_s``. When it
changes, the new policy is loaded and verified (:func:`rlscale.agents.onnx_policy.
load_onnx_policy`: manifest, checksum, layout, a probe batch) and swapped into the service
atomically; the same version again (a file touched, a poll during a write) is not swapped, so
policy memories are kept. When the artifact fails verification, the old policy keeps serving,
the error is kept for ``GET /v1/policy`` and the logs, and that signature is not tried again:
the next change is. Any other failure (a registry or artifact store away) is temporary: the
next poll tries again.

Writers should put the model file in place before the manifest (``export_ppo`` does); a
watcher that sees a new model with the old manifest refuses it on the checksum and loads the
pair once the manifest arrives.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from rlscale.agents.onnx_policy import ArtifactError
from rlscale.envs.scenario import Scenario, ScenarioError
from rlscale.serving.budgets import BudgetError
from rlscale.serving.loaders import (
    ARTIFACT_KINDS,
    LoadedPolicy,
    check_registry_spec,
    load_policy,
    policy_kind,
    policy_signature,
)
from rlscale.serving.service import DecisionService

log = logging.getLogger("rlscale.serving.reload")

DEFAULT_RELOAD_INTERVAL_S = 30.0


@dataclass(frozen=True)
class ReloadEvent:
    """The outcome of one attempt: ``loaded``, ``refused`` (the artifact is bad) or
    ``error`` (a temporary failure; tried again)."""

    result: str
    spec: str
    version: str = ""
    error: str = ""
    at: float = 0.0


class PolicyReloader:
    """Polls ``spec`` and swaps new versions into ``service``; see the module docstring.

    :param loaded: the signature of the policy the service holds now (None: none loaded, so
        the first poll tries to load).
    :param listeners: called with every :class:`ReloadEvent` (metrics count them).
    """

    def __init__(
        self,
        service: DecisionService,
        spec: str,
        scenario: Scenario,
        *,
        interval_s: float = DEFAULT_RELOAD_INTERVAL_S,
        loaded: Any = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not interval_s > 0:
            raise ValueError(f"reload interval must be > 0 s, got {interval_s}")
        self.service = service
        self.spec = spec
        self.scenario = scenario
        self.interval_s = interval_s
        self.clock = clock
        self.listeners: list[Callable[[ReloadEvent], None]] = []
        self._current = loaded
        self._refused: Any = None
        self.last_checked_at: float | None = None
        self.last_event: ReloadEvent | None = None
        self.last_error: str = ""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._check_lock = threading.Lock()

    def check(self) -> ReloadEvent | None:
        """One poll: reload if the spec points at something new; the attempt's outcome, or
        None when nothing changed (or the change was refused before)."""
        with self._check_lock:
            self.last_checked_at = self.clock()
            try:
                signature = policy_signature(self.spec)
            except Exception as err:  # a registry away: keep serving, say why
                self.last_error = f"cannot check {self.spec}: {type(err).__name__}: {err}"
                log.warning("%s", self.last_error)
                return None
            if self.service.policy is not None and signature == self._current:
                return None
            if signature == self._refused and signature is not None:
                return None
            try:
                new: LoadedPolicy = load_policy(self.spec, self.scenario)
                self.service.check_policy(new)
            except Exception as err:
                bad = isinstance(err, ArtifactError | ScenarioError | BudgetError)
                event = ReloadEvent(
                    "refused" if bad else "error",
                    self.spec,
                    error=f"{type(err).__name__}: {err}",
                    at=self.clock(),
                )
                if bad:
                    self._refused = signature
                self.last_error = event.error
                log.error(
                    "policy %s %s, still serving %s: %s",
                    self.spec,
                    "refused" if bad else "not loaded (will retry)",
                    self.service.policy_version,
                    event.error,
                )
            else:
                swapped = self.service.swap_policy(new)
                self._current = signature
                self._refused = None
                self.last_error = ""
                if not swapped:
                    return None  # the version already serving
                event = ReloadEvent("loaded", self.spec, version=new.version, at=self.clock())
                log.info("policy %s loaded: %s", self.spec, new.version)
            self.last_event = event
        for listener in list(self.listeners):
            listener(event)
        return event

    def _run(self) -> None:
        if self.service.policy is None:  # not loaded at start: try at once
            try:
                self.check()
            except Exception:
                log.exception("policy reload check failed")
        while not self._stop.wait(self.interval_s):
            try:
                self.check()
            except Exception:  # never let the watcher die
                log.exception("policy reload check failed")

    def start(self) -> PolicyReloader:
        """Poll in a daemon thread until :meth:`stop`."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="policy-reload", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stop polling (waits for a check in progress)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10.0)
            self._thread = None

    def status(self) -> dict[str, Any]:
        """What ``GET /v1/policy`` shows of the watcher."""
        ev = self.last_event
        return {
            "spec": self.spec,
            "interval_s": self.interval_s,
            "last_checked_at": self.last_checked_at,
            "last_error": self.last_error or None,
            "last_attempt": None
            if ev is None
            else {"result": ev.result, "version": ev.version or None, "at": ev.at},
        }


def start_policy(
    service_factory: Callable[[LoadedPolicy | None], DecisionService],
    spec: str,
    scenario: Scenario,
    *,
    interval_s: float = DEFAULT_RELOAD_INTERVAL_S,
) -> tuple[DecisionService, PolicyReloader, str]:
    """Build the service around ``spec``'s policy; ``(service, reloader, startup error)``.

    An artifact (ONNX folder, registry URI) that cannot be loaded at startup does not stop the
    service: it starts with no policy (the fallback answers, ``/readyz`` says not ready) and
    the reloader keeps trying. A registry policy is always loaded by the reloader, so a
    registry that is slow or away never delays the start. A baseline spec that does not load,
    or a malformed spec, is a configuration error and raises. The caller starts the reloader.
    """
    signature = None
    error = ""
    policy: LoadedPolicy | None = None
    kind = policy_kind(spec)
    if kind == "mlflow":
        check_registry_spec(spec)  # a typo or a missing client stops the start
        error = "loading from the registry"
    else:
        try:
            signature = policy_signature(spec)
            policy = load_policy(spec, scenario)
        except ScenarioError:
            raise
        except Exception as err:
            if kind not in ARTIFACT_KINDS:
                raise
            error = f"{type(err).__name__}: {err}"
    service = service_factory(policy)
    reloader = PolicyReloader(
        service, spec, scenario, interval_s=interval_s, loaded=signature if policy else None
    )
    if error:
        reloader.last_error = error
    return service, reloader, error
