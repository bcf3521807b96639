"""Run a loaded playbook's plays on one host: tasks in order, `when` and tags, handlers once each.

Hosts, connections and locks are the executor's (`engine.executor`); what a run checks before any host is
touched and which facts it gathers belong to the caller (`fleet.run`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from tritonfleet.engine.connection import Unreachable
from tritonfleet.engine.inventory import Host
from tritonfleet.engine.playbook import Play, Playbook, Task, evaluate_when, render
from tritonfleet.engine.report import Reporter
from tritonfleet.engine.spec import ArgumentError, HostContext, Module, ModuleConnection, Outcome
from tritonfleet.errors import TritonfleetError


@dataclass
class HostRun:
    name: str
    counts: dict = field(default_factory=lambda: {"ok": 0, "changed": 0, "failed": 0, "skipped": 0})
    unreachable: bool = False
    error: str = ""
    steps: list = field(default_factory=list)
    bytes_sent: int = 0
    facts: dict = field(default_factory=dict)
    live_release: str = ""
    release_before: str = ""
    release_after: str = ""
    notes: list = field(default_factory=list)
    facts_seconds: float = 0.0

    @property
    def failed(self) -> bool:
        return self.unreachable or self.counts["failed"] > 0 or bool(self.error)

    def as_dict(self) -> dict:
        return {"host": self.name, **self.counts, "unreachable": self.unreachable, "error": self.error,
                "bytes_sent": self.bytes_sent, "live_release": self.live_release,
                "release_before": self.release_before, "release_after": self.release_after, "notes": self.notes,
                "facts_seconds": round(self.facts_seconds, 3),
                "facts": self.facts, "steps": self.steps}


@dataclass
class RunResult:
    playbook: str
    check: bool
    hosts: list
    interrupted: bool = False

    @property
    def ok(self) -> bool:
        return not self.interrupted and not any(h.failed for h in self.hosts)

    @property
    def changed(self) -> int:
        return sum(h.counts["changed"] for h in self.hosts)

    def as_dict(self) -> dict:
        return {"playbook": self.playbook, "check": self.check, "ok": self.ok, "changed": self.changed,
                "interrupted": self.interrupted,
                "hosts": [h.as_dict() for h in self.hosts]}


def _play_applies(play: Play, host: Host) -> bool:
    patterns = [p.strip() for p in play.hosts.replace(",", ":").split(":") if p.strip()]
    return any(p in ("all", "*", host.name) or p in host.groups for p in patterns)


def selected_by_tags(task_tags, only: tuple = (), skip: tuple = ()) -> bool:
    """Whether a task runs under `--tags only --skip-tags skip`, as Ansible decides (playbook/taggable.py
    evaluate_tags): no --tags means `all`, which runs every task but those tagged `never`; `always` runs unless
    skipped by name or by `--skip-tags all`; `tagged` and `untagged` select by whether a task has tags."""
    tags = set(task_tags) or {"untagged"}
    only = set(only) or {"all"}
    tagged = tags != {"untagged"}
    if not ("always" in tags or ("all" in only and "never" not in tags) or tags & only
            or ("tagged" in only and tagged and "never" not in tags)):
        return False
    if "all" in skip:
        return "always" in tags and "always" not in skip
    return not (tags & set(skip) or ("tagged" in skip and tagged))


def run_plays(book: Playbook, ctx: HostContext, run: HostRun, tags: tuple, reporter: Reporter, modules: dict,
              skip_tags: tuple = ()) -> None:
    """Every play of `book` that applies to the host, task by task (those `tags` and `skip_tags` select), handlers
    at flush points and at the end. Handlers run when notified, whatever their tags, as in Ansible."""
    notified: list[str] = []
    handlers = book.handlers
    for play in book.plays:
        if not _play_applies(play, ctx.host):
            continue
        context = {**play.vars, **ctx.vars}
        for task in play.tasks:
            if task.module == "meta":
                if not _flush(notified, handlers, ctx, run, reporter, context, modules):
                    return
                continue
            if not selected_by_tags(task.tags, tags, skip_tags):
                continue
            outcome = _run_task(task, ctx, context, modules)
            _record(run, task, outcome, reporter, ctx.host.name)
            if outcome.failed:
                return
            if outcome.changed:
                notified += [n for n in task.notify if n not in notified]
    _flush(notified, handlers, ctx, run, reporter, {**ctx.vars}, modules)


def _run_task(task: Task, ctx: HostContext, context: dict, modules: dict) -> Outcome:
    started = time.monotonic()
    outcome = _run_module(task, ctx, context, modules)
    outcome.seconds = time.monotonic() - started
    ctx.changes += outcome.changed
    return outcome


def _run_module(task: Task, ctx: HostContext, context: dict, modules: dict) -> Outcome:
    try:
        if not evaluate_when(task.when, context):
            return Outcome(skipped=True, msg="condition false")
        return run_module(modules[task.module], ctx, render(task.args, context))
    except Unreachable:
        raise
    except ArgumentError as exc:  # a rendered value the module cannot take: the playbook's line says which step
        return Outcome(failed=True, msg=str(TritonfleetError(exc.message, file=task.file, line=task.line,
                                                             hint=exc.hint)))
    except TritonfleetError as exc:
        return Outcome(failed=True, msg=str(exc))
    except Exception as exc:  # a module bug must fail the host, with where it happened
        return Outcome(failed=True, msg=f"{type(exc).__name__}: {exc} (in step at {task.where})")


def run_module(module: Module, ctx: HostContext, args: dict) -> Outcome:
    """One module call as every run makes it: rendered args checked against the spec, check mode enforced.

    A module that does not support check mode is skipped in it; any other gets a connection that refuses to
    change the host in check mode (spec.ModuleConnection) for the length of its call.
    """
    checked = module.checked_args(args)
    if ctx.check and not module.supports_check_mode:
        return Outcome(skipped=True, msg="check mode: not supported")
    conn = ctx.conn
    ctx.conn = ModuleConnection(conn, ctx.check)
    try:
        return module.run(ctx, checked)
    finally:
        ctx.conn = conn


def _flush(notified: list, handlers: dict, ctx, run, reporter, context, modules: dict) -> bool:
    while notified:
        name = notified.pop(0)
        handler = handlers[name]
        outcome = _run_task(handler, ctx, {**context}, modules)
        _record(run, handler, outcome, reporter, ctx.host.name, handler=True)
        if outcome.failed:
            return False
    return True


def _record(run: HostRun, task: Task, outcome: Outcome, reporter: Reporter, host: str, handler=False) -> None:
    run.counts[outcome.status] += 1
    run.bytes_sent += int(outcome.data.get("bytes_sent", 0))
    step = {"task": task.name, "module": task.module, "status": outcome.status, "msg": outcome.msg,
            "handler": handler, "seconds": round(outcome.seconds, 3)}
    if outcome.data.get("bytes_sent"):
        step["bytes_sent"] = int(outcome.data["bytes_sent"])
    if outcome.diff:
        step["diff"] = outcome.diff
    extra = {k: v for k, v in outcome.data.items() if k != "bytes_sent"}
    if extra:
        step["data"] = extra
    run.steps.append(step)
    reporter.step(host, task, outcome, handler)
