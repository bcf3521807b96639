"""The module contract, as Ansible's and pyinfra's: what a module is given and what it answers.

A module is a plain function `(ctx, args) -> Outcome`, declared with its argument spec beside it:

    @module(args={"name": Arg("str", required=True),
                  "state": Arg("str", choices=("started", "stopped", "restarted"))},
            supports_check_mode=True)
    def systemd(ctx, args): ...

It reads facts from `ctx.facts`, compares them with `args`, and changes only what differs; in check mode it
changes nothing and says what it would do.

Arguments (`Arg`, Ansible's argument_spec): a type (str, path, int, float, bool, list, dict), `required`, a
`default`, `choices`, and for lists the type of their `elements`. Values are converted the way Ansible converts
them ("3" is the int 3, "yes"/"off" are booleans; a number is not taken for a string, since YAML reads an
unquoted 0644 as 420) and defaults are filled in, so module code reads `args[name]` and relies on its type.
A playbook's arguments are checked when it loads; values that are Jinja2 templates are checked once rendered,
right before the module runs.

Check mode is enforced by the framework, not left to each module's care:
- a module declared with `supports_check_mode=False` is not run in check mode ("check mode: not supported");
- every other module is handed, for the length of its call, a `ModuleConnection` in place of `ctx.conn`:
  `read(cmd)` runs a command that only looks at the host (cat, stat, systemctl show) in any mode; `run`,
  `put_text`, `stream_file` and `rsync` without `--dry-run` change the host, and in check mode they raise
  `CheckModeViolation`, which fails the step as the module bug it is. A module therefore cannot change a host
  in check mode by forgetting an `if ctx.check`; it can only fail loudly.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

from tritonfleet.engine.connection import CommandResult, HostConnection
from tritonfleet.engine.inventory import Host
from tritonfleet.engine.varspec import boolean
from tritonfleet.errors import TritonfleetError


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


class ArgumentError(TritonfleetError):
    """An argument a module cannot take; `arg` names it ("" when what is wrong is the set of arguments)."""

    def __init__(self, message: str, *, arg: str = "", hint: str | None = None):
        super().__init__(message, hint=hint)
        self.arg = arg


EXPECTED = {"str": "a string", "path": "a non-empty path", "int": "an integer", "float": "a number",
            "bool": "a boolean (yes/no, true/false, on/off, 1/0)", "list": "a list", "dict": "a mapping"}


def is_template(value) -> bool:
    """A Jinja2 template, whose value is only known once rendered for a host."""
    return isinstance(value, str) and ("{{" in value or "{%" in value)


def converted(type_name: str, value):
    """`value` as `type_name`, converted as Ansible does; ValueError when it cannot be one."""
    if type_name in ("str", "path"):
        if isinstance(value, str) and (value or type_name == "str"):
            return value
    elif type_name == "int":
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lstrip("+-").isdigit():
            return int(value)
    elif type_name == "float":
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
    elif type_name == "bool":
        result = boolean(value)
        if result is not None:
            return result
    elif isinstance(value, {"list": list, "dict": dict}[type_name]):
        return value
    raise ValueError(f"not {EXPECTED[type_name]}")


@dataclass(frozen=True)
class Arg:
    """One argument of a module: its type, whether it must be given, its default, the values it may take."""

    type: str = "str"
    required: bool = False
    default: Any = None
    choices: tuple = ()
    elements: str | None = None  # the type of each item of a list

    def __post_init__(self):
        for type_name in filter(None, (self.type, self.elements)):
            if type_name not in EXPECTED:
                raise ValueError(f"unknown argument type {type_name!r}: use one of {', '.join(EXPECTED)}")

    def checked(self, module: str, name: str, value, rendered: bool):
        """The value converted to this argument's type; templates are left as they are until `rendered`."""
        if not rendered and is_template(value):
            return value
        where = f"argument '{name}' of module '{module}'"
        value = _converted_or_refused(self.type, value, where, name)
        if self.elements:
            value = [item if not rendered and is_template(item) else
                     _converted_or_refused(self.elements, item, f"item {i + 1} of {where}", name)
                     for i, item in enumerate(value)]
        if self.choices and value not in self.choices:
            allowed = ", ".join(map(str, self.choices))
            raise ArgumentError(f"{where} is {value!r}, not one of: {allowed}", arg=name,
                                hint=f"use one of {allowed}")
        return value


