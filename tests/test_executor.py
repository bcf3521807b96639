"""The per-host executor: every task maps an unreachable host the same way (exit 1, the other hosts still done).

Hosts are 127.0.0.1 on ports nothing listens on, so nothing leaves this machine.
"""

from __future__ import annotations

import json
import socket
import subprocess
import threading

import pytest

from tritonfleet.engine.executor import NOT_STARTED, Events, for_each_host
from tritonfleet.engine.inventory import load_inventory
from tritonfleet.paths import REPO_ROOT


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]  # closed again when the block ends: nothing listens there


@pytest.fixture
def unreachable_inventory(tmp_path):
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text("")
    inv = tmp_path / "hosts.yml"
    inv.write_text(f"all:\n  vars:\n    ansible_ssh_common_args: -o UserKnownHostsFile={known_hosts}\n  hosts:\n"
                   f"    down1: {{ansible_host: 127.0.0.1, ansible_port: {closed_port()}}}\n"
                   f"    down2: {{ansible_host: 127.0.0.1, ansible_port: {closed_port()}}}\n")
    return str(inv)


def invoke(*args) -> subprocess.CompletedProcess:
    return subprocess.run(["invoke", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
                          stdin=subprocess.DEVNULL)


UNREACHABLE_IN_REPORT = {
    "models.diff": lambda h: h["error"].startswith("unreachable: ") and "cannot reach" in h["error"],
    "status": lambda h: not h["reachable"] and "cannot reach" in h["error"],
    "doctor": lambda h: "cannot reach" in h["unreachable"] and not h["ok"],
}


@pytest.mark.parametrize("task", sorted(UNREACHABLE_IN_REPORT))
def test_unreachable_hosts_exit_1_with_every_host_in_the_json_report(task, unreachable_inventory):
    proc = invoke(task, "--inventory", unreachable_inventory, "--json")
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    report = json.loads(proc.stdout)
    assert [h.get("host") or h.get("name") for h in report["hosts"]] == ["down1", "down2"]
    for host in report["hosts"]:
        assert UNREACHABLE_IN_REPORT[task](host), host


def test_work_runs_on_reachable_hosts_only_and_errors_stay_with_their_host(unreachable_inventory):
    hosts = load_inventory(unreachable_inventory).select()
    seen = []
    results, interrupted = for_each_host(hosts, lambda host, conn: seen.append(conn.run("true").stdout), forks=2,
                                         events=Events(unreachable=lambda h, msg: seen.append(f"unreachable {h}")))
    assert not interrupted
    assert sorted(seen) == ["unreachable down1", "unreachable down2"]
    assert [r.host for r in results] == ["down1", "down2"]
    assert all(r.unreachable and r.failed and r.value is None for r in results)


def test_a_cancelled_run_starts_no_host(unreachable_inventory):
    hosts = load_inventory(unreachable_inventory).select()
    cancel = threading.Event()
    cancel.set()
    results, interrupted = for_each_host(hosts, lambda host, conn: pytest.fail("started"), cancel=cancel)
    assert interrupted and [r.error for r in results] == [NOT_STARTED, NOT_STARTED]
