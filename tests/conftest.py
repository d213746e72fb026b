"""Shared test fixtures: the data folder, and a skip when it is missing."""

from __future__ import annotations

import pytest

from rlscale.envs.scenario import DATA_ENV_VAR, data_root


def pytest_collection_modifyitems(config, items):
    if (data_root() / "azure_llm_trace_2023").exists():
        return
    skip = pytest.mark.skip(
        reason=f"public datasets not found at {data_root()}; set {DATA_ENV_VAR} to their folder"
    )
    for item in items:
        if "needs_data" in item.keywords:
            item.add_marker(skip)
