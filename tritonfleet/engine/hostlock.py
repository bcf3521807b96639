"""One run at a time per host: a lock folder on the host, created atomically with mkdir.

The lock names its holder (control machine, pid, run, start time). A second run fails fast naming it. A lock
is stale when its holder ran on this control machine and that process is gone, or when it is older than
the TTL (a run from another machine that died): a stale lock is taken over, and the recap says so.
"""

from __future__ import annotations

import os
import shlex
import socket
import time
import uuid

from tritonfleet.errors import TritonfleetError

STATE_DIR = "/var/lib/tritonfleet"  # tritonfleet's state on a host: the lock, the release stack
LOCK_DIR = f"{STATE_DIR}/lock"
LOCK_TTL_S = 2 * 3600
RUN_ID = uuid.uuid4().hex[:12]
q = shlex.quote


class HostLocked(TritonfleetError):
    """Another run holds the host."""


def _owner_line(what: str) -> str:
    return f"host={socket.gethostname()} pid={os.getpid()} run={RUN_ID} started={int(time.time())} task={what}"


def _parse(line: str) -> dict:
    return dict(part.split("=", 1) for part in line.split() if "=" in part)


def _is_stale(owner: dict, now: int) -> bool:
    if owner.get("run") == RUN_ID:
        return False
    if owner.get("host") == socket.gethostname() and owner.get("pid", "").isdigit():
        try:
            os.kill(int(owner["pid"]), 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        return False
    started = owner.get("started", "")
    return not started.isdigit() or now - int(started) > LOCK_TTL_S


def acquire(conn, what: str) -> str:
    """Take the host's lock or raise HostLocked naming the holder; returns a note when a stale lock was taken."""
    line = _owner_line(what)
    script = (f"mkdir -p {q(STATE_DIR)} && if mkdir {q(LOCK_DIR)} 2>/dev/null; then "
              f"echo {q(line)} > {q(LOCK_DIR + '/owner')}; echo acquired; "
              f"else echo held; cat {q(LOCK_DIR + '/owner')} 2>/dev/null; date +%s; fi")
    note = ""
    for _ in range(2):
        out = conn.run(script).stdout.splitlines()
        if out and out[0] == "acquired":
            return note
        owner = _parse(out[1]) if len(out) > 2 else {}
        now = int(out[-1]) if out and out[-1].isdigit() else int(time.time())
        if not _is_stale(owner, now):
            since = time.strftime("%H:%M:%S", time.localtime(int(owner["started"]))) if owner.get(
                "started", "").isdigit() else "?"
            raise HostLocked(f"{conn.host.name} is locked by another run: {owner.get('task', '?')} from "
                             f"{owner.get('host', '?')} (pid {owner.get('pid', '?')}, since {since})",
                             hint=f"wait for it to finish; if it is dead, remove {LOCK_DIR} on the host")
        conn.run(f"rm -rf {q(LOCK_DIR)}")
        note = f"took over a stale lock from {owner.get('task', '?')} (pid {owner.get('pid', '?')} on " \
               f"{owner.get('host', '?')})"
    raise HostLocked(f"{conn.host.name}: could not take the lock")  # lost the race twice


def release(conn) -> None:
    """Drop the lock if this run holds it (a lock taken over by someone else is theirs)."""
    conn.run(f"grep -qs {q('run=' + RUN_ID)} {q(LOCK_DIR + '/owner')} && rm -rf {q(LOCK_DIR)}", check=False,
             timeout=30)
