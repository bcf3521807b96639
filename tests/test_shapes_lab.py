"""Every Python-backend model shape deploys to a real lab host (gpu02) and answers its smoke test: the examples
(decoupled streaming, stateful sequence, ensemble) and the shapes of test_smoke_shapes (sequence with the oldest
strategy, implicit state, BLS, several versions, configs Triton completes). The shapes Triton 2.51 itself cannot
serve (string correlation IDs, a decoupled execute() that returns, a stream with no final flag) stay out."""

from __future__ import annotations

import json
import shutil
import textwrap

import pytest

from labkit import fault_log, invoke, show, write_inventory  # noqa: F401  (fixture)
from test_smoke_shapes import SHAPES
from tritonfleet.paths import REPO_ROOT

pytestmark = pytest.mark.lab

HOST = "gpu02"
SERVED = ("seq_oldest", "seq_state", "bls_add_sub", "versioned", "auto_backend_only", "auto_no_config",
          "silent_stream")


@pytest.fixture(scope="module")
def deployed(lab, tmp_path_factory):
    lab.ensure(2)
    lab.reset(HOST)
    root = tmp_path_factory.mktemp("shapes")
    repo = root / "models"
    shutil.copytree(REPO_ROOT / "examples" / "models", repo, ignore=shutil.ignore_patterns("__pycache__"))
    for folder in SERVED:
        for rel, text in SHAPES[folder].items():
            (repo / folder / rel).parent.mkdir(parents=True, exist_ok=True)
            (repo / folder / rel).write_text(textwrap.dedent(text).lstrip())
    inventory = write_inventory(root / "hosts.yml", {HOST: {}})
    proc = invoke("deploy", "--host", HOST, "--inventory", inventory, "--models", str(repo), "--json")
    assert proc.returncode == 0, show(proc)
    return inventory, repo


def test_every_shape_deploys_and_answers_on_a_lab_host(deployed, fault_log):
    inventory, repo = deployed
    proc = invoke("smoke", "--host", HOST, "--inventory", inventory, "--models", str(repo), "--json")
    assert proc.returncode == 0, show(proc)
    step = next(s for s in json.loads(proc.stdout)["hosts"][0]["steps"] if s["module"] == "smoke")
    answers = step["data"]["smoke"]
    assert set(SERVED) <= set(answers) and all(a["ok"] for a in answers.values()), answers
    assert set(answers["versioned"]["versions"]) == {"1", "2"}  # every served version answered
    assert set(answers["token_stream"]["versions"]["1"]["latency_ms"]) == {"grpc"}  # a stream; HTTP not applicable
    checked = {m for m, a in answers.items() if all(v["checked"] for v in a["versions"].values())}
    assert {"running_sum", "token_stream", "seq_oldest", "bls_add_sub"} <= checked  # answers held to their specs
    fault_log("Model shapes (lab hosts)", "decoupled, sequence (direct and oldest, implicit state), BLS, two served "
              "versions, a config with only `backend`, no config at all, a stream of zero responses",
              f"deployed to gpu02 with exit 0; `invoke smoke` shows {len(answers)} models answered, "
              f"{len(checked)} of them checked against their smoke specs")
