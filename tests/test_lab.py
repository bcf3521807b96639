"""The lab itself: real Debian hosts, real systemd, real SSH with strict host keys, offline but for the mirror."""

from __future__ import annotations

import glob
import os
import subprocess
import time
from pathlib import Path

import pytest

from tritonfleet import lab as labmod
from tritonfleet.errors import TritonfleetError
from tritonfleet.paths import REPO_ROOT
from conftest import LAB_HOSTS, ssh

pytestmark = pytest.mark.lab

N = 2


@pytest.fixture(scope="module")
def hosts(lab):
    t0 = time.monotonic()
    got = lab.ensure(N)
    for h in got:  # other test modules may have provisioned these hosts: start from clean ones
        lab.reset(h.name)
    print(f"\nlab.ensure({N}) took {time.monotonic() - t0:.1f} s")
    return got


def _out(host, command: str) -> str:
    proc = ssh(host, command)
    assert proc.returncode == 0, f"{host.name}: {command!r} failed: {proc.stderr}"
    return proc.stdout.strip()


def test_inventory_hosts():
    assert [h.name for h in LAB_HOSTS] == [f"gpu{i:02d}" for i in range(1, 11)]
    assert [h.address for h in LAB_HOSTS] == [f"10.213.0.{10 + i}" for i in range(1, 11)]
    assert [h.suite for h in LAB_HOSTS] == ["bookworm"] * 8 + ["bullseye", "trixie"]


def test_strict_ssh_reaches_each_host(hosts):
    for h in hosts:
        assert _out(h, "echo ok") == "ok"
    assert labmod.LAB_KEY.stat().st_mode & 0o777 == 0o600
    kh = labmod.KNOWN_HOSTS.read_text().splitlines()
    for h in hosts:
        assert any(line.startswith(f"{h.address} ssh-ed25519 ") for line in kh)


def test_engine_connection_checks_host_keys_strictly(hosts, tmp_path):
    """The engine's Fabric connection reaches lab hosts through the inventory's known_hosts only."""
    from tritonfleet.engine.connection import HostConnection, Unreachable
    from tritonfleet.engine.inventory import DEFAULT_INVENTORY, Host, load_inventory

    inv = load_inventory(DEFAULT_INVENTORY)
    for h in hosts:
        conn = HostConnection(inv.host(h.name))
        try:
            assert conn.run("hostname").stdout.strip() == h.name
        finally:
            conn.close()
    # gpu02's keys recorded under gpu01's address: what a reinstalled or impersonated host looks like
    wrong = tmp_path / "known_hosts"
    other = hosts[1].address
    lines = [ln for ln in labmod.KNOWN_HOSTS.read_text().splitlines() if ln.startswith(other + " ")]
    wrong.write_text("".join(ln.replace(other, hosts[0].address, 1) + "\n" for ln in lines))
    vars_ = dict(inv.host(hosts[0].name).vars,
                 ansible_ssh_common_args=f"-o UserKnownHostsFile={wrong} -o StrictHostKeyChecking=yes")
    conn = HostConnection(Host(hosts[0].name, vars_, ("lab",)))
    with pytest.raises(Unreachable, match="HOST KEY CHANGED"):
        conn.run("true")
    conn.close()


def test_pid1_is_systemd_and_running(hosts):
    for h in hosts:
        assert _out(h, "cat /proc/1/comm") == "systemd"
        assert _out(h, "systemctl is-system-running || true") in ("running", "degraded")


def test_each_host_has_its_own_identity(hosts):
    names = [_out(h, "hostname") for h in hosts]
    assert names == [h.name for h in hosts]
    ids = {_out(h, "cat /etc/machine-id") for h in hosts}
    assert len(ids) == len(hosts)
    keys = {_out(h, "cat /etc/ssh/ssh_host_ed25519_key.pub").split()[1] for h in hosts}
    assert len(keys) == len(hosts)
    assert not list((labmod.base_dir("bookworm") / "etc/ssh").glob("ssh_host_*")), "base image must carry no host keys"


def test_dev_shm_is_tmpfs(hosts):
    for h in hosts:
        assert _out(h, "findmnt -n -o FSTYPE /dev/shm") == "tmpfs"


def test_opt_is_private(hosts):
    a, b = hosts[0], hosts[1]
    _out(a, "echo hi > /opt/only-on-a")
    try:
        assert _out(a, "cat /opt/only-on-a") == "hi"
        assert ssh(b, "test -e /opt/only-on-a").returncode == 1
        assert not (labmod.base_dir("bookworm") / "opt/only-on-a").exists()
    finally:
        _out(a, "rm -f /opt/only-on-a")


