"""Every module, table-driven like pyinfra's tests/operations: args + facts (+ check) -> commands and outcome.

The cases are in tests/fixtures/modules/<module>.yml, a list per module. A case gives:
  name          what it shows
  args          the module's arguments as a playbook writes them (checked and defaulted by the spec)
  facts         host facts in the facts script's `key=value` form, read by `parse_facts`
  facts_file    a facts fixture read first (path relative to tests/fixtures/modules/)
  facts_set     facts earlier steps of the run set (service_stale), not gathered from the host
  check         true: check mode
  vars          host vars over the defaults
  answers       command prefix -> what the fake host answers: stdout, or {stdout, stderr, exit}
  server        what the fake server answers: wait_ready [ready, index]; control and smoke, one item per call
  bundle_pythons, models    the run's bundle (its stubs' Pythons) and the repository's models
and expects:
  commands      every command the module sent the host, in order (none when not given; an entry ending in
                "..." matches any rest)
  status, msg   ok | changed | failed | skipped, and a fragment of the message
  diff, data, files (written with put_text), server_calls, facts_after    when given
`$FIXTURES` is this fixtures folder and `$MANIFEST` the quick-check digest of its `models` repository.

Modules run as the runner runs them (`runner.run_module`): in check mode the connection refuses every change,
so a case passing in check mode shows that the module sent no mutating command.
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest
import yaml

from tritonfleet.engine.connection import CommandResult
from tritonfleet.engine.inventory import Host
from tritonfleet.engine.playbook import load_playbook
from tritonfleet.engine.runner import HostRun, run_module, run_plays
from tritonfleet.engine.spec import HostContext, Outcome
from tritonfleet.errors import TritonfleetError
from tritonfleet.fleet.run import host_vars
from tritonfleet.modules import MODULES
from tritonfleet.modules.models import local_manifest
from tritonfleet.paths import REPO_ROOT
from tritonfleet.triton.bundle import Bundle
from tritonfleet.triton.facts import parse_facts
from tritonfleet.triton.models import ModelInfo, Repository
from tritonfleet.triton.smoke import ModelSmoke, SmokeReport

FIXTURES = Path(__file__).parent / "fixtures" / "modules"
BUNDLE_ID = "triton-2.51.0-bbbbbbbbbbbb"
DIGEST = "0123456789abcdef" + "f" * 48  # the run's model repository; hosts know it by its first 16 digits
FROZEN_NOW = time.struct_time((2026, 1, 2, 3, 4, 5, 4, 2, 0))  # release_record's timestamp


def load_cases() -> list:
    substitutions = {"$FIXTURES": str(FIXTURES), "$MANIFEST": local_manifest(str(FIXTURES / "models"))}
    cases = []
    for path in sorted(FIXTURES.glob("*.yml")):
        text = path.read_text()
        for token, value in substitutions.items():
            text = text.replace(token, value)
        for case in yaml.safe_load(text):
            cases.append(pytest.param(path.stem, case, id=f"{path.stem}: {case['name']}"))
    return cases


class FakeHost:
    """The connection a module is given, to a host that records every command and answers from the table."""

    def __init__(self, host: Host, answers: dict):
        self.host, self.answers = host, answers
        self.commands: list[str] = []
        self.files: dict[str, str] = {}

    def _answer(self, command: str) -> tuple[str, str, int]:
        self.commands.append(command)
        key = max((k for k in self.answers if command.startswith(k)), key=len, default=None)
        answer = self.answers[key] if key is not None else ""
        answer = {"stdout": answer} if isinstance(answer, str) else answer
        return answer.get("stdout", ""), answer.get("stderr", ""), int(answer.get("exit", 0))

    def run(self, command: str, *, check: bool = True, timeout=600, stdin=None) -> CommandResult:
        out, err, code = self._answer(command)
        if check and code:
            raise TritonfleetError(f"{self.host.name}: command failed (exit {code}): {command[:200]}\n{err}")
        return CommandResult(command, out, err, code)

    def put_text(self, text: str, remote_path: str, *, mode="0644", owner="root", group="root") -> None:
        self._answer(f"put_text {remote_path} {mode} {owner}:{group}")
        self.files[remote_path] = text

    def stream_file(self, local_path, remote_command: str, timeout=900) -> None:
        _, err, code = self._answer(f"stream {Path(local_path).name} | {remote_command}")
        if code:
            raise TritonfleetError(f"{self.host.name}: transfer failed (exit {code}): {err}")

    def rsync(self, src: str, dest: str, options: list, timeout=1800) -> subprocess.CompletedProcess:
        command = " ".join(["rsync", *options, src.rstrip("/") + "/", dest.rstrip("/") + "/"])
        out, err, code = self._answer(command)
        return subprocess.CompletedProcess(command, code, out, err)


class QuietReporter:
    def step(self, host, task, outcome, handler):
        pass


class FakeServer:
    """The host's server client (ServerClient's calls), answering from the case's `server` table."""

    def __init__(self, answers: dict):
        self.readiness = answers.get("wait_ready")
        self.control_answers, self.smoke_answers = list(answers.get("control", [])), list(answers.get("smoke", []))
        self.calls: list[str] = []

    def wait_ready(self, timeout_s: float = 120.0):
        self.calls.append(f"wait_ready {timeout_s:g}")
        ready, index = self.readiness
        return ready, index

    def control(self, unload=(), load=()) -> dict:
        self.calls.append(f"control unload={','.join(unload)} load={','.join(load)}")
        return self.control_answers.pop(0)

    def smoke(self, timeout_s: float = 30.0, specs=None) -> SmokeReport:
        self.calls.append(f"smoke {timeout_s:g}" + (f" specs={','.join(sorted(specs))}" if specs else ""))
        report = self.smoke_answers.pop(0)
        return SmokeReport("10.0.0.1:8000", live=report.get("live", True), ready=report.get("ready", True),
                           models=[ModelSmoke(**m) for m in report["models"]], error=report.get("error", ""))


