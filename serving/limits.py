"""The decision service's bounds, each written once: what no client can exceed.

A client (or a bug in one) must not be able to exhaust the service: every input the service
holds or works through has a ceiling here, and the README's limits table lists them.
"""

from __future__ import annotations

MAX_BODY_BYTES = 64 * 1024
"""Largest request body; larger ones get 413 before they are read (a 64-pool request with
every field set takes about 25 KB)."""

MAX_POOLS_PER_REQUEST = 64
"""Pools one request may list (and entries in ``production_decision``)."""

MAX_CLUSTERS = 1024
"""Clusters whose state the service tracks at once (shadow-only ones counted apart)."""

CLUSTER_FORGET_AFTER_S = 3600.0
"""A tracked cluster silent this long may make room for a new one; until then a new cluster
beyond :data:`MAX_CLUSTERS` is refused (429), so a flood of ids never evicts a live cluster."""

MAX_GRPC_STREAMS = 256
"""Open ``StreamIsActive`` streams; one more is refused (RESOURCE_EXHAUSTED). Streams are
coroutines, not threads: they never take what ``GetMetrics`` needs."""

MAX_KEDA_TARGET_VALUE = 1e6
"""Largest ``targetValue`` a ScaledObject may give (its product with the replicas must stay a
Kubernetes quantity)."""

STALENESS_INTERVALS = 2
"""The default staleness bound, in control intervals: metrics older than this go to the
fallback, and KEDA gets no number from them."""

SHADOW_MAX_AGE_S = 30 * 86400.0
"""Shadow-log retention: rows older than this are pruned."""

SHADOW_MAX_BYTES = 512 * 2**20
"""Shadow-log retention: the oldest rows are pruned while the rows take more than this (within
the deploy manifest's 1 GiB volume, with room for the WAL and a checkpoint)."""

MAX_TENANTS_PER_REQUEST = 256
"""Entries in a request's ``tenant_rates_rps``."""

MAX_TENANTS_TRACKED = 256
"""Tenants with their own spend series; the spend of later ones is pooled as ``_other``, so a
stream of new tenant names never grows ``/metrics`` without bound."""
OTHER_TENANT = "_other"
"""Where the spend of tenants beyond :data:`MAX_TENANTS_TRACKED` goes (bounded label sets); a
request may not name a tenant so."""

MAX_BUDGETS = 64
"""Budgets in a ``--budgets`` file."""
