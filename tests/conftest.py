"""Shared test fixtures: the data folder (and a skip when it is missing), a quick scenario."""

from __future__ import annotations

import copy
from typing import Any

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


@pytest.fixture(scope="session")
def exported_policy(tmp_path_factory):
    """``make(seed, scenario="azure-conv") -> folder``: a small PPO policy exported as an
    artifact (each distinct call once per session). Skips without the rl extra or onnxruntime.
    """
    pytest.importorskip("stable_baselines3")
    pytest.importorskip("onnxscript")
    pytest.importorskip("onnxruntime")
    from stable_baselines3 import PPO
    from stable_baselines3.common.vec_env import VecNormalize

    from rlscale.envs.sb3_vec_env import InferenceClusterVecEnv
    from rlscale.training.export import export_ppo

    cache: dict[tuple[int, str], tuple] = {}

    def make(seed: int, scenario: str = "azure-conv", *, with_model: bool = False):
        key = (seed, scenario)
        if key not in cache:
            venv = InferenceClusterVecEnv(2, scenario=scenario)
            venv.seed(seed)
            norm = VecNormalize(venv, norm_reward=False)
            model = PPO(
                "MlpPolicy",
                norm,
                n_steps=32,
                batch_size=64,
                n_epochs=1,
                seed=seed,
                device="cpu",
                policy_kwargs={"net_arch": [32, 32]},
            )
            model.learn(64)  # a few updates, so the normalization statistics are not trivial
            folder = tmp_path_factory.mktemp(f"policy-{scenario}-{seed}")
            export_ppo(model, venv.sim, folder, name=f"ppo-{scenario}-{seed}", vec_normalize=norm)
            cache[key] = (folder, model, norm, venv)
        folder, model, norm, venv = cache[key]
        return (folder, model, norm, venv) if with_model else folder

    return make


_QUICK: dict[str, Any] = {
    "episode_hours": 0.5,
    "workload": {
        "kind": "synthetic",
        "synthetic": {"base_rate_rps": 6.0, "days": 0.5, "noise_cv": 0.2},
    },
    "pools": [
        {
            "name": "h100",
            "profile": "h100x1-llama3-8b",
            "price_usd_h": 4.0,
            "quota": 6,
            "initial_replicas": 2,
        },
        {"name": "a100", "profile": "a100x1-llama3-8b", "price_usd_h": 2.5, "quota": 4},
    ],
}


def write_tenant_csv_trace(
    path,
    tenants: dict[str, float],
    *,
    hours: float = 2.0,
    rps: float = 3.0,
    seed: int = 7,
    only_first_hour: tuple[str, ...] = (),
) -> None:
    """A CSV trace (``timestamp_s,prompt_tokens,output_tokens,tenant``) of Poisson-like
    arrivals at ``rps`` over ``hours``, each request's tenant drawn by ``tenants``' shares;
    the tenants named in ``only_first_hour`` send nothing after it (their later draws go to
    the first tenant)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    n = int(hours * 3600 * rps)
    times = np.sort(rng.uniform(0.0, hours * 3600.0, n))
    tenant = rng.choice(list(tenants), size=n, p=list(tenants.values()))
    for name in only_first_hour:
        tenant[(tenant == name) & (times > 3600.0)] = next(iter(tenants))
    lines = ["timestamp_s,prompt_tokens,output_tokens,tenant"]
    lines += [
        f"{t:.3f},{p},{o},{k}"
        for t, p, o, k in zip(
            times, rng.integers(100, 2000, n), rng.integers(20, 400, n), tenant, strict=True
        )
    ]
    path.write_text("\n".join(lines) + "\n")


@pytest.fixture(scope="session")
def tenant_csv_trace():
    """:func:`write_tenant_csv_trace`, for tests that replay a tenant-tagged trace."""
    return write_tenant_csv_trace


@pytest.fixture(scope="session")
def quick_raw():
    """``make(name="quick", **overrides) -> dict``: a scenario of half a day of synthetic load
    on two on-demand pools (60-step episodes, 6 held-out windows; no spot, so a fixed fleet
    costs the same under every seed), as the dict a YAML file would hold."""

    def make(name: str = "quick", **overrides: Any) -> dict[str, Any]:
        raw = {"name": name, **copy.deepcopy(_QUICK)}
        raw.update(overrides)
        return raw

    return make


class _PageParser:
    """Strict enough for a generated report: every non-void element closes in order."""

    VOID = frozenset({"meta", "img", "br", "hr", "link", "input"})

    def __init__(self) -> None:
        from html.parser import HTMLParser

        page = self

        class Parser(HTMLParser):
            def handle_starttag(self, tag, attrs):
                page.start(tag, dict(attrs))

            def handle_endtag(self, tag):
                page.end(tag)

            def handle_data(self, data):
                page.data(data)

        self.parser = Parser()
        self.stack: list[str] = []
        self.tables: list[list[list[str]]] = []
        self.images: list[str] = []
        self.ids: list[str] = []
        self._cell: list[str] | None = None

    def start(self, tag: str, attrs: dict[str, str | None]) -> None:
        if attrs.get("id"):
            self.ids.append(str(attrs["id"]))
        if tag == "img":
            self.images.append(str(attrs.get("src")))
        if tag in self.VOID:
            return
        self.stack.append(tag)
        if tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self._cell = []

    def end(self, tag: str) -> None:
        if tag in self.VOID:
            return
        assert self.stack and self.stack[-1] == tag, f"</{tag}> closes <{self.stack[-1:]}>"
        self.stack.pop()
        if tag in ("td", "th") and self._cell is not None:
            self.tables[-1][-1].append("".join(self._cell).strip())
            self._cell = None

    def data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)


@pytest.fixture
def parse_html():
    """``parse(text) -> page`` with ``tables`` (rows of cell texts), ``images`` (src of each
    img) and ``ids``; fails on a mis-nested or unclosed element, or an image that is not an
    embedded PNG."""
    import base64

    def parse(text: str) -> _PageParser:
        page = _PageParser()
        page.parser.feed(text)
        page.parser.close()
        assert page.stack == [], f"unclosed elements: {page.stack}"
        for src in page.images:
            assert src.startswith("data:image/png;base64,"), src[:40]
            assert base64.b64decode(src.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
        return page

    return parse
