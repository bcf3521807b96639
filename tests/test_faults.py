"""Faults on real lab hosts: a link that dies mid-sync, a reboot, a killed server, a full disk.

gpu08 takes the network, reboot and kill faults; gpu07 (reset first) the full disk. Every fault is undone
in a finalizer (veth up, qdisc removed, tmpfs unmounted) whatever the test's outcome.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time

import numpy as np
import pytest
import tritonclient.http as httpclient

from labkit import ADDRESSES, ensure_mine, fault_log, on_host, report_of, show, wait_for  # noqa: F401
from tritonfleet import lab as labmod
from tritonfleet.paths import REPO_ROOT

pytestmark = pytest.mark.lab

EXAMPLES = REPO_ROOT / "examples" / "models"
HOST = "gpu08"
VETH = "tfv-gpu08"


def run_invoke(*args, timeout=900):
    return subprocess.run(["invoke", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout,
                          stdin=subprocess.DEVNULL)


def deploy(*args, host=HOST):
    proc = run_invoke("deploy", "--host", host, "--json", *args)
    return proc, report_of(proc)


def infer_ok(address: str) -> bool:
    try:
        client = httpclient.InferenceServerClient(f"{address}:8000", connection_timeout=5, network_timeout=10)
        inputs = [httpclient.InferInput("INPUT0", [4], "FP32"), httpclient.InferInput("INPUT1", [4], "FP32")]
        for i in inputs:
            i.set_data_from_numpy(np.arange(4, dtype=np.float32))
        return client.infer("add_sub", inputs).as_numpy("OUTPUT0").tolist() == [0, 2, 4, 6]
    except Exception:
        return False


def server_ready(address: str) -> bool:
    try:
        return httpclient.InferenceServerClient(f"{address}:8000", connection_timeout=3,
                                                network_timeout=5).is_server_ready()
    except Exception:
        return False


@pytest.fixture(scope="module")
def deployed(lab):
    ensure_mine()
    proc, report = deploy()
    assert proc.returncode == 0, show(proc)
    return report


@pytest.fixture
def big_repo(tmp_path):
    """examples + 50 MB of random files in add_sub's version folder (Triton ignores them)."""
    repo = tmp_path / "models"
    shutil.copytree(EXAMPLES, repo)
    data = repo / "add_sub" / "1" / "blobs"
    data.mkdir()
    for i in range(50):
        (data / f"blob{i:02d}.bin").write_bytes(os.urandom(1 << 20))
    return repo


def _link(state: str) -> None:
    subprocess.run(["ip", "link", "set", VETH, state], check=True, timeout=10)


def test_link_down_during_model_sync(deployed, big_repo, fault_log):
    assert infer_ok(ADDRESSES[HOST])
    # slow the link to ~40 Mbit/s so the 50 MB sync is still running when the link goes down
    subprocess.run(["tc", "qdisc", "replace", "dev", VETH, "root", "tbf", "rate", "40mbit", "burst", "64kb",
                    "latency", "400ms"], check=True, timeout=10)
    proc = None
    try:
        proc = subprocess.Popen(["invoke", "deploy", "--host", HOST, "--json", "--models", str(big_repo)],
                                cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                stdin=subprocess.DEVNULL)

        def rsync_running():
            out = subprocess.run(["pgrep", "-f", f"rsync .*{ADDRESSES[HOST]}"], capture_output=True, text=True)
            return out.returncode == 0

        wait_for(rsync_running, 120, interval=0.2, what="the model sync (rsync) to start")
        time.sleep(3)
        _link("down")
        down_at = time.monotonic()
        try:
            stdout, stderr = proc.communicate(timeout=90)
        except subprocess.TimeoutExpired:
            stdout = stderr = None
        ended_after = time.monotonic() - down_at
    finally:
        _link("up")
        subprocess.run(["tc", "qdisc", "del", "dev", VETH, "root"], timeout=10)
        if proc and proc.poll() is None:
            stdout, stderr = proc.communicate(timeout=300)
            ended_after = None
    assert ended_after is not None and ended_after < 75, f"run took {ended_after} s with the link down"
    assert proc.returncode == 1, f"exit {proc.returncode}\n{stderr[-4000:]}"
    report = report_of(subprocess.CompletedProcess([], 1, stdout, stderr))
    host = report["hosts"][0]
    message = host["error"] or next(s["msg"] for s in host["steps"] if s["status"] == "failed")
    assert any(w in message for w in ("connection lost", "rsync", "lost")), message
    # the live server never stopped serving the previous models
    wait_for(lambda: infer_ok(ADDRESSES[HOST]), 60, what="inference after the link is back")
    proc2, report2 = deploy("--models", str(big_repo))
    assert proc2.returncode == 0 and report2["changed"] > 0, show(proc2)
    proc3, report3 = deploy("--models", str(big_repo))
    assert proc3.returncode == 0 and report3["changed"] == 0, show(proc3)
    assert infer_ok(ADDRESSES[HOST])
    proc4, _ = deploy()  # back to the example models
    assert proc4.returncode == 0, show(proc4)
    first_line = message.strip().splitlines()[0][:160]
    fault_log("Faults (lab hosts)", "gpu08's link (veth) taken down mid-way through a 50 MB model sync, "
              "up again after the run ended",
              f"the run gave up {ended_after:.0f} s after the link went down, host failed (exit 1): "
              f"`{first_line}`; the live server kept answering inference; next run synced and restarted "
              f"(changed={report2['changed']}), the one after changed=0")


