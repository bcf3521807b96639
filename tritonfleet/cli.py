"""The commands behind the invoke tasks: turn options into engine calls and errors into clear exits."""

from __future__ import annotations

import functools
import json
import sys

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from tritonfleet.errors import TritonfleetError
from tritonfleet.engine.inventory import load_inventory
from tritonfleet.options import Options, parse_options
from tritonfleet.paths import REPO_ROOT
from tritonfleet.engine.report import Reporter, redact, redact_data

console = Console(stderr=True, highlight=False, soft_wrap=True)


class CommandFailed(SystemExit):
    """Ends the command with a non-zero exit and no traceback."""


def command(fn):
    """A task's body, called with Invoke's configuration and the task's options as given: the options are
    parsed first (tritonfleet/options.py) and the body gets them as one `Options`. Every error is a clear
    exit, never a traceback: its message on stderr and, with --json, a JSON object on stdout
    (`{"ok": false, "error", "hint", "file", "line"}`), so a script reading stdout always gets JSON."""
    @functools.wraps(fn)
    def wrapper(config, *args, **given):
        json_output = bool(given.get("json"))
        try:
            return fn(parse_options(config, **given), *args)
        except TritonfleetError as exc:
            _print_error(str(exc))
            _print_json_error(json_output, exc.message, exc.hint, exc.file, exc.line)
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
                      line: int | None = None) -> None:
    if json_output:
        report = {"ok": False, "error": error, "hint": hint, "file": file, "line": line}
        print(json.dumps(redact_data(report), indent=2, default=str))


def _hosts(opts: Options) -> list:
    return load_inventory(opts.inventory).select(host=opts.host, group=opts.group)


def _run_options(opts: Options):
    from tritonfleet.fleet.run import RunOptions
    return RunOptions(check=opts.check, forks=opts.forks, extra_vars=opts.extra_vars, bundle_source=opts.bundle)


def _reporter(opts: Options) -> Reporter:
    return Reporter(json_output=opts.json, verbose=opts.verbose)


@command
def run_playbook_command(opts: Options, playbook: str) -> None:
    from tritonfleet.fleet.run import run_playbook
    result = run_playbook(REPO_ROOT / "playbooks" / playbook, _hosts(opts), _run_options(opts),
                          reporter=_reporter(opts))
    if result.interrupted:
        raise CommandFailed(130)
    if not result.ok:
        raise CommandFailed(1)


@command
def rollout_command(opts: Options) -> None:
    from tritonfleet.fleet.rollout import rollout
    hosts = _hosts(opts)
    result = rollout(hosts, _run_options(opts), canary=opts.canary, batch=opts.batch_size(len(hosts)),
                     max_fail=opts.failures_allowed(len(hosts)), reporter=_reporter(opts))
    if result.stopped.startswith("interrupted"):
        raise CommandFailed(130)
    if not result.ok:
        raise CommandFailed(1)


@command
def status_command(opts: Options) -> None:
    from tritonfleet.fleet.status import as_dicts, fleet_status
    rows = fleet_status(_hosts(opts), opts.extra_vars, opts.bundle, progress=console.print)
    table = Table("host", "reachable", "triton", "release", "service", "uptime", "restarts", "models", "drift")
    for r in rows:
        models_text = ", ".join(f"{n}:{s.split(':')[0]}" for n, s in sorted(r.models.items()))
        table.add_row(r.name, "yes" if r.reachable else f"NO: {r.error.splitlines()[0]}", r.triton_version,
                      r.release, r.service, f"{r.uptime_s}s" if r.service == "active" else "", str(r.restarts),
                      models_text, "; ".join(r.drift))
    Console(stderr=True, highlight=False, width=None if sys.stderr.isatty() else 200).print(table)
    failed = any(not r.reachable or r.drift for r in rows)
    if opts.json:
        print(json.dumps({"ok": not failed, "hosts": as_dicts(rows)}, indent=2))
    if failed:
        raise CommandFailed(1)


@command
def doctor_command(opts: Options) -> None:
    """Diagnose hosts (and with --fix, repair what is safe); exit 1 while any error finding remains."""
    from tritonfleet.fleet.run import checked_host_vars
    from tritonfleet.triton import doctor
    hosts = _hosts(opts)
    out = Console(stderr=opts.json, highlight=False, soft_wrap=True)
    reports = doctor.run_doctor(hosts, checked_host_vars(hosts), fix=opts.fix,
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
        json.dump({"ok": not any(r.failed for r in reports), "hosts": [r.as_dict() for r in reports]},
                  sys.stdout, indent=2, default=str)
        sys.stdout.write("\n")
    if any(r.failed for r in reports):
        raise CommandFailed(1)


@command
def models_diff_command(opts: Options) -> None:
    import dataclasses

    from tritonfleet.fleet.modeldiff import diff_hosts
    from tritonfleet.fleet.run import checked_host_vars
    from tritonfleet.triton.models import validate_repository
    hosts = _hosts(opts)
    all_vars = checked_host_vars(hosts, opts.extra_vars)
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
    from tritonfleet.lab import LabHost
    inv = load_inventory(inventory)
    hosts = inv.select(group="lab")
    if not 1 <= count <= len(hosts):
        raise TritonfleetError(f"--hosts must be between 1 and {len(hosts)} (group lab has {len(hosts)} hosts)")
    return [LabHost(h.name, h.address) for h in hosts[:count]]


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
    table = Table("host", "address", "state", "pid", "console log")
    for s in states:
        table.add_row(s.name, s.address, s.state, str(s.pid or ""), str(s.console_log))
    Console(highlight=False).print(table)
    if any(not s.state.startswith(("running", "degraded")) for s in states):
        sys.exit(1)
