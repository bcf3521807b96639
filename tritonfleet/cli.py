"""The commands behind the invoke tasks: turn options into engine calls and errors into clear exits."""

from __future__ import annotations

import functools
import sys

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from tritonfleet.errors import TritonfleetError
from tritonfleet.engine.inventory import DEFAULT_INVENTORY, load_inventory
from tritonfleet.paths import REPO_ROOT
from tritonfleet.engine.report import Reporter, redact

console = Console(stderr=True, highlight=False, soft_wrap=True)

CONFIG_DEFAULTS = {"inventory": str(DEFAULT_INVENTORY), "forks": "10", "bundle": None}
"""The `tritonfleet:` section of Invoke's configuration: what a task uses when its option is not given. A
project sets its own in an invoke.yaml beside tasks.py, as it would in ansible.cfg; ~/.invoke.yaml,
/etc/invoke.yaml, `invoke -f FILE` and INVOKE_TRITONFLEET_INVENTORY (_FORKS, _BUNDLE) work too. forks is
text, as on the command line: Invoke casts an environment variable to the default's type, and would
answer INVOKE_TRITONFLEET_FORKS=abc with a traceback instead of count_option's error."""


def configured(config, **given) -> dict:
    """Each option as given on the command line, or else from the `tritonfleet` configuration. A relative
    path from the configuration is relative to the project folder (where tasks.py and invoke.yaml are), as
    ansible.cfg's are relative to its own folder; one on the command line is relative to the current folder."""
    section = config.tritonfleet
    options = {}
    for name, value in given.items():
        if value is None:
            value = section[name]
            if name in ("inventory", "bundle") and value is not None:
                value = str(REPO_ROOT / value)
        options[name] = value
    return options


def _extra_vars(models: str | None) -> dict:
    """The vars the command line sets (highest precedence): `--models` is the var model_repository."""
    return {"model_repository": models} if models else {}


class CommandFailed(SystemExit):
    """Ends the command with a non-zero exit and no traceback."""


def count_option(value, name: str, minimum: int = 1) -> int:
    """A whole-number option (invoke hands them over as text, so a typo is our error to report)."""
    try:
        number = int(str(value))
    except ValueError:
        raise TritonfleetError(f"--{name} must be a whole number, got {value!r}") from None
    if number < minimum:
        raise TritonfleetError(f"--{name} must be at least {minimum}, got {number}")
    return number


