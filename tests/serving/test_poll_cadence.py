"""The HPA baseline behind a real server, asked every 0.5 s as the Prometheus poller asks it.

The HPA baseline is a controller that syncs every 15 s and counts its windows in seconds of
metrics time; how often the service is asked must not change what it answers. Requests carry
timestamps 0.5 s apart (metrics time), pushed back to back over HTTP: no sleeps, and the
answers are the same on every run. The deployment does not follow the answers here (the
reported ready count is fixed per phase), as a cluster whose HPA has not synced yet would not.
"""

from __future__ import annotations

import itertools
import time

import httpx

POLL_S = 0.5
STABILIZATION_S = 300.0  # the HPA's default scale-down stabilization window


def test_the_hpa_answer_follows_the_load_whatever_the_poll_rate(server_factory, make_body, auth):
    server = server_factory("--policy", "hpa", "--max-staleness-s", "900")
    start = time.time() - 600.0  # metrics time; every timestamp stays within the bound
    answers: list[tuple[float, float, int, int]] = []  # (t, rate, ready, answer)

    def ask(client: httpx.Client, k: int, rate: float, ready: int) -> int:
        body = make_body(cluster="polled", ready_h100=ready, rate_rps=rate)
        body["timestamp"] = start + k * POLL_S
        r = client.post(server.url + "/v1/recommendations", json=body, headers=auth)
        assert r.status_code == 200, r.text
        answer = r.json()["replicas"]["h100"]
        answers.append((k * POLL_S, rate, ready, answer))
        return answer

    def shown() -> str:
        return "\n".join(f"t={t:6.1f} rate={r:5.1f} ready={n} -> {a}" for t, r, n, a in answers)

    with httpx.Client(timeout=10) as client:
        # the load rises (as Prometheus' rate over a short window does), the ready count lags
        k = 0
        load = []
        for k in range(60):
            load.append(ask(client, k, min(21.9 + 13.0 * k * POLL_S, 60.0), 2))
        # the ask never falls while the load rises and nothing else changes, and it does
        # ask for more than the lagging ready count
        assert all(b >= a for a, b in itertools.pairwise(load)), shown()
        assert load[-1] > 2, shown()
        # the load falls to almost nothing; the deployment reached 3 meanwhile
        low_start_k = k + 1
        low = []
        n_low = round((STABILIZATION_S + 60.0) / POLL_S)
        for k in range(low_start_k, low_start_k + n_low):
            low.append(ask(client, k, 0.2, 3))
    # once the load has fallen the ask never rises (the window holds, it does not raise)
    assert all(b <= a for a, b in itertools.pairwise([load[-1], *low])), shown()
    # once down to the current count, it holds there until no higher recommendation of the
    # load phase is left in the 300 s window (seconds of metrics, not a number of requests)
    held_s = POLL_S * sum(1 for n in low if n >= 3)
    assert held_s >= STABILIZATION_S - 30.0, shown()
    # and then it steps down to the HPA's minimum (1 replica)
    assert low[-1] == 1, shown()
