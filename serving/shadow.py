"""Shadow mode: every decision recorded durably in SQLite, before its response is sent.

One row per decision: the request's metrics, the recommendation, the production scaler's
actual decision when the caller sent it, the policy version and the time. The database runs in
WAL mode with ``synchronous=FULL``, so a committed row survives a SIGKILL of the service (and a
power loss, as far as the disk honours fsync); :meth:`ShadowLog.record` returns only after the
commit, and the app calls it before it returns the response, so every response a caller
received has its row.

Retention: rows older than ``max_age_s`` go, and the oldest go while the rows take more than
``max_bytes`` (pages SQLite has in use; freed pages are reused, so the file stops growing
there). :meth:`ShadowLog.start_pruning` prunes in a background thread; the figures (rows,
bytes, rows pruned) are in ``/metrics``.

Schema (version 1)::

    schema_version(version INTEGER)
    decisions(id INTEGER PRIMARY KEY, decision_id TEXT UNIQUE, cluster_id TEXT,
              decided_at_s REAL, metrics_timestamp_s REAL, policy_version TEXT, source TEXT,
              request_json TEXT, response_json TEXT, production_json TEXT NULL)
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rlscale.serving.limits import SHADOW_MAX_AGE_S, SHADOW_MAX_BYTES
from rlscale.serving.schemas import RecommendationRequest, RecommendationResponse

SCHEMA_VERSION = 1
DEFAULT_PRUNE_INTERVAL_S = 60.0
_PRUNE_BATCH_ROWS = 2000
"""Rows deleted per transaction: writers wait for one batch at most."""

log = logging.getLogger("rlscale.serving.shadow")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS decisions (
    id INTEGER PRIMARY KEY,
    decision_id TEXT NOT NULL UNIQUE,
    cluster_id TEXT NOT NULL,
    decided_at_s REAL NOT NULL,
    metrics_timestamp_s REAL,
    policy_version TEXT NOT NULL,
    source TEXT NOT NULL,
    request_json TEXT NOT NULL,
    response_json TEXT NOT NULL,
    production_json TEXT
);
CREATE INDEX IF NOT EXISTS decisions_cluster_time ON decisions (cluster_id, decided_at_s);
"""


class ShadowLogError(RuntimeError):
    """The shadow database cannot be opened or has an unknown schema version."""


