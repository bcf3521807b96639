"""Shared fixtures: real lab hosts (systemd-nspawn, one netns each) reached over real SSH."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import yaml

from tritonfleet import faultreport
from tritonfleet import lab as labmod
from tritonfleet.lab import LabHost
from tritonfleet.paths import REPO_ROOT

INVENTORY = REPO_ROOT / "inventory" / "hosts.yml"


def _lab_hosts() -> list[LabHost]:
    """The lab group of the repository's inventory, in inventory order."""
    data = yaml.safe_load(INVENTORY.read_text())
    hosts = data["all"]["children"]["lab"]["hosts"]
    return [LabHost(name, vars_["ansible_host"], vars_.get("lab_suite", labmod.DEFAULT_SUITE))
            for name, vars_ in hosts.items()]


LAB_HOSTS: list[LabHost] = _lab_hosts()


def ssh(host: LabHost | str, command: str, *, timeout: float = 300,
        known_hosts: Path | None = None) -> subprocess.CompletedProcess:
    """Run `command` on a lab host with OpenSSH exactly as a user would: lab key, strict host keys."""
    address = host.address if isinstance(host, LabHost) else host
    args = ["ssh", "-i", str(labmod.LAB_KEY),
            "-o", f"UserKnownHostsFile={known_hosts or labmod.KNOWN_HOSTS}",
            "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes", "-o", "ConnectTimeout=5",
            "-o", "LogLevel=ERROR", f"root@{address}", command]
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def admin_headers(address: str) -> dict:
    """The HTTP header with the host's API key (read over SSH, as root): what a test needs to read the repository
    index, which tritonfleet restricts by default."""
    from tritonfleet.triton import apikey
    text = ssh(address, f"cat {apikey.KEY_FILE}").stdout
    key = next(line.split("=", 1)[1] for line in text.splitlines() if line.startswith(apikey.KEY_VARIABLE + "="))
    return apikey.http_headers(key)


class Lab:
    """Handle the session's tests use: ensure(n) brings up gpu01..gpuNN, reset(name) cleans one."""

    def ensure(self, n: int) -> list[LabHost]:
        hosts = LAB_HOSTS[:n]
        labmod.up(hosts, progress=lambda msg: None)
        return hosts

    def reset(self, name: str) -> labmod.HostState:
        return labmod.reset_host(name)

    def down(self) -> None:
        labmod.down(progress=lambda msg: None)


@pytest.fixture(scope="session")
def lab():
    if os.geteuid() != 0:
        pytest.skip("lab tests need root")
    handle = Lab()
    with labmod.exclusive("pytest session", wait_s=900):
        yield handle
        if os.environ.get("TRITONFLEET_KEEP_LAB") != "1":
            handle.down()


@pytest.fixture(scope="session")
def fault_records(request, tmp_path_factory) -> Path:
    """Where `fault_log` writes. tests/faults.json is tracked and feeds the README's table, so only a run
    that includes the lab tests (the whole suite, as CI runs it) writes there; any other run, the unit tier
    included, writes to a file of its own and leaves the checkout as it was."""
    if any(item.get_closest_marker("lab") for item in request.session.items):
        return faultreport.RECORDS
    return tmp_path_factory.mktemp("faults") / "faults.json"