def _converted_or_refused(type_name: str, value, what: str, name: str):
    """`value` as `type_name`, or an ArgumentError saying what `what` (argument `name`) must be."""
    try:
        return converted(type_name, value)
    except ValueError:
        hint = None
        if type_name in ("str", "path") and isinstance(value, (bool, int, float)):
            hint = "put it in quotes: YAML reads unquoted numbers and yes/no as numbers and booleans (0644 is 420)"
        raise ArgumentError(f"{what} must be {EXPECTED[type_name]}, got {value!r}", arg=name, hint=hint) from None


@dataclass(frozen=True)
class Module:
    name: str
    run: Callable
    args: dict = field(default_factory=dict)  # name -> Arg
    needs: tuple = ()  # "bundle", "repository": loaded and validated before any host is touched
    supports_check_mode: bool = True

    def checked_args(self, given: dict, *, rendered: bool = True) -> dict:
        """`given` checked against the spec, converted, with defaults filled in; raises ArgumentError.

        Before rendering (`rendered=False`, when a playbook loads) templates are let through as they are.
        """
        missing = [n for n, a in self.args.items() if a.required and given.get(n) is None]
        if missing:
            raise ArgumentError(f"module '{self.name}' is missing argument(s) {', '.join(missing)}")
        unknown = [str(n) for n in given if n not in self.args]
        if unknown:
            raise ArgumentError(f"module '{self.name}' has no argument(s) {', '.join(unknown)}", arg=unknown[0],
                                hint=f"it takes {', '.join(self.args) or 'no arguments'}")
        return {name: arg.default if given.get(name) is None else arg.checked(self.name, name, given[name], rendered)
                for name, arg in self.args.items()}


def module(*, args: dict | None = None, needs: tuple = (), supports_check_mode: bool = True):
    """Declare a module function with its argument spec; the decorated name becomes the `Module`."""
    def declare(run: Callable) -> Module:
        return Module(run.__name__, run, args or {}, needs, supports_check_mode)
    return declare


class CheckModeViolation(RuntimeError):
    """A module tried to change a host in check mode: a bug in the module, never the user's doing."""


class ModuleConnection:
    """The connection a module is handed: `read` only looks at the host; the other calls change it.

    In check mode the calls that change the host raise CheckModeViolation instead of running.
    """

    def __init__(self, conn: HostConnection, check: bool):
        self._conn, self._check = conn, check
        self.host = conn.host

    def _refuse_in_check_mode(self, what: str) -> None:
        if self._check:
            raise CheckModeViolation(f"check mode: a module tried to change the host: {what[:200]}")

    def read(self, command: str, *, timeout: int | None = 600) -> CommandResult:
        """A command that only looks (cat, stat, systemctl show): runs in check mode too; its exit is not an error."""
        return self._conn.run(command, check=False, timeout=timeout)

    def run(self, command: str, **kwargs) -> CommandResult:
        self._refuse_in_check_mode(command)
        return self._conn.run(command, **kwargs)

    def put_text(self, text: str, remote_path: str, **kwargs) -> None:
        self._refuse_in_check_mode(f"write {remote_path}")
        self._conn.put_text(text, remote_path, **kwargs)

    def stream_file(self, local_path, remote_command: str, **kwargs) -> None:
        self._refuse_in_check_mode(remote_command)
        self._conn.stream_file(local_path, remote_command, **kwargs)

    def rsync(self, src: str, dest: str, options: list[str], **kwargs):
        """rsync to the host; with `--dry-run` it only compares, so check mode allows it."""
        if "--dry-run" not in options:
            self._refuse_in_check_mode(f"rsync to {dest}")
        return self._conn.rsync(src, dest, options, **kwargs)

    def forward(self, remote_ports: list[int], **kwargs) -> list[int]:
        """Ports forwarded to the host's loopback (for its server): nothing on the host changes."""
        return self._conn.forward(remote_ports, **kwargs)


class HostContext:
    """What a module sees: the host, its connection, its facts, its vars, and the run's inputs.

    While a module runs, `conn` is a ModuleConnection around the host's connection (see above).

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
        self.changes = 0  # steps that changed this host so far in this run (the runner counts them)
        self.answered: tuple | None = None  # (changes, data) when this run's last smoke test passed

    @property
    def server(self):
        if self._server is None:
            if self._connect_server is None:
                raise RuntimeError("this run has no server client")
            self._server = self._connect_server(self)
        return self._server

    def forget_server(self) -> None:
        """Drop the server client, so the next call makes one from what changed since (a new API key)."""
        self._server = None
