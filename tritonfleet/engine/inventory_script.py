"""Dynamic inventory scripts, run as Ansible runs them (ansible-core's script plugin): an executable file, run
with `--list`, prints JSON: `{"group": {"hosts": [...], "vars": {...}, "children": [...]}, "_meta": {"hostvars":
{"host": {...}}}}`. Without `_meta` it is run again with `--host NAME` for each host. The older forms Ansible
still reads are read too: a group given as a list of hosts, or as a mapping of vars with no hosts/vars/children
(the group is then its one host).

Each run is bounded (TIMEOUT_ENV, default DEFAULT_TIMEOUT seconds; the script and whatever it started are
stopped then). A script that exits non-zero, prints something that is not that JSON, or runs past the bound is
refused naming the command; Ansible would only warn and go on without those hosts.
"""

from __future__ import annotations

import errno
import json
import os
import shlex
import signal
import subprocess
from pathlib import Path

from tritonfleet.engine.inventory_data import InventoryData
from tritonfleet.engine.inventory_yaml import check_host_name
from tritonfleet.errors import InventoryError

TIMEOUT_ENV = "TRITONFLEET_INVENTORY_TIMEOUT"
DEFAULT_TIMEOUT = 30.0
STDERR_SHOWN = 2000


class NotExecutable(Exception):
    """The system would not run the file (no `#!` line, not a program): it is read as a file instead."""


def read_script_inventory(path: Path, inventory: InventoryData) -> None:
    command = [str(path), "--list"]
    listing = _json_object(_run(command), command)
    hostvars = None
    hosts: dict[str, None] = {}
    for group, body in listing.items():
        if group == "_meta":
            hostvars = body.get("hostvars") if isinstance(body, dict) else None
            if not isinstance(hostvars, dict):
                raise _error(command, "_meta.hostvars must be a mapping of host names to their vars")
        else:
            hosts.update(dict.fromkeys(_read_group(group, body, inventory, command)))
    for host in hosts:
        if hostvars is not None:
            host_vars, origin = hostvars.get(host, {}), (shlex.join(command), None)
        else:
            host_command = [str(path), "--host", host]
            host_vars, origin = _host_vars(host_command), (shlex.join(host_command), None)
        if not isinstance(host_vars, dict):
            raise _error(command, f"the vars of host '{host}' must be a mapping")
        for var, value in host_vars.items():
            inventory.set_var(host, var, value, origin)


def _read_group(group: str, body, inventory: InventoryData, command: list) -> list[str]:
    """Add one group of the listing; its host names, in order."""
    origin = (shlex.join(command), None)
    inventory.add_group(group, origin)
    if not isinstance(body, dict):
        body = {"hosts": body}
    elif not any(k in body for k in ("hosts", "vars", "children")):
        body = {"hosts": [group], "vars": body}
    hosts = body.get("hosts", [])
    if not isinstance(hosts, list):
        raise _error(command, f"'{group}.hosts' must be a list of host names")
    for host in hosts:
        check_host_name(host, origin)
        inventory.add_host(host, group, None, origin)
    group_vars = body.get("vars", {})
    if not isinstance(group_vars, dict):
        raise _error(command, f"'{group}.vars' must be a mapping")
    for var, value in group_vars.items():
        inventory.set_var(group, var, value, origin)
    children = body.get("children", [])
    if not isinstance(children, list):
        raise _error(command, f"'{group}.children' must be a list of group names")
    for child in children:
        inventory.add_child(group, inventory.add_group(child, origin), origin)
    return hosts


def _host_vars(command: list) -> dict:
    output = _run(command)
    return _json_object(output, command) if output.strip() else {}


def _json_object(output: str, command: list) -> dict:
    try:
        data = json.loads(output)
    except json.JSONDecodeError as exc:
        raise _error(command, f"printed something that is not JSON ({exc})") from None
    if not isinstance(data, dict):
        raise _error(command, f"printed a JSON {type(data).__name__}, not an object")
    return data


def _run(command: list) -> str:
    """The script's output. It runs in a session of its own so that a stop reaches what it started too."""
    timeout = _timeout()
    try:
        proc = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                start_new_session=True)
    except OSError as exc:
        if exc.errno == errno.ENOEXEC:  # an executable file that is not a program: no #! line
            raise NotExecutable() from None
        raise _error(command, f"cannot be run: {exc.strerror}",
                     "check its #! line: the interpreter it names must exist") from None
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        raise _error(command, f"did not finish within {timeout:g} s: stopped",
                     f"fix the script, or give it longer with {TIMEOUT_ENV}=SECONDS") from None
    if proc.returncode != 0:
        said = stderr.decode(errors="replace").strip()[-STDERR_SHOWN:]
        raise _error(command, f"exited with status {proc.returncode}" + (f": {said}" if said else ""))
    try:
        return stdout.decode()
    except UnicodeDecodeError:
        raise _error(command, "printed something that is not UTF-8 text") from None


def _timeout() -> float:
    text = os.environ.get(TIMEOUT_ENV, "")
    try:
        seconds = float(text) if text else DEFAULT_TIMEOUT
    except ValueError:
        seconds = -1
    if not seconds > 0:
        raise InventoryError(f"{TIMEOUT_ENV}={text!r} is not a number of seconds", hint="e.g. 30")
    return seconds


def _error(command: list, problem: str, hint: str = "run the command yourself to see what it prints") \
        -> InventoryError:
    return InventoryError(f"inventory script `{shlex.join(command)}` {problem}", file=command[0], hint=hint)
