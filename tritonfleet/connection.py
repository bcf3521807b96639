"""One SSH connection per host: Fabric for commands, OpenSSH (same settings) for rsync and streams.

Host keys are always verified against the inventory's known_hosts; an unknown or changed key stops the
run for that host. OpenSSH shares one master connection per host (ControlMaster) so transfers do not
pay a handshake each.
"""

from __future__ import annotations

import os
import shlex
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path

import fabric
import paramiko

from .errors import TritonfleetError
from .inventory import Host


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


class HostConnection:
    def __init__(self, host: Host, connect_timeout: int = 10):
        self.host = host
        self.connect_timeout = connect_timeout
        known_hosts = Path(host.known_hosts_file)
        if not known_hosts.is_file():
            raise Unreachable(f"{host.name}: known_hosts file {known_hosts} does not exist",
                              hint="add the host's key to it after checking its fingerprint "
                                   "(for lab hosts: `invoke lab.up` writes it)")
        if host.key_file and not Path(host.key_file).is_file():
            raise Unreachable(f"{host.name}: private key {host.key_file} does not exist",
                              hint="fix ansible_ssh_private_key_file in the inventory")
        connect_kwargs = {"look_for_keys": not host.key_file, "allow_agent": not host.key_file}
        if host.key_file:
            connect_kwargs["key_filename"] = host.key_file
        self._conn = fabric.Connection(host.address, user=host.user, port=host.port,
                                       connect_timeout=connect_timeout, connect_kwargs=connect_kwargs)
        self._conn.client.load_host_keys(str(known_hosts))
        self._conn.client.set_missing_host_key_policy(paramiko.RejectPolicy())
        self._control_path = f"/tmp/tritonfleet-ssh-{os.getpid()}-{host.name[:40]}"

    def _connect(self):
        try:
            self._conn.open()
        except paramiko.BadHostKeyException as exc:
            raise Unreachable(f"{self.host.name}: HOST KEY CHANGED for {self.host.address} "
                              f"(got {exc.key.get_name()})",
                              hint=f"if the host was reinstalled, verify its fingerprint and update "
                                   f"{self.host.known_hosts_file}; otherwise someone may be intercepting") from None
        except paramiko.SSHException as exc:
            if "not found in known_hosts" in str(exc):
                raise Unreachable(f"{self.host.name}: host key of {self.host.address} is not in "
                                  f"{self.host.known_hosts_file}",
                                  hint="verify the fingerprint and add it (ssh-keyscan, then compare)") from None
            raise Unreachable(f"{self.host.name}: SSH failed: {exc}") from None
        except (OSError, socket.timeout, EOFError) as exc:
            raise Unreachable(f"{self.host.name}: cannot reach {self.host.address}:{self.host.port}: {exc}") from None

    def run(self, command: str, *, check: bool = True, timeout: int | None = 600,
            stdin: str | None = None) -> CommandResult:
        """Run a shell command as the inventory user; root is required for provisioning."""
        if not self._conn.is_connected:
            self._connect()
        kwargs = {"hide": True, "warn": True, "timeout": timeout, "in_stream": False}
        if stdin is not None:
            import io
            kwargs["in_stream"] = io.StringIO(stdin)
        try:
            res = self._conn.run(command, **kwargs)
        except (OSError, EOFError, paramiko.SSHException) as exc:
            raise Unreachable(f"{self.host.name}: connection lost: {exc}") from None
        except Exception as exc:  # invoke's CommandTimedOut
            if type(exc).__name__ == "CommandTimedOut":
                raise TritonfleetError(f"{self.host.name}: command timed out after {timeout}s: "
                                       f"{command[:120]}") from None
            raise
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
        self.run(f"cat > {shlex.quote(tmp)} && chmod {mode} {shlex.quote(tmp)} && "
                 f"chown {shlex.quote(owner)}:{shlex.quote(group)} {shlex.quote(tmp)} && "
                 f"mv -f {shlex.quote(tmp)} {shlex.quote(remote_path)}", stdin=text)

    def ssh_argv(self) -> list[str]:
        """OpenSSH with the inventory's settings, for rsync -e and streams; strict host key checking."""
        h = self.host
        argv = ["ssh", "-p", str(h.port), "-o", "BatchMode=yes", "-o", f"ConnectTimeout={self.connect_timeout}",
                "-o", f"UserKnownHostsFile={h.known_hosts_file}", "-o", "StrictHostKeyChecking=yes",
                "-o", "ControlMaster=auto", "-o", f"ControlPath={self._control_path}",
                "-o", "ControlPersist=60", "-o", "ServerAliveInterval=5", "-o", "ServerAliveCountMax=3"]
        if h.key_file:
            argv += ["-i", h.key_file, "-o", "IdentitiesOnly=yes"]
        return argv + h.ssh_args

    @property
    def target(self) -> str:
        return f"{self.host.user}@{self.host.address}"

    def stream_file(self, local_path: Path, remote_command: str, timeout: int = 900) -> None:
        """Send a local file to a remote command's stdin over OpenSSH (bulk data; paramiko is slower)."""
        with open(local_path, "rb") as fh:
            proc = subprocess.run(self.ssh_argv() + [self.target, remote_command], stdin=fh,
                                  capture_output=True, timeout=timeout)
        if proc.returncode != 0:
            err = proc.stderr.decode(errors="replace").strip()[-2000:]
            raise TritonfleetError(f"{self.host.name}: transfer failed (exit {proc.returncode}): {err}")

    def rsync(self, src: str, dest: str, options: list[str], timeout: int = 1800) -> subprocess.CompletedProcess:
        """rsync a local folder to the host over the same SSH settings (and master connection) as the run."""
        cmd = ["rsync", *options, "--protect-args", "-e", shlex.join(self.ssh_argv()),
               src.rstrip("/") + "/", f"{self.target}:{dest.rstrip('/')}/"]
        return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)

    def close(self) -> None:
        self._conn.close()
        subprocess.run(["ssh", "-o", f"ControlPath={self._control_path}", "-O", "exit", self.target],
                       capture_output=True, timeout=10)
