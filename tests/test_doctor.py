"""`invoke doctor` on a real lab host (gpu02): each known failure is made for real with the real tritonserver, the
doctor must name its cause, and `--fix` (where the fix is safe) must bring every model back to READY.

One deployed host is shared by the module; every test leaves it healthy again (a redeploy after each test).
"""

from __future__ import annotations

import json
import subprocess
import time

import pytest
import tritonclient.http as httpclient

from conftest import admin_headers, ssh
from tritonfleet.paths import REPO_ROOT

pytestmark = pytest.mark.lab

HOST = "gpu02"
ADDRESS = "10.213.0.12"
STUB = "/opt/tritonserver/backends/python/triton_python_backend_stub"
UNIT = "/etc/systemd/system/tritonserver.service"
MODELS = "/srv/tritonfleet/models"


def invoke(*args, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run(["invoke", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def deploy(*extra, expect: int = 0) -> subprocess.CompletedProcess:
    proc = invoke("deploy", "--host", HOST, "--json", *extra)
    assert proc.returncode == expect, f"exit {proc.returncode}\n{proc.stderr[-6000:]}"
    return proc


def doctor(*extra) -> tuple[subprocess.CompletedProcess, dict]:
    proc = invoke("doctor", "--host", HOST, "--json", *extra, timeout=600)
    assert proc.stdout.strip().startswith("{"), proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    return proc, report["hosts"][0]


def on_host(command: str, timeout: float = 300) -> str:
    res = ssh(ADDRESS, command, timeout=timeout)
    assert res.returncode == 0, f"{command}: {res.stdout[-2000:]} {res.stderr[-2000:]}"
    return res.stdout.strip()


def error_signatures(diagnosis: dict) -> set[str]:
    return {f["signature"] for f in diagnosis["findings"] if f["severity"] == "error"}


def finding(diagnosis: dict, signature: str) -> dict:
    return next(f for f in diagnosis["findings"] if f["signature"] == signature)


def restart_server(settle: float = 4.0) -> None:
    on_host("systemctl daemon-reload && systemctl restart tritonserver")
    time.sleep(settle)  # let the models fail to load (or the server hang) as they would for a user


def all_models_ready() -> dict:
    client = httpclient.InferenceServerClient(f"{ADDRESS}:8000", connection_timeout=10, network_timeout=30)
    try:
        return {m["name"]: m.get("state") for m in client.get_model_repository_index(headers=admin_headers(ADDRESS))}
    finally:
        client.close()


def assert_fixed(proc, report, *, applied: str) -> None:
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert any(applied in f for f in report["fixes"]), report["fixes"]
    assert report["ok"] and not error_signatures(report["after_fix"])
    states = all_models_ready()
    assert states and set(states.values()) == {"READY"}, states


@pytest.fixture(scope="module")
def host(lab):
    lab.ensure(2)
    lab.reset(HOST)
    deploy()
    return HOST


@pytest.fixture(scope="module")
def quick_inventory(tmp_path_factory):
    """The repository's inventory with a short readiness wait: a restoring deploy must not wait 180 s on a model the
    running server still holds in its broken state."""
    path = tmp_path_factory.mktemp("inv") / "hosts.yml"
    path.write_text((REPO_ROOT / "inventory" / "hosts.yml").read_text().replace(
        "gpu02: {ansible_host: 10.213.0.12}", "gpu02: {ansible_host: 10.213.0.12, triton_ready_timeout: 15}"))
    return path


@pytest.fixture(autouse=True)
def healthy_after(host, quick_inventory):
    yield
    # back to the good state for the next test: a redeploy (a few seconds when little changed), and a restart when
    # the server still holds the broken state (a model repository repaired under a running server)
    invoke("deploy", "--host", HOST, "--inventory", str(quick_inventory))
    if doctor()[0].returncode != 0:
        from tritonfleet.triton.endpoint import Endpoint
        from tritonfleet.triton.server import ServerClient
        on_host("systemctl reset-failed tritonserver; systemctl restart tritonserver")
        assert ServerClient(Endpoint(ADDRESS, 8000, 8001)).wait_ready(timeout_s=60)[0]
    proc, report = doctor()
    assert proc.returncode == 0, [f["title"] for f in report["diagnosis"]["findings"]]


def test_healthy_host_has_no_errors_and_exit_zero(host):
    start = time.monotonic()
    proc, report = doctor()
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert report["ok"] and report["diagnosis"]["ready"] and not error_signatures(report["diagnosis"])
    assert time.monotonic() - start < 15
    human = invoke("doctor", "--host", HOST)
    assert human.returncode == 0 and "gpu02: 0 error(s)" in human.stdout


def test_numpy_removed_is_named_smoke_prints_the_diagnosis_and_fix_installs_it(host):
    on_host("DEBIAN_FRONTEND=noninteractive apt-get remove -y -qq python3-numpy")
    restart_server()
    proc, report = doctor()
    assert proc.returncode == 1
    f = finding(report["diagnosis"], "numpy_missing")
    assert f["severity"] == "error" and "python3-numpy" in f["fix"] and f["action"] == "packages"
    assert any("No module named 'numpy'" in e for e in f["evidence"])
    smoke = invoke("smoke", "--host", HOST, timeout=300)
    assert smoke.returncode == 1
    assert "diagnosis (invoke doctor)" in smoke.stderr and "install python3-numpy" in smoke.stderr
    proc, report = doctor("--fix")
    assert_fixed(proc, report, applied="installed python3-numpy")


def test_libpython_removed_server_hangs_doctor_still_diagnoses_fast_and_fixes(host):
    on_host("DEBIAN_FRONTEND=noninteractive apt-get remove -y -qq libpython3.11")
    restart_server(settle=3)
    assert on_host("systemctl is-active tritonserver") == "active"  # hung in loading, not exited
    start = time.monotonic()
    proc, report = doctor()
    took = time.monotonic() - start
    assert proc.returncode == 1
    f = finding(report["diagnosis"], "libpython_missing")
    assert "libpython3.11.so.1.0 => not found" in f["evidence"] and "libpython3.11" in f["fix"]
    assert took < 20, f"doctor took {took:.1f}s on a hung server"
    proc, report = doctor("--fix")
    assert_fixed(proc, report, applied="installed libpython3.11")


def test_stub_given_to_root_is_named_and_chowned_back(host):
    # root's private copy (as `cp` with umask 077 leaves it): the backend, running as triton, can neither run it
    # nor chmod it
    on_host(f"chown root:root {STUB} && chmod 0700 {STUB}")
    restart_server()
    proc, report = doctor()
    assert proc.returncode == 1
    f = finding(report["diagnosis"], "stub_permission")
    assert "owned by root" in f["title"] and f["action"] == "chown_stub"
    assert any("Failed to give execute permission" in e for e in f["evidence"])
    proc, report = doctor("--fix")
    assert_fixed(proc, report, applied="chowned the stub to triton")
    assert on_host(f"stat -c %U {STUB}") == "triton"


def test_trailing_slash_in_the_unit_is_named_and_dropped(host):
    on_host(f"sed -i 's#^ExecStart=\\(.*\\)#ExecStart=\\1 --backend-directory=/opt/tritonserver/backends/#' {UNIT}")
    restart_server()
    proc, report = doctor()
    assert proc.returncode == 1
    f = finding(report["diagnosis"], "backend_dir_trailing_slash")
    assert "process: --backend-directory=/opt/tritonserver/backends/" in f["evidence"]
    assert "unit: --backend-directory=/opt/tritonserver/backends/" in f["evidence"]
    assert "issues/6730" in f["link"]
    proc, report = doctor("--fix")
    assert_fixed(proc, report, applied="dropped the trailing slash")
    argv = on_host("tr '\\0' '\\n' < /proc/$(systemctl show tritonserver -p MainPID --value)/cmdline").splitlines()
    assert "--backend-directory=/opt/tritonserver/backends" in argv


def test_port_8000_held_by_another_process_is_named_and_not_killed(host):
    on_host("systemctl stop tritonserver && systemd-run --unit=squatter --quiet python3 -m http.server 8000 "
            "--bind 0.0.0.0 --directory /tmp")
    try:
        on_host("for i in $(seq 50); do ss -ltnH 'sport = :8000' | grep -q . && break; sleep 0.1; done")
        on_host("systemctl start tritonserver")
        time.sleep(4)
        proc, report = doctor()
        assert proc.returncode == 1
        f = finding(report["diagnosis"], "port_in_use")
        assert "port 8000 (http) is held by python3" in f["title"] and f["action"] == ""
        proc, report = doctor("--fix")
        assert proc.returncode == 1 and report["fixes"] == []  # someone else's process: explained, not killed
        assert on_host("systemctl is-active squatter") == "active"
    finally:
        ssh(ADDRESS, "systemctl stop squatter; systemctl reset-failed squatter tritonserver; "
                     "systemctl restart tritonserver")


def test_broken_config_on_the_host_is_named_with_its_line(host):
    on_host(f"echo 'bogus_field {{' >> {MODELS}/str_upper/config.pbtxt")
    restart_server()
    proc, report = doctor()
    assert proc.returncode == 1
    f = finding(report["diagnosis"], "bad_config")
    assert "str_upper" in f["models"]
    assert any("str_upper/config.pbtxt:" in e for e in f["evidence"])
    assert any("Error parsing text-format inference.ModelConfig" in e for e in f["evidence"])


def test_missing_version_folder_is_named(host):
    on_host(f"rm -rf /root/str_upper-1 && mv {MODELS}/str_upper/1 /root/str_upper-1")
    try:
        restart_server()
        proc, report = doctor()
        assert proc.returncode == 1
        f = finding(report["diagnosis"], "missing_version")
        assert "str_upper" in f["models"] and "issues/3623" in f["link"]
        assert any("version policy of model 'str_upper'" in e for e in f["evidence"])
    finally:
        ssh(ADDRESS, "rm -rf /root/str_upper-1")


def test_shm_regions_larger_than_dev_shm_fail_deploy_with_the_diagnosis(host, tmp_path):
    # A Python backend region of 3 GiB per instance in a /dev/shm of ~2.4 GB: the real "Unable to initialize
    # shared memory key ... No space left on device" (the lab's containers refuse `mount -o remount,size=512k`).
    inventory = tmp_path / "hosts.yml"
    inventory.write_text((REPO_ROOT / "inventory" / "hosts.yml").read_text().replace(
        "gpu02: {ansible_host: 10.213.0.12}",
        "gpu02: {ansible_host: 10.213.0.12, triton_ready_timeout: 20, "
        "triton_backend_config: {python: {shm-default-byte-size: 3221225472}}}"))
    proc = deploy("--inventory", str(inventory), expect=1)
    assert "diagnosis (invoke doctor)" in proc.stderr and "/dev/shm is too small" in proc.stderr
    report = json.loads(proc.stdout)
    step = next(s for s in report["hosts"][0]["steps"] if s["module"] == "wait_ready")
    assert "shm_too_small" in {f["signature"] for f in step["data"]["diagnosis"]["findings"]}
    proc, report = doctor()
    assert proc.returncode == 1
    f = finding(report["diagnosis"], "shm_too_small")
    assert "shm-default-byte-size 3221225472" in " ".join(f["evidence"])


def test_shrunk_dev_shm(host):
    """/dev/shm shrunk to 512 KiB: a new small tmpfs mounted over it (the lab's containers refuse a remount)."""
    assert ssh(ADDRESS, "mount -t tmpfs -o size=512k tmpfs /dev/shm && systemctl restart tritonserver").returncode == 0
    try:
        proc, report = doctor()
        assert "shm_too_small" in error_signatures(report["diagnosis"])
    finally:
        ssh(ADDRESS, "umount /dev/shm; systemctl restart tritonserver")
