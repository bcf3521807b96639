"""One per-host executor for every task: a connection per host, hosts in parallel, the same failure mapping.

`for_each_host` opens one SSH connection per host (at most `forks` at once), takes the host lock for tasks that
change hosts, runs the work, and always releases the lock and closes the connection. A host that cannot be
reached is `unreachable`; a TritonfleetError (facts that cannot be read, a held lock) fails that host only, the
others go on. Ctrl-C stops starting hosts and lets the hosts in flight finish (no half release, locks released).
Playbook runs, the doctor, status and models.diff all run through here.
"""

from __future__ import annotations

import os
import signal
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Callable

from tritonfleet.engine import hostlock
from tritonfleet.engine.connection import HostConnection, Unreachable
from tritonfleet.engine.inventory import Host
from tritonfleet.errors import TritonfleetError

NOT_STARTED = "interrupted before this host was started"


@dataclass
class HostResult:
    """What became of one host: the work's value, or why there is none."""

    host: str
    value: Any = None
    unreachable: str = ""
    error: str = ""
    notes: list = field(default_factory=list)

    @property
    def failed(self) -> bool:
        return bool(self.unreachable or self.error)


@dataclass
class Events:
    """What the executor tells a reporter as it goes (each optional)."""

    unreachable: Callable[[str, str], None] = lambda host, msg: None
    failed: Callable[[str, str], None] = lambda host, msg: None
    note: Callable[[str, str], None] = lambda host, msg: None


def for_each_host(hosts: list[Host], work: Callable[[Host, HostConnection], Any], *, forks: int = 10,
                  lock: str = "", events: Events | None = None,
                  cancel: threading.Event | None = None) -> tuple[list[HostResult], bool]:
    """Run `work(host, conn)` on every host; ([one HostResult per host, in order], interrupted).

    With `lock` (what the run is, e.g. "deploy"), the host lock is held while the work runs.
    """
    events = events or Events()

    def one(host: Host) -> HostResult:
        result = HostResult(host.name)
        try:
            conn = HostConnection(host)
        except Unreachable as exc:
            result.unreachable = str(exc)
            events.unreachable(host.name, str(exc))
            return result
        locked = False
        try:
            if lock:
                note = hostlock.acquire(conn, f"{lock} (run {hostlock.RUN_ID})")
                locked = True
                if note:
                    result.notes.append(note)
                    events.note(host.name, note)
            result.value = work(host, conn)
        except Unreachable as exc:
            result.unreachable = str(exc)
            events.unreachable(host.name, str(exc))
        except TritonfleetError as exc:  # a held lock, facts that cannot be read: this host fails, others go on
            result.error = str(exc)
            events.failed(host.name, str(exc))
        finally:
            if locked:
                try:
                    hostlock.release(conn)
                except TritonfleetError:
                    pass  # the host went away; its lock is stale and the next run takes it over
            conn.close()
        return result

    with cancel_on_interrupt(cancel) as cancelled:
        def guarded(host: Host) -> HostResult:
            if cancelled.is_set():
                return HostResult(host.name, error=NOT_STARTED)
            return one(host)

        with ThreadPoolExecutor(max_workers=max(1, min(forks, len(hosts)))) as pool:
            results = list(pool.map(guarded, hosts))
    return results, cancelled.is_set()


@contextmanager
def cancel_on_interrupt(cancel: threading.Event | None = None):
    """Ctrl-C stops starting hosts; hosts in flight finish their run, so none is left on half a release
    and every lock is released. A second Ctrl-C abandons them (their locks are then stale, and taken over)."""
    if cancel is not None or threading.current_thread() is not threading.main_thread():
        yield cancel or threading.Event()
        return
    event = threading.Event()

    def on_sigint(signum, frame):
        if event.is_set():
            signal.signal(signal.SIGINT, previous)
            raise KeyboardInterrupt
        event.set()
        # No reporter here: the main thread may hold its lock right now. A raw write cannot deadlock.
        os.write(2, b"interrupted: finishing the hosts in flight, starting no other (Ctrl-C again to abandon them)\n")

    previous = signal.signal(signal.SIGINT, on_sigint)
    try:
        yield event
    finally:
        signal.signal(signal.SIGINT, previous)
