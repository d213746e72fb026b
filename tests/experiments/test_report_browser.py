"""Reports of the Azure, Mooncake and ServeGen scenarios, opened in headless Chromium.

A report's plots are PNG ``data:`` URIs; a truncated or malformed one shows as a broken image
only in a browser. The harness copies each report with a small script that, once the page has
loaded, counts the ``<img>`` elements that did not decode (``complete`` and ``naturalWidth >
0``) and writes the counts into the DOM, which ``--dump-dom`` prints.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from rlscale.agents.registry import known_policies
from rlscale.envs.scenario import load_scenario
from rlscale.experiments.evaluate import PolicySpec, evaluate
from rlscale.experiments.report import write_report

CHROMIUM = Path("/usr/bin/chromium")

pytestmark = [
    pytest.mark.needs_data,
    pytest.mark.skipif(
        not CHROMIUM.exists(),
        reason="headless Chromium not installed at /usr/bin/chromium (apt-get install -y chromium)",
    ),
]

_CHECK_SCRIPT = """
<script>
window.addEventListener("load", () => {
  const imgs = Array.from(document.images);
  const broken = imgs.filter((img) => !(img.complete && img.naturalWidth > 0));
  const out = document.createElement("div");
  out.id = "img-check";
  out.dataset.total = String(imgs.length);
  out.dataset.broken = String(broken.length);
  out.dataset.sizes = imgs.map((img) => img.naturalWidth + "x" + img.naturalHeight).join(",");
  document.body.appendChild(out);
});
</script>
"""

# SCENARIO -> episode hours to evaluate (None: the split's own); ServeGen's 24 h episodes
# are cut to 2 h so the test stays quick
SCENARIOS = {"azure-conv": None, "mooncake-conv": None, "servegen-m-large": 2.0}


def _chromium(user_dir: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            str(CHROMIUM),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={user_dir}",
            "--virtual-time-budget=5000",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )


def image_check(page: Path, tmp_path: Path) -> dict[str, str]:
    """Open ``page`` (with the checking script added) in Chromium; the script's counts."""
    checked = tmp_path / f"{page.stem}-checked.html"
    checked.write_text(page.read_text().replace("</body>", _CHECK_SCRIPT + "</body>"))
    proc = _chromium(tmp_path / "chromium-profile", "--dump-dom", checked.as_uri())
    match = re.search(r'<div id="img-check"([^>]*)>', proc.stdout)
    assert match, f"the checking script did not run; stderr:\n{proc.stderr[-2000:]}"
    return dict(re.findall(r'data-(\w+)="([^"]*)"', match.group(1)))


def _policies(scenario_name: str) -> list[PolicySpec]:
    """The shipped fleet and a one-replica fleet: two policies that differ on every plot."""
    first_pool = load_scenario(scenario_name).pools[0].name
    return [
        PolicySpec("static"),
        PolicySpec("static", {"replicas": {first_pool: 1}}, label="static-1"),
    ]


@pytest.fixture(scope="module")
def reports(tmp_path_factory) -> dict[str, Path]:
    """One report per scenario: two policies (and the oracle when registered), one seed."""
    out: dict[str, Path] = {}
    for name, hours in SCENARIOS.items():
        scenario = load_scenario(name)
        if hours is not None:
            scenario = scenario.model_copy(update={"episode_hours": hours})
        evaluation = evaluate(scenario, _policies(name), seeds=1, max_windows=1, progress=False)
        out[name] = write_report(evaluation, tmp_path_factory.mktemp(name))
    return out


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_report_renders_every_plot_in_a_browser(reports, name, tmp_path):
    counts = image_check(reports[name], tmp_path)
    assert counts["total"] == "3", counts
    assert counts["broken"] == "0", counts
    for size in counts["sizes"].split(","):
        width, height = (int(v) for v in size.split("x"))
        assert width > 300 and height > 200, counts


def test_the_check_catches_a_broken_image(tmp_path):
    page = tmp_path / "broken.html"
    page.write_text(
        "<!DOCTYPE html><html><body>"
        '<img src="data:image/png;base64,iVBORw0KGgoAAAANSUhEUgAAAAEAAAAB">'  # truncated PNG
        "</body></html>"
    )
    assert image_check(page, tmp_path) == {"total": "1", "broken": "1", "sizes": "0x0"}


def test_report_screenshot(reports, tmp_path):
    shot = tmp_path / "report.png"
    _chromium(
        tmp_path / "chromium-profile",
        "--hide-scrollbars",
        "--window-size=1280,3600",
        f"--screenshot={shot}",
        reports["servegen-m-large"].as_uri(),
    )
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 50_000
    if "oracle" in known_policies():
        assert "Over oracle (USD)" in reports["servegen-m-large"].read_text()
