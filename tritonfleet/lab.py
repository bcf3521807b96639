"""A fleet of real Debian hosts on this one machine, for testing tritonfleet over real SSH.

Each lab host is a Debian system (12 by default; 11 or 13 with the host var `lab_suite`) booted by
systemd-nspawn (real systemd, journald, sshd) in its own network namespace, on a private bridge, reachable at its
own address with a per-lab key and strict host key checking -- exactly how tritonfleet reaches a real GPU box.
Hosts are offline (no route beyond the bridge); packages reach them from a mirror the lab serves on the bridge
address, as at an air-gapped site.

Layout:
  CACHE_DIR/lab/base-SUITE      debootstrap image of one Debian release, read-only lower layer of its hosts (cached)
  CACHE_DIR/lab/mirrors/SUITE/  .debs provisioning installs on that release + Packages.gz (cached)
  LAB_STATE_DIR/ssh/            lab key (id_ed25519, never in git) and known_hosts
  LAB_STATE_DIR/hosts/NAME/     host.json, hostkeys/, upper/ (the host's copy-on-write layer), console.log
  LAB_STATE_DIR/mirror.pid      the mirror http server

Needs root, debootstrap, systemd-container, iproute2, openssh-client, dpkg-dev.
"""

from __future__ import annotations

import concurrent.futures
import fcntl
import glob
import gzip
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from tritonfleet.errors import TritonfleetError
from tritonfleet.paths import CACHE_DIR, LAB_STATE_DIR

DEFAULT_SUITE = "bookworm"
# The Debian releases a lab host can run (host var lab_suite), each with the Python its python3 is.
SUITES = {"bullseye": "3.9", "bookworm": "3.11", "trixie": "3.13"}
LAB_BRIDGE = "tflab0"
LAB_SUBNET = "10.213.0.0/24"
LAB_PREFIX = 24
BRIDGE_ADDRESS = "10.213.0.1"
MIRROR_PORT = 8765
BASE_INCLUDE = ("systemd", "systemd-sysv", "openssh-server", "python3", "dbus", "iproute2")
# Left out of the base on purpose so provisioning does real work; served by the mirror instead.
# What provisioning installs, sudo for non-root SSH users, and python3-apt for Ansible's apt module
# (the benchmark against an Ansible playbook provisions the same hosts).
MIRROR_PACKAGES = ("libpython3.{minor}", "python3-numpy", "rsync", "sudo", "python3-apt")
MIRROR_LIST = "tritonfleet-packages.txt"  # what a cached mirror was resolved for
VETH_PREFIX = "tfv-"
READY_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 20.0

MIRRORS_DIR = CACHE_DIR / "lab" / "mirrors"
SSH_DIR = LAB_STATE_DIR / "ssh"
LAB_KEY = SSH_DIR / "id_ed25519"
KNOWN_HOSTS = SSH_DIR / "known_hosts"
HOSTS_DIR = LAB_STATE_DIR / "hosts"
MIRROR_PID_FILE = LAB_STATE_DIR / "mirror.pid"
MIRROR_LOG = LAB_STATE_DIR / "mirror.log"
NSPAWN_PROPAGATE = Path("/run/systemd/nspawn/propagate")


@dataclass(frozen=True)
class LabHost:
    name: str      # also hostname, machine name and netns name
    address: str   # e.g. "10.213.0.11"
    suite: str = DEFAULT_SUITE  # its Debian release (SUITES)


def base_dir(suite: str) -> Path:
    return CACHE_DIR / "lab" / f"base-{suite}"


def mirror_dir(suite: str) -> Path:
    return MIRRORS_DIR / suite


def mirror_source_line(suite: str) -> str:
    """The apt source of a host of this release: the lab's mirror for it, on the bridge address."""
    return f"deb [trusted=yes] http://{BRIDGE_ADDRESS}:{MIRROR_PORT}/{suite}/ ./"


def mirror_packages(suite: str) -> tuple[str, ...]:
    minor = SUITES[suite].split(".")[1]
    return tuple(p.format(minor=minor) for p in MIRROR_PACKAGES)


def check_suite(name: str, suite: str) -> None:
    if suite not in SUITES:
        raise TritonfleetError(f"lab host {name}: lab_suite {suite!r} is not a release the lab builds",
                               hint=f"use one of {', '.join(SUITES)}")


@dataclass
class HostState:
    name: str
    address: str
    state: str     # "running" | "degraded" | "starting" | "stopped" | "failed: <why>"
    pid: int | None
    console_log: Path
    suite: str = DEFAULT_SUITE


# ----------------------------------------------------------------------------------------------
# small helpers

