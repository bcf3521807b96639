"""One SSH connection per host: Fabric for commands, OpenSSH (same settings) for rsync and streams.

Host keys are always verified against the inventory's known_hosts; an unknown or changed key stops the
run for that host. Trust on first use is an explicit choice: `tritonfleet_host_key_policy: accept-new`
(OpenSSH's StrictHostKeyChecking=accept-new) adds a NEW host's key to the known_hosts file and still refuses
a CHANGED one, for paramiko and OpenSSH alike. OpenSSH shares one master connection per host
(ControlMaster) so transfers do not pay a handshake each.

Privilege escalation (a non-root SSH user), Ansible's vars:
  ansible_become: true                 run every command through sudo
  ansible_become_user: root            (default) the user sudo runs commands as
  ansible_become_password              the sudo password (better: not in a file, see the next var)
  tritonfleet_become_password_env: X   read the password from environment variable X
If none of them gives a password and sudo asks for one, it is prompted for (getpass) when stdin is a
terminal, otherwise the host fails with what to set. The password goes to sudo on stdin (`sudo -S -p ''`,
before the command's own stdin), never on a command line, and is registered as a secret so no output
shows it. Commands run as `sudo -u USER -- sh -c CMD`. rsync runs the remote rsync as `sudo -n rsync`:
with a password-only sudo rule the SSH user also needs a NOPASSWD rule for rsync
(`deploy ALL=(root) NOPASSWD: /usr/bin/rsync`), since rsync's stdin is its protocol stream.
"""

from __future__ import annotations

import getpass
import io
import base64
import os
import re
import shlex
import socket
import subprocess
import time
import sys
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

import fabric
import paramiko

from tritonfleet import secrets
from tritonfleet.errors import TritonfleetError
from tritonfleet.engine.inventory import Host

DEAD_LINK_S = 30  # a connection with nothing acknowledged for this long is given up (paramiko, ssh, rsync)
_known_hosts_lock = threading.Lock()
_prompt_lock = threading.Lock()
_prompted: dict[str, str] = {}


# One line of `rsync --itemize-changes`: the 11-character change summary, then the path.
RSYNC_ITEM = re.compile(r"^(\*deleting|[<>ch.][fdLDS][.+?a-zA-Z]{9,10})\s+(.*)$")


class Unreachable(TritonfleetError):
    """The host cannot be reached over SSH (network, refused, timeout, authentication)."""


@dataclass
class CommandResult:
    command: str
    stdout: str
    stderr: str
    exited: int

    @property
    def ok(self) -> bool:
        return self.exited == 0


def host_key_policy(host: Host) -> str:
    """`strict` unless the inventory says `accept-new` (checked when the inventory was read: inventory.py)."""
    return host.vars.get("tritonfleet_host_key_policy") or "strict"


def become_password_from_vars(host: Host) -> str | None:
    """The sudo password the inventory gives (directly or via an environment variable), or None."""
    if host.vars.get("ansible_become_password") not in (None, ""):
        return str(host.vars["ansible_become_password"])
    env = host.vars.get("tritonfleet_become_password_env")
    if env:
        value = os.environ.get(str(env))
        if value is None:
            raise Unreachable(f"{host.name}: environment variable {env} (tritonfleet_become_password_env) "
                              "is not set", hint=f"export {env}=... before the run, or unset the var")
        return value
    return None


class _AcceptNewPolicy(paramiko.MissingHostKeyPolicy):
    """StrictHostKeyChecking=accept-new: a host not in known_hosts is added; a changed key still fails
    (paramiko raises BadHostKeyException for it before a policy is asked)."""

    def __init__(self, known_hosts: Path, port: int):
        self.known_hosts, self.port = known_hosts, port

    def missing_host_key(self, client, hostname, key):
        name = hostname if self.port == 22 else f"[{hostname}]:{self.port}"
        client.get_host_keys().add(name, key.get_name(), key)
        with _known_hosts_lock:
            with open(self.known_hosts, "a") as fh:
                fh.write(f"{name} {key.get_name()} {key.get_base64()}\n")


