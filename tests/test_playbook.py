"""Playbooks are checked completely before any host is touched; flags and rendering follow the docs."""

import textwrap

import pytest

from tritonfleet.triton import layout
from tritonfleet.errors import PlaybookError, TritonfleetError
from tritonfleet.modules import MODULES
from tritonfleet.paths import REPO_ROOT
from tritonfleet.engine.playbook import evaluate_when, load_playbook, render, systemd_quote
from tritonfleet.fleet.run import _known_vars, host_vars
from tritonfleet.engine.inventory import Host


def book(tmp_path, text, name="play.yml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def load(path):
    return load_playbook(path, MODULES, _known_vars([]))


def test_shipped_playbooks_load_and_deploy_includes_the_four_parts():
    for name in ("provision", "sync-models", "start", "smoke"):
        load(REPO_ROOT / "playbooks" / f"{name}.yml")
    deploy = load(REPO_ROOT / "playbooks" / "deploy.yml")
    assert [p.name for p in deploy.plays] == ["Provision Triton with the Python backend", "Sync the model repository",
                                              "Start tritonserver", "Smoke-test the server remotely"]
    assert list(deploy.handlers) == ["restart tritonserver", "every model ready after the switch",
                                     "every model answers after the switch"]


@pytest.mark.parametrize("text, line, words", [
    ("- hosts: all\n  tasks:\n    - name: x\n      copyy: {src: a}\n", 4, "unknown module 'copyy'"),
    ("- hosts: all\n  tasks:\n    - name: x\n      systemd: {state: started}\n", 4, "missing argument(s) name"),
    ("- hosts: all\n  tasks:\n    - name: x\n      systemd:\n        name: a\n        colour: red\n", 6,
     "no argument(s) colour"),
    ("- hosts: all\n  tasks:\n    - name: x\n      system_user: {name: '{{ triton_user '}\n", 3, "bad Jinja2"),
    ("- hosts: all\n  tasks:\n    - name: x\n      system_user: {name: '{{ no_such_var }}'}\n", 3,
     "undefined variable(s) no_such_var"),
    ("- hosts: all\n  tasks:\n    - name: x\n      system_user: {name: a}\n      notify: nobody\n", 3,
     "notifies 'nobody'"),
    ("- hosts: all\n  tasks:\n    - name: x\n      when: 'a =='\n      system_user: {name: a}\n", 3, "bad Jinja2"),
    ("- tasks: []\n", 1, "no `hosts`"),
    ("- hosts: all\n  tasks:\n  - name: x\n    system_user: {name: a}\n    smoke: {}\n", 3, "several modules"),
    ("- hosts: all\n  tasks: [\n", 3, "YAML syntax error"),
])
def test_malformed_playbook_reports_file_and_line(tmp_path, text, line, words):
    path = book(tmp_path, text)
    with pytest.raises(PlaybookError) as err:
        load(path)
    assert err.value.line == line, str(err.value)
    assert err.value.file == str(path)
    assert words in str(err.value)


def test_error_inside_imported_file_points_at_that_file(tmp_path):
    book(tmp_path, "- hosts: all\n  tasks:\n    - name: ok\n      smoke: {}\n    - bogus: 1\n", "inner.yml")
    outer = book(tmp_path, "- import_playbook: inner.yml\n", "outer.yml")
    with pytest.raises(PlaybookError) as err:
        load(outer)
    assert err.value.file.endswith("inner.yml") and err.value.line == 5


def test_render_keeps_types_and_when_evaluates():
    ctx = {"names": ["a", "b"], "port": 8000, "facts": {"gpus": []}}
    assert render({"n": "{{ names }}", "p": "{{ port }}", "s": "p={{ port }}"}, ctx) == \
        {"n": ["a", "b"], "p": 8000, "s": "p=8000"}
    assert evaluate_when(["facts.gpus | length == 0", "port > 10"], ctx)
    assert not evaluate_when(["facts.gpus | length > 0"], ctx)


def vars_for(**overrides):
    return host_vars(Host("h", {}, ()), overrides)


def test_default_flags_have_no_backend_directory():
    args = vars_for()["triton_server_args"]
    assert not any(a.startswith("--backend-directory") for a in args)
    assert "--model-repository=/srv/tritonfleet/models" in args
    assert "--exit-on-error=false" in args


def test_user_backend_directory_loses_its_trailing_slash():
    args = vars_for(triton_backend_directory="/opt/tritonserver/backends//")["triton_server_args"]
    assert "--backend-directory=/opt/tritonserver/backends" in args


def test_flags_from_vars():
    args = vars_for(triton_http_port=9000, triton_model_control_mode="explicit",
                    triton_backend_config={"python": {"shm-default-byte-size": 1048576}})["triton_server_args"]
    assert "--http-port=9000" in args and "--model-control-mode=explicit" in args and "--load-model=*" in args
    assert "--backend-config=python,shm-default-byte-size=1048576" in args
    with pytest.raises(TritonfleetError, match="triton_model_control_mode"):
        vars_for(triton_model_control_mode="sometimes")


def test_systemd_quote_neutralises_specifiers_and_spaces():
    assert systemd_quote("--x=1") == "--x=1"
    assert systemd_quote("/srv/my models") == '"/srv/my models"'
    assert systemd_quote("$(id)%h") == "$$(id)%%h"


def test_python_packages_per_family():
    assert layout.python_packages("apt", "3.11") == ["libpython3.11", "python3-numpy", "rsync"]
    assert "python3-libs" in layout.python_packages("dnf", "3.9")
    with pytest.raises(TritonfleetError, match="no known package manager"):
        layout.python_packages("", "3.11")


def test_hostile_service_user_name_is_refused_before_anything_runs():
    with pytest.raises(TritonfleetError, match="not a valid system user name"):
        vars_for(triton_user="triton\nExecStartPre=/bin/touch /tmp/pwned")


@pytest.mark.parametrize("text, line, words", [
    ("- hosts: all\n  tasks:\n    - name: x\n      systemd: {name: tritonserver, state: startd}\n", 4,
     ["argument 'state' of module 'systemd' is 'startd'", "started, stopped, restarted"]),
    ("- hosts: all\n  tasks:\n    - name: x\n      release_record:\n        dest: /srv/m\n        keep: many\n", 6,
     ["argument 'keep' of module 'release_record' must be an integer, got 'many'"]),
    ("- hosts: all\n  tasks:\n    - name: x\n      systemd:\n        name: tritonserver\n        enabled: maybe\n", 6,
     ["argument 'enabled' of module 'systemd' must be a boolean (yes/no, true/false, on/off, 1/0)"]),
    ("- hosts: all\n  tasks:\n    - name: x\n      packages:\n        names: [rsync, 3]\n", 5,
     ["item 2 of argument 'names' of module 'packages' must be a string, got 3"]),
    ("- hosts: all\n  tasks:\n    - name: x\n      template:\n        src: a.j2\n        dest: /etc/a\n"
     "        mode: 0644\n", 7, ["argument 'mode' of module 'template' must be a string, got 420", "quotes"]),
])
def test_wrong_type_or_choice_is_refused_at_load_naming_the_argument_line(tmp_path, text, line, words):
    path = book(tmp_path, text)
    with pytest.raises(PlaybookError) as err:
        load(path)
    assert (err.value.file, err.value.line) == (str(path), line), str(err.value)
    for w in words:
        assert w in str(err.value)


def test_templated_values_are_left_for_the_runner_and_booleans_follow_ansible(tmp_path):
    path = book(tmp_path, "- hosts: all\n  tasks:\n    - name: x\n      systemd:\n        name: tritonserver\n"
                          "        state: '{{ triton_user }}'\n        enabled: 'On'\n        daemon_reload: no\n")
    task = load(path).plays[0].tasks[0]
    args = MODULES["systemd"].checked_args(render(task.args, {"triton_user": "started"}))
    assert args == {"name": "tritonserver", "state": "started", "enabled": True, "daemon_reload": False}
