"""The module contract, as Ansible's and pyinfra's: what a module is given and what it answers.

A module is a plain function `(ctx, args) -> Outcome`, declared with its argument spec. It reads facts from
`ctx.facts`, compares them with `args`, and changes only what differs; in check mode it changes nothing and says
what it would do.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from tritonfleet.engine.connection import HostConnection
from tritonfleet.engine.inventory import Host


@dataclass
class Outcome:
    changed: bool = False
    failed: bool = False
    skipped: bool = False
    msg: str = ""
    diff: str = ""
    data: dict = field(default_factory=dict)
    show: bool = False  # print the message even when ok (results a person asked for, like latencies)
    seconds: float = 0.0  # how long the step took (set by the runner)

    @property
    def status(self) -> str:
        return "failed" if self.failed else "skipped" if self.skipped else "changed" if self.changed else "ok"


@dataclass(frozen=True)
class Module:
    run: Callable
    required: tuple = ()
    optional: tuple = ()
    needs: tuple = ()  # "bundle", "repository": loaded and validated before any host is touched



class HostContext:
    """What a module sees: the host, its connection, its facts, its vars, and the run's inputs.

    `server` is the host's server client, made on first use by `connect_server(ctx)` (which may open SSH
    forwards), so a run that never talks to the server opens none.
    """

    def __init__(self, host: Host, conn: HostConnection, hostvars: dict, check: bool, *, bundle=None,
                 repository=None, progress: Callable[[str], None] = lambda msg: None,
                 connect_server: Callable[[HostContext], Any] | None = None):
        self.host, self.conn, self.vars, self.check = host, conn, hostvars, check
        self.bundle, self.repository, self.progress = bundle, repository, progress
        self.facts = None
        self._connect_server, self._server = connect_server, None

    @property
    def server(self):
        if self._server is None:
            if self._connect_server is None:
                raise RuntimeError("this run has no server client")
            self._server = self._connect_server(self)
        return self._server
