"""The module contract: argument specs checked and converted as Ansible does, check mode enforced by the framework."""

from __future__ import annotations

import textwrap

import pytest

from tritonfleet.engine.connection import CommandResult
from tritonfleet.engine.inventory import Host
from tritonfleet.engine.playbook import load_playbook
from tritonfleet.engine.runner import HostRun, run_module, run_plays
from tritonfleet.engine.spec import (Arg, ArgumentError, CheckModeViolation, HostContext, ModuleConnection, Outcome,
                                     converted, module)


class RecordingConnection:
    """A host connection that only records what it was asked to do."""

    def __init__(self):
        self.host = Host("gpu01", {}, ())
        self.calls: list[str] = []

    def run(self, command, *, check=True, timeout=600, stdin=None):
        self.calls.append(command)
        return CommandResult(command, "", "", 0)

    def put_text(self, text, remote_path, **kwargs):
        self.calls.append(f"put_text {remote_path}")

    def stream_file(self, local_path, remote_command, **kwargs):
        self.calls.append(f"stream {remote_command}")

    def rsync(self, src, dest, options, **kwargs):
        self.calls.append(" ".join(["rsync", *options, dest]))


class QuietReporter:
    def step(self, host, task, outcome, handler):
        pass


@module(args={"path": Arg("path", required=True), "state": Arg("str", choices=("present", "absent")),
              "count": Arg("int", default=1), "force": Arg("bool", default=False)})
def touch(ctx, args) -> Outcome:
    """A well-behaved module: it changes the host only outside check mode."""
    if not ctx.check:
        ctx.conn.run(f"touch {args['path']}")
    return Outcome(changed=True, msg=f"{'would ' if ctx.check else ''}touch {args['path']} x{args['count']}")


@module(args={"path": Arg("path", required=True)})
def careless(ctx, args) -> Outcome:
    """A module that forgot its `if not ctx.check`."""
    ctx.conn.read(f"stat {args['path']}")
    ctx.conn.run(f"rm -f {args['path']}")
    return Outcome(changed=True, msg="removed")


@module(supports_check_mode=False)
def probe(ctx, args) -> Outcome:
    ctx.conn.run("reboot")
    return Outcome(msg="probed")


MODULES = {m.name: m for m in (touch, careless, probe)}


def context(check: bool) -> HostContext:
    conn = RecordingConnection()
    return HostContext(conn.host, conn, {}, check)


@pytest.mark.parametrize("type_name, value, expected", [
    ("bool", "yes", True), ("bool", "On", True), ("bool", "TRUE", True), ("bool", "1", True), ("bool", 1, True),
    ("bool", "no", False), ("bool", "off", False), ("bool", "False", False), ("bool", "0", False), ("bool", 0, False),
    ("bool", True, True), ("int", "3", 3), ("int", 3, 3), ("int", " -2 ", -2), ("float", "2.5", 2.5),
    ("float", 30, 30.0), ("str", "", ""), ("path", "/srv/m", "/srv/m"), ("list", ["a"], ["a"]),
    ("dict", {"a": 1}, {"a": 1}),
])
def test_values_are_converted_as_ansible_converts_them(type_name, value, expected):
    result = converted(type_name, value)
    assert result == expected and type(result) is type(expected)


@pytest.mark.parametrize("type_name, value", [
    ("bool", "maybe"), ("bool", 2), ("bool", None), ("int", "many"), ("int", 2.5), ("int", True), ("float", "x"),
    ("float", False), ("str", 420), ("str", ["a"]), ("path", ""), ("list", "a,b"), ("dict", ["a"]),
])
def test_values_of_another_type_are_refused(type_name, value):
    with pytest.raises(ValueError):
        converted(type_name, value)


def test_checked_args_fill_defaults_and_convert():
    assert touch.checked_args({"path": "/tmp/x", "count": "2", "force": "yes"}) == \
        {"path": "/tmp/x", "state": None, "count": 2, "force": True}


@pytest.mark.parametrize("given, words, arg", [
    ({}, "module 'touch' is missing argument(s) path", ""),
    ({"path": None}, "missing argument(s) path", ""),
    ({"path": "/x", "colour": "red"}, "module 'touch' has no argument(s) colour", "colour"),
    ({"path": "/x", "state": "presnt"}, "is 'presnt', not one of: present, absent", "state"),
    ({"path": "/x", "count": "two"}, "argument 'count' of module 'touch' must be an integer, got 'two'", "count"),
])
def test_bad_arguments_are_refused_naming_the_argument(given, words, arg):
    with pytest.raises(ArgumentError) as err:
        touch.checked_args(given)
    assert words in str(err.value) and err.value.arg == arg


