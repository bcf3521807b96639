"""A playbook run on a set of hosts: everything checked first, then hosts in parallel, one connection each.

Before any host is touched: every host's vars and server flags, the playbook (modules, arguments, Jinja2, notify
targets), the bundle and every model repository the run will push. Then each host gathers facts once and runs
its plays (`engine.runner`); handlers run once each, at `meta: flush_handlers` or at the end.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

from tritonfleet.engine.connection import HostConnection
from tritonfleet.engine.executor import Events, for_each_host
from tritonfleet.engine.inventory import Host
from tritonfleet.engine.playbook import Playbook, load_playbook
from tritonfleet.engine.report import Reporter
from tritonfleet.engine.runner import HostRun, RunResult, run_plays
from tritonfleet.engine.spec import HostContext
from tritonfleet.engine.varspec import checked_vars
from tritonfleet.errors import TritonfleetError
from tritonfleet.modules import MODULES
from tritonfleet.triton import apikey, layout, tls
from tritonfleet.triton.facts import gather_facts
from tritonfleet.triton.endpoint import endpoint_for
from tritonfleet.triton.server import ServerClient

if TYPE_CHECKING:  # loaded only by the runs that need them
    from tritonfleet.triton.bundle import Bundle
    from tritonfleet.triton.models import Repository

MAGIC_VARS = {"facts", "inventory_hostname", "inventory_dir", "group_names", "triton_server_args",
              "triton_restricted_args", "triton_api_key_file",
              "triton_root", "triton_unit_path", "triton_packages", "bundle", "repository"}


def host_vars(host: Host, extra_vars: dict) -> dict:
    """Defaults < inventory (already merged with Ansible's precedence) < extra vars (command line), each var
    tritonfleet reads checked and read into its type (layout.VAR_TYPES), so what follows uses them as they are."""
    merged = {**layout.DEFAULT_VARS, **host.vars, **extra_vars}
    origins = {var: origin for var, origin in host.origins.items() if var not in extra_vars}
    merged = checked_vars(merged, layout.VAR_TYPES, host.name, origins)
    merged["triton_server_args"] = layout.server_args(merged)
    merged["triton_restricted_args"] = apikey.restricted_args(merged["triton_restricted_apis"])
    merged["triton_api_key_file"] = apikey.KEY_FILE
    merged["triton_root"] = layout.TRITON_ROOT
    merged["triton_unit_path"] = layout.UNIT_PATH
    return merged


def _known_vars(hostvars: list[dict]) -> set[str]:
    common = set.intersection(*(set(v) for v in hostvars)) if hostvars else set()
    return common | set(layout.DEFAULT_VARS) | MAGIC_VARS


def checked_host_vars(hosts: list[Host], extra_vars: dict | None = None) -> dict[str, dict]:
    """Every host's vars, checked before any host is touched (an error names the host, the var, and the file and
    line that set it): their types (host_vars), and the local files they name, whose absence is this machine's
    input error, not an unreachable host."""
    all_vars = {}
    for host in hosts:
        all_vars[host.name] = host_vars(host, extra_vars or {})
        if host.key_file and not Path(host.key_file).is_file():
            file, line = host.origins.get("ansible_ssh_private_key_file", (None, None))
            raise TritonfleetError(f"host {host.name}: private key {host.key_file} (ansible_ssh_private_key_file) "
                                   "does not exist", file=file, line=line,
                                   hint="fix the path, or remove the var to use the SSH agent and default keys")
        tls.check_vars(host, all_vars[host.name])  # gRPC TLS files: readable, PEM, key matches, names the host
    return all_vars


@dataclass(frozen=True)
class RunOptions:
    """How a run goes, the same for every host: check mode, hosts at once, the tasks that run (`--tags`,
    `--skip-tags`, as Ansible selects them: runner.selected_by_tags), command-line vars, the bundle."""

    check: bool = False
    forks: int = 10
    tags: tuple = ()
    skip_tags: tuple = ()
    extra_vars: dict = field(default_factory=dict)  # highest precedence, like ansible-playbook -e
    bundle_source: str | None = None


@dataclass
class Prepared:
    """A run checked before any host is touched: the playbook, every host's vars, the bundle, the repositories."""

    book: Playbook
    vars: dict[str, dict]  # host name -> its vars
    bundle: Bundle | None = None
    repositories: dict[str, Repository] = field(default_factory=dict)  # local path -> validated repository

    def repository_of(self, host_name: str) -> Repository | None:
        return self.repositories.get(self.vars[host_name]["model_repository"])

    def with_host_vars(self, host_name: str, **extra) -> Prepared:
        """The same run with more vars for one host (a rollback's target release)."""
        return replace(self, vars={**self.vars, host_name: {**self.vars[host_name], **extra}})