def _run(args: list[str], *, check: bool = True, timeout: float = 600,
         **kw) -> subprocess.CompletedProcess:
    """Run a command (argument list, never a shell) and raise a readable error if it fails."""
    try:
        proc = subprocess.run(args, capture_output=True, text=True, timeout=timeout, **kw)
    except subprocess.TimeoutExpired:
        raise TritonfleetError(f"lab: `{' '.join(args)}` did not finish within {timeout:.0f} s")
    if check and proc.returncode != 0:
        raise TritonfleetError(
            f"lab: `{' '.join(args)}` failed (exit {proc.returncode}): "
            f"{(proc.stderr or proc.stdout).strip()[-2000:]}")
    return proc


def _host_dir(name: str) -> Path:
    return HOSTS_DIR / name


def _upper(name: str) -> Path:
    return _host_dir(name) / "upper"


def _console(name: str) -> Path:
    return _host_dir(name) / "console.log"


def _veth(name: str) -> str:
    """Host-side veth name; Linux caps interface names at 15 characters."""
    veth = VETH_PREFIX + name
    if len(veth) > 15:
        raise TritonfleetError(f"lab: host name {name!r} too long for an interface name ({veth!r} > 15 chars)",
                               hint="use lab host names of at most 11 characters")
    return veth


def _read_record(name: str) -> dict | None:
    try:
        return json.loads((_host_dir(name) / "host.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def _write_record(host_name: str, **fields) -> dict:
    rec = _read_record(host_name) or {}
    rec.update(fields)
    path = _host_dir(host_name) / "host.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(rec, indent=1))
    tmp.replace(path)
    return rec


def _cmdline(pid: int) -> list[str]:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return []
    return [a.decode(errors="replace") for a in raw.split(b"\0") if a]


def _nspawn_alive(pid: int | None, name: str) -> bool:
    """True if pid is still OUR nspawn for this host (guards against pid reuse)."""
    if not pid:
        return False
    args = _cmdline(pid)
    return bool(args) and args[0].endswith("systemd-nspawn") and f"--machine={name}" in args


def _children(pid: int) -> list[int]:
    """Direct children of pid (the container's init is a child of its nspawn process)."""
    kids = []
    for stat in glob.glob("/proc/[0-9]*/stat"):
        try:
            text = Path(stat).read_text()
        except OSError:
            continue
        # pid (comm) state ppid ...; comm may hold spaces/parens, so split after the last ')'
        fields = text[text.rfind(")") + 2:].split()
        if len(fields) > 1 and int(fields[1]) == pid:
            kids.append(int(stat.split("/")[2]))
    return kids


def _wait_gone(pids: list[int], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not any(Path(f"/proc/{p}").exists() and _state_of(p) != "Z" for p in pids):
            return True
        time.sleep(0.2)
    return False


def _state_of(pid: int) -> str:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
        return text[text.rfind(")") + 2:].split()[0]
    except (OSError, IndexError):
        return ""


def _kill_nspawn(pid: int, timeout: float = STOP_TIMEOUT_S) -> None:
    """Power a container off: SIGTERM to nspawn means an orderly shutdown of its systemd.

    If it does not finish in time, SIGKILL the container's init first (that kills its whole pid
    namespace; killing only nspawn would orphan it), then nspawn itself.
    """
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    if _wait_gone([pid], timeout):
        return
    kids = _children(pid)
    for p in kids + [pid]:
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass
    if not _wait_gone(kids + [pid], 10):
        raise TritonfleetError(f"lab: nspawn pid {pid} (and its container) survived SIGKILL for 10 s")


def _ssh_args(address: str, *command: str, connect_timeout: int = 5) -> list[str]:
    return ["ssh", "-i", str(LAB_KEY), "-o", f"UserKnownHostsFile={KNOWN_HOSTS}",
            "-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes",
            "-o", f"ConnectTimeout={connect_timeout}", "-o", "LogLevel=ERROR",
            f"root@{address}", *command]


def _probe(address: str) -> tuple[str | None, str]:
    """(`systemctl is-system-running` output or None if ssh failed, ssh error text)."""
    try:
        proc = subprocess.run(_ssh_args(address, "systemctl", "is-system-running", connect_timeout=3),
                              capture_output=True, text=True, timeout=15, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        return None, "ssh timed out"
    if proc.returncode == 255:
        return None, proc.stderr.strip()
    return proc.stdout.strip() or "unknown", ""


def _tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no console log)"
    text = re.sub(r"\x1b\[[0-9;]*m", "", text).replace("\r", "")
    return "\n".join([line for line in text.splitlines() if line.strip()][-lines:])


# ----------------------------------------------------------------------------------------------
# base image + package mirror

def debian_mirror() -> str:
    """The Debian archive this machine already uses, read at run time (no registry host in the repo).

    TRITONFLEET_DEBIAN_MIRROR overrides; else deb822 `URIs:` from /etc/apt/sources.list.d/*.sources,
    else `deb URI SUITE` lines of /etc/apt/sources.list -- skipping the security archive.
    """
    env = os.environ.get("TRITONFLEET_DEBIAN_MIRROR")
    if env:
        return env
    candidates: list[tuple[str, list[str]]] = []   # (uri, suites)
    for path in sorted(glob.glob("/etc/apt/sources.list.d/*.sources")):
        try:
            text = Path(path).read_text()
        except OSError:
            continue
        for stanza in re.split(r"\n\s*\n", text):
            fields: dict[str, str] = {}
            for line in stanza.splitlines():
                if line.startswith("#") or ":" not in line or line[:1].isspace():
                    continue
                key, _, value = line.partition(":")
                fields[key.strip().lower()] = value.strip()
            if "deb" not in fields.get("types", "").split() or fields.get("enabled", "yes") == "no":
                continue
            for uri in fields.get("uris", "").split():
                candidates.append((uri, fields.get("suites", "").split()))
    for path in ["/etc/apt/sources.list"] + sorted(glob.glob("/etc/apt/sources.list.d/*.list")):
        try:
            lines = Path(path).read_text().splitlines()
        except OSError:
            continue
        for line in lines:
            words = re.sub(r"\[.*?\]", "", line.split("#", 1)[0]).split()
            if len(words) >= 3 and words[0] == "deb":
                candidates.append((words[1], [words[2]]))
    good = [(u, s) for u, s in candidates if "security" not in u and not any("security" in x for x in s)]
    for uri, suites in good:
        if DEFAULT_SUITE in suites:
            return uri
    if good:
        return good[0][0]
    raise TritonfleetError("lab: cannot find a Debian archive in this machine's apt sources",
                           file="/etc/apt/sources.list.d/",
                           hint="set TRITONFLEET_DEBIAN_MIRROR to a Debian archive URL")


def _mounts_under(path: Path) -> list[str]:
    prefix = str(path).rstrip("/") + "/"
    out = []
    for line in Path("/proc/mounts").read_text().splitlines():
        target = line.split()[1].replace("\\040", " ")
        if target.startswith(prefix) or target == str(path):
            out.append(target)
    return sorted(out, key=len, reverse=True)


def _safe_rmtree(path: Path) -> None:
    """rmtree that first unmounts anything under path (a crashed build may have left /proc mounted)."""
    for target in _mounts_under(path):
        _run(["umount", "-l", target], check=False)
    shutil.rmtree(path, ignore_errors=True)


def _build_mirror(suite: str, base: Path, dest: Path, progress: Callable[[str], None]) -> None:
    """Resolve the release's mirror packages inside its base (so versions match it exactly) and index them in dest.

    Leaves the base clean: no downloaded lists or archives, apt sources pointing at the lab mirror.
    """
    packages = mirror_packages(suite)
    progress(f"lab: resolving {' '.join(packages)} inside the {suite} base image")
    sources = base / "etc/apt/sources.list"
    resolv = base / "etc/resolv.conf"
    for deb822 in (base / "etc/apt/sources.list.d").glob("*.sources"):
        deb822.unlink()   # newer debootstraps may write one; the base's only source is the line below
    sources.write_text(f"deb {debian_mirror()} {suite} main\n")
    resolv.unlink(missing_ok=True)
    shutil.copyfile("/etc/resolv.conf", resolv)
    (base / "proc").mkdir(exist_ok=True)
    _run(["mount", "-t", "proc", "proc", str(base / "proc")])
    try:
        env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "DEBIAN_FRONTEND": "noninteractive", "LC_ALL": "C"}
        _run(["chroot", str(base), "apt-get", "update"], env=env, timeout=600)
        _run(["chroot", str(base), "apt-get", "install", "--download-only", "-y", *packages],
             env=env, timeout=900)
        dest.mkdir(parents=True, exist_ok=True)
        debs = sorted((base / "var/cache/apt/archives").glob("*.deb"))
        if not debs:
            raise TritonfleetError("lab: apt-get --download-only fetched no packages for the mirror")
        for deb in debs:
            shutil.move(str(deb), dest / deb.name)
        _run(["chroot", str(base), "apt-get", "clean"], env=env)
    finally:
        _run(["umount", str(base / "proc")], check=False)
        for lst in (base / "var/lib/apt/lists").glob("*"):
            if lst.is_file():
                lst.unlink()
        sources.write_text(mirror_source_line(suite) + "\n")
        resolv.unlink(missing_ok=True)
        resolv.write_text("# lab hosts are offline; the package mirror is addressed by IP\n")
    scan = _run(["dpkg-scanpackages", "--multiversion", ".", "/dev/null"], cwd=dest)
    with gzip.open(dest / "Packages.gz", "wb", compresslevel=9) as fh:
        fh.write(scan.stdout.encode())
    (dest / MIRROR_LIST).write_text("\n".join(packages) + "\n")
    progress(f"lab: mirror has {len(list(dest.glob('*.deb')))} packages")


def _mirror_current(suite: str) -> bool:
    listed = mirror_dir(suite) / MIRROR_LIST
    return (mirror_dir(suite) / "Packages.gz").is_file() and listed.is_file() and \
        listed.read_text().split() == list(mirror_packages(suite))


def ensure_base(suite: str = DEFAULT_SUITE, progress: Callable[[str], None] = print) -> Path:
    """Build a release's base image and its package mirror once; reuse them after that.

    Both are built in temporary directories and renamed into place, so an interrupted build never
    leaves a half image that later runs would trust.
    """
    if os.geteuid() != 0:
        raise TritonfleetError("lab: needs root (debootstrap, network namespaces, systemd-nspawn)")
    labcache = CACHE_DIR / "lab"
    labcache.mkdir(parents=True, exist_ok=True)
    for stale in labcache.glob(".*.tmp-*"):
        pid = stale.name.rsplit("-", 1)[-1]
        if not (pid.isdigit() and Path(f"/proc/{pid}").exists()):
            _safe_rmtree(stale)
    base, mirror = base_dir(suite), mirror_dir(suite)
    if not base.is_dir():
        tmp = labcache / f".base-{suite}.tmp-{os.getpid()}"
        _safe_rmtree(tmp)
        progress(f"lab: building base image {base} with debootstrap (about a minute)")
        t0 = time.monotonic()
        try:
            _run(["debootstrap", "--variant=minbase", f"--include={','.join(BASE_INCLUDE)}",
                  suite, str(tmp), debian_mirror()], timeout=1800)
            # Every host gets its own keys and machine-id in its overlay; the base must not carry any.
            for key in (tmp / "etc/ssh").glob("ssh_host_*"):
                key.unlink()
            (tmp / "etc/machine-id").write_text("")
            (tmp / "etc/hostname").write_text("localhost\n")
            mtmp = labcache / f".mirror-{suite}.tmp-{os.getpid()}"
            _safe_rmtree(mtmp)
            _build_mirror(suite, tmp, mtmp, progress)
            if mirror.exists():
                _safe_rmtree(mirror)
            mirror.parent.mkdir(parents=True, exist_ok=True)
            mtmp.rename(mirror)
            tmp.rename(base)
        except BaseException:
            _safe_rmtree(tmp)
            _safe_rmtree(labcache / f".mirror-{suite}.tmp-{os.getpid()}")
            raise
        progress(f"lab: base image built in {time.monotonic() - t0:.0f} s")
    elif not _mirror_current(suite):
        if any(_nspawn_alive((_read_record(d.name) or {}).get("pid"), d.name)
               and (_read_record(d.name) or {}).get("suite", DEFAULT_SUITE) == suite
               for d in HOSTS_DIR.glob("*") if d.is_dir()):
            progress("lab: the package mirror lacks packages added since it was built; it is rebuilt at the "
                     "next lab.up with no host running (the base image cannot change under running hosts)")
            return base
        mtmp = labcache / f".mirror-{suite}.tmp-{os.getpid()}"
        _safe_rmtree(mtmp)
        try:
            _build_mirror(suite, base, mtmp, progress)
            _safe_rmtree(mirror)
            mirror.parent.mkdir(parents=True, exist_ok=True)
            mtmp.rename(mirror)
        except BaseException:
            _safe_rmtree(mtmp)
            raise
    return base


# ----------------------------------------------------------------------------------------------
# network, mirror server, keys

def _link_exists(name: str, netns: str | None = None) -> bool:
    args = ["ip"] + (["-n", netns] if netns else []) + ["link", "show", name]
    return _run(args, check=False).returncode == 0


def _netns_list() -> list[str]:
    out = _run(["ip", "netns", "list"], check=False).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def _ensure_bridge() -> None:
    if not _link_exists(LAB_BRIDGE):
        _run(["ip", "link", "add", LAB_BRIDGE, "type", "bridge"])
    addrs = _run(["ip", "-o", "-4", "addr", "show", "dev", LAB_BRIDGE]).stdout
    if f" {BRIDGE_ADDRESS}/" not in addrs:
        _run(["ip", "addr", "add", f"{BRIDGE_ADDRESS}/{LAB_PREFIX}", "dev", LAB_BRIDGE])
    _run(["ip", "link", "set", LAB_BRIDGE, "up"])


def _ensure_netns(host: LabHost) -> None:
    """netns NAME with eth0=ADDRESS/24 and lo up, its veth peer in the bridge. No default route."""
    veth = _veth(host.name)
    if host.name in _netns_list() and _link_exists(veth):
        addrs = _run(["ip", "-n", host.name, "-o", "-4", "addr", "show", "dev", "eth0"], check=False).stdout
        if f" {host.address}/" in addrs:
            return
    if host.name in _netns_list():
        _run(["ip", "netns", "del", host.name])
    if _link_exists(veth):
        _run(["ip", "link", "del", veth])
    _run(["ip", "netns", "add", host.name])
    _run(["ip", "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", host.name])
    _run(["ip", "link", "set", veth, "master", LAB_BRIDGE, "up"])
    _run(["ip", "-n", host.name, "addr", "add", f"{host.address}/{LAB_PREFIX}", "dev", "eth0"])
    _run(["ip", "-n", host.name, "link", "set", "eth0", "up"])
    _run(["ip", "-n", host.name, "link", "set", "lo", "up"])


def _mirror_pid() -> int | None:
    try:
        pid = int(MIRROR_PID_FILE.read_text())
    except (OSError, ValueError):
        return None
    args = _cmdline(pid)
    return pid if "http.server" in args and str(MIRROR_PORT) in args else None


def _ensure_mirror_server() -> None:
    """Serve every release's mirror (MIRRORS_DIR/SUITE) on the bridge address only (reachable from the hosts,
    not from outside)."""
    if _mirror_pid():
        return
    LAB_STATE_DIR.mkdir(parents=True, exist_ok=True)
    with open(MIRROR_LOG, "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "http.server", str(MIRROR_PORT), "--bind", BRIDGE_ADDRESS,
             "--directory", str(MIRRORS_DIR)],
            stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
    MIRROR_PID_FILE.write_text(str(proc.pid))
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise TritonfleetError(f"lab: mirror server exited ({proc.returncode}); see {MIRROR_LOG}")
        try:
            with socket.create_connection((BRIDGE_ADDRESS, MIRROR_PORT), timeout=1):
                return
        except OSError:
            time.sleep(0.2)
    raise TritonfleetError(f"lab: mirror server did not listen on {BRIDGE_ADDRESS}:{MIRROR_PORT} within 15 s; "
                           f"see {MIRROR_LOG}")


def _ensure_lab_key() -> None:
    """One ed25519 key per lab (mode 600, under LAB_STATE_DIR, never in the repository)."""
    SSH_DIR.mkdir(parents=True, exist_ok=True)
    os.chmod(SSH_DIR, 0o700)
    if not LAB_KEY.exists():
        _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "tritonfleet-lab", "-f", str(LAB_KEY)])
    os.chmod(LAB_KEY, 0o600)
    KNOWN_HOSTS.touch()


