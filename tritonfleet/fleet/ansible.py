"""The engine for ONE host of an Ansible play: what the `tritonfleet.triton` collection's action plugins call.

Ansible decides everything around a host: which hosts, in which batches (`serial`), how many at once (forks),
when a play stops (`max_fail_percentage`), check and diff mode, the host's vars (inventory, group_vars, play vars,
`-e`, vault) and its connection settings (`-u`, `--private-key`, ansible.cfg, inventory vars, AWX machine
credentials). The action plugin hands them over as plain data, this module builds the engine's `Host` from them and
runs the engine on that one host, through the same calls `invoke` makes (`run_playbook`, `rollout`,
`fleet_status`, `run_doctor`), so the host lock, the unreachable/failed mapping and the rollback of a failed deploy
are the engine's own. It imports nothing of Ansible (the hermetic tests call it directly) and knows nothing of
Triton (the engine's playbooks do).
"""

from __future__ import annotations

import getpass
import io
import json
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterable

from rich.console import Console

from tritonfleet import secrets
from tritonfleet.engine import varspec
from tritonfleet.engine.inventory import CONNECTION_VARS, Host
from tritonfleet.engine.report import Reporter, redact_data
from tritonfleet.engine.runner import HostRun
from tritonfleet.errors import TritonfleetError
from tritonfleet.fleet.rollout import DEPLOY, ROLLBACK, error_of, rollout
from tritonfleet.fleet.run import RunOptions, checked_host_vars, run_playbook
from tritonfleet.paths import REPO_ROOT
from tritonfleet.triton import layout

SYNC_MODELS = REPO_ROOT / "playbooks" / "sync-models.yml"
SMOKE = REPO_ROOT / "playbooks" / "smoke.yml"
# Vars of the play the engine reads besides CONNECTION_VARS and layout.VAR_TYPES; other vars stay in Ansible.
ENGINE_VAR_PREFIXES = ("triton_", "tritonfleet_")


@dataclass(frozen=True)
class Mode:
    """How Ansible runs the task: `--check`, `--diff`, and where progress lines go (the plugin: `display.vv`)."""

    check: bool = False
    diff: bool = False
    log: Callable[[str], None] = lambda line: None


@dataclass(frozen=True)
class Connection:
    """The connection settings Ansible resolved for the host (`ansible_*` var name -> value; None: not set) and
    the ones the engine cannot take, named so the host fails saying why rather than at authentication."""

    settings: dict = field(default_factory=dict)
    become_method: str | None = None
    password: bool = False


def engine_host(name: str, var_names: Iterable[str], value_of: Callable[[str], Any], connection: Connection,
                groups: Iterable[str] = (), vaulted: Iterable[str] = ()) -> Host:
    """The engine's Host for an Ansible host: the play's vars the engine reads (`value_of` templates one, so the
    engine gets what Ansible would: vault decrypted, Jinja2 rendered), overridden by the connection settings
    Ansible resolved, each checked as the inventory loader checks them. Secret vars and `vaulted` ones (their
    values came from Ansible Vault) are redacted from everything the engine reports, as its own loader does."""
    names, vaulted = set(var_names), set(vaulted)
    values = {var: _plain(value_of(var)) for var in names if _engine_reads(var)}
    hidden = (secrets.secret_var_names(values) | vaulted) & names  # tritonfleet_secret_vars may name the user's vars
    values.update({var: _plain(value_of(var)) for var in hidden - values.keys()})
    values.update(_connection_vars(name, connection))
    secrets.register(secrets.secret_values(values))
    secrets.register(str(values[var]) for var in vaulted & values.keys())  # a vaulted value is one text
    values = varspec.checked_vars(values, CONNECTION_VARS, name, {})
    return Host(name=name, vars=values, groups=tuple(groups))


def _engine_reads(var: str) -> bool:
    return (var in CONNECTION_VARS or var in layout.VAR_TYPES or var.startswith(ENGINE_VAR_PREFIXES)
            or var.lower().endswith(secrets.SECRET_SUFFIXES))


def _plain(value):
    """Plain data, as YAML would have given it: Ansible's templar returns its own str/dict/list subclasses."""
    return json.loads(json.dumps(value, default=str))