def test_base_image_lacks_libpython_and_numpy(hosts):
    base = labmod.base_dir("bookworm")
    assert not glob.glob(str(base / "usr/lib/*/libpython3.11.so.1.0"))
    assert not glob.glob(str(base / "usr/lib/python3*/dist-packages/numpy"))
    assert (base / "usr/bin/python3").exists()
    for h in hosts:
        assert ssh(h, "python3 -c 'import numpy'").returncode != 0
        assert ssh(h, "ldconfig -p | grep -q libpython3.11.so.1.0").returncode != 0


def test_packages_come_only_from_the_lab_mirror(lab, hosts):
    h = hosts[0]
    sources = _out(h, "cat /etc/apt/sources.list; cat /etc/apt/sources.list.d/* 2>/dev/null || true")
    assert [line for line in sources.splitlines() if line.strip() and not line.startswith("#")] == \
        [labmod.mirror_source_line("bookworm")]
    assert "default" not in _out(h, "ip route")
    # no route off the lab subnet: the kernel refuses locally, nothing is sent
    assert ssh(h, "ip route get 203.0.113.7").returncode != 0
    try:
        _out(h, "DEBIAN_FRONTEND=noninteractive apt-get update -q && DEBIAN_FRONTEND=noninteractive "
                "apt-get install -y -q --no-install-recommends python3-numpy libpython3.11 rsync sudo")
        assert _out(h, "python3 -c 'import numpy; print(numpy.__name__)'") == "numpy"
        assert f"{labmod.BRIDGE_ADDRESS}:{labmod.MIRROR_PORT}/bookworm" in _out(h, "apt-cache policy python3-numpy")
    finally:
        t0 = time.monotonic()
        lab.reset(h.name)
        print(f"\nreset_host({h.name}) took {time.monotonic() - t0:.1f} s")
    assert ssh(h, "python3 -c 'import numpy'").returncode != 0


def test_second_up_is_a_quick_noop(hosts):
    before = {s.name: s.pid for s in labmod.status()}
    messages: list[str] = []
    t0 = time.monotonic()
    states = labmod.up(hosts, progress=messages.append)
    print(f"\nsecond up({len(hosts)}) took {time.monotonic() - t0:.1f} s")
    assert [s.state for s in states] == [s.state for s in states if s.state in ("running", "degraded")]
    assert {s.name: s.pid for s in labmod.status()} == before
    assert not [m for m in messages if "starting" in m or "building" in m], messages


def test_wrong_host_key_is_rejected(hosts, tmp_path):
    h = hosts[0]
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "k")], check=True)
    ktype, kdata = (tmp_path / "k.pub").read_text().split()[:2]
    bad = tmp_path / "known_hosts"
    bad.write_text(f"{h.address} {ktype} {kdata}\n")
    proc = ssh(h, "true", known_hosts=bad)
    assert proc.returncode == 255
    assert "host key" in proc.stderr.lower() or "identification has changed" in proc.stderr.lower()
    empty = tmp_path / "empty"
    empty.write_text("")
    assert ssh(h, "true", known_hosts=empty).returncode == 255


def test_stop_and_start_keep_state(hosts):
    h = hosts[1]
    _out(h, "echo kept > /opt/kept")
    labmod.stop_host(h.name)
    assert [s.state for s in labmod.status() if s.name == h.name] == ["stopped"]
    assert ssh(h, "true").returncode == 255
    state = labmod.start_host(h.name)
    assert state.state in ("running", "degraded")
    assert _out(h, "cat /opt/kept") == "kept"


def test_a_boot_that_dies_is_reported_with_how_it_ended_and_a_later_start_works(hosts):
    h = hosts[1]
    labmod.stop_host(h.name)
    subprocess.run(["ip", "netns", "del", h.name], check=True)   # nspawn cannot enter it: it exits at once
    pid = labmod._start(h)
    with pytest.raises(TritonfleetError) as err:
        labmod._wait_ready(h, pid)
    assert f"systemd-nspawn (pid {pid}) exited during boot (exit status 1)" in str(err.value)
    assert str(labmod._console(h.name)) in str(err.value)
    assert f"/run/netns/{h.name}" in str(err.value)       # nspawn's own words, from the console log's tail
    state = labmod.start_host(h.name)                      # start_host makes the netns again
    assert state.state in ("running", "degraded")
    assert _out(h, "hostname") == h.name


def test_a_host_just_started_counts_as_booting_not_dead(hosts):
    # /proc/PID/cmdline reads empty for a moment after exec, often on a busy machine: the boot wait
    # must not take that for a dead nspawn (CI once failed a healthy host that way).
    h = hosts[1]
    labmod.stop_host(h.name)
    burners = [subprocess.Popen(["sh", "-c", "end=$(($(date +%s)+3)); while [ $(date +%s) -lt $end ]; do :; done"])
               for _ in range(os.cpu_count() or 2)]
    try:
        pid = labmod._start(h)
        assert labmod._booting_alive(h.name, pid) == (True, "")
    finally:
        for b in burners:
            b.wait(timeout=30)
    state = labmod._wait_ready(h, pid)
    assert state.state in ("running", "degraded") and state.pid == pid


