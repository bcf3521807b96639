"""Fleet rollouts: canary first, then batches; every host of a batch must pass its smoke test before the next.

A host whose deploy fails after it changed something is put back on the release it had and must pass the
smoke test again there. Failures (including unreachable hosts) beyond `max_fail` stop the rollout; hosts
not reached yet are left untouched and listed.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from tritonfleet.paths import REPO_ROOT
from tritonfleet.engine.report import Reporter
from tritonfleet.engine.executor import NOT_STARTED, cancel_on_interrupt
from tritonfleet.engine.runner import HostRun
from tritonfleet.fleet.run import Prepared, RunOptions, prepare, run_playbook

DEPLOY = REPO_ROOT / "playbooks" / "deploy.yml"
ROLLBACK = REPO_ROOT / "playbooks" / "rollback.yml"


def plan_batches(hosts: list, canary: int, batch: int) -> list[list]:
    """Canary hosts first (if any), then the rest in batches of `batch` (at least one host each)."""
    batches, rest = [], list(hosts)
    if canary > 0:
        batches.append(rest[:canary])
        rest = rest[canary:]
    size = max(1, batch)
    batches += [rest[i:i + size] for i in range(0, len(rest), size)]
    return batches


@dataclass
class HostOutcome:
    name: str
    state: str  # ok | changed | failed | rolled back | rollback failed | unreachable | not reached
    release_before: str = ""
    release_after: str = ""
    error: str = ""
    bytes_sent: int = 0
    batch: int = 0


@dataclass
class RolloutResult:
    hosts: list = field(default_factory=list)
    stopped: str = ""  # why the rollout stopped early, if it did
    runs: list = field(default_factory=list)  # the HostRun of every deploy and rollback, in order

    @property
    def ok(self) -> bool:
        return not self.stopped and all(h.state in ("ok", "changed") for h in self.hosts)

    def as_dict(self) -> dict:
        return {"ok": self.ok, "stopped": self.stopped, "hosts": [vars(h) for h in self.hosts],
                "runs": [r.as_dict() for r in self.runs]}


def error_of(run: HostRun) -> str:
    """Why a host's run failed, in one line: its own error, or the last failed step and its message."""
    if run.error:
        return run.error
    failed = [s for s in run.steps if s["status"] == "failed"]
    return f"{failed[-1]['task']}: {failed[-1]['msg']}" if failed else ""


def rollout(hosts: list, options: RunOptions = RunOptions(), *, canary: int = 1, batch: int = 0, max_fail: int = 0,
            reporter: Reporter | None = None) -> RolloutResult:
    """`canary` hosts first, then `batch` hosts at a time, as Ansible's `serial: [canary, batch]`; a batch of 0
    is one batch of all the rest, as Ansible reads `serial: 0` (PlaybookExecutor._get_serialized_batches in
    lib/ansible/executor/playbook_executor.py). More than `max_fail` failed or unreachable hosts stop it.
    (tritonfleet/options.py turns `--batch`/`--max-fail` percentages into these counts.)"""
    reporter = reporter or Reporter()
    batch_size = batch or len(hosts)
    # Everything is checked for every host before the first one is touched.
    run = _Rollout(options, reporter,
                   deploy=prepare(DEPLOY, hosts, options.extra_vars, options.bundle_source, progress=reporter.info),
                   back=prepare(ROLLBACK, hosts, options.extra_vars, options.bundle_source, progress=reporter.info))
    with cancel_on_interrupt() as run.cancelled:
        run.batches(plan_batches(hosts, canary, batch_size), canary, max_fail)
    reporter.rollout_recap(run.result)
    return run.result


@dataclass
class _Rollout:
    """One rollout in progress: its prepared deploy and rollback, where it reports, what it has done so far."""

    options: RunOptions
    reporter: Reporter
    deploy: Prepared
    back: Prepared
    result: RolloutResult = field(default_factory=RolloutResult)
    cancelled: threading.Event | None = None

    def batches(self, batches: list[list], canary: int, allowed: int) -> None:
        failures = 0
        for number, group in enumerate(batches, start=1):
            label = "canary" if number == 1 and canary > 0 else f"batch {number}"
            self.reporter.info(f"{label}: {', '.join(h.name for h in group)}")
            runs = run_playbook(DEPLOY, group, self.options, reporter=self.reporter, prepared=self.deploy,
                                recap=False, cancel=self.cancelled).hosts
            self.result.runs += runs
            for host, run in zip(group, runs):
                outcome = self._outcome(host, run, number)
                failures += outcome.state not in ("ok", "changed", "not reached")
                self.result.hosts.append(outcome)
            if self.cancelled.is_set():
                self.result.stopped = "interrupted (Ctrl-C)"
            if failures > allowed or self.result.stopped:
                rest = [h for later in batches[number:] for h in later]
                self.result.stopped = self.result.stopped or (
                    f"{failures} host(s) failed after the {label}, more than --max-fail allows ({allowed})")
                self.result.stopped += f"; {len(rest)} host(s) not reached"
                self.result.hosts += [HostOutcome(h.name, "not reached") for h in rest]
                break

    def _outcome(self, host, run: HostRun, batch: int) -> HostOutcome:
        outcome = HostOutcome(host.name, "changed" if run.counts["changed"] else "ok", run.release_before,
                              run.release_after, bytes_sent=run.bytes_sent, batch=batch)
        if run.error == NOT_STARTED:
            outcome.state, outcome.batch = "not reached", 0
        elif run.unreachable:
            outcome.state, outcome.error = "unreachable", run.error
        elif run.failed:
            outcome.state, outcome.error = "failed", error_of(run)
            if run.release_before and run.counts["changed"]:
                outcome.state, outcome.release_after = self._roll_back(host, run)
        return outcome

    def _roll_back(self, host, run: HostRun) -> tuple[str, str]:
        """Put a failed host back on the release it had; it must pass the smoke test there."""
        self.reporter.progress(host.name, f"rolling back to {run.release_before}")
        back = run_playbook(ROLLBACK, [host], self.options, reporter=self.reporter,
                            prepared=self.back.with_host_vars(host.name, rollback_to=run.release_before),
                            recap=False).hosts[0]
        self.result.runs.append(back)
        if back.failed:
            return "rollback failed", back.release_after
        return "rolled back", back.release_after