def _connection_vars(name: str, connection: Connection) -> dict:
    """Ansible's resolved settings as the engine's vars. Unset user: Ansible's default, the local user (as OpenSSH,
    not tritonfleet's root). What the engine does not do is refused, naming what to use instead."""
    if connection.password:
        raise TritonfleetError(f"host {name}: an SSH password is set (ansible_password, or a machine credential's "
                               "password), and tritonfleet connects with keys only",
                               hint="use a key: ansible_ssh_private_key_file, or an ssh-agent (AWX loads a "
                                    "machine credential's key into one)")
    settings = {var: _plain(value) for var, value in connection.settings.items() if value not in (None, "")}
    if settings.get("ansible_become") and (connection.become_method or "sudo").rsplit(".", 1)[-1] != "sudo":
        raise TritonfleetError(f"host {name}: become method {connection.become_method} is not supported",
                               hint="tritonfleet becomes with sudo: set become_method: sudo (the default)")
    settings.setdefault("ansible_user", getpass.getuser())
    return settings


def run_on_host(action: str, make_host: Callable[[], Host], args: dict, mode: Mode) -> dict:
    """One action on one host, as an Ansible result (`changed`, `failed` or `unreachable`, `msg`, `diff`, the
    per-step results), every secret redacted. Input the engine refuses before touching the host (a var of the wrong
    type: `make_host` is called here, a model repository that does not validate) fails the host with the engine's
    message and its fix, as Ansible fails a task with bad arguments."""
    try:
        result = ACTIONS[action].run(make_host(), args, mode)
    except TritonfleetError as exc:
        result = {"failed": True, "changed": False, "msg": str(exc)}
    except OSError as exc:  # a local file the run needs cannot be read (model repository, key, bundle)
        result = {"failed": True, "changed": False, "msg": f"{exc.strerror or exc}: {exc.filename}"}
    return redact_data(result)


# ---------------------------------------------------------------------------------------------------------------
# the actions


def _run_options(args: dict, mode: Mode, **extra_vars) -> RunOptions:
    """The options of `invoke <playbook task>`: `models` is `--models`, above every var, as on the command line."""
    if args.get("models"):
        extra_vars["model_repository"] = args["models"]
    return RunOptions(check=mode.check, forks=1, tags=tuple(args.get("tags") or ()),
                      skip_tags=tuple(args.get("skip_tags") or ()), extra_vars=extra_vars,
                      bundle_source=args.get("bundle") or None)


def _reporter(mode: Mode) -> Reporter:
    """The engine's reporter, its lines sent to `mode.log` instead of the terminal Ansible owns."""
    console = Console(file=_Lines(mode.log), width=160, color_system=None, highlight=False, soft_wrap=True)
    return _StepReporter(console=console)


class _StepReporter(Reporter):
    """Progress and steps only: Ansible prints its own recap, and a rollout of one host has none worth a table."""

    def rollout_recap(self, result) -> None:
        pass


class _Lines(io.TextIOBase):
    """A text stream that hands each complete line to a function."""

    def __init__(self, emit: Callable[[str], None]):
        super().__init__()
        self._emit, self._partial = emit, ""

    def write(self, text: str) -> int:
        *lines, self._partial = (self._partial + text).split("\n")
        for line in lines:
            if line.strip():
                self._emit(line)
        return len(text)


def _playbook(path, host: Host, options: RunOptions, mode: Mode) -> dict:
    run = run_playbook(path, [host], options, reporter=_reporter(mode), recap=False).hosts[0]
    return _result_of(run, mode)


def _result_of(run: HostRun, mode: Mode) -> dict:
    """A HostRun as Ansible reads a result: changed when a step changed (or, in check mode, would change)."""
    result = {"changed": run.counts["changed"] > 0, "counts": run.counts, "steps": run.steps,
              "release_before": run.release_before, "release_after": run.release_after,
              "bytes_sent": run.bytes_sent}
    if run.notes:
        result["warnings"] = list(run.notes)
    if mode.diff:
        result["diff"] = [{"prepared": f"# {step['task']}\n{step['diff']}"} for step in run.steps if step.get("diff")]
    if run.unreachable:
        result.update(unreachable=True, msg=run.error)
    elif run.failed:
        result.update(failed=True, msg=error_of(run))
    else:
        result["msg"] = f"{run.counts['changed']} step(s) changed" + (" (check mode)" if mode.check else "")
    return result


