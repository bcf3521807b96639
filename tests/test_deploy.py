"""`invoke deploy` on a real lab host: real SSH, real systemd, a real tritonserver, real tritonclient calls.

The tests run in order on gpu01 (a fresh host at the start of the module) and share its state, the way an
operator's successive deploys do.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import textwrap

import numpy as np
import pytest
import tritonclient.http as httpclient

from conftest import admin_headers, ssh
from tritonfleet.paths import REPO_ROOT

pytestmark = pytest.mark.lab

EXAMPLES = REPO_ROOT / "examples" / "models"
HOST = "gpu01"
ADDRESS = "10.213.0.11"


def invoke(*args, check_exit: int | None = 0, timeout: int = 900) -> subprocess.CompletedProcess:
    proc = subprocess.run(["invoke", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)
    if check_exit is not None:
        assert proc.returncode == check_exit, f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return proc


def deploy(*extra, check_exit: int | None = 0):
    proc = invoke("deploy", "--host", HOST, "--json", *extra, check_exit=check_exit)
    report = json.loads(proc.stdout) if proc.stdout.strip().startswith("{") else None
    return proc, report


def on_host(command: str) -> str:
    res = ssh(ADDRESS, command)
    assert res.returncode == 0, f"{command}: {res.stderr}"
    return res.stdout.strip()


def server_pid() -> int:
    return int(on_host("systemctl show tritonserver -p MainPID --value"))


@pytest.fixture(scope="module")
def host(lab):
    lab.ensure(1)
    lab.reset(HOST)
    return HOST


@pytest.fixture(scope="module")
def first_deploy(host):
    before = {
        "numpy": ssh(ADDRESS, "python3 -c 'import numpy'").returncode,
        "libpython": ssh(ADDRESS, "ls /usr/lib/x86_64-linux-gnu/libpython3.11.so.1.0").returncode,
    }
    proc, report = deploy()
    return before, proc, report


def test_fresh_host_lacks_numpy_and_libpython_and_deploy_installs_them(first_deploy):
    before, _, report = first_deploy
    assert before == {"numpy": 1, "libpython": 2}, "the lab base image must not ship them"
    assert report["ok"] and report["changed"] > 0
    on_host("python3 -c 'import numpy'")
    on_host("test -e /usr/lib/x86_64-linux-gnu/libpython3.11.so.1.0")


def test_service_active_enabled_running_as_triton_without_backend_directory(first_deploy):
    assert on_host("systemctl is-active tritonserver") == "active"
    assert on_host("systemctl is-enabled tritonserver") == "enabled"
    pid = server_pid()
    assert on_host(f"stat -c %U /proc/{pid}") == "triton"
    cmdline = on_host(f"tr '\\0' ' ' < /proc/{pid}/cmdline")
    assert cmdline.startswith("/opt/tritonserver/bin/tritonserver ")
    assert "--backend-directory" not in cmdline
    assert "--model-repository=/srv/tritonfleet/models" in cmdline


def test_default_layout_and_stub_owned_by_service_user(first_deploy):
    on_host("test -x /opt/tritonserver/bin/tritonserver && test -f /opt/tritonserver/backends/python/libtriton_python.so")
    assert on_host("stat -c '%U %a' /opt/tritonserver/backends/python/triton_python_backend_stub") == "triton 755"
    assert on_host("stat -c %U /opt/tritonserver/bin/tritonserver") == "root"
    assert on_host("readlink /opt/tritonserver").startswith("/opt/tritonfleet/releases/triton-2.51.0-")
    # models readable but not writable by the service user
    assert on_host("stat -c '%U %G %a' /srv/tritonfleet/models/add_sub/1/model.py") == "root triton 640"
    assert ssh(ADDRESS, "runuser -u triton -- touch /srv/tritonfleet/models/add_sub/x").returncode != 0


def test_every_model_ready_and_inference_from_control_machine_is_right(first_deploy):
    _, _, report = first_deploy
    smoke = next(s for s in report["hosts"][0]["steps"] if s["module"] == "smoke")
    answers = smoke["data"]["smoke"]
    assert set(answers) == {"add_sub", "add_sub_chain", "echo_types", "running_sum", "str_upper", "token_stream"}
    assert all(answers[m]["ok"] and set(answers[m]["versions"]) == {"1"} for m in answers), answers
    checked = {m for m in answers if answers[m]["versions"]["1"]["checked"]}
    assert checked == {"add_sub", "add_sub_chain", "running_sum", "str_upper", "token_stream"}  # by their smoke specs
    stream = answers["token_stream"]["versions"]["1"]
    assert set(stream["latency_ms"]) == {"grpc"} and "streamed 3 response(s) over grpc" in stream["notes"]
    assert all(set(answers[m]["versions"]["1"]["latency_ms"]) == {"http", "grpc"} for m in answers
               if m != "token_stream")
    assert "6 model version(s) answered, 5 checked against their smoke spec" in smoke["msg"]
    client = httpclient.InferenceServerClient(f"{ADDRESS}:8000", connection_timeout=10, network_timeout=30)
    index = client.get_model_repository_index(headers=admin_headers(ADDRESS))
    assert {m["name"]: m["state"] for m in index} == {n: "READY" for n in answers}
    a = np.array([1, 2, 3, 4], dtype=np.float32)
    b = np.array([10, 20, 30, 40], dtype=np.float32)
    inputs = [httpclient.InferInput("INPUT0", [4], "FP32"), httpclient.InferInput("INPUT1", [4], "FP32")]
    inputs[0].set_data_from_numpy(a)
    inputs[1].set_data_from_numpy(b)
    result = client.infer("add_sub", inputs)
    assert result.as_numpy("OUTPUT0").tolist() == [11, 22, 33, 44]
    assert result.as_numpy("OUTPUT1").tolist() == [-9, -18, -27, -36]


def test_second_deploy_changes_nothing_and_keeps_the_server_process(first_deploy):
    pid = server_pid()
    proc, report = deploy()
    assert report["changed"] == 0
    assert "changed=0" in proc.stderr
    assert server_pid() == pid


def test_check_mode_shows_unit_diff_and_changes_nothing(first_deploy, tmp_path):
    inventory = tmp_path / "hosts.yml"
    inventory.write_text((REPO_ROOT / "inventory" / "hosts.yml").read_text().replace(
        "gpu01: {ansible_host: 10.213.0.11}", "gpu01: {ansible_host: 10.213.0.11, triton_log_verbose: 1}"))
    pid = server_pid()
    unit = on_host("cat /etc/systemd/system/tritonserver.service")
    proc, report = deploy("--check", "--diff", "--inventory", str(inventory))
    assert report["check"] and report["changed"] >= 1
    assert "-ExecStart=" in proc.stderr and "+ExecStart=" in proc.stderr and "--log-verbose=1" in proc.stderr
    assert on_host("cat /etc/systemd/system/tritonserver.service") == unit
    assert server_pid() == pid


def test_stub_given_to_root_is_taken_back(first_deploy):
    on_host("chown root:root /opt/tritonserver/backends/python/triton_python_backend_stub")
    _, report = deploy()
    steps = {s["task"]: s["status"] for s in report["hosts"][0]["steps"]}
    assert steps["Python backend stub for the host's Python, owned by the service user"] == "changed"
    assert on_host("stat -c %U /opt/tritonserver/backends/python/triton_python_backend_stub") == "triton"


def test_removed_numpy_and_libpython_are_reinstalled_and_server_restarted(first_deploy):
    on_host("DEBIAN_FRONTEND=noninteractive apt-get remove -y -qq python3-numpy libpython3.11")
    pid = server_pid()
    _, report = deploy()
    assert report["ok"]
    steps = {s["task"]: s for s in report["hosts"][0]["steps"]}
    assert "libpython3.11, python3-numpy" in steps["Shared libpython, numpy and rsync for the Python backend stub"]["msg"]
    on_host("python3 -c 'import numpy' && test -e /usr/lib/x86_64-linux-gnu/libpython3.11.so.1.0")
    assert server_pid() != pid


def test_trailing_slash_backend_directory_is_normalised(first_deploy, tmp_path):
    inventory = tmp_path / "hosts.yml"
    inventory.write_text((REPO_ROOT / "inventory" / "hosts.yml").read_text().replace(
        "gpu01: {ansible_host: 10.213.0.11}",
        "gpu01: {ansible_host: 10.213.0.11, triton_backend_directory: /opt/tritonserver/backends/}"))
    proc, report = deploy("--inventory", str(inventory))
    assert report["ok"], proc.stderr[-3000:]
    argv = on_host(f"tr '\\0' '\\n' < /proc/{server_pid()}/cmdline").splitlines()
    assert "--backend-directory=/opt/tritonserver/backends" in argv
    _, report = deploy()  # back to the default: no flag at all
    assert "--backend-directory" not in on_host(f"tr '\\0' ' ' < /proc/{server_pid()}/cmdline")


def test_model_with_python_syntax_error_is_refused_naming_model_and_error(first_deploy, tmp_path):
    repo = tmp_path / "models"
    shutil.copytree(EXAMPLES, repo)
    (repo / "str_upper" / "1" / "model.py").write_text("def broken(:\n    pass\n")
    pid = server_pid()
    proc, report = deploy("--models", str(repo), check_exit=2)
    assert "str_upper" in proc.stderr and "syntax error" in proc.stderr and "model.py:1" in proc.stderr
    assert server_pid() == pid


def test_model_failing_on_the_server_fails_the_deploy_naming_model_and_error(first_deploy, tmp_path):
    repo = tmp_path / "models"
    shutil.copytree(EXAMPLES, repo)
    model_py = repo / "str_upper" / "1" / "model.py"
    model_py.write_text("import package_that_is_not_installed\n" + model_py.read_text())
    proc, report = deploy("--models", str(repo), check_exit=1)
    assert not report["ok"]
    assert "model 'str_upper' is UNAVAILABLE" in proc.stderr
    assert "No module named 'package_that_is_not_installed'" in proc.stderr
    _, report = deploy()  # the good repository again: every model back to READY
    assert report["ok"]


def test_malformed_config_is_refused_before_anything_is_pushed(first_deploy, tmp_path):
    repo = tmp_path / "models"
    shutil.copytree(EXAMPLES, repo)
    (repo / "add_sub" / "config.pbtxt").write_text(textwrap.dedent("""\
        name: "add_sub"
        backend: "python"
        max_batch_size: 0
        input [ { name: "INPUT0" data_type: TYPE_FLOAT32 dims: [ 4 ] } ]
        """))
    before = on_host("find /srv/tritonfleet/models/ -newer /etc/hostname -printf '%p %T@\\n' | sort | sha256sum")
    pid = server_pid()
    proc, report = deploy("--models", str(repo), check_exit=2)
    problem = report["problems"][0]  # --json: the input error as JSON, every problem with its file and line
    assert report["ok"] is False and problem["model"] == "add_sub" and problem["line"] == 4
    assert "config.pbtxt:4" in proc.stderr and "add_sub" in proc.stderr
    assert on_host("find /srv/tritonfleet/models/ -newer /etc/hostname -printf '%p %T@\\n' | sort | sha256sum") == before
    assert server_pid() == pid


def test_a_model_that_answers_wrong_fails_the_deploy(first_deploy, tmp_path):
    repo = tmp_path / "models"
    shutil.copytree(EXAMPLES, repo)
    spec = repo / "add_sub" / "smoke.yaml"
    spec.write_text(spec.read_text().replace("OUTPUT0: [1.5, 2.5, 4, 5]", "OUTPUT0: [1.5, 2.5, 4, 6]"))
    proc, report = deploy("--models", str(repo), check_exit=1)
    for protocol in ("http", "grpc"):
        assert (f"model 'add_sub': answer over {protocol} for INPUT0=[1, 2, 3, 4], INPUT1=[0.5, 0.5, 1, 1] "
                "(add_sub/smoke.yaml): output 'OUTPUT0' is [1.5, 2.5, 4. , 5. ]; expected [1.5, 2.5, 4. , 6. ] "
                "(first difference at [3]: 5.0 instead of 6.0)") in proc.stderr
    misfit = tmp_path / "misfit"
    shutil.copytree(EXAMPLES, misfit)
    spec = misfit / "add_sub" / "smoke.yaml"
    spec.write_text(spec.read_text().replace("inputs:\n", "inputs:\n  INPUT9: [1, 2, 3, 4]\n"))
    proc, report = deploy("--models", str(misfit), check_exit=2)  # refused before any host is touched
    assert "add_sub/smoke.yaml:3: model 'add_sub': input 'INPUT9' is not an input of the model" in proc.stderr


def test_sync_models_alone_waits_for_readiness_and_smoke_tests(first_deploy, tmp_path):
    repo = tmp_path / "models"
    shutil.copytree(EXAMPLES, repo)
    with open(repo / "str_upper" / "1" / "model.py", "a") as fh:
        fh.write("\n# a new release of str_upper\n")
    proc = invoke("sync-models", "--host", HOST, "--models", str(repo), "--json")
    steps = json.loads(proc.stdout)["hosts"][0]["steps"]
    assert [s["module"] for s in steps if s["handler"]] == ["systemd", "wait_ready", "smoke"]
    smoke = next(s for s in steps if s["module"] == "smoke")
    assert smoke["status"] == "ok" and all(m["ok"] for m in smoke["data"]["smoke"].values())
    again = invoke("sync-models", "--host", HOST, "--models", str(repo), "--json")
    report = json.loads(again.stdout)
    assert report["changed"] == 0 and not [s for s in report["hosts"][0]["steps"] if s["handler"]]
