"""The admin APIs of a deployed server, tried from outside without the key (lab, gpu01, explicit model control):
refused over HTTP and gRPC, nothing runs; tritonfleet's own updates, status and key rotation go on with it."""

from __future__ import annotations

import json
import subprocess

import pytest
import tritonclient.grpc as grpcclient
import urllib.request
from tritonclient.utils import InferenceServerException

from conftest import ssh
from labkit import fault_log, write_inventory  # noqa: F401
from test_api_key import marker_model
from test_model_updates import add, repo_with_offset
from tritonfleet.paths import REPO_ROOT
from tritonfleet.triton import apikey

pytestmark = pytest.mark.lab

HOST, ADDRESS = "gpu01", "10.213.0.11"
MARKER = "/tmp/tfpwned"


@pytest.fixture(scope="module")
def inventory(lab, tmp_path_factory):
    lab.ensure(1)
    lab.reset(HOST)
    path = tmp_path_factory.mktemp("inv") / "hosts.yml"
    write_inventory(path, {HOST: {}}, lab_vars={"triton_model_control_mode": "explicit"})
    return path


def invoke(inventory, *args):
    proc = subprocess.run(["invoke", *args, "--host", HOST, "--inventory", str(inventory), "--json"],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=900, stdin=subprocess.DEVNULL)
    return proc, (json.loads(proc.stdout) if proc.stdout.startswith("{") else None)


def host_key() -> str:
    return ssh(ADDRESS, f"sed -n 's/^{apikey.KEY_VARIABLE}=//p' {apikey.KEY_FILE}").stdout.strip()


def http(path: str, body: dict, key: str = "") -> int:
    req = urllib.request.Request(f"http://{ADDRESS}:8000{path}", data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json", **apikey.http_headers(key)})
    try:
        with urllib.request.build_opener(urllib.request.ProxyHandler({})).open(req, timeout=60) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code


def grpc_refusal(call) -> str:
    with pytest.raises(InferenceServerException) as refused:
        call()
    return f"{refused.value.status()}: {refused.value.message()}"


def states(key: str) -> dict:
    client = grpcclient.InferenceServerClient(f"{ADDRESS}:8001")
    index = client.get_model_repository_index(headers=apikey.grpc_headers(key), as_json=True)["models"]
    return {m["name"]: m.get("state") for m in index}


@pytest.fixture(scope="module")
def deployed(inventory):
    proc, _ = invoke(inventory, "deploy")
    assert proc.returncode == 0, proc.stderr[-3000:]
    key = host_key()
    assert len(key) >= 32 and key not in proc.stdout + proc.stderr
    assert ssh(ADDRESS, f"stat -c '%U:%G %a' {apikey.KEY_FILE}").stdout.strip() == "root:root 600"
    assert key not in ssh(ADDRESS, "cat /etc/systemd/system/tritonserver.service").stdout
    return key


def test_admin_calls_without_the_key_are_refused_and_run_nothing(deployed, fault_log):
    ssh(ADDRESS, f"rm -f {MARKER}")
    before = states(deployed)
    assert before and set(before.values()) == {"READY"}
    assert http("/v2/repository/models/add_sub/unload", {}) == 403
    assert http("/v2/repository/models/pwned/load", marker_model(MARKER)) == 403
    assert http("/v2/repository/models/add_sub/unload", {}, key="wrong-key-0123456789") == 403
    client = grpcclient.InferenceServerClient(f"{ADDRESS}:8001")
    refusals = [grpc_refusal(lambda: client.unload_model("add_sub")),
                grpc_refusal(lambda: client.load_model("pwned", config=marker_model(MARKER)["parameters"]["config"],
                                                       files={"file:1/model.py": b"open('/tmp/tfpwned','w')"}))]
    assert all(r.startswith("StatusCode.UNAVAILABLE: This protocol is restricted") for r in refusals), refusals
    assert ssh(ADDRESS, f"test -e {MARKER}").returncode != 0, "the model carried in the request ran"
    assert states(deployed) == before
    fault_log("Security", "unload and a load carrying model.py (file overrides) without the API key, explicit mode",
              "HTTP 403 `This API is restricted, expecting header 'tritonfleet-admin-key'`; gRPC "
              f"`{refusals[0]}`; no marker file on the host, every model still READY")


def test_a_changed_model_still_loads_without_a_restart(deployed, inventory, tmp_path, fault_log):
    import tritonclient.http as httpclient
    pid = ssh(ADDRESS, "systemctl show tritonserver -p MainPID --value").stdout
    proc, report = invoke(inventory, "sync-models", "--models", str(repo_with_offset(tmp_path, "v2", 100)))
    assert proc.returncode == 0, proc.stderr[-3000:]
    steps = {s["module"]: s for s in report["hosts"][0]["steps"]}
    assert "load add_sub" in steps["models_reload"]["msg"]
    client = httpclient.InferenceServerClient(f"{ADDRESS}:8000", connection_timeout=5, network_timeout=10)
    assert add(client, [1, 2, 3, 4], [1, 1, 1, 1]) == [102, 103, 104, 105]
    assert ssh(ADDRESS, "systemctl show tritonserver -p MainPID --value").stdout == pid
    assert deployed not in proc.stdout + proc.stderr
    fault_log("Security", "explicit-mode model update with the admin APIs restricted",
              "`invoke sync-models` loads the changed model with the host's key, no restart; the key in no output")


def test_rotation_refuses_the_old_key_and_tritonfleet_uses_the_new(deployed, inventory, fault_log):
    proc, _ = invoke(inventory, "rotate-api-key")
    assert proc.returncode == 0, proc.stderr[-3000:]
    new = host_key()
    assert new and new != deployed
    assert http("/v2/repository/index", {}, key=deployed) == 403
    assert http("/v2/repository/index", {}, key=new) == 200
    status, report = invoke(inventory, "status")  # drift: the last test synced another repository than the inventory's
    assert set(report["hosts"][0]["models"].values()) == {"READY"}, status.stderr[-3000:]
    smoke, _ = invoke(inventory, "smoke")
    doctor, _ = invoke(inventory, "doctor")
    assert smoke.returncode == 0, smoke.stderr[-3000:]
    outputs = "".join(p.stdout + p.stderr for p in (proc, status, smoke, doctor))
    assert deployed not in outputs and new not in outputs
    fault_log("Security", "`invoke rotate-api-key` on a serving host",
              "new key written root-only, server restarted; the old key gets 403, status, smoke and the doctor "
              "work with the new one; neither key in any output")