def test_templates_are_left_unchecked_until_rendered():
    given = {"path": "{{ where }}", "state": "{{ wanted }}", "count": "{% if x %}1{% endif %}"}
    assert touch.checked_args(given, rendered=False) == {**given, "force": False}
    with pytest.raises(ArgumentError, match="not one of"):
        touch.checked_args({**given, "state": "{{ wanted }}"})  # a rendered value that still reads as a template


def test_an_unknown_argument_type_fails_the_declaration():
    with pytest.raises(ValueError, match="unknown argument type 'string'"):
        Arg("string")


def test_in_check_mode_the_connection_refuses_every_change_but_reads():
    conn = RecordingConnection()
    guarded = ModuleConnection(conn, check=True)
    guarded.read("cat /etc/hostname")
    guarded.rsync("/models", "/srv/m", ["-a", "--dry-run"])
    for change in (lambda: guarded.run("rm -rf /"), lambda: guarded.put_text("x", "/etc/x"),
                   lambda: guarded.stream_file("/b.tgz", "tar -x"), lambda: guarded.rsync("/models", "/srv/m", ["-a"])):
        with pytest.raises(CheckModeViolation, match="check mode: a module tried to change the host"):
            change()
    assert conn.calls == ["cat /etc/hostname", "rsync -a --dry-run /srv/m"]


def test_outside_check_mode_every_call_goes_through():
    conn = RecordingConnection()
    guarded = ModuleConnection(conn, check=False)
    guarded.run("touch /x")
    guarded.put_text("x", "/etc/x")
    guarded.stream_file("/b.tgz", "tar -x")
    guarded.rsync("/models", "/srv/m", ["-a"])
    assert conn.calls == ["touch /x", "put_text /etc/x", "stream tar -x", "rsync -a /srv/m"]


def test_a_module_that_changes_the_host_in_check_mode_is_stopped_and_the_connection_restored():
    ctx = context(check=True)
    conn = ctx.conn
    with pytest.raises(CheckModeViolation):
        run_module(careless, ctx, {"path": "/etc/important"})
    assert conn.calls == ["stat /etc/important"] and ctx.conn is conn


def test_a_module_without_check_mode_support_is_skipped_in_check_mode():
    ctx = context(check=True)
    outcome = run_module(probe, ctx, {})
    assert (outcome.status, outcome.msg) == ("skipped", "check mode: not supported")
    assert ctx.conn.calls == []
    assert run_module(probe, context(check=False), {}).msg == "probed"


def run_book(tmp_path, text: str, check: bool, **hostvars) -> HostRun:
    path = tmp_path / "play.yml"
    path.write_text(textwrap.dedent(text))
    ctx = context(check)
    ctx.vars.update(hostvars)
    run = HostRun("gpu01")
    run_plays(load_playbook(path, MODULES), ctx, run, (), QuietReporter(), MODULES)
    return run


def test_a_rendered_value_outside_the_choices_fails_its_step_naming_file_and_line(tmp_path):
    run = run_book(tmp_path, """\
        - hosts: all
          tasks:
            - name: a file
              touch: {path: /tmp/x, state: "{{ wanted }}"}
            - name: never reached
              touch: {path: /tmp/y}
        """, check=False, wanted="presnt")
    assert [s["status"] for s in run.steps] == ["failed"]
    assert f"{tmp_path / 'play.yml'}:3: argument 'state' of module 'touch' is 'presnt'" in run.steps[0]["msg"]
    assert "use one of present, absent" in run.steps[0]["msg"]


def test_a_check_mode_violation_fails_the_step_as_a_module_bug(tmp_path):
    run = run_book(tmp_path, """\
        - hosts: all
          tasks:
            - touch: {path: /tmp/x, count: "{{ n }}"}
            - careless: {path: /etc/important}
        """, check=True, n="3")
    assert [s["status"] for s in run.steps] == ["changed", "failed"]
    assert run.steps[0]["msg"] == "would touch /tmp/x x3"
    assert run.steps[1]["msg"].startswith("CheckModeViolation: check mode: a module tried to change the host: rm -f")
    assert run.steps[1]["msg"].endswith(f"(in step at {tmp_path / 'play.yml'}:4)")


def test_an_explicit_reload_also_checks_the_ensembles_built_on_a_changed_model():
    from tritonfleet.modules.models import ensembles_using
    from tritonfleet.paths import REPO_ROOT
    from tritonfleet.triton.models import validate_repository
    repository = validate_repository(REPO_ROOT / "examples" / "models")
    assert ensembles_using(repository, ["add_sub"]) == ["add_sub_chain"]
    assert ensembles_using(repository, ["str_upper"]) == []
