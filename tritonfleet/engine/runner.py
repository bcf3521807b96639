"""Run a playbook on a set of hosts: everything checked first, then hosts in parallel, one connection each.

Before any host is touched: the playbook (modules, arguments, Jinja2, notify targets), the server flags
of every host, the bundle and every model repository the run will push. Then each host gathers facts
once and runs its plays; handlers run once each, at `meta: flush_handlers` or at the end.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from tritonfleet.engine import hostlock
from tritonfleet.triton import layout
from tritonfleet.engine.connection import HostConnection, Unreachable
from tritonfleet.errors import TritonfleetError
from tritonfleet.triton.facts import gather_facts
from tritonfleet.engine.inventory import Host
from tritonfleet.triton.models import SHELL_SAFE
from tritonfleet.modules import MODULES, Outcome
from tritonfleet.engine.playbook import Play, Playbook, Task, evaluate_when, load_playbook, render
from tritonfleet.engine.report import Reporter

MAGIC_VARS = {"facts", "inventory_hostname", "inventory_dir", "group_names", "triton_server_args",
              "triton_root", "triton_unit_path", "triton_packages", "bundle", "repository"}


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


class HostContext:
    """What a module sees: the host, its connection, its facts, its vars, and the run's inputs."""

    def __init__(self, host: Host, conn: HostConnection, hostvars: dict, check: bool, bundle, repository,
                 progress):
        self.host, self.conn, self.vars, self.check = host, conn, hostvars, check
        self.bundle, self.repository, self.progress = bundle, repository, progress
        self.facts = None
        self._endpoint = None

    def server_endpoint(self) -> tuple[str, int, int]:
        """Where the control machine reaches this host's server: (address, HTTP port, gRPC port).

        A server bound to the host's loopback only is reached through ports forwarded over SSH.
        """
        if self._endpoint is None:
            http, grpc = int(self.vars["triton_http_port"]), int(self.vars["triton_grpc_port"])
            if layout.is_loopback(str(self.vars["triton_http_address"])):
                local_http, local_grpc = self.conn.forward([http, grpc])
                self._endpoint = ("127.0.0.1", local_http, local_grpc)
            else:
                self._endpoint = (self.host.address, http, grpc)
        return self._endpoint


def host_vars(host: Host, extra_vars: dict) -> dict:
    """Defaults < inventory (already merged with Ansible's precedence) < extra vars (command line)."""
    merged = {**layout.DEFAULT_VARS, **host.vars, **extra_vars}
    merged["triton_server_args"] = layout.server_args(merged)
    merged["triton_root"] = layout.TRITON_ROOT
    merged["triton_unit_path"] = layout.UNIT_PATH
    return merged


def _play_applies(play: Play, host: Host) -> bool:
    patterns = [p.strip() for p in play.hosts.replace(",", ":").split(":") if p.strip()]
    return any(p in ("all", "*", host.name) or p in host.groups for p in patterns)


def _known_vars(hostvars: list[dict]) -> set[str]:
    common = set.intersection(*(set(v) for v in hostvars)) if hostvars else set()
    return common | set(layout.DEFAULT_VARS) | MAGIC_VARS


def checked_host_vars(hosts: list[Host], extra_vars: dict | None = None) -> dict[str, dict]:
    """Every host's vars, checked before any host is touched (an error names the host and what to do)."""
    all_vars = {}
    for host in hosts:
        try:
            all_vars[host.name] = v = host_vars(host, extra_vars or {})
        except TritonfleetError as exc:
            raise TritonfleetError(f"host {host.name}: {exc.message}", hint=exc.hint) from None
        path = str(v["triton_model_repository_path"])  # it reaches `bash -c` unquoted inside the Python backend
        if not path.startswith("/") or not all(SHELL_SAFE.match(c) for c in path):
            raise TritonfleetError(f"host {host.name}: triton_model_repository_path {path!r} must be an absolute "
                                   "path of letters, digits and _ . + @ = , : % / -",
                                   hint="Triton's Python backend passes the model path unquoted to `bash -c`: "
                                        "spaces break every model and quotes, ';', '$(...)' run as commands")
    return all_vars


def prepare(playbook_path: str | Path, hosts: list[Host], extra_vars: dict | None = None,
            bundle_source: str | None = None, progress=print):
    """Everything that can be checked without a host; raises TritonfleetError before any host is touched."""
    all_vars = checked_host_vars(hosts, extra_vars)
    book = load_playbook(playbook_path, MODULES, _known_vars(list(all_vars.values())))
    needs = {n for m in book.modules_used() if m in MODULES for n in MODULES[m].needs}
    bundle = None
    if "bundle" in needs:
        from tritonfleet.triton.bundle import resolve_bundle
        bundle = resolve_bundle(bundle_source, progress=progress)
    repositories = {}
    if needs & {"repository", "bundle"}:
        from tritonfleet.triton.models import validate_repository
        for name, v in all_vars.items():
            path = str(Path(str(v["model_repository"])).expanduser().resolve())
            if path not in repositories:
                repositories[path] = validate_repository(path)
            v["model_repository"] = path
    for v in all_vars.values():
        if bundle is not None:
            v["bundle"] = {"id": bundle.bundle_id, "triton_version": bundle.triton_version}
        if v["model_repository"] in repositories:
            v["repository"] = {"digest": repositories[v["model_repository"]].digest}
    return book, all_vars, bundle, repositories


