"""schemathesis against the live OpenAPI: no 5xx, and every answer as the schema says.

Bodies, parameters and headers generated from ``/openapi.json`` (valid and invalid ones) go
to the real server; each response is checked for server errors, status codes and content
types the schema does not list, and bodies that violate it.
"""

from __future__ import annotations

from collections import Counter

import pytest

schemathesis = pytest.importorskip("schemathesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402

from rlscale.serving.limits import MAX_BODY_BYTES  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


def _config():
    """Schemathesis' own checks, with 413 counted as a rejection of invalid data: a body over
    the limit is refused before it is read (and so before its other faults, a missing
    Authorization header included), and the schema documents that answer."""
    from schemathesis.config import SchemathesisConfig

    try:  # schemathesis' own default list (not public API)
        from schemathesis.config._checks import NEGATIVE_DATA_REJECTION_EXPECTED_STATUSES
    except ImportError:  # moved in a later release: the list of 4.32
        NEGATIVE_DATA_REJECTION_EXPECTED_STATUSES = (
            *("400", "401", "403", "404", "405", "406", "409", "415", "422", "428", "429"),
            "5xx",
        )
    statuses = [*NEGATIVE_DATA_REJECTION_EXPECTED_STATUSES, "413"]
    return SchemathesisConfig.from_dict(
        {"checks": {"negative_data_rejection": {"expected-statuses": statuses}}}
    )


_CONFIG = _config()


@pytest.mark.parametrize("mode", ["positive", "negative"])
def test_api_conforms_to_its_schema(live_server, auth, mode):
    """Every operation, valid and invalid input: no 5xx, nothing the schema does not say."""
    from schemathesis.generation.modes import GenerationMode

    schema = schemathesis.openapi.from_url(live_server.url + "/openapi.json", config=_CONFIG)
    assert "413" in schema.config.checks.negative_data_rejection.expected_statuses
    calls: list[int] = []

    @given(case=schema.as_strategy(generation_mode=GenerationMode(mode)))
    @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
    def check(case) -> None:
        response = case.call_and_validate(headers=auth, timeout=10)
        calls.append(response.status_code)

    check()
    print(mode, sorted(Counter(calls).items()))
    assert calls and max(calls) < 500
    assert live_server.alive()


def test_openapi_lists_the_error_answers_and_metrics_as_text(live_server):
    import httpx

    spec = httpx.get(live_server.url + "/openapi.json").json()
    post = spec["paths"]["/v1/recommendations"]["post"]["responses"]
    assert {"200", "400", "401", "413", "422", "429"} <= set(post)
    assert str(MAX_BODY_BYTES) in post["413"]["description"]
    metrics = spec["paths"]["/metrics"]["get"]["responses"]["200"]["content"]
    assert list(metrics) == ["text/plain"]
    pools = spec["components"]["schemas"]["RecommendationRequest"]["properties"]["pools"]
    assert pools["maxItems"] == 64
