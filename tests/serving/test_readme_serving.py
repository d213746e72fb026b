"""The README's serving example works as pasted, and its lists match the code."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest

from rlscale.serving.causes import Cause
from rlscale.serving.limits import (
    MAX_BODY_BYTES,
    MAX_CLUSTERS,
    MAX_GRPC_STREAMS,
    MAX_POOLS_PER_REQUEST,
)

README = Path(__file__).resolve().parents[2] / "README.md"


def _example() -> list[str]:
    """The lines of the serving example block (the one that exports the token)."""
    text = README.read_text()
    block = re.search(r"```bash\n(export RLSCALE_API_TOKEN=.*?)```", text, re.S)
    assert block, "the README's serving example is gone"
    return block.group(1).splitlines()


@pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl")
def test_the_serving_example_works_as_pasted(server_factory, tmp_path, auth):
    lines = _example()
    serve = next(ln for ln in lines if ln.startswith("rlscale serve "))
    args = shlex.split(serve.split("#")[0])
    assert args[:2] == ["rlscale", "serve"] and args[-1] == "&"
    args = [str(tmp_path / a) if a.endswith(".sqlite") else a for a in args[2:-1]]
    grpc_port = args.index("--grpc-port") + 1
    args[grpc_port] = str(_free_port())  # the README's 9090 may be taken here
    server = server_factory(*args)
    start = next(i for i, ln in enumerate(lines) if ln.startswith("curl "))
    curl = "\n".join(lines[start:]).replace("localhost:8080", server.url.removeprefix("http://"))
    token = auth["Authorization"].removeprefix("Bearer ")
    done = subprocess.run(
        ["bash", "-c", curl],
        env={"RLSCALE_API_TOKEN": token, "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout)
    assert out["cluster_id"] == "prod" and out["source"] == "policy", out
    assert set(out["replicas"]) == {"h100", "a100", "h100-spot"}
    assert out["shadow_recorded"] is True


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_the_readme_lists_every_cause():
    text = README.read_text()
    listed = re.search(r"the words: (.*?)\); the OpenAPI", text, re.S).group(1)
    assert re.findall(r"`(\w+)`", listed) == [c.value for c in Cause]


def test_the_limits_table_says_what_limits_py_says():
    section = README.read_text().split("#### Limits", 1)[1]
    table = [ln for ln in section.split("\n\n")[2].splitlines() if ln.startswith("|")]
    rows = {r.split("|")[1].strip(): r.split("|")[2].strip() for r in table[2:]}
    assert rows["request body"] == f"{MAX_BODY_BYTES // 1024} KiB"
    assert rows["pools per request (and `production_decision` entries)"] == str(
        MAX_POOLS_PER_REQUEST
    )
    assert rows["clusters tracked (`--max-clusters`)"] == f"{MAX_CLUSTERS:,}"
    assert rows["open `StreamIsActive` streams"] == str(MAX_GRPC_STREAMS)