def repository_for(case: dict) -> Repository:
    models = {}
    for m in case.get("models", [{"name": "add_sub"}]):
        models[m["name"]] = ModelInfo(m["name"], FIXTURES / "models" / m["name"], None, (1,), "python",
                                      frozenset({"KIND_GPU" if m.get("gpu") else "KIND_CPU"}),
                                      m.get("env_python", ""))
    return Repository(FIXTURES / "models", models, DIGEST)


def context_for(case: dict, conn: FakeHost, server: FakeServer) -> HostContext:
    bundle = Bundle(FIXTURES / "bundle.tar.gz", "b" * 64, 50 * 2**20, BUNDLE_ID, "2.51.0",
                    tuple(case.get("bundle_pythons", ["3.10", "3.11", "3.12"])))
    ctx = HostContext(conn.host, conn, host_vars(conn.host, case.get("vars", {})), bool(case.get("check")),
                      bundle=bundle, repository=repository_for(case), connect_server=lambda ctx: server)
    facts_text = (FIXTURES / case["facts_file"]).read_text() if "facts_file" in case else ""
    ctx.facts = parse_facts(facts_text + "\n" + case.get("facts", ""))
    for name, value in case.get("facts_set", {}).items():
        setattr(ctx.facts, name, value)
    return ctx


def matches(expected: str, actual: str) -> bool:
    return actual.startswith(expected[:-3]) if expected.endswith("...") else actual == expected


def run_case(case: dict) -> tuple[Outcome, FakeHost, FakeServer, HostContext]:
    """The module called as the runner calls it, a TritonfleetError failing the step as it does there."""
    conn = FakeHost(Host("gpu01", {"ansible_host": "10.0.0.1"}, ("lab",)), case.get("answers", {}))
    server = FakeServer(case.get("server", {}))
    ctx = context_for(case, conn, server)
    try:
        outcome = run_module(MODULES[case["module"]], ctx, case.get("args", {}))
    except TritonfleetError as exc:
        outcome = Outcome(failed=True, msg=str(exc))
    return outcome, conn, server, ctx


@pytest.fixture(autouse=True)
def frozen_clock(monkeypatch):
    monkeypatch.setattr(time, "gmtime", lambda secs=None: FROZEN_NOW)


@pytest.mark.parametrize("module, case", load_cases())
def test_module_case(module, case):
    outcome, conn, server, ctx = run_case({**case, "module": module})
    assert outcome.status == case["status"], outcome.msg
    assert case["msg"] in outcome.msg, outcome.msg
    expected = case.get("commands", [])
    assert len(conn.commands) == len(expected) and all(map(matches, expected, conn.commands)), \
        "\n".join(["sent:", *conn.commands, "expected:", *expected])
    if outcome.changed:
        assert outcome.msg.startswith("would ") == bool(case.get("check")), outcome.msg
    assert ctx.conn is conn  # the runner hands the module's connection back
    assert server.calls == case.get("server_calls", [])
    assert conn.files == case.get("files", {})
    assert case.get("diff", "") in outcome.diff
    for key, value in case.get("data", {}).items():
        assert outcome.data[key] == value, key
    for name, value in case.get("facts_after", {}).items():
        actual = getattr(ctx.facts, name)
        assert (sorted(actual) if isinstance(actual, set) else actual) == value, name


def test_every_module_has_cases_for_each_kind_of_result():
    """Each module: a case in the wanted state, one that changes (or fails, for checks) and one in check mode."""
    cases = [p.values for p in load_cases()]
    for name in MODULES:
        mine = [c for m, c in cases if m == name]
        statuses = {(c["status"], bool(c.get("check"))) for c in mine}
        assert ("ok", False) in statuses, name
        assert statuses & {("changed", False), ("failed", False)}, name
        assert any(check for _, check in statuses), name


def test_the_deploy_playbook_in_check_mode_on_a_fresh_host_only_reads():
    """Every shipped step, as a run makes it: nothing fails, and the host is only read (the guard would fail a step)."""
    conn = FakeHost(Host("gpu01", {"ansible_host": "10.0.0.1"}, ("lab",)), {})
    ctx = context_for({"check": True, "facts": "init=systemd\npython_version=3.11\npkg_mgr=apt\n"}, conn,
                      FakeServer({}))
    ctx.vars.update(triton_packages=["libpython3.11", "python3-numpy", "rsync"],
                    model_repository=str(FIXTURES / "models"))
    run = HostRun("gpu01")
    run_plays(load_playbook(REPO_ROOT / "playbooks" / "deploy.yml", MODULES), ctx, run, (), QuietReporter(), MODULES)
    assert {s["status"] for s in run.steps} == {"ok", "changed", "skipped"}, run.steps
    assert [s["module"] for s in run.steps if s["status"] == "changed"] == [
        "packages", "system_user", "triton_release", "python_stub", "triton_link", "model_repository", "models_link",
        "triton_api_key", "template", "systemd", "systemd", "systemd"]
    assert [c.split()[0] for c in conn.commands] == ["rsync", "cat"]
    assert "--dry-run" in conn.commands[0].split()
