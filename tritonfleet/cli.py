"""The commands behind the invoke tasks: turn options into engine calls and errors into clear exits."""

from __future__ import annotations

import functools
import sys

from rich.console import Console
from rich.table import Table

from .errors import TritonfleetError
from .inventory import DEFAULT_INVENTORY, load_inventory
from .paths import REPO_ROOT
from .report import Reporter

console = Console(stderr=True, highlight=False, soft_wrap=True)


class CommandFailed(SystemExit):
    """Ends the command with a non-zero exit and no traceback."""


def clear_errors(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except TritonfleetError as exc:
            console.print(f"[bold red]error:[/bold red] {exc}", markup=True, highlight=False)
            raise CommandFailed(2) from None
        except KeyboardInterrupt:
            console.print("[bold red]interrupted[/bold red]")
            raise CommandFailed(130) from None
    return wrapper


@clear_errors
def run_playbook_command(playbook: str, *, host=None, group=None, models=None, check=False, json_output=False,
                         inventory=None, bundle=None, forks=10, verbose=False) -> None:
    from .runner import run_playbook
    inv = load_inventory(inventory or DEFAULT_INVENTORY)
    hosts = inv.select(host=host, group=group)
    extra = {"model_repository": models} if models else {}
    result = run_playbook(REPO_ROOT / "playbooks" / playbook, hosts, check=check, extra_vars=extra,
                          bundle_source=bundle, forks=int(forks),
                          reporter=Reporter(json_output=json_output, verbose=verbose))
    if not result.ok:
        raise CommandFailed(1)


@clear_errors
def bundle_command(source=None) -> None:
    from .bundle import build_bundle, default_bundle
    b = build_bundle(source, progress=console.print) if source else default_bundle(progress=console.print)
    print(f"{b.bundle_id}  {b.path}  sha256={b.sha256}  python={','.join(b.python_versions)}")


def _lab_hosts(inventory, count: int):
    from .lab import LabHost
    inv = load_inventory(inventory or DEFAULT_INVENTORY)
    hosts = inv.select(group="lab")
    if not 1 <= count <= len(hosts):
        raise TritonfleetError(f"--hosts must be between 1 and {len(hosts)} (group lab has {len(hosts)} hosts)")
    return [LabHost(h.name, h.address) for h in hosts[:count]]


@clear_errors
def lab_up_command(count: int, inventory=None) -> None:
    from . import lab
    states = lab.up(_lab_hosts(inventory, count), progress=console.print)
    _print_lab(states)


@clear_errors
def lab_down_command() -> None:
    from . import lab
    lab.down(progress=console.print)


@clear_errors
def lab_status_command() -> None:
    from . import lab
    states = lab.status()
    if not states:
        console.print("no lab hosts (bring them up with `invoke lab.up --hosts N`)")
        return
    _print_lab(states)


def _print_lab(states) -> None:
    table = Table("host", "address", "state", "pid", "console log")
    for s in states:
        table.add_row(s.name, s.address, s.state, str(s.pid or ""), str(s.console_log))
    Console(highlight=False).print(table)
    if any(not s.state.startswith(("running", "degraded")) for s in states):
        sys.exit(1)
