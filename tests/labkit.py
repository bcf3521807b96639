"""Helpers for the security, fault and bad-input tests: invoke runs, temp inventories, the fault log."""

from __future__ import annotations

import contextlib
import io
import json
import os
import socket
import subprocess
import time

import pytest
import yaml

from conftest import LAB_HOSTS, ssh
from tritonfleet import faultreport
from tritonfleet import lab as labmod
from tritonfleet.paths import REPO_ROOT

ADDRESSES = {h.name: h.address for h in LAB_HOSTS}


def invoke(*args, timeout: int = 900, env=None, input_text=None) -> subprocess.CompletedProcess:
    return subprocess.run(["invoke", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout,
                          env=env, input=input_text, stdin=None if input_text is not None else subprocess.DEVNULL)


def invoke_here(*args, env=None) -> subprocess.CompletedProcess:
    """`invoke ARGS` run in this process, as a user's shell would run it (the project's tasks.py, its exit code,
    its stdout and stderr): what `invoke` does without the 0.4 s of starting Python and importing everything again.
    For the unit tier's many runs that a host never sees; lab tests run the real command."""
    from invoke import Program

    from tritonfleet import secrets
    out, err = io.StringIO(), io.StringIO()
    saved_env, saved_cwd = dict(os.environ), os.getcwd()
    secrets._values.clear()  # a process runs one task: no secret registered by an earlier run is still known
    code = 0
    try:
        if env is not None:  # as subprocess's env=: the whole environment
            os.environ.clear()
            os.environ.update(env)
        os.chdir(REPO_ROOT)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            Program(binary="invoke").run(["invoke", *args], exit=True)
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    finally:
        os.chdir(saved_cwd)
        os.environ.clear()
        os.environ.update(saved_env)
    return subprocess.CompletedProcess(["invoke", *args], code, out.getvalue(), err.getvalue())


def report_of(proc) -> dict | None:
    out = proc.stdout.strip()
    return json.loads(out) if out.startswith("{") else None


def show(proc) -> str:
    return f"exit {proc.returncode}\n--- stdout\n{proc.stdout[-3000:]}\n--- stderr\n{proc.stderr[-6000:]}"


def on_host(name: str, command: str, timeout: float = 300, check: bool = True) -> str:
    res = ssh(ADDRESSES[name], command, timeout=timeout)
    if check:
        assert res.returncode == 0, f"{name}: {command}: {res.stderr}"
    return res.stdout.strip()


def write_inventory(path, hosts: dict, *, group="lab", known_hosts=None, user="root", lab_vars=None) -> str:
    """An inventory of lab hosts (name -> extra host vars) in one group, with the lab's key and a chosen
    known_hosts; lab_vars are that group's vars."""
    group_vars = {
        "ansible_ssh_private_key_file": str(labmod.LAB_KEY),
        "ansible_ssh_common_args": f"-o UserKnownHostsFile={known_hosts or labmod.KNOWN_HOSTS} "
                                   "-o StrictHostKeyChecking=yes",
        **(lab_vars or {}),
    }
    data = {"all": {"vars": {"ansible_user": user}, "children": {group: {
        "vars": group_vars,
        "hosts": {name: {"ansible_host": ADDRESSES[name], **(extra or {})} for name, extra in hosts.items()},
    }}}}
    path.write_text(yaml.safe_dump(data, sort_keys=False, width=1000))
    return str(path)


def closed_port() -> int:
    """A loopback port nothing listens on: a connection there is refused at once."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def local_inventory(path, names=("gpu08",), **group_vars) -> str:
    """An inventory for unit tests: its hosts are 127.0.0.1 on a port nothing listens on, with a known_hosts
    of their own, so a run that gets past the input checks finds them unreachable at once and never
    reaches a lab host (or the repository's inventory)."""
    known_hosts = path.parent / "known_hosts"
    known_hosts.touch()
    data = {"all": {
        "vars": {"ansible_ssh_common_args": f"-o UserKnownHostsFile={known_hosts}", **group_vars},
        "hosts": {name: {"ansible_host": "127.0.0.1", "ansible_port": closed_port()} for name in names},
    }}
    path.write_text(yaml.safe_dump(data, sort_keys=False, width=1000))
    return str(path)


def wait_for(predicate, timeout: float, interval: float = 1.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"{what} not reached within {timeout:.0f} s (last: {last!r})")


@pytest.fixture
def fault_log(request, fault_records):
    """Call `note(area, fault, outcome)` at the END of a test (after its asserts): the record is what the
    README section is generated from, so only faults whose test passed its checks are listed."""
    test_id = request.node.nodeid
    faultreport.forget(test_id, fault_records)
    count = [0]

    def note(area: str, fault: str, outcome: str) -> None:
        count[0] += 1
        faultreport.record(f"{test_id}#{count[0]}", area, fault, outcome, fault_records)

    return note


def ensure_mine(names=("gpu07", "gpu08")) -> None:
    """Bring up only this suite's hosts. `lab.ensure(8)` would also boot a host another test has just
    stopped on purpose (a reboot test of gpu03 died that way while this suite started), so it is not used."""
    labmod.up([h for h in LAB_HOSTS if h.name in names], progress=lambda msg: None)