class ShadowLog:
    """Decisions appended to a SQLite database; thread-safe (one connection, one lock).

    :param path: the database file; created with its schema if absent.
    :param max_age_s: rows older than this (by decision time) are pruned.
    :param max_bytes: the oldest rows are pruned while the rows take more than this.
    :param clock: unix time now (tests pass a fake one).
    """

    def __init__(
        self,
        path: str | Path,
        *,
        max_age_s: float = SHADOW_MAX_AGE_S,
        max_bytes: int = SHADOW_MAX_BYTES,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not max_age_s > 0 or not max_bytes > 0:
            raise ValueError(
                f"shadow retention: max_age_s ({max_age_s}) and max_bytes ({max_bytes}) must be > 0"
            )
        self.path = Path(path)
        self.max_age_s = max_age_s
        self.max_bytes = max_bytes
        self.clock = clock
        self.pruned_rows = 0
        """Rows pruned since start."""
        try:
            self._conn = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=FULL")
            self._conn.execute("PRAGMA busy_timeout=5000")
            self._conn.executescript(_SCHEMA)
            row = self._conn.execute("SELECT version FROM schema_version").fetchone()
            if row is None:
                self._conn.execute("INSERT INTO schema_version VALUES (?)", (SCHEMA_VERSION,))
            elif row[0] != SCHEMA_VERSION:
                raise ShadowLogError(
                    f"{self.path}: shadow schema version {row[0]}, this service writes "
                    f"{SCHEMA_VERSION}; use a new file"
                )
        except sqlite3.Error as err:
            raise ShadowLogError(f"cannot open shadow database {self.path}: {err}") from None
        self._lock = threading.Lock()
        self.rows = self._count()
        """Rows held now (kept current by writes and pruning; read by /metrics)."""
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def record(self, request: RecommendationRequest, response: RecommendationResponse) -> None:
        """Append one decision and commit it durably (returns after the fsync).

        :raises sqlite3.Error: the write failed (the caller decides what to tell its client).
        """
        production = request.production_decision
        row = (
            response.decision_id,
            response.cluster_id,
            response.decided_at,
            _finite_or_none(request.timestamp),
            response.policy_version,
            response.source,
            _json(request.model_dump(mode="json")),
            _json(response.model_dump(mode="json", exclude={"shadow_recorded"})),
            None if production is None else _json(production),
        )
        with self._lock:
            self._conn.execute(
                "INSERT INTO decisions (decision_id, cluster_id, decided_at_s, "
                "metrics_timestamp_s, policy_version, source, request_json, response_json, "
                "production_json) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                row,
            )
            self.rows += 1

    def _count(self) -> int:
        return int(self._conn.execute("SELECT COUNT(*) FROM decisions").fetchone()[0])

    def count(self) -> int:
        """Rows recorded."""
        with self._lock:
            return self._count()

    def used_bytes(self) -> int:
        """Bytes of the pages in use (the file less its free pages, the WAL not counted)."""
        with self._lock:
            return self._used_bytes()

    def _used_bytes(self) -> int:
        pages = self._conn.execute("PRAGMA page_count").fetchone()[0]
        free = self._conn.execute("PRAGMA freelist_count").fetchone()[0]
        size = self._conn.execute("PRAGMA page_size").fetchone()[0]
        return int((pages - free) * size)

    def prune(self) -> int:
        """Delete rows past the age limit, then the oldest while over the size limit; returns
        how many went. Works in batches, so writers wait for one batch at most."""
        deleted = 0
        cutoff = self.clock() - self.max_age_s
        while True:
            with self._lock:
                n = self._conn.execute(
                    "DELETE FROM decisions WHERE id IN (SELECT id FROM decisions "
                    "WHERE decided_at_s < ? ORDER BY id LIMIT ?)",
                    (cutoff, _PRUNE_BATCH_ROWS),
                ).rowcount
                deleted += n
                self.rows -= n
            if n < _PRUNE_BATCH_ROWS:
                break
        while True:
            with self._lock:
                if self.rows == 0 or self._used_bytes() <= self.max_bytes:
                    break
                n = self._conn.execute(
                    "DELETE FROM decisions WHERE id IN "
                    "(SELECT id FROM decisions ORDER BY id LIMIT ?)",
                    (max(1, min(_PRUNE_BATCH_ROWS, self.rows // 10)),),
                ).rowcount
                deleted += n
                self.rows -= n
        self.pruned_rows += deleted
        return deleted

    def start_pruning(self, interval_s: float = DEFAULT_PRUNE_INTERVAL_S) -> ShadowLog:
        """Prune now and then every ``interval_s`` in a daemon thread, until :meth:`close`."""

        def loop() -> None:
            while True:
                try:
                    self.prune()
                except sqlite3.Error as err:  # a full or locked disk: try again next time
                    log.error("shadow pruning failed: %s", err)
                if self._stop.wait(interval_s):
                    return

        if self._thread is None:
            self._thread = threading.Thread(target=loop, name="shadow-prune", daemon=True)
            self._thread.start()
        return self

    def close(self) -> None:
        """Stop pruning and close the connection (a checkpoint folds the WAL into the
        database)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10.0)
            self._thread = None
        with self._lock:
            self._conn.close()


def _finite_or_none(x: float) -> float | None:
    return x if x == x and abs(x) != float("inf") else None


def _json(value: Any) -> str:
    # NaN/inf are not JSON; the raw request may hold them (they sent the answer to fallback)
    return json.dumps(value, sort_keys=True, default=str, allow_nan=True)
