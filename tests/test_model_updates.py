"""Model updates with explicit model control on a real lab host: no restart, no failed request, deltas only."""

from __future__ import annotations

import base64
import json
import shlex
import shutil
import subprocess
import threading
import time

import numpy as np
import pytest
import tritonclient.http as httpclient

from conftest import ssh
from labkit import write_inventory
from tritonfleet.triton.models import RELOCATABLE_VIRTUAL_ENV
from tritonfleet.paths import REPO_ROOT

pytestmark = pytest.mark.lab

HOST, ADDRESS = "gpu01", "10.213.0.11"
EXAMPLES = REPO_ROOT / "examples" / "models"


@pytest.fixture(scope="module")
def inventory(lab, tmp_path_factory):
    lab.ensure(1)
    lab.reset(HOST)
    path = tmp_path_factory.mktemp("inv") / "hosts.yml"
    write_inventory(path, {HOST: {}}, lab_vars={"triton_model_control_mode": "explicit"})
    return path


def invoke(inventory, *args, timeout=900):
    proc = subprocess.run(["invoke", *args, "--host", HOST, "--inventory", str(inventory), "--json"],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    return proc, (json.loads(proc.stdout) if proc.stdout.startswith("{") else None)


def server_pid() -> int:
    return int(ssh(ADDRESS, "systemctl show tritonserver -p MainPID --value").stdout)


def add(client, a, b):
    inputs = [httpclient.InferInput("INPUT0", [4], "FP32"), httpclient.InferInput("INPUT1", [4], "FP32")]
    inputs[0].set_data_from_numpy(np.asarray(a, dtype=np.float32))
    inputs[1].set_data_from_numpy(np.asarray(b, dtype=np.float32))
    return client.infer("add_sub", inputs).as_numpy("OUTPUT0").tolist()


def repo_with_offset(tmp_path, name: str, offset: int):
    """The example repository with add_sub adding `offset` to its sum, and its smoke spec expecting that sum."""
    repo = tmp_path / name
    shutil.copytree(EXAMPLES, repo)
    model_py = repo / "add_sub" / "1" / "model.py"
    model_py.write_text(model_py.read_text().replace("(in0 + in1)", f"(in0 + in1 + {offset})"))
    spec = repo / "add_sub" / "smoke.yaml"
    spec.write_text(spec.read_text().replace("OUTPUT0: [1.5, 2.5, 4, 5]",
                                             f"OUTPUT0: {[v + offset for v in (1.5, 2.5, 4, 5)]}"))
    # The ensemble runs add_sub twice: SUM = A+B+o, DIFF = A-B, then TWICE_A = SUM+DIFF+o = 2A+2o and
    # TWICE_B = SUM-DIFF = 2B+o. Its answers move with add_sub, so its spec does too.
    chain = repo / "add_sub_chain" / "smoke.json"
    expected = json.loads(chain.read_text())
    shift = {"TWICE_A": 2 * offset, "TWICE_B": offset}
    expected["outputs"] = {name: [v + shift[name] for v in values] for name, values in expected["outputs"].items()}
    chain.write_text(json.dumps(expected))
    return repo


@pytest.fixture(scope="module")
def deployed(inventory):
    proc, report = invoke(inventory, "deploy")
    assert proc.returncode == 0, proc.stderr[-3000:]
    cmdline = ssh(ADDRESS, f"tr '\\0' ' ' < /proc/{server_pid()}/cmdline").stdout
    assert "--model-control-mode=explicit" in cmdline and "--load-model=*" in cmdline
    return report


def test_changed_model_loads_without_restart_and_no_request_fails(deployed, inventory, tmp_path):
    client = httpclient.InferenceServerClient(f"{ADDRESS}:8000", connection_timeout=5, network_timeout=10)
    assert add(client, [1, 2, 3, 4], [1, 1, 1, 1]) == [2, 3, 4, 5]
    pid = server_pid()
    seen, failures, stop = set(), [], threading.Event()

    def client_loop():  # bounded in count and time; tritonclient's HTTP client belongs to one thread
        own = httpclient.InferenceServerClient(f"{ADDRESS}:8000", connection_timeout=5, network_timeout=10)
        deadline = time.monotonic() + 120
        for _ in range(20000):
            if stop.is_set() or time.monotonic() > deadline:
                break
            try:
                seen.add(tuple(add(own, [1, 2, 3, 4], [1, 1, 1, 1])))
            except Exception as exc:  # every failed request counts
                failures.append(repr(exc))

    loop = threading.Thread(target=client_loop)
    loop.start()
    try:
        time.sleep(0.5)
        proc, report = invoke(inventory, "sync-models", "--models", str(repo_with_offset(tmp_path, "v2", 100)))
        time.sleep(0.5)
    finally:
        stop.set()
        loop.join(timeout=30)
    assert proc.returncode == 0, proc.stderr[-3000:]
    steps = {s["module"]: s for s in report["hosts"][0]["steps"]}
    assert "load add_sub" in steps["models_reload"]["msg"] and "load str_upper" not in steps["models_reload"]["msg"]
    assert failures == []
    assert (2, 3, 4, 5) in seen and (102, 103, 104, 105) in seen
    assert add(client, [1, 2, 3, 4], [1, 1, 1, 1]) == [102, 103, 104, 105]
    assert server_pid() == pid
    # only the changed file crossed the network (hard links from the live version for the rest)
    sent_files = [f for f in steps["model_repository"]["data"]["files"] if not f.endswith("/")]
    assert sorted(sent_files) == ["add_sub/1/model.py", "add_sub/smoke.yaml", "add_sub_chain/smoke.json"]
    print(f"bytes sent for the one-file change: {report['hosts'][0]['bytes_sent']}")


def test_failing_model_is_restored_to_its_previous_version(deployed, inventory, tmp_path):
    client = httpclient.InferenceServerClient(f"{ADDRESS}:8000", connection_timeout=5, network_timeout=10)
    before = add(client, [0, 0, 0, 0], [0, 0, 0, 0])
    live = ssh(ADDRESS, "readlink /srv/tritonfleet/models").stdout.strip()
    pid = server_pid()
    repo = repo_with_offset(tmp_path, "bad", 7)
    model_py = repo / "add_sub" / "1" / "model.py"
    model_py.write_text("import package_that_is_not_installed\n" + model_py.read_text())
    proc, report = invoke(inventory, "sync-models", "--models", str(repo))
    assert proc.returncode == 1
    assert "model 'add_sub'" in proc.stderr and "package_that_is_not_installed" in proc.stderr
    assert "previous version restored" in proc.stderr
    assert ssh(ADDRESS, "readlink /srv/tritonfleet/models").stdout.strip() == live
    assert add(client, [0, 0, 0, 0], [0, 0, 0, 0]) == before
    assert server_pid() == pid


def test_a_model_that_answers_wrong_is_restored_without_a_restart(deployed, inventory, tmp_path):
    client = httpclient.InferenceServerClient(f"{ADDRESS}:8000", connection_timeout=5, network_timeout=10)
    before = add(client, [0, 0, 0, 0], [0, 0, 0, 0])
    live = ssh(ADDRESS, "readlink /srv/tritonfleet/models").stdout.strip()
    pid = server_pid()
    repo = repo_with_offset(tmp_path, "wrong", 3)
    shutil.copy(EXAMPLES / "add_sub" / "smoke.yaml", repo / "add_sub" / "smoke.yaml")  # expects the old sums
    proc, report = invoke(inventory, "sync-models", "--models", str(repo))
    assert proc.returncode == 1
    assert "model 'add_sub': answer over" in proc.stderr and "previous version restored" in proc.stderr
    assert ssh(ADDRESS, "readlink /srv/tritonfleet/models").stdout.strip() == live
    assert add(client, [0, 0, 0, 0], [0, 0, 0, 0]) == before and client.is_model_ready("add_sub")
    assert server_pid() == pid


def test_removed_model_is_unloaded(deployed, inventory, tmp_path):
    repo = repo_with_offset(tmp_path, "fewer", 100)
    shutil.rmtree(repo / "echo_types")
    pid = server_pid()
    proc, report = invoke(inventory, "sync-models", "--models", str(repo))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "unload echo_types" in proc.stderr
    client = httpclient.InferenceServerClient(f"{ADDRESS}:8000", connection_timeout=5, network_timeout=10)
    assert not client.is_model_ready("echo_types")
    assert client.is_model_ready("str_upper")
    assert server_pid() == pid


def test_models_diff_shows_what_a_sync_would_change(deployed, inventory, tmp_path):
    repo = repo_with_offset(tmp_path, "diffed", 5)
    shutil.rmtree(repo / "str_upper")
    proc, report = invoke(inventory, "models.diff", "--models", str(repo))
    assert proc.returncode == 0, proc.stderr[-2000:]
    host = report["hosts"][0]
    assert {m: sorted(files) for m, files in host["changed"].items()} == {
        "add_sub": ["1/model.py (changed)", "smoke.yaml (changed)"], "add_sub_chain": ["smoke.json (changed)"]}
    assert host["removed"] == ["str_upper"]
    live = ssh(ADDRESS, "readlink /srv/tritonfleet/models").stdout
    proc, _ = invoke(inventory, "sync-models", "--models", str(repo))
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert ssh(ADDRESS, "readlink /srv/tritonfleet/models").stdout != live
    proc, report = invoke(inventory, "models.diff", "--models", str(repo))
    assert report["hosts"][0] == {"host": HOST, "added": [], "removed": [], "changed": {}, "error": ""}
    assert "up to date" in proc.stderr


# A relocatable bin/activate (as conda-pack's is): Triton extracts the archive under /tmp/python_env_*/ and
# sources this; the stub's embedded Python then finds the environment through python3 on PATH.
RELOCATABLE_ACTIVATE = f'''{RELOCATABLE_VIRTUAL_ENV}
export VIRTUAL_ENV
PATH="$VIRTUAL_ENV/bin:$PATH"
export PATH
'''

ENV_PROBE_CONFIG = '''name: "env_probe"
backend: "python"
max_batch_size: 0
input [ { name: "IN" data_type: TYPE_INT32 dims: [ 1 ] } ]
output [ { name: "WHERE" data_type: TYPE_STRING dims: [ 1 ] } ]
instance_group [ { kind: KIND_CPU count: 1 } ]
parameters: { key: "EXECUTION_ENV_PATH", value: { string_value: "$$TRITON_MODEL_DIRECTORY/env.tar.gz" } }
'''

ENV_PROBE_MODEL = '''import sys

import numpy as np
import tfenvprobe  # only in the packed environment
import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def execute(self, requests):
        where = np.array([f"{tfenvprobe.WHERE}|{sys.prefix}".encode()], dtype=np.object_)
        return [pb_utils.InferenceResponse([pb_utils.Tensor("WHERE", where)]) for _ in requests]
'''


def packed_environment() -> bytes:
    """A venv made with the host's python3, holding a module the host lacks, packed as Triton wants it."""
    script = (
        "set -e; rm -rf /tmp/tfenv; python3 -m venv --without-pip --system-site-packages /tmp/tfenv/env; "
        "echo 'WHERE = \"packed environment\"' > $(echo /tmp/tfenv/env/lib/python3*/site-packages)/tfenvprobe.py; "
        f"printf %s {shlex.quote(RELOCATABLE_ACTIVATE)} > /tmp/tfenv/env/bin/activate; "
        "tar -C /tmp/tfenv/env -czf /tmp/tfenv/env.tar.gz . && base64 -w0 /tmp/tfenv/env.tar.gz && rm -rf /tmp/tfenv")
    proc = ssh(ADDRESS, script)
    assert proc.returncode == 0, proc.stderr
    return base64.b64decode(proc.stdout)


def test_model_with_its_own_packed_environment_loads_and_answers_from_it(deployed, inventory, tmp_path):
    assert ssh(ADDRESS, "python3 -c 'import tfenvprobe'").returncode != 0  # the host itself lacks the module
    repo = repo_with_offset(tmp_path, "with_env", 0)
    model = repo / "env_probe"
    (model / "1").mkdir(parents=True)
    (model / "config.pbtxt").write_text(ENV_PROBE_CONFIG)
    (model / "1" / "model.py").write_text(ENV_PROBE_MODEL)
    (model / "env.tar.gz").write_bytes(packed_environment())
    pid = server_pid()
    proc, report = invoke(inventory, "sync-models", "--models", str(repo))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "load env_probe" in proc.stderr
    client = httpclient.InferenceServerClient(f"{ADDRESS}:8000", connection_timeout=5, network_timeout=10)
    probe = httpclient.InferInput("IN", [1], "INT32")
    probe.set_data_from_numpy(np.array([1], dtype=np.int32))
    where, prefix = client.infer("env_probe", [probe]).as_numpy("WHERE")[0].decode().split("|")
    assert where == "packed environment"
    assert prefix.startswith("/tmp/python_env_")  # Triton's extraction of the archive, not the host's Python
    assert server_pid() == pid