def _write_known_hosts() -> None:
    """known_hosts = every recorded host's public host keys, `ADDRESS TYPE BASE64` (OpenSSH + paramiko)."""
    lines = []
    for name in _known_names():
        rec = _read_record(name)
        if not rec:
            continue
        for pub in sorted((_host_dir(name) / "hostkeys").glob("ssh_host_*_key.pub")):
            ktype, kdata = pub.read_text().split()[:2]
            lines.append(f"{rec['address']} {ktype} {kdata}")
    tmp = KNOWN_HOSTS.with_suffix(".tmp")
    tmp.write_text("".join(line + "\n" for line in lines))
    tmp.replace(KNOWN_HOSTS)


def _known_names() -> list[str]:
    if not HOSTS_DIR.is_dir():
        return []
    return sorted(p.name for p in HOSTS_DIR.iterdir() if (p / "host.json").is_file())


# ----------------------------------------------------------------------------------------------
# hosts

def _prepare_upper(host: LabHost) -> None:
    """Write what makes this host itself into its (empty or existing) overlay upper dir.

    Host keys are generated once per host (kept in hostkeys/ beside the upper dir) so a reset host
    keeps the identity recorded in known_hosts.
    """
    hdir = _host_dir(host.name)
    keys = hdir / "hostkeys"
    if not (keys / "ssh_host_ed25519_key").exists():
        scratch = hdir / "keygen"
        shutil.rmtree(scratch, ignore_errors=True)
        (scratch / "etc/ssh").mkdir(parents=True)
        _run(["ssh-keygen", "-A", "-f", str(scratch)])
        shutil.rmtree(keys, ignore_errors=True)
        (scratch / "etc/ssh").rename(keys)
        shutil.rmtree(scratch, ignore_errors=True)
    rec = _read_record(host.name) or {}
    machine_id = rec.get("machine_id") or uuid.uuid4().hex
    _write_record(host.name, name=host.name, address=host.address, suite=host.suite, machine_id=machine_id)

    up = _upper(host.name)
    for d, mode in (("etc", 0o755), ("etc/ssh", 0o755), ("etc/apt", 0o755), ("root", 0o700),
                    ("root/.ssh", 0o700), ("opt", 0o755)):
        (up / d).mkdir(parents=True, exist_ok=True)
        os.chmod(up / d, mode)
    for key in keys.glob("ssh_host_*"):
        shutil.copy2(key, up / "etc/ssh" / key.name)
        os.chmod(up / "etc/ssh" / key.name, 0o644 if key.name.endswith(".pub") else 0o600)
    auth = up / "root/.ssh/authorized_keys"
    auth.write_text(LAB_KEY.with_suffix(".pub").read_text())
    os.chmod(auth, 0o600)
    (up / "etc/hostname").write_text(host.name + "\n")
    (up / "etc/hosts").write_text(
        f"127.0.0.1\tlocalhost\n127.0.1.1\t{host.name}\n{host.address}\t{host.name}\n"
        "::1\tlocalhost ip6-localhost ip6-loopback\n")
    (up / "etc/machine-id").write_text(machine_id + "\n")
    (up / "etc/apt/sources.list").write_text(mirror_source_line(host.suite) + "\n")
    # The base has no sources.list.d entries; an empty dir in the upper layer keeps it that way.
    (up / "etc/apt/sources.list.d").mkdir(exist_ok=True)


