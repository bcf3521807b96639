"""The commands behind the invoke tasks: turn options into engine calls and errors into clear exits."""

from __future__ import annotations

import dataclasses
import functools
import json
import sys

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from tritonfleet import secrets
from tritonfleet.errors import TritonfleetError
from tritonfleet.engine import patterns, vault
from tritonfleet.engine.inventory import Inventory, load_inventory
from tritonfleet.options import Options, command_line_vars, parse_options, vault_sources
from tritonfleet.paths import REPO_ROOT
from tritonfleet.engine.report import Reporter, redact, redact_data

console = Console(stderr=True, highlight=False, soft_wrap=True)


class CommandFailed(SystemExit):
    """Ends the command with a non-zero exit and no traceback."""


def command(fn):
    """A task's body, called with Invoke's configuration and the task's options as given: the options are
    parsed first (tritonfleet/options.py), the vault passwords of a task that takes them read (so every file
    loaded after can be decrypted), and the body gets the options as one `Options`. Every error is a clear
    exit, never a traceback: its message on stderr and, with --json, a JSON object on stdout
    (`{"ok": false, "error", "hint", "file", "line"}`), so a script reading stdout always gets JSON."""
    @functools.wraps(fn)
    def wrapper(config, *args, **given):
        json_output = bool(given.get("json"))
        try:
            opts = parse_options(config, **given)
            vault.configure(vault.load_secrets(vault_sources(opts)) if "vault_id" in given else [])
            return fn(opts, *args)
        except TritonfleetError as exc:
            _print_error(str(exc))
            _print_json_error(json_output, exc.message, exc.hint, exc.file, exc.line,
                              problems=[dataclasses.asdict(p) for p in getattr(exc, "problems", [])])
            raise CommandFailed(2) from None
        except OSError as exc:  # a local file the run needs cannot be read (model repository, key, bundle)
            what = f"{exc.strerror or exc}: {exc.filename}" if exc.filename else str(exc)
            hint = "check that the path exists and that this user can read it"
            _print_error(f"{what}\n  fix: {hint}")
            _print_json_error(json_output, what, hint, exc.filename)
            raise CommandFailed(2) from None
        except KeyboardInterrupt:
            console.print("[bold red]interrupted[/bold red]")
            _print_json_error(json_output, "interrupted")
            raise CommandFailed(130) from None
    return wrapper


def _print_error(text: str) -> None:
    # escaped: a message may hold '[' (paths, values); redacted: it may hold a secret var's value
    console.print(f"[bold red]error:[/bold red] {escape(redact(text))}", markup=True, highlight=False)


def _print_json_error(json_output: bool, error: str, hint: str | None = None, file: str | None = None,
                      line: int | None = None, problems: list | None = None) -> None:
    """With --json, the error as one object on stdout; a model repository's refusal lists every problem (file,
    line, model, message, hint), as stderr does."""
    if json_output:
        report = {"ok": False, "error": error, "hint": hint, "file": file, "line": line}
        if problems:
            report["problems"] = problems
        print(json.dumps(redact_data(report), indent=2, default=str))


def _hosts(opts: Options) -> list:
    """The hosts --host or --group select (the play's `hosts:`; every host without either), narrowed by --limit as
    ansible-playbook narrows a play. With --list-hosts they are printed and the command ends there, exit 0."""
    inventory = load_inventory(list(opts.inventory))
    hosts = inventory.select(host=opts.host, group=opts.group) if opts.limit is None else _limited(inventory, opts)
    if opts.list_hosts:
        _print_hosts([h.name for h in hosts], opts.json)
        raise SystemExit(0)
    return hosts


def _limited(inventory: Inventory, opts: Options) -> list:
    """The selected hosts that the --limit pattern matches too, in the selection's order; only their vars are read
    (for --group, the others' are not rendered). Nothing left is an error, as ansible-playbook's."""
    allowed = set(patterns.match(opts.limit, inventory, warn=_warn))
    if opts.host is not None:
        hosts = [h for h in inventory.select(host=opts.host) if h.name in allowed]
    else:
        hosts = [inventory.host(n) for n in inventory.group_hosts(opts.group or "all") if n in allowed]
    if not hosts:
        chosen = f"--host {opts.host}" if opts.host else f"group {opts.group or 'all'}"
        raise TritonfleetError(f"--limit {opts.limit!r} leaves no hosts to target among the hosts of {chosen}",
                               file=str(inventory.path), hint="check the pattern: `--list-hosts` shows what it selects")
    return hosts