def test_host_reboot_brings_the_service_back(deployed, fault_log):
    labmod.stop_host(HOST)
    try:
        assert not server_ready(ADDRESSES[HOST])
    finally:
        labmod.start_host(HOST)
    started = time.monotonic()
    wait_for(lambda: server_ready(ADDRESSES[HOST]), 240, interval=2, what="tritonserver ready after boot")
    ready_after = time.monotonic() - started
    proc = run_invoke("smoke", "--host", HOST)
    assert proc.returncode == 0, show(proc)
    assert on_host(HOST, "systemctl is-active tritonserver") == "active"
    fault_log("Faults (lab hosts)", "gpu08 powered off and booted again (`lab.stop_host`/`start_host`)",
              f"tritonserver started by systemd at boot, ready {ready_after:.0f} s after the host answered SSH; "
              "`invoke smoke --host gpu08` passed")


def test_killed_server_is_restarted_by_systemd(deployed, fault_log):
    wait_for(lambda: server_ready(ADDRESSES[HOST]), 120, what="server ready")
    show_props = "systemctl show tritonserver -p MainPID -p NRestarts"
    props = dict(ln.split("=", 1) for ln in on_host(HOST, show_props).splitlines())
    old_pid, restarts = int(props["MainPID"]), int(props["NRestarts"])
    on_host(HOST, f"kill -9 {old_pid}")

    def restarted():
        p = dict(ln.split("=", 1) for ln in on_host(HOST, show_props).splitlines())
        return p if int(p["MainPID"]) not in (0, old_pid) and int(p["NRestarts"]) > restarts else None

    props = wait_for(restarted, 60, what="a new tritonserver process")
    wait_for(lambda: server_ready(ADDRESSES[HOST]), 120, what="server ready after restart")
    proc = run_invoke("smoke", "--host", HOST)
    assert proc.returncode == 0, show(proc)
    status = run_invoke("status", "--host", HOST, "--json")
    row = report_of(status)["hosts"][0]
    assert row["restarts"] == int(props["NRestarts"]) and row["service"] == "active", show(status)
    fault_log("Faults (lab hosts)", "`kill -9` of tritonserver's MainPID",
              f"systemd restarted it (Restart=on-failure): new PID, NRestarts {restarts} -> {props['NRestarts']}, "
              "which `invoke status` shows in its restarts column; smoke passed")


def test_disk_full_during_release_push(lab, fault_log):
    ensure_mine()
    lab.reset("gpu07")
    mounted = False
    try:
        on_host("gpu07", "mkdir -p /opt/tritonfleet/releases && mount -t tmpfs -o size=20M tmpfs "
                         "/opt/tritonfleet/releases")
        mounted = True
        proc, report = deploy(host="gpu07")
        assert proc.returncode == 1, show(proc)
        host = report["hosts"][0]
        failed = [s for s in host["steps"] if s["status"] == "failed"]
        message = host["error"] or (failed[0]["msg"] if failed else "")
        assert "space" in message.lower(), show(proc)
        assert on_host("gpu07", "test -e /opt/tritonserver && readlink /opt/tritonserver || echo missing") == "missing"
        assert on_host("gpu07", "ls -A /opt/tritonfleet/releases") == ""
        used_kb = int(on_host("gpu07", "df -Pk /opt/tritonfleet/releases | awk 'NR==2 {print $3}'"))
        assert used_kb < 1024, f"{used_kb} KiB still used"
        assert on_host("gpu07", "systemctl is-active tritonserver", check=False) != "active"
    finally:
        if mounted:
            on_host("gpu07", "umount /opt/tritonfleet/releases", check=False)
    proc2, report2 = deploy(host="gpu07")
    assert proc2.returncode == 0, show(proc2)
    first_line = message.strip().splitlines()[0][:200]
    fault_log("Faults (lab hosts)", "20 MB tmpfs on /opt/tritonfleet/releases of a fresh gpu07 (the bundle is 55 MB)",
              f"host failed, exit 1: `{first_line}`; /opt/tritonserver not created, no `.incoming-*` left "
              f"({used_kb} KiB used); after unmounting, the next deploy passed")