class HostConnection:
    def __init__(self, host: Host, connect_timeout: int = 10):
        self.host = host
        self.connect_timeout = connect_timeout
        self.key_policy = host_key_policy(host)
        known_hosts = Path(host.known_hosts_file)
        if not known_hosts.is_file():
            if self.key_policy == "accept-new" and known_hosts.parent.is_dir():
                known_hosts.touch(mode=0o600)
            else:
                raise Unreachable(f"{host.name}: known_hosts file {known_hosts} does not exist",
                                  hint="add the host's key to it after checking its fingerprint "
                                       "(for lab hosts: `invoke lab.up` writes it)")
        if host.key_file and not Path(host.key_file).is_file():
            raise Unreachable(f"{host.name}: private key {host.key_file} does not exist",
                              hint="fix ansible_ssh_private_key_file in the inventory")
        self.become = host.vars.get("ansible_become") is True  # read as Ansible reads booleans: inventory.py
        self.become_user = str(host.vars.get("ansible_become_user") or "root")
        self._password = become_password_from_vars(host) if self.become else None
        if self._password:
            secrets.register([self._password])  # never shown, whatever message it ends up in
        self._sudo_mode: str | None = None  # "nopasswd" | "password", found on first connect
        connect_kwargs = {"look_for_keys": not host.key_file, "allow_agent": not host.key_file}
        if host.key_file:
            connect_kwargs["key_filename"] = host.key_file
        self._conn = fabric.Connection(host.address, user=host.user, port=host.port,
                                       connect_timeout=connect_timeout, connect_kwargs=connect_kwargs)
        self._conn.client.load_host_keys(str(known_hosts))
        if self.key_policy == "accept-new":
            self._conn.client.set_missing_host_key_policy(_AcceptNewPolicy(known_hosts, host.port))
        else:
            self._conn.client.set_missing_host_key_policy(paramiko.RejectPolicy())
        self._control_path = f"/tmp/tritonfleet-ssh-{os.getpid()}-{host.name[:40]}"
        self._forwards: list[subprocess.Popen] = []

    @property
    def secrets(self) -> list[str]:
        """Values no output may show (the become password once known)."""
        return [self._password] if self._password else []

    def _connect(self):
        try:
            self._conn.open()
        except paramiko.BadHostKeyException as exc:
            raise Unreachable(f"{self.host.name}: HOST KEY CHANGED for {self.host.address} "
                              f"(got {exc.key.get_name()}, known_hosts has another key)",
                              hint=f"if the host was reinstalled, verify its fingerprint and update "
                                   f"{self.host.known_hosts_file}; otherwise someone may be intercepting") from None
        except paramiko.SSHException as exc:
            if "not found in known_hosts" in str(exc):
                raise Unreachable(f"{self.host.name}: host key of {self.host.address} is not in "
                                  f"{self.host.known_hosts_file}",
                                  hint="verify the fingerprint and add it (ssh-keyscan, then compare), "
                                       "or set tritonfleet_host_key_policy: accept-new to trust "
                                       "new hosts on first use") from None
            raise Unreachable(f"{self.host.name}: SSH failed: {exc}") from None
        except (OSError, socket.timeout, EOFError) as exc:
            raise Unreachable(f"{self.host.name}: cannot reach {self.host.address}:{self.host.port}: {exc}") from None
        self._bound_dead_link()
        if self.become:
            self._probe_sudo()

    def _bound_dead_link(self) -> None:
        """A link that dies mid-command ends the command within ~30 s instead of TCP's ~15 minutes:
        keepalives keep data in flight, TCP_USER_TIMEOUT drops the socket when it stays unacknowledged."""
        transport = self._conn.client.get_transport()
        if transport is None:
            return
        transport.set_keepalive(DEAD_LINK_S // 6)
        sock = transport.sock
        if hasattr(socket, "TCP_USER_TIMEOUT") and isinstance(sock, socket.socket):
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, DEAD_LINK_S * 1000)
            except OSError:
                pass

    def _raw_run(self, command: str, timeout: int | None, in_stream) -> CommandResult:
        kwargs = {"hide": True, "warn": True, "timeout": timeout, "in_stream": in_stream}
        try:
            res = self._conn.run(command, **kwargs)
        except (OSError, EOFError, paramiko.SSHException) as exc:
            raise Unreachable(f"{self.host.name}: connection lost: {str(exc) or 'the connection was closed'}",
                              hint="check the network to the host and run again") from None
        except Exception as exc:  # invoke's CommandTimedOut
            if type(exc).__name__ == "CommandTimedOut":
                raise TritonfleetError(f"{self.host.name}: command timed out after {timeout}s: "
                                       f"{command[:120]}") from None
            raise
        transport = self._conn.client.get_transport()
        if transport is None or not transport.is_active():
            raise Unreachable(f"{self.host.name}: connection lost while running: {command[:120]}",
                              hint="check the network to the host and run again")
        return CommandResult(command, res.stdout, res.stderr, res.exited)

    def _sudo_prefix(self, mode: str | None = None) -> str:
        mode = mode or self._sudo_mode
        user = shlex.quote(self.become_user)
        if mode == "password":
            # -k: never rely on a cached timestamp, so sudo always reads the password line we send first
            return f"sudo -k -S -p '' -u {user} --"
        return f"sudo -n -u {user} --"

    def _probe_sudo(self) -> None:
        """NOPASSWD or password? Decided once per connection, with the same `sh -c` the commands use."""
        res = self._raw_run(f"sudo -k -n -u {shlex.quote(self.become_user)} -- sh -c :", 30, False)
        if res.ok:
            self._sudo_mode = "nopasswd"
            return
        err = (res.stderr or res.stdout).strip()
        if res.exited == 127 or "not found" in err:
            raise Unreachable(f"{self.host.name}: ansible_become is set but sudo is not installed on the host",
                              hint="install sudo on the host, or connect as root (ansible_user: root)")
        if "password is required" not in err:
            raise Unreachable(f"{self.host.name}: sudo refused {self.host.user}: {err[-300:]}",
                              hint=f"allow {self.host.user} to run commands as {self.become_user} in sudoers")
        if self._password is None:
            self._password = self._prompt_password()
        self._sudo_mode = "password"
        check = self._raw_run(f"{self._sudo_prefix('password')} sh -c :", 60,
                              io.StringIO(self._password + "\n"))
        if not check.ok:
            raise Unreachable(f"{self.host.name}: sudo did not accept the become password for {self.host.user} "
                              f"(exit {check.exited})",
                              hint="check ansible_become_password / tritonfleet_become_password_env")

    def _prompt_password(self) -> str:
        key = f"{self.host.user}@{self.host.address}"
        with _prompt_lock:
            if key in _prompted:
                return _prompted[key]
            if not sys.stdin or not sys.stdin.isatty():
                raise Unreachable(f"{self.host.name}: sudo asks {self.host.user} for a password and none was given",
                                  hint="set tritonfleet_become_password_env to the name of an environment "
                                       "variable that holds it, or allow NOPASSWD for this user in sudoers")
            _prompted[key] = getpass.getpass(f"sudo password for {key}: ")
            secrets.register([_prompted[key]])
            return _prompted[key]

    def run(self, command: str, *, check: bool = True, timeout: int | None = 600,
            stdin: str | None = None) -> CommandResult:
        """Run a shell command on the host: as the inventory user, or through sudo with ansible_become."""
        if not self._conn.is_connected:
            self._connect()
        wrapped = command
        in_stream = False if stdin is None else io.StringIO(stdin)
        if self.become:
            wrapped = f"{self._sudo_prefix()} sh -c {shlex.quote(command)}"
            if self._sudo_mode == "password":
                in_stream = io.StringIO(self._password + "\n" + (stdin or ""))
        res = self._raw_run(wrapped, timeout, in_stream)
        result = CommandResult(command, res.stdout, res.stderr, res.exited)
        if check and not result.ok:
            detail = (result.stderr or result.stdout).strip()[-2000:]
            raise TritonfleetError(f"{self.host.name}: command failed (exit {result.exited}): "
                                   f"{command[:200]}\n{detail}")
        return result

    def put_text(self, text: str, remote_path: str, *, mode: str = "0644", owner: str = "root",
                 group: str = "root") -> None:
        """Write a file atomically (temp file + install + rename) with its owner and mode."""
        tmp = f"{remote_path}.tritonfleet-tmp"
        # The content travels in the command (base64), not on stdin: invoke feeds stdin a byte at a time.
        payload = base64.b64encode(text.encode()).decode()
        self.run(f"echo {payload} | base64 -d > {shlex.quote(tmp)} && chmod {shlex.quote(str(mode))} "
                 f"{shlex.quote(tmp)} && chown {shlex.quote(owner)}:{shlex.quote(group)} {shlex.quote(tmp)} && "
                 f"mv -f {shlex.quote(tmp)} {shlex.quote(remote_path)}")

    def ssh_argv(self, multiplex: bool = True) -> list[str]:
        """OpenSSH with the inventory's settings, for rsync -e and streams; strict host key checking
        (accept-new only when the inventory asks for it). Our -o options come first, so they win.
        `multiplex` shares one master connection per host; a long-lived forward gets its own."""
        h = self.host
        strict = "accept-new" if self.key_policy == "accept-new" else "yes"
        shared = ["-o", "ControlMaster=auto", "-o", f"ControlPath={self._control_path}", "-o", "ControlPersist=60"]
        argv = ["ssh", "-p", str(h.port), "-o", "BatchMode=yes", "-o", f"ConnectTimeout={self.connect_timeout}",
                "-o", f"UserKnownHostsFile={h.known_hosts_file}", "-o", f"StrictHostKeyChecking={strict}",
                *(shared if multiplex else ["-o", "ControlMaster=no", "-o", "ControlPath=none"]),
                "-o", "ServerAliveInterval=5", "-o", "ServerAliveCountMax=3"]
        if h.key_file:
            argv += ["-i", h.key_file, "-o", "IdentitiesOnly=yes"]
        return argv + h.ssh_args

    @property
    def target(self) -> str:
        return f"{self.host.user}@{self.host.address}"

    def _remote(self, command: str) -> str:
        """`command` as the remote shell should run it (through sudo with ansible_become)."""
        if not self.become:
            return command
        if self._sudo_mode is None:
            self.run(":")  # connects and probes sudo
        return f"{self._sudo_prefix()} sh -c {shlex.quote(command)}"

    def stream_file(self, local_path: Path, remote_command: str, timeout: int = 900) -> None:
        """Send a local file to a remote command's stdin over OpenSSH (bulk data; paramiko is slower)."""
        remote = self._remote(remote_command)
        with tempfile.TemporaryFile() as err_fh, open(local_path, "rb") as fh:
            try:
                if self.become and self._sudo_mode == "password":
                    proc = subprocess.Popen(self.ssh_argv() + [self.target, remote], stdin=subprocess.PIPE,
                                            stdout=subprocess.DEVNULL, stderr=err_fh)
                    try:
                        proc.stdin.write(self._password.encode() + b"\n")
                        while chunk := fh.read(1 << 20):
                            proc.stdin.write(chunk)
                        proc.stdin.close()
                    except BrokenPipeError:
                        pass
                    returncode = proc.wait(timeout=timeout)
                else:
                    returncode = subprocess.run(self.ssh_argv() + [self.target, remote], stdin=fh,
                                                stdout=subprocess.DEVNULL, stderr=err_fh,
                                                timeout=timeout).returncode
            except subprocess.TimeoutExpired:
                raise TritonfleetError(f"{self.host.name}: transfer did not finish within {timeout}s") from None
            err_fh.seek(0)
            err_all = err_fh.read().decode(errors="replace").strip()
            err = err_all[-2000:]
        if returncode != 0:
            full = next((ln.strip() for ln in err_all.splitlines() if "No space left on device" in ln), "")
            if full:
                raise TritonfleetError(f"{self.host.name}: the host ran out of disk space during the transfer "
                                       f"(exit {returncode}): {full[-300:]}", hint=_transfer_hint(returncode, err))
            raise TritonfleetError(f"{self.host.name}: transfer failed (exit {returncode}): {err}",
                                   hint=_transfer_hint(returncode, err))

    def rsync(self, src: str, dest: str, options: list[str], timeout: int = 1800) -> subprocess.CompletedProcess:
        """rsync a local folder to the host over the same SSH settings (and master connection) as the run.

        A dead link ends it within about 20 s (ServerAliveInterval 5 x 3, and rsync's own --timeout)."""
        extra = [f"--timeout={DEAD_LINK_S}"]
        if self.become:
            extra.append(f"--rsync-path=sudo -n -u {shlex.quote(self.become_user)} -- rsync")
        cmd = ["rsync", *options, *extra, "--protect-args", "-e", shlex.join(self.ssh_argv()),
               src.rstrip("/") + "/", f"{self.target}:{dest.rstrip('/')}/"]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            return subprocess.CompletedProcess(cmd, 124, "", f"rsync did not finish within {timeout}s")
        if proc.returncode != 0:
            hint = _transfer_hint(proc.returncode, proc.stderr)
            if self.become and "password is required" in proc.stderr:
                hint = (f"sudo on the host asks {self.host.user} for a password to run rsync: add a NOPASSWD "
                        f"rule for it, e.g. `{self.host.user} ALL=({self.become_user}) NOPASSWD: /usr/bin/rsync`")
            if hint:
                proc.stderr = proc.stderr.rstrip() + f"\n  fix: {hint}"
        return proc

    def forward(self, remote_ports: list[int], timeout: float = 15.0) -> list[int]:
        """Local ports forwarded over SSH to the host's loopback, for a server bound to 127.0.0.1 there."""
        local = []
        for _ in remote_ports:
            with socket.socket() as sock:
                sock.bind(("127.0.0.1", 0))
                local.append(sock.getsockname()[1])
        argv = self.ssh_argv(multiplex=False) + ["-N", "-o", "ExitOnForwardFailure=yes"]
        for lp, rp in zip(local, remote_ports):
            argv += ["-L", f"127.0.0.1:{lp}:127.0.0.1:{rp}"]
        proc = subprocess.Popen(argv + [self.target], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE)
        self._forwards.append(proc)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                with socket.create_connection(("127.0.0.1", local[0]), timeout=1):
                    return local
            except OSError:
                time.sleep(0.1)
        err = proc.stderr.read().decode(errors="replace") if proc.poll() is not None else "timed out"
        raise TritonfleetError(f"{self.host.name}: cannot forward ports {remote_ports} over SSH: {err.strip()}")

    def close(self) -> None:
        for proc in self._forwards:
            proc.terminate()
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
        self._forwards.clear()
        self._conn.close()
        try:
            subprocess.run(["ssh", "-o", f"ControlPath={self._control_path}", "-O", "exit", self.target],
                           capture_output=True, timeout=10)
        except subprocess.TimeoutExpired:
            pass


def _transfer_hint(returncode: int, err: str) -> str | None:
    if "No space left on device" in err:
        return "the host ran out of disk space: free some (old releases under /opt/tritonfleet/releases) and run again"
    if returncode == 255 or "Broken pipe" in err or "Connection timed out" in err or "timeout" in err.lower():
        return "the SSH connection to the host was lost during the transfer: check the network and run again"
    return None