def _warn(message: str) -> None:
    console.print(f"[yellow]warning:[/yellow] {escape(redact(message))}")


def _print_hosts(names: list[str], json_output: bool) -> None:
    """What `ansible PATTERN --list-hosts` prints; with --json, `{"ok": true, "hosts": [...]}`."""
    if json_output:
        print(json.dumps({"ok": True, "hosts": names}, indent=2))
        return
    print(f"  hosts ({len(names)}):" + "".join(f"\n    {name}" for name in names))


def _command_vars(opts: Options, hosts: list) -> dict:
    """`--models` and `-e`, the vars above all others. A var that is secret (by its name, or listed in a host's
    tritonfleet_secret_vars) is redacted from every output from here on."""
    found = command_line_vars(opts)
    for host in hosts:
        secrets.register(secrets.secret_values({**host.vars, **found}))
    return found


def _run_options(opts: Options, hosts: list):
    from tritonfleet.fleet.run import RunOptions
    return RunOptions(check=opts.check, forks=opts.forks, tags=opts.tags, skip_tags=opts.skip_tags,
                      extra_vars=_command_vars(opts, hosts), bundle_source=opts.bundle)


def _reporter(opts: Options) -> Reporter:
    return Reporter(json_output=opts.json, verbose=opts.verbose, diff=opts.diff)


@command
def inventory_command(opts: Options) -> None:
    """The resolved inventory as `ansible-inventory --list` (or `--host NAME`) prints it, secrets redacted."""
    from tritonfleet.engine.inventory import ansible_host, ansible_json, ansible_list
    if opts.list_all == bool(opts.host):
        raise TritonfleetError("give --list or --host NAME", hint="as ansible-inventory: --list prints every group "
                                                                  "and host, --host NAME one host's vars")
    inventory = load_inventory(list(opts.inventory))
    print(redact(ansible_json(ansible_host(inventory, opts.host) if opts.host else ansible_list(inventory))))


@command
def run_playbook_command(opts: Options, playbook: str) -> None:
    from tritonfleet.fleet.run import run_playbook
    hosts = _hosts(opts)
    result = run_playbook(REPO_ROOT / "playbooks" / playbook, hosts, _run_options(opts, hosts),
                          reporter=_reporter(opts))
    if result.interrupted:
        raise CommandFailed(130)
    if not result.ok:
        raise CommandFailed(1)


@command
def rollout_command(opts: Options) -> None:
    from tritonfleet.fleet.rollout import rollout
    hosts = _hosts(opts)
    result = rollout(hosts, _run_options(opts, hosts), canary=opts.canary, batch=opts.batch_size(len(hosts)),
                     max_fail=opts.failures_allowed(len(hosts)), reporter=_reporter(opts))
    if result.stopped.startswith("interrupted"):
        raise CommandFailed(130)
    if not result.ok:
        raise CommandFailed(1)


@command
def status_command(opts: Options) -> None:
    from tritonfleet.fleet.status import as_dicts, fleet_status
    hosts = _hosts(opts)
    rows = fleet_status(hosts, _command_vars(opts, hosts), opts.bundle, progress=console.print)
    table = Table("host", "reachable", "triton", "release", "service", "uptime", "restarts", "models", "GPUs",
                  "drift")
    for r in rows:
        models_text = ", ".join(f"{n}:{s.split(':')[0]}" for n, s in sorted(r.models.items()))
        table.add_row(r.name, "yes" if r.reachable else f"NO: {r.error.splitlines()[0]}", r.triton_version,
                      r.release, r.service, f"{r.uptime_s}s" if r.service == "active" else "", str(r.restarts),
                      models_text, "; ".join(r.gpus), "; ".join(r.drift))
    Console(stderr=True, highlight=False, width=None if sys.stderr.isatty() else 200).print(table)
    failed = any(not r.reachable or r.drift for r in rows)
    if opts.json:
        print(json.dumps({"ok": not failed, "hosts": as_dicts(rows)}, indent=2))
    if failed:
        raise CommandFailed(1)


