"""What keeps an idle agent small (issue 6), checked in a fresh interpreter each: what a
process has imported cannot be un-imported, so the test process itself tells nothing."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.server_process import tree_env

#: Runs in a fresh agent interpreter; prints what it found as JSON.
AGENT_PASS = """
import asyncio, json, sys
from pathlib import Path
from node_image.agent import memory
from node_image.agent.context import ReconcileContext
from node_image.agent.reconcilers import build
from node_image.agent.state import StateDir
from node_image.host import SimulatedHost
from registration.desired import SpecDocument

root = Path(sys.argv[1])
doc = SpecDocument.model_validate_json(sys.argv[2])
host, state = SimulatedHost(root / "device"), StateDir(root / "state", fsync=False)
state.ensure()

async def once():
    found = []
    for r in build(state):
        found.append(await r.reconcile(doc.spec, ReconcileContext(r.name, host, state)))
    return found

conditions = asyncio.run(once())
memory.release()
print(json.dumps({
    "conditions": {c.type: [c.status, c.reason] for c in conditions},
    "modules": sorted(
        m for m in sys.modules if m.startswith(("importlib.metadata", "node_image", "pydantic"))
    ),
}))
"""


def agent_pass(tmp_path: Path, spec: dict[str, object]) -> dict[str, object]:
    document = json.dumps({"device_id": "dev-1", "generation": 1, "spec": spec})
    done = subprocess.run(
        [sys.executable, "-c", AGENT_PASS, str(tmp_path), document],
        env=tree_env(),
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    found: dict[str, object] = json.loads(done.stdout)
    return found


def test_a_pass_without_k3s_leaves_the_k3s_code_pydantic_and_package_metadata_unloaded(
    tmp_path: Path,
) -> None:
    found = agent_pass(tmp_path, {"config": [{"path": "/etc/motd", "content": "hi\n"}]})
    assert found["conditions"] == {
        "config": ["Applied", "Applied"],
        "k3s": ["Applied", "NotWanted"],
        "bundles": ["Applied", "NotServer"],
        "os": ["Applied", "NotManaged"],
    }
    modules = found["modules"]
    assert isinstance(modules, list)
    assert "node_image.agent.reconcilers.k3s" not in modules
    assert "node_image.agent.reconcilers.bundles" not in modules
    assert not [m for m in modules if m.startswith(("importlib.metadata", "pydantic"))]


def test_a_spec_that_wants_k3s_loads_the_k3s_reconciler(tmp_path: Path) -> None:
    found = agent_pass(tmp_path, {"k3s": {"version": "v1.31.4+k3s1", "role": "server"}})
    modules = found["modules"]
    assert isinstance(modules, list)
    assert "node_image.agent.reconcilers.k3s" in modules
    assert "node_image.agent.reconcilers.bundles" in modules
    # The real reconcilers answered: K3s wants its artifacts, bundles are on the server.
    conditions = found["conditions"]
    assert isinstance(conditions, dict)
    assert conditions["k3s"] == ["Error", "ArtifactsMissing"]
    assert conditions["bundles"] == ["Applied", "Applied"]