def deploy(host: Host, args: dict, mode: Mode) -> dict:
    """`invoke deploy` on the host; in a real run (not --check) with `rollback`, `invoke rollout --host H`: a
    deploy that fails after changing the host puts it back on the release it had, which must pass the smoke test
    (tritonfleet/fleet/rollout.py), and the host fails either way, so Ansible's serial/max_fail_percentage stop."""
    options = _run_options(args, mode)
    if mode.check or not args.get("rollback", True):
        return _playbook(DEPLOY, host, options, mode)
    done = rollout([host], options, canary=0, batch=1, max_fail=0, reporter=_reporter(mode))
    outcome, (deployed, *rollbacks) = done.hosts[0], done.runs
    result = _result_of(deployed, mode)
    if rollbacks:
        result.update(rolled_back=outcome.state == "rolled back", rollback_steps=rollbacks[0].steps,
                      release_after=outcome.release_after,
                      msg=f"{outcome.state} to {outcome.release_after or 'nothing'}: {outcome.error}")
    return result


def sync_models(host: Host, args: dict, mode: Mode) -> dict:
    return _playbook(SYNC_MODELS, host, _run_options(args, mode), mode)


def smoke(host: Host, args: dict, mode: Mode) -> dict:
    return _playbook(SMOKE, host, _run_options(args, mode), mode)


def rollback(host: Host, args: dict, mode: Mode) -> dict:
    return _playbook(ROLLBACK, host, _run_options(args, mode, rollback_to=args.get("to") or ""), mode)


def status(host: Host, args: dict, mode: Mode) -> dict:
    """`invoke status` for the host: what it runs and where it drifts from the vars; changes nothing."""
    from tritonfleet.fleet.status import fleet_status
    options = _run_options(args, mode)
    row = fleet_status([host], options.extra_vars, options.bundle_source, progress=mode.log, forks=1)[0]
    result = {"changed": False, "status": asdict(row), "drift": row.drift}
    if not row.reachable:
        result.update(failed=True, msg=row.error)
    elif row.drift and args.get("fail_on_drift"):
        result.update(failed=True, msg="drift: " + "; ".join(row.drift))
    else:
        result["msg"] = "; ".join(row.drift) or "no drift"
    return result


def doctor(host: Host, args: dict, mode: Mode) -> dict:
    """`invoke doctor [--fix]` for the host. In check mode the safe fixes are reported (changed), not applied."""
    from tritonfleet.triton.doctor import run_doctor, summary
    fix = bool(args.get("fix"))
    hostvars = checked_host_vars([host])
    report = run_doctor([host], hostvars, fix=fix and not mode.check, forks=1,
                        progress=lambda name, msg: mode.log(f"{name} … {msg}"))[0]
    fixable = report.before is not None and any(f.action for f in report.before.errors)
    found = report.as_dict()
    result = {"changed": bool(report.fixes) or (mode.check and fix and fixable),
              **{key: found[key] for key in ("diagnosis", "fixes", "after_fix")}}
    if report.unreachable:
        result.update(unreachable=True, msg=report.unreachable)
    elif report.failed:
        result.update(failed=True, msg=report.error or summary(report.final))
    else:
        result["msg"] = summary(report.final)
    return result


# ---------------------------------------------------------------------------------------------------------------
# argument specs: Ansible's format, validated by the action plugin; plugins/modules/<name>.py documents the same


@dataclass(frozen=True)
class Action:
    run: Callable[[Host, dict, Mode], dict]
    options: dict


_MODELS = {"type": "path"}
_BUNDLE = {"type": "str"}
_TAGS = {"type": "list", "elements": "str", "default": []}
PLAYBOOK_OPTIONS = {"models": _MODELS, "bundle": _BUNDLE, "tags": _TAGS, "skip_tags": _TAGS}
ACTIONS = {
    "deploy": Action(deploy, {**PLAYBOOK_OPTIONS, "rollback": {"type": "bool", "default": True}}),
    "sync_models": Action(sync_models, PLAYBOOK_OPTIONS),
    "smoke": Action(smoke, {"models": _MODELS, "bundle": _BUNDLE}),
    "rollback": Action(rollback, {"to": {"type": "str"}, "models": _MODELS, "bundle": _BUNDLE}),
    "status": Action(status, {"models": _MODELS, "bundle": _BUNDLE,
                              "fail_on_drift": {"type": "bool", "default": False}}),
    "doctor": Action(doctor, {"fix": {"type": "bool", "default": False}}),
}
PATH_OPTIONS = ("models", "bundle")  # relative paths the action plugin finds as Ansible finds files (files/, ...)


def argument_spec(action: str) -> dict:
    return ACTIONS[action].options