def test_reset_host_gives_a_clean_host(hosts):
    h = hosts[1]
    _out(h, "echo dirty > /opt/dirty && touch /root/dirty")
    old_pid = {s.name: s.pid for s in labmod.status()}[h.name]
    state = labmod.reset_host(h.name)
    assert state.state in ("running", "degraded") and state.pid != old_pid
    assert ssh(h, "test -e /opt/dirty || test -e /root/dirty || test -e /opt/kept").returncode == 1
    assert _out(h, "hostname") == h.name      # same host keys: strict ssh still works


def test_a_second_run_cannot_take_the_lab_from_this_one(hosts):
    # This test session holds the lab: another run's teardown would take these hosts away mid-test.
    proc = subprocess.run(["invoke", "lab.down"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
                          stdin=subprocess.DEVNULL)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert f"lab: in use by pid {os.getpid()} (pytest session)" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert _out(hosts[0], "hostname") == hosts[0].name


@pytest.mark.parametrize("name,version_id,python,glibc", [("gpu09", "11", "3.9", "2.31"),
                                                         ("gpu10", "13", "3.13", "2.41")])
def test_a_host_of_another_release_runs_that_release_with_its_own_mirror(name, version_id, python, glibc):
    """lab_suite in the inventory picks the host's Debian release: its own base image, its own package mirror."""
    (h,) = [h for h in LAB_HOSTS if h.name == name]
    labmod.up([h], progress=lambda msg: None)
    assert _out(h, ". /etc/os-release && echo $VERSION_ID") == version_id
    assert _out(h, "python3 -c 'import sys; print(\"%d.%d\" % sys.version_info[:2])'") == python
    assert _out(h, "ldd --version | head -1").split()[-1] == glibc
    assert _out(h, "systemctl is-system-running") in ("running", "degraded")
    assert _out(h, "cat /etc/apt/sources.list") == labmod.mirror_source_line(h.suite)
    assert {s.name: s.suite for s in labmod.status()}[name] == h.suite
    try:
        _out(h, "DEBIAN_FRONTEND=noninteractive apt-get update -q && DEBIAN_FRONTEND=noninteractive "
                f"apt-get install -y -q --no-install-recommends python3-numpy libpython{python}")
        assert _out(h, "python3 -c 'import numpy; print(numpy.__name__)'") == "numpy"
        assert _out(h, f"ldconfig -p | grep -c libpython{python}.so.1.0") != "0"
    finally:
        labmod.reset_host(h.name)


def test_a_host_recorded_with_another_release_is_not_silently_reused():
    h = next(h for h in LAB_HOSTS if h.name == "gpu09")
    with pytest.raises(TritonfleetError, match=r"gpu09 exists as 10\.213\.0\.19 \(bullseye\), not 10\.213\.0\.19 "
                                               r"\(trixie\)"):
        labmod.up([labmod.LabHost(h.name, h.address, "trixie")], progress=lambda msg: None)
    with pytest.raises(TritonfleetError, match="lab_suite 'jessie' is not a release the lab builds"):
        labmod.up([labmod.LabHost("gpu11", "10.213.0.21", "jessie")], progress=lambda msg: None)


def test_down_removes_everything_and_up_works_again(lab, hosts):
    lab.down()
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert not [line for line in netns.splitlines() if line.split() and line.split()[0].startswith("gpu")]
    assert subprocess.run(["ip", "link", "show", labmod.LAB_BRIDGE], capture_output=True).returncode != 0
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout
    assert labmod.VETH_PREFIX not in links
    for cmd in glob.glob("/proc/[0-9]*/cmdline"):
        try:
            args = Path(cmd).read_bytes().split(b"\0")
        except OSError:
            continue
        assert not args[0].endswith(b"systemd-nspawn"), args
        assert not (b"http.server" in args and str(labmod.MIRROR_PORT).encode() in args), args
    # nothing listens on the mirror port any more (checked locally: with the bridge gone, a connect
    # to its address would leave this machine by the default route)
    port = f":{labmod.MIRROR_PORT:04X} "
    listening = [line for line in Path("/proc/net/tcp").read_text().splitlines()[1:]
                 if port in line and line.split()[3] == "0A"]
    assert not listening
    assert not labmod.LAB_STATE_DIR.exists()
    assert labmod.base_dir("bookworm").is_dir() and (labmod.mirror_dir("bookworm") / "Packages.gz").is_file()
    # the session fixture can bring a torn-down lab back
    (h,) = lab.ensure(1)
    assert _out(h, "hostname") == h.name