def run_playbook(playbook_path: str | Path, hosts: list[Host], *, check: bool = False,
                 extra_vars: dict | None = None, bundle_source: str | None = None, forks: int = 10,
                 tags: tuple = (), reporter: Reporter | None = None, prepared=None, recap: bool = True,
                 cancel: threading.Event | None = None) -> RunResult:
    """Run a playbook on hosts in parallel (at most `forks` at once); `prepared` reuses a `prepare()` result."""
    reporter = reporter or Reporter()
    book, all_vars, bundle, repositories = prepared or prepare(playbook_path, hosts, extra_vars, bundle_source,
                                                               progress=reporter.info)
    reporter.start(book, hosts, check)

    def one(host: Host) -> HostRun:
        hv = all_vars[host.name]
        run = HostRun(host.name)
        repo = repositories.get(hv["model_repository"])
        try:
            conn = HostConnection(host)
        except Unreachable as exc:
            run.unreachable, run.error = True, str(exc)
            reporter.unreachable(host.name, str(exc))
            return run
        ctx = HostContext(host, conn, hv, check, bundle, repo, lambda msg: reporter.progress(host.name, msg))
        locked = False
        try:
            if not check:
                note = hostlock.acquire(conn, f"{book.path.stem} (run {hostlock.RUN_ID})")
                locked = True
                if note:
                    run.notes.append(note)
                    reporter.progress(host.name, note)
            _run_host(book, ctx, run, tags, reporter)
        except Unreachable as exc:
            run.unreachable, run.error = True, str(exc)
            reporter.unreachable(host.name, str(exc))
        except hostlock.HostLocked as exc:
            run.error = str(exc)
            reporter.failed_host(host.name, str(exc))
        except TritonfleetError as exc:  # e.g. facts could not be gathered: this host fails, the others go on
            run.error = str(exc)
            reporter.failed_host(host.name, str(exc))
        finally:
            if locked:
                try:
                    hostlock.release(conn)
                except (Unreachable, TritonfleetError):
                    pass  # the host went away; its lock is stale and the next run takes it over
            conn.close()
        return run

    with cancel_on_interrupt(cancel) as cancelled:
        def guarded(host: Host) -> HostRun:
            if cancelled.is_set():
                return HostRun(host.name, error=NOT_STARTED)
            return one(host)

        with ThreadPoolExecutor(max_workers=max(1, min(forks, len(hosts)))) as pool:
            runs = list(pool.map(guarded, hosts))
    result = RunResult(str(book.path), check, runs, cancelled.is_set())
    if recap:
        reporter.recap(result)
    return result


NOT_STARTED = "interrupted before this host was started"


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


def _run_host(book: Playbook, ctx: HostContext, run: HostRun, tags: tuple, reporter: Reporter) -> None:
    started = time.monotonic()
    ctx.facts = gather_facts(ctx.conn, str(ctx.vars["triton_user"]), str(ctx.vars["triton_model_repository_path"]))
    run.facts_seconds = time.monotonic() - started
    ctx.vars["facts"] = ctx.facts.as_dict()
    ctx.vars["triton_packages"] = _packages_for(ctx)
    run.facts = ctx.facts.summary()
    run.release_before = ctx.facts.live.id if ctx.facts.live else ""
    try:
        _run_plays(book, ctx, run, tags, reporter)
    finally:
        run.live_release = ctx.facts.live_release
        run.release_after = ctx.facts.live.id if ctx.facts.live else ""


def _run_plays(book: Playbook, ctx: HostContext, run: HostRun, tags: tuple, reporter: Reporter) -> None:
    notified: list[str] = []
    handlers = book.handlers
    for play in book.plays:
        if not _play_applies(play, ctx.host):
            continue
        context = {**play.vars, **ctx.vars}
        for task in play.tasks:
            if task.module == "meta":
                if not _flush(notified, handlers, ctx, run, reporter, context):
                    return
                continue
            if tags and not set(task.tags) & set(tags):
                continue
            outcome = _run_task(task, ctx, context)
            _record(run, task, outcome, reporter, ctx.host.name)
            if outcome.failed:
                return
            if outcome.changed:
                notified += [n for n in task.notify if n not in notified]
    _flush(notified, handlers, ctx, run, reporter, {**ctx.vars})


def _packages_for(ctx: HostContext) -> list[str]:
    if "triton_packages" in ctx.host.vars:
        return list(ctx.host.vars["triton_packages"] or [])
    if not ctx.facts.python_version:
        return []
    try:
        return layout.python_packages(ctx.facts.pkg_mgr, ctx.facts.python_version)
    except TritonfleetError:
        return []  # the preflight step reports the missing package manager with its fix


def _run_task(task: Task, ctx: HostContext, context: dict) -> Outcome:
    started = time.monotonic()
    outcome = _run_module(task, ctx, context)
    outcome.seconds = time.monotonic() - started
    return outcome


def _run_module(task: Task, ctx: HostContext, context: dict) -> Outcome:
    try:
        if not evaluate_when(task.when, context):
            return Outcome(skipped=True, msg="condition false")
        args = render(task.args, context)
        return MODULES[task.module].run(ctx, args)
    except Unreachable:
        raise
    except TritonfleetError as exc:
        return Outcome(failed=True, msg=str(exc))
    except Exception as exc:  # a module bug must fail the host, with where it happened
        return Outcome(failed=True, msg=f"{type(exc).__name__}: {exc} (in step at {task.where})")


def _flush(notified: list, handlers: dict, ctx, run, reporter, context) -> bool:
    while notified:
        name = notified.pop(0)
        handler = handlers[name]
        outcome = _run_task(handler, ctx, {**context})
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