def clear_errors(fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except TritonfleetError as exc:
            # escaped: a message may hold '[' (paths, values); redacted: it may hold a secret var's value
            console.print(f"[bold red]error:[/bold red] {escape(redact(str(exc)))}", markup=True, highlight=False)
            raise CommandFailed(2) from None
        except OSError as exc:  # a local file the run needs cannot be read (model repository, key, bundle)
            what = f"{exc.strerror or exc}: {exc.filename}" if exc.filename else str(exc)
            console.print(f"[bold red]error:[/bold red] {escape(redact(what))}\n  fix: check that the path "
                          "exists and that this user can read it", markup=True, highlight=False)
            raise CommandFailed(2) from None
        except KeyboardInterrupt:
            console.print("[bold red]interrupted[/bold red]")
            raise CommandFailed(130) from None
    return wrapper


@clear_errors
def run_playbook_command(playbook: str, *, host=None, group=None, models=None, check=False, json_output=False,
                         inventory, bundle, forks, verbose=False) -> None:
    from tritonfleet.fleet.run import RunOptions, run_playbook
    hosts = load_inventory(inventory).select(host=host, group=group)
    options = RunOptions(check=check, forks=count_option(forks, "forks"), extra_vars=_extra_vars(models),
                         bundle_source=bundle)
    result = run_playbook(REPO_ROOT / "playbooks" / playbook, hosts, options,
                          reporter=Reporter(json_output=json_output, verbose=verbose))
    if result.interrupted:
        raise CommandFailed(130)
    if not result.ok:
        raise CommandFailed(1)


@clear_errors
def rollout_command(*, group=None, host=None, canary=1, batch="25%", max_fail="0", forks, models=None,
                    json_output=False, inventory, bundle, verbose=False) -> None:
    from tritonfleet.fleet.rollout import rollout
    from tritonfleet.fleet.run import RunOptions
    hosts = load_inventory(inventory).select(host=host, group=group)
    options = RunOptions(forks=count_option(forks, "forks"), extra_vars=_extra_vars(models), bundle_source=bundle)
    result = rollout(hosts, options, canary=count_option(canary, "canary", 0), batch=batch, max_fail=max_fail,
                     reporter=Reporter(json_output=json_output, verbose=verbose))
    if result.stopped.startswith("interrupted"):
        raise CommandFailed(130)
    if not result.ok:
        raise CommandFailed(1)


@clear_errors
def status_command(*, group=None, host=None, models=None, json_output=False, inventory, bundle) -> None:
    import json

    from tritonfleet.fleet.status import as_dicts, fleet_status
    hosts = load_inventory(inventory).select(host=host, group=group)
    rows = fleet_status(hosts, _extra_vars(models), bundle, progress=console.print)
    table = Table("host", "reachable", "triton", "release", "service", "uptime", "restarts", "models", "drift")
    for r in rows:
        models_text = ", ".join(f"{n}:{s.split(':')[0]}" for n, s in sorted(r.models.items()))
        table.add_row(r.name, "yes" if r.reachable else f"NO: {r.error.splitlines()[0]}", r.triton_version,
                      r.release, r.service, f"{r.uptime_s}s" if r.service == "active" else "", str(r.restarts),
                      models_text, "; ".join(r.drift))
    Console(stderr=True, highlight=False, width=None if sys.stderr.isatty() else 200).print(table)
    if json_output:
        print(json.dumps({"hosts": as_dicts(rows)}, indent=2))
    if any(not r.reachable or r.drift for r in rows):
        raise CommandFailed(1)


@clear_errors
def doctor_command(*, host=None, group=None, fix=False, json_output=False, inventory) -> None:
    """Diagnose hosts (and with fix, repair what is safe); exit 1 while any error finding remains."""
    import json

    from tritonfleet.fleet.run import checked_host_vars
    from tritonfleet.triton import doctor
    inv = load_inventory(inventory)
    hosts = inv.select(host=host, group=group)
    out = Console(stderr=json_output, highlight=False, soft_wrap=True)
    reports = doctor.run_doctor(hosts, checked_host_vars(hosts), fix=bool(fix),
                                progress=lambda h, msg: console.print(f"  {h} [dim]… {msg}[/dim]"))
    for r in reports:
        if r.unreachable:
            out.print(f"[bold red]{r.host}: UNREACHABLE[/bold red] {escape(r.unreachable)}")
            continue
        if r.before is not None:
            out.print(f"[bold]{escape(doctor.summary(r.before))}[/bold]")
            out.print(escape(doctor.render(r.before)) or "  no findings")
        if r.fixes:
            out.print(f"[bold]{r.host}: --fix applied:[/bold]")
            out.print(escape("\n".join(f"  - {f}" for f in r.fixes)))
            out.print(f"[bold]after the fixes, {escape(doctor.summary(r.after))}[/bold]")
            out.print(escape(doctor.render(r.after, include_info=False)) or "  no findings")
        elif fix and r.before is not None and r.before.errors and not r.error:
            out.print(f"{r.host}: no safe fix applies; the fixes above need a person")
        if r.error:  # the doctor could not finish: before or during the fixes
            out.print(f"[bold red]{r.host}: FAILED[/bold red] the doctor could not finish: {escape(r.error)}")
    if json_output:
        json.dump({"ok": not any(r.failed for r in reports), "hosts": [r.as_dict() for r in reports]},
                  sys.stdout, indent=2, default=str)
        sys.stdout.write("\n")
    if any(r.failed for r in reports):
        raise CommandFailed(1)


@clear_errors
def models_diff_command(*, host=None, group=None, models=None, json_output=False, inventory) -> None:
    import dataclasses
    import json

    from tritonfleet.fleet.modeldiff import diff_hosts
    from tritonfleet.fleet.run import checked_host_vars
    from tritonfleet.triton.models import validate_repository
    hosts = load_inventory(inventory).select(host=host, group=group)
    all_vars = checked_host_vars(hosts, _extra_vars(models))
    sources: dict[str, str] = {}
    for hv in all_vars.values():  # every repository validated before any host is touched
        repo = str(hv["model_repository"])
        if repo not in sources:
            sources[repo] = str(validate_repository(repo).path)
        hv["model_repository"] = sources[repo]
    diffs = diff_hosts(hosts, all_vars)
    for d in diffs:
        console.print(f"[bold]{d.host}[/bold]" + (" up to date" if d.empty else ""))
        for model in d.added:
            console.print(f"  [green]+ {model}[/green] (new model)")
        for model in d.removed:
            console.print(f"  [red]- {model}[/red] (removed)")
        for model, files in d.changed.items():
            console.print(f"  [yellow]~ {model}[/yellow]: {', '.join(files)}")
        if d.error:
            console.print(f"  [bold red]error:[/bold red] {d.error}")
    if json_output:
        print(json.dumps({"hosts": [dataclasses.asdict(d) for d in diffs]}, indent=2))
    if any(d.error for d in diffs):
        raise CommandFailed(1)


@clear_errors
def bundle_command(bundle) -> None:
    from tritonfleet.triton.bundle import resolve_bundle
    b = resolve_bundle(bundle, progress=console.print)
    print(f"{b.bundle_id}  {b.path}  sha256={b.sha256}  python={','.join(b.python_versions)}")


def _lab_hosts(inventory, count: int):
    from tritonfleet.lab import LabHost
    inv = load_inventory(inventory)
    hosts = inv.select(group="lab")
    if not 1 <= count <= len(hosts):
        raise TritonfleetError(f"--hosts must be between 1 and {len(hosts)} (group lab has {len(hosts)} hosts)")
    return [LabHost(h.name, h.address) for h in hosts[:count]]


@clear_errors
def lab_up_command(count, inventory) -> None:
    from tritonfleet import lab
    hosts = _lab_hosts(inventory, count_option(count, "hosts"))
    with lab.exclusive("invoke lab.up"):
        states = lab.up(hosts, progress=console.print)
    _print_lab(states)


@clear_errors
def lab_down_command() -> None:
    from tritonfleet import lab
    with lab.exclusive("invoke lab.down"):
        lab.down(progress=console.print)


@clear_errors
def lab_status_command() -> None:
    from tritonfleet import lab
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