def prepare(playbook_path: str | Path, hosts: list[Host], extra_vars: dict | None = None,
            bundle_source: str | None = None, progress=print) -> Prepared:
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
        from tritonfleet.triton.models import DEFAULT_BACKENDS, validate_repository
        backends = bundle.backends if bundle is not None else DEFAULT_BACKENDS
        for name, v in all_vars.items():
            path = str(Path(str(v["model_repository"])).expanduser().resolve())
            if path not in repositories:
                repositories[path] = validate_repository(path, backends=backends)
            v["model_repository"] = path
    for v in all_vars.values():
        if bundle is not None:
            v["bundle"] = {"id": bundle.bundle_id, "triton_version": bundle.triton_version}
        if v["model_repository"] in repositories:
            v["repository"] = {"digest": repositories[v["model_repository"]].digest}
    return Prepared(book, all_vars, bundle, repositories)


def run_playbook(playbook_path: str | Path, hosts: list[Host], options: RunOptions = RunOptions(), *,
                 reporter: Reporter | None = None, prepared: Prepared | None = None, recap: bool = True,
                 cancel: threading.Event | None = None) -> RunResult:
    """Run a playbook on hosts in parallel (at most `options.forks` at once); `prepared` reuses a `prepare()`."""
    reporter = reporter or Reporter()
    prepared = prepared or prepare(playbook_path, hosts, options.extra_vars, options.bundle_source,
                                   progress=reporter.info)
    book = prepared.book
    check = options.check
    reporter.start(book, hosts, check)
    runs = {h.name: HostRun(h.name) for h in hosts}

    def work(host: Host, conn: HostConnection) -> None:
        ctx = HostContext(host, conn, prepared.vars[host.name], check, bundle=prepared.bundle,
                          repository=prepared.repository_of(host.name),
                          progress=lambda msg: reporter.progress(host.name, msg), connect_server=connect_server)
        _run_host(book, ctx, runs[host.name], options, reporter)

    events = Events(unreachable=reporter.unreachable, failed=reporter.failed_host, note=reporter.progress)
    results, interrupted = for_each_host(hosts, work, forks=options.forks, lock="" if check else book.path.stem,
                                         events=events, cancel=cancel)
    for res in results:
        run = runs[res.host]
        run.notes[:0] = res.notes
        run.unreachable, run.error = bool(res.unreachable), res.unreachable or res.error or run.error
    result = RunResult(str(book.path), check, [runs[h.name] for h in hosts], interrupted)
    if recap:
        reporter.recap(result)
    return result


def connect_server(ctx: HostContext) -> ServerClient:
    """The host's server as the control machine reaches it (through SSH forwards for a loopback-bound one), with
    the host's API key for the restricted calls."""
    return ServerClient(endpoint_for(ctx.host.address, ctx.vars, ctx.conn), api_key=ctx.facts.api_key)


def _run_host(book, ctx: HostContext, run: HostRun, options: RunOptions, reporter: Reporter) -> None:
    started = time.monotonic()
    ctx.facts = gather_facts(ctx.conn, str(ctx.vars["triton_user"]), str(ctx.vars["triton_model_repository_path"]))
    run.facts_seconds = time.monotonic() - started
    ctx.vars["facts"] = ctx.facts.as_dict()
    ctx.vars["triton_packages"] = _packages_for(ctx)
    run.facts = ctx.facts.summary()
    run.release_before = ctx.facts.live.id if ctx.facts.live else ""
    try:
        run_plays(book, ctx, run, options.tags, reporter, MODULES, skip_tags=options.skip_tags)
    finally:
        run.live_release = ctx.facts.live_release
        run.release_after = ctx.facts.live.id if ctx.facts.live else ""


def _packages_for(ctx: HostContext) -> list[str]:
    if "triton_packages" in ctx.host.vars:
        return list(ctx.host.vars["triton_packages"] or [])
    if not ctx.facts.python_version:
        return []
    try:
        return layout.python_packages(ctx.facts.pkg_mgr, ctx.facts.python_version)
    except TritonfleetError:
        return []  # triton_preflight refuses the host, naming the packages to install by hand


