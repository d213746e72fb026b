"""Shadow mode: every decision recorded durably in SQLite, before its response is sent.

One row per decision: the request's metrics, the recommendation, the production scaler's
actual decision when the caller sent it, the policy version and the time. The database runs in
WAL mode with ``synchronous=FULL``, so a committed row survives a SIGKILL of the service (and a
power loss, as far as the disk honours fsync); :meth:`ShadowLog.record` returns only after the
commit, and the app calls it before it returns the response, so every response a caller
received has its row.

Schema (version 1)::

    schema_version(version INTEGER)
    decisions(id INTEGER PRIMARY KEY, decision_id TEXT UNIQUE, cluster_id TEXT,
              decided_at_s REAL, metrics_timestamp_s REAL, policy_version TEXT, source TEXT,
              request_json TEXT, response_json TEXT, production_json TEXT NULL)
"""

from __future__ import annotations

import json
import sqlite3
import threading
from pathlib import Path
from typing import Any

from rlscale.serving.schemas import RecommendationRequest, RecommendationResponse

SCHEMA_VERSION = 1

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
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
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

    def count(self) -> int:
        """Rows recorded."""
        with self._lock:
            return int(self._conn.execute("SELECT COUNT(*) FROM decisions").fetchone()[0])

    def close(self) -> None:
        """Close the connection (a checkpoint folds the WAL into the database)."""
        with self._lock:
            self._conn.close()


def _finite_or_none(x: float) -> float | None:
    return x if x == x and abs(x) != float("inf") else None


def _json(value: Any) -> str:
    # NaN/inf are not JSON; the raw request may hold them (they sent the answer to fallback)
    return json.dumps(value, sort_keys=True, default=str, allow_nan=True)