# nspawn processes this process started, by host name: waitpid tells whether a booting host is alive.
_BOOTED: dict[str, subprocess.Popen] = {}


def _start(host: LabHost) -> int:
    """Boot the host detached: nspawn over base + this host's overlay, in the host's netns."""
    console = _console(host.name)
    with open(console, "ab") as log:
        log.write(f"\n==== lab: boot {host.name} at {time.strftime('%Y-%m-%d %H:%M:%S')} ====\n".encode())
        log.flush()
        proc = subprocess.Popen(
            ["systemd-nspawn", "--quiet", f"--directory={base_dir(host.suite)}",
             f"--overlay={base_dir(host.suite)}:{_upper(host.name)}:/", "--boot", "--register=no", "--keep-unit",
             "--link-journal=no", "--resolv-conf=off", "--timezone=off",
             f"--network-namespace-path=/run/netns/{host.name}",
             f"--machine={host.name}", f"--hostname={host.name}"],
            stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
    _BOOTED[host.name] = proc
    _write_record(host.name, pid=proc.pid, state="starting", started=time.time())
    return proc.pid


def _booting_alive(name: str, pid: int) -> tuple[bool, str]:
    """(alive, how it ended) for a host being booted.

    For an nspawn this process started, waitpid decides: /proc/PID/cmdline reads empty for a moment
    after exec (the kernel releases a vfork parent before it sets the new argv), and a loaded machine
    was seen to hit that window and take a booting host for a dead one. Another process's nspawn is
    judged by its command line.
    """
    proc = _BOOTED.get(name)
    if proc is None or proc.pid != pid:
        return _nspawn_alive(pid, name), ""
    code = proc.poll()
    if code is None:
        return True, ""
    return False, f"killed by {signal.Signals(-code).name}" if code < 0 else f"exit status {code}"


def _wait_ready(host: LabHost, pid: int, timeout: float = READY_TIMEOUT_S) -> HostState:
    """Until the host answers strict-host-key SSH with the lab key and systemd is running/degraded."""
    deadline = time.monotonic() + timeout
    why = "no answer yet"
    while time.monotonic() < deadline:
        alive, how = _booting_alive(host.name, pid)
        if not alive:
            _fail(host, f"systemd-nspawn (pid {pid}) exited during boot" + (f" ({how})" if how else ""))
        state, err = _probe(host.address)
        if state in ("running", "degraded"):
            _write_record(host.name, state=state)
            return HostState(host.name, host.address, state, pid, _console(host.name), host.suite)
        why = f"systemd says {state!r}" if state else f"ssh: {err or 'no answer'}"
        time.sleep(1)
    _fail(host, f"not ready after {timeout:.0f} s (last: {why})")


def _fail(host: LabHost, why: str):
    _write_record(host.name, state=f"failed: {why}")
    console = _console(host.name)
    raise TritonfleetError(f"lab host {host.name} ({host.address}): {why}\n"
                           f"  console log: {console}\n  last lines:\n{_tail(console)}")


def _host_of(name: str) -> LabHost:
    rec = _read_record(name)
    if not rec:
        raise TritonfleetError(f"lab: no lab host named {name!r}", file=str(HOSTS_DIR),
                               hint="bring it up first with lab.up")
    return LabHost(rec["name"], rec["address"], rec.get("suite", DEFAULT_SUITE))


# Beside the state folder, not in it: lab.down removes that folder while holding the lock.
LAB_LOCK = LAB_STATE_DIR.parent / "lab.lock"


@contextmanager
def exclusive(what: str, wait_s: float = 0.0):
    """Hold the lab for one run (a test session, `invoke lab.up`, the benchmark).

    Two runs on one machine share one bridge, fixed netns names and one state folder: one's teardown would
    take the other's hosts away mid-test. An flock dies with its process, so a killed run never leaves a stale
    lock. Waits up to wait_s, then names the holder. Taken by entry points only: the lab functions inside a
    run do not take it again.
    """
    LAB_LOCK.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(LAB_LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        deadline = time.monotonic() + wait_s
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    holder = os.pread(fd, 300, 0).decode(errors="replace").strip() or "another run"
                    raise TritonfleetError(f"lab: in use by {holder}", file=str(LAB_LOCK),
                                           hint="wait for that run to finish (the lock goes with its process)")
                time.sleep(1)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} ({what}) since {time.strftime('%H:%M:%S')}\n".encode(), 0)
        yield
    finally:
        os.close(fd)


def up(hosts: list[LabHost], progress: Callable[[str], None] = print) -> list[HostState]:
    """Bring these hosts up (additive, idempotent): hosts already up and answering are left alone.

    Missing hosts are created and booted in parallel, then each is waited for (bounded) until
    strict SSH works and systemd says running/degraded. Raises TritonfleetError naming the host,
    the reason and its console log.
    """
    names = [h.name for h in hosts]
    if len(set(names)) != len(names) or len({h.address for h in hosts}) != len(hosts):
        raise TritonfleetError(f"lab: duplicate host names or addresses in {hosts}")
    for h in hosts:
        check_suite(h.name, h.suite)
        rec = _read_record(h.name)
        if rec and (rec.get("address"), rec.get("suite", DEFAULT_SUITE)) != (h.address, h.suite):
            was = f"{rec.get('address')} ({rec.get('suite', DEFAULT_SUITE)})"
            raise TritonfleetError(f"lab host {h.name} exists as {was}, not {h.address} ({h.suite})",
                                   hint="run lab.down first")
    for suite in sorted({h.suite for h in hosts}, key=list(SUITES).index):
        ensure_base(suite, progress)
    _ensure_lab_key()
    _ensure_bridge()
    _ensure_mirror_server()

    states: dict[str, HostState] = {}
    booting: list[tuple[LabHost, int]] = []
    for h in hosts:
        rec = _read_record(h.name) or {}
        pid = rec.get("pid")
        if _nspawn_alive(pid, h.name):
            state, _ = _probe(h.address)
            if state in ("running", "degraded"):
                states[h.name] = HostState(h.name, h.address, state, pid, _console(h.name), h.suite)
                continue
            booting.append((h, pid))           # alive but still booting: just wait for it
            continue
        progress(f"lab: starting {h.name} ({h.address})")
        _host_dir(h.name).mkdir(parents=True, exist_ok=True)
        _ensure_netns(h)
        _prepare_upper(h)
        booting.append((h, None))
    _write_known_hosts()
    if booting:
        with concurrent.futures.ThreadPoolExecutor(max_workers=len(booting)) as pool:
            futures = {h.name: pool.submit(_wait_ready, h, pid or _start(h)) for h, pid in booting}
            errors = []
            for name, fut in futures.items():
                try:
                    states[name] = fut.result()
                    progress(f"lab: {name} is {states[name].state}")
                except TritonfleetError as exc:
                    errors.append(exc)
            if errors:
                if len(errors) == 1:
                    raise errors[0]
                raise TritonfleetError("\n".join(str(e) for e in errors))
    return [states[h.name] for h in hosts]


def status() -> list[HostState]:
    """Every host the lab knows about (from its state dir), with a live check of each."""
    out = []
    for name in _known_names():
        rec = _read_record(name) or {}
        pid = rec.get("pid")
        if not _nspawn_alive(pid, name):
            recorded = rec.get("state", "")
            state = recorded if recorded.startswith("failed") else "stopped"
            out.append(HostState(name, rec.get("address", "?"), state, None, _console(name),
                                 rec.get("suite", DEFAULT_SUITE)))
            continue
        state, _ = _probe(rec["address"])
        out.append(HostState(name, rec["address"], state if state in ("running", "degraded") else "starting",
                             pid, _console(name), rec.get("suite", DEFAULT_SUITE)))
    return out


def stop_host(name: str) -> None:
    """Power one host off ("the host goes away"): SIGTERM its nspawn, bounded wait, then SIGKILL."""
    host = _host_of(name)
    pid = (_read_record(name) or {}).get("pid")
    if _nspawn_alive(pid, name):
        _kill_nspawn(pid)
    _write_record(host.name, pid=None, state="stopped")
    shutil.rmtree(NSPAWN_PROPAGATE / name, ignore_errors=True)


def start_host(name: str) -> HostState:
    """Boot a stopped host again on its kept overlay (its state survives) and wait until ready."""
    host = _host_of(name)
    pid = (_read_record(name) or {}).get("pid")
    if not _nspawn_alive(pid, name):
        _ensure_bridge()
        _ensure_mirror_server()
        _ensure_netns(host)
        _prepare_upper(host)
        pid = _start(host)
    return _wait_ready(host, pid)


def reset_host(name: str) -> HostState:
    """A clean host again: stop it, wipe its overlay upper dir, rewrite its (same) keys, boot, wait."""
    stop_host(name)
    hdir = _host_dir(name)
    shutil.rmtree(_upper(name), ignore_errors=True)
    for work in hdir.glob(".#*"):                 # overlayfs work dirs nspawn made beside the upper
        shutil.rmtree(work, ignore_errors=True)
    return start_host(name)


def down(progress: Callable[[str], None] = print) -> None:
    """Remove everything the lab made: hosts, netns, veths, bridge, nspawn processes, overlays,
    mirror server, lab ssh material. Keeps the cached base image and mirror under CACHE_DIR."""
    names = set(_known_names())
    if HOSTS_DIR.is_dir():
        names |= {p.name for p in HOSTS_DIR.iterdir() if p.is_dir()}
    pids = []
    for name in sorted(names):
        pid = (_read_record(name) or {}).get("pid")
        if _nspawn_alive(pid, name):
            pids.append((name, pid))
    # nspawn processes of this lab whose record was lost: identified by their overlay in our state dir
    for cmd in glob.glob("/proc/[0-9]*/cmdline"):
        pid = int(cmd.split("/")[2])
        args = _cmdline(pid)
        if args and args[0].endswith("systemd-nspawn") and any(
                a.startswith("--overlay=") and f":{HOSTS_DIR}/" in a for a in args):
            if pid not in [p for _, p in pids]:
                m = [a.split("=", 1)[1] for a in args if a.startswith("--machine=")]
                pids.append((m[0] if m else "?", pid))
    for name, pid in pids:
        progress(f"lab: stopping {name} (pid {pid})")
    # orderly shutdown in parallel, then the bounded kill path per host
    for _, pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    _wait_gone([p for _, p in pids], STOP_TIMEOUT_S)
    for name, pid in pids:
        if Path(f"/proc/{pid}").exists():
            _kill_nspawn(pid, timeout=1)
        names.add(name)
    mpid = _mirror_pid()
    if mpid:
        progress(f"lab: stopping mirror server (pid {mpid})")
        os.kill(mpid, signal.SIGTERM)
        if not _wait_gone([mpid], 5):
            os.kill(mpid, signal.SIGKILL)
            _wait_gone([mpid], 5)
    present = _netns_list()
    for name in sorted(names):
        if name in present:
            _run(["ip", "netns", "del", name], check=False)
        veth = VETH_PREFIX + name
        if len(veth) <= 15 and _link_exists(veth):
            _run(["ip", "link", "del", veth], check=False)
        shutil.rmtree(NSPAWN_PROPAGATE / name, ignore_errors=True)
    # any leftover veth of ours (e.g. a host whose state dir was lost)
    for line in _run(["ip", "-o", "link", "show"], check=False).stdout.splitlines():
        m = re.match(rf"\d+: ({re.escape(VETH_PREFIX)}[^:@]+)[@:]", line)
        if m:
            _run(["ip", "link", "del", m.group(1)], check=False)
    if _link_exists(LAB_BRIDGE):
        _run(["ip", "link", "del", LAB_BRIDGE], check=False)
    if LAB_STATE_DIR.exists():
        _safe_rmtree(LAB_STATE_DIR)
    progress("lab: down")