class _RedactingConsole(Console):
    """A console that prints no secret: the doctor shows the host's evidence, which may hold the API key."""

    def print(self, *objects, **kwargs) -> None:
        super().print(*(redact(o) for o in objects), **kwargs)


@command
def doctor_command(opts: Options) -> None:
    """Diagnose hosts (and with --fix, repair what is safe); exit 1 while any error finding remains."""
    from tritonfleet.fleet.run import checked_host_vars
    from tritonfleet.triton import doctor
    hosts = _hosts(opts)
    out = _RedactingConsole(stderr=opts.json, highlight=False, soft_wrap=True)
    reports = doctor.run_doctor(hosts, checked_host_vars(hosts, _command_vars(opts, hosts)), fix=opts.fix,
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
        elif opts.fix and r.before is not None and r.before.errors and not r.error:
            out.print(f"{r.host}: no safe fix applies; the fixes above need a person")
        if r.error:  # the doctor could not finish: before or during the fixes
            out.print(f"[bold red]{r.host}: FAILED[/bold red] the doctor could not finish: {escape(r.error)}")
    if opts.json:
        json.dump(redact_data({"ok": not any(r.failed for r in reports), "hosts": [r.as_dict() for r in reports]}),
                  sys.stdout, indent=2, default=str)
        sys.stdout.write("\n")
    if any(r.failed for r in reports):
        raise CommandFailed(1)


@command
def models_diff_command(opts: Options) -> None:
    from tritonfleet.fleet.modeldiff import diff_hosts
    from tritonfleet.fleet.run import checked_host_vars
    from tritonfleet.triton.models import validate_repository
    hosts = _hosts(opts)
    all_vars = checked_host_vars(hosts, _command_vars(opts, hosts))
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
    failed = any(d.error for d in diffs)
    if opts.json:
        print(json.dumps({"ok": not failed, "hosts": [dataclasses.asdict(d) for d in diffs]}, indent=2))
    if failed:
        raise CommandFailed(1)


@command
def bundle_command(opts: Options) -> None:
    from tritonfleet.triton.bundle import resolve_bundle
    b = resolve_bundle(opts.source, progress=console.print)
    print(f"{b.bundle_id}  {b.path}  sha256={b.sha256}  python={','.join(b.python_versions)}")


def _lab_hosts(inventory, count: int):
    from tritonfleet.lab import DEFAULT_SUITE, LabHost
    inv = load_inventory(list(inventory))
    hosts = inv.select(group="lab")
    if not 1 <= count <= len(hosts):
        raise TritonfleetError(f"--hosts must be between 1 and {len(hosts)} (group lab has {len(hosts)} hosts)")
    return [LabHost(h.name, h.address, str(h.vars.get("lab_suite", DEFAULT_SUITE))) for h in hosts[:count]]


@command
def lab_up_command(opts: Options) -> None:
    from tritonfleet import lab
    hosts = _lab_hosts(opts.inventory, opts.hosts)
    with lab.exclusive("invoke lab.up"):
        states = lab.up(hosts, progress=console.print)
    _print_lab(states)


@command
def lab_down_command(opts: Options) -> None:
    from tritonfleet import lab
    with lab.exclusive("invoke lab.down"):
        lab.down(progress=console.print)


@command
def lab_status_command(opts: Options) -> None:
    from tritonfleet import lab
    states = lab.status()
    if not states:
        console.print("no lab hosts (bring them up with `invoke lab.up --hosts N`)")
        return
    _print_lab(states)


def _print_lab(states) -> None:
    table = Table("host", "address", "release", "state", "pid", "console log")
    for s in states:
        table.add_row(s.name, s.address, s.suite, s.state, str(s.pid or ""), str(s.console_log))
    Console(highlight=False).print(table)
    if any(not s.state.startswith(("running", "degraded")) for s in states):
        sys.exit(1)
