"""Bad playbook input is refused when the playbook loads, before any host is touched, with file, line and what to
do (issue 12); what Ansible accepts is accepted the same way. A template that can only fail with a host's values
fails its step, naming the step's file:line, never with a traceback."""

from __future__ import annotations

import textwrap
from types import SimpleNamespace

import pytest

import labkit
from tritonfleet.engine.inventory import Host
from tritonfleet.engine.playbook import evaluate_when, load_playbook, render
from tritonfleet.engine.runner import HostRun, run_plays
from tritonfleet.engine.spec import Arg, HostContext, Outcome, module
from tritonfleet.errors import PlaybookError
from tritonfleet.fleet.run import _known_vars
from tritonfleet.modules import MODULES
from tritonfleet.paths import REPO_ROOT

fault_log = labkit.fault_log  # the fixture, under the name the tests ask for
AREA = "Bad input (control machine)"


def book(tmp_path, text: str, name: str = "play.yml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def load(path, warnings: list | None = None):
    return load_playbook(path, MODULES, _known_vars([]), warn=(warnings if warnings is not None else []).append)


def refused(path) -> PlaybookError:
    with pytest.raises(PlaybookError) as err:
        load(path)
    return err.value


def shown(error: PlaybookError | str, tmp_path) -> str:
    """The error as the README shows it, in code: its first line, paths relative to the test's folder or the
    checkout; a text with backticks goes between double ones."""
    text = str(error).splitlines()[0].replace(f"{tmp_path}/", "").replace(f"{REPO_ROOT}/", "")
    return f"`` {text} ``" if "`" in text else f"`{text}`"


FAILING_ON_THEIR_OWN = [  # (playbook, line, words): templates that read no variable, evaluated at load
    ("- hosts: all\n  vars:\n    port: 8000\n    half: '{{ 1/0 }}'\n  tasks: []\n", 4,
     "cannot render '{{ 1/0 }}': division by zero (ZeroDivisionError)"),
    ("- hosts: all\n  tasks:\n    - name: x\n      system_user: {name: \"{{ 'a' + 1 }}\"}\n", 3,
     """cannot render "{{ 'a' + 1 }}": can only concatenate str (not "int") to str (TypeError)"""),
    ("- hosts: all\n  tasks:\n    - name: x\n      system_user: {name: \"u{{ [1] | first / 0 }}\"}\n", 3,
     "division by zero"),
    ("- hosts: all\n  tasks:\n    - name: x\n      when: 1/0\n      smoke: {}\n", 3,
     "`when: 1/0` cannot be evaluated: division by zero"),
    ("- hosts: all\n  tasks:\n    - name: x\n      system_user: {name: \"{{ 'maybe' | bool }}\"}\n", 3,
     "bool: 'maybe' is not a boolean"),
]


def test_a_template_that_fails_on_its_own_is_refused_at_load(tmp_path, fault_log):
    for text, line, words in FAILING_ON_THEIR_OWN:
        path = book(tmp_path, text)
        error = refused(path)
        assert (error.file, error.line) == (str(path), line), str(error)
        assert words in error.message and "fix:" in str(error)
    error = refused(book(tmp_path, FAILING_ON_THEIR_OWN[0][0]))
    fault_log(AREA, "a playbook value whose Jinja2 fails on its own (`half: '{{ 1/0 }}'`, "
                    "`name: \"{{ 'a' + 1 }}\"`, `when: 1/0`)",
              f"refused when the playbook loads, before any host is touched: {shown(error, tmp_path)}")


@module(args={"text": Arg("str", required=True)})
def echo(ctx, args) -> Outcome:
    return Outcome(msg=args["text"])


def run_on_one_host(tmp_path, text: str, **hostvars) -> HostRun:
    modules = {"echo": echo}
    path = book(tmp_path, text)
    host = Host("gpu01", {}, ())
    ctx = HostContext(host, SimpleNamespace(host=host), dict(hostvars), check=False)
    run = HostRun("gpu01")
    run_plays(load_playbook(path, modules, set(hostvars)), ctx, run, (), SimpleNamespace(step=lambda *a: None),
              modules)
    return run


def test_a_template_that_fails_with_a_hosts_values_fails_its_step_naming_file_and_line(tmp_path, fault_log):
    run = run_on_one_host(tmp_path, """\
        - hosts: all
          tasks:
            - name: share
              echo: {text: "{{ total / hosts }}"}
            - name: never reached
              echo: {text: x}
        """, total=10, hosts=0)
    assert [s["status"] for s in run.steps] == ["failed"]
    msg = run.steps[0]["msg"]
    assert msg.startswith(f"{tmp_path / 'play.yml'}:3: cannot render '{{{{ total / hosts }}}}': division by zero")
    assert "Traceback" not in msg
    run = run_on_one_host(tmp_path, """\
        - hosts: all
          tasks:
            - name: only on big hosts
              echo: {text: x}
              when: size > 10
        """, size="big")
    assert run.steps[0]["status"] == "failed"
    assert run.steps[0]["msg"].startswith(f"{tmp_path / 'play.yml'}:3: `when: size > 10` cannot be evaluated: "
                                          "'>' not supported between instances of 'str' and 'int'")
    fault_log(AREA, "a playbook template that fails only with a host's values (`{{ total / hosts }}` with "
                    "hosts: 0; `when: size > 10` with size: big)",
              "that step fails on that host naming the playbook's file:line and the reason "
              "(`play.yml:3: cannot render '{{ total / hosts }}': division by zero (ZeroDivisionError)`), "
              "no traceback; the host's later steps do not run")


def test_ansible_filters_and_tests_work_in_playbooks(tmp_path):
    path = book(tmp_path, """\
        - hosts: all
          vars:
            extra: {log-verbose: 1}
          tasks:
            - name: x
              system_user:
                name: "{{ (triton_user | regex_replace('^', 'svc-') ~ '-' ~ ('yes' | bool | ternary('a', 'b'))) }}"
              when:
                - triton_http_port is version('1024', '>=')
                - extra | dict2items | items2dict | combine({'x': 1}) | to_json | from_json is mapping
                - triton_user is match('tr') and ['a'] is subset(['a', 'b']) and maybe_set is not defined
        """)
    task = load(path).plays[0].tasks[0]
    values = {"triton_user": "triton", "triton_http_port": 8000, "extra": {"log-verbose": 1}}
    assert render(task.args, values) == {"name": "svc-triton-a"}
    assert evaluate_when(task.when, values)


def test_two_handlers_of_one_name_must_be_the_same_step(tmp_path, fault_log):
    handler = "- name: restart tritonserver\n  systemd: {name: tritonserver, state: restarted}\n"
    book(tmp_path, handler, "handlers.yml")
    book(tmp_path, "- hosts: all\n  tasks: []\n  handlers:\n    - import_tasks: handlers.yml\n", "a.yml")
    book(tmp_path, "- hosts: all\n  tasks: []\n  handlers:\n    - name: restart tritonserver\n"
                   "      systemd: {name: tritonserver, state: restarted}\n", "b.yml")
    same = book(tmp_path, "- import_playbook: a.yml\n- import_playbook: a.yml\n- import_playbook: b.yml\n", "same.yml")
    assert list(load(same).handlers) == ["restart tritonserver"]
    book(tmp_path, "- hosts: all\n  tasks: []\n  handlers:\n    - name: restart tritonserver\n"
                   "      systemd: {name: tritonserver, state: stopped}\n", "c.yml")
    different = book(tmp_path, "- import_playbook: a.yml\n- import_playbook: c.yml\n", "different.yml")
    error = refused(different)
    assert (error.file, error.line) == (str(tmp_path / "c.yml"), 4)
    assert (f"two handlers are named 'restart tritonserver' but do different things: {tmp_path / 'handlers.yml'}:1 "
            f"and {tmp_path / 'c.yml'}:4") in error.message
    fault_log(AREA, "two handlers with the same name and different steps (in two imported playbooks)",
              f"refused at load naming both: {shown(error, tmp_path)} (the same handler file imported by several "
              "playbooks is accepted)")


def test_a_template_source_that_does_not_exist_is_refused_at_load(tmp_path, fault_log):
    path = book(tmp_path, """\
        - hosts: all
          tasks:
            - name: unit
              template:
                dest: /etc/systemd/system/x.service
                src: tritonserver.servce.j2
        """)
    error = refused(path)
    assert (error.file, error.line) == (str(path), 6)
    assert "template 'tritonserver.servce.j2' not found: " in error.message
    assert error.message.endswith("templates/tritonserver.servce.j2") and "templates/" in error.hint
    fault_log(AREA, "a `template` step whose `src` does not exist",
              f"refused at load with the `src` line and the path looked for: {shown(error, tmp_path)}")


def test_a_template_file_is_compiled_at_load_and_a_templated_src_is_left_to_the_run(tmp_path):
    (tmp_path / "bad.j2").write_text("[Service]\nUser={{ triton_user | to_jsn }}\n")
    path = book(tmp_path, f"""\
        - hosts: all
          tasks:
            - name: unit
              template: {{src: "{tmp_path / 'bad.j2'}", dest: /etc/x}}
        """)
    error = refused(path)
    assert (error.file, error.line) == (str(tmp_path / "bad.j2"), 2)
    assert "no filter named 'to_jsn'" in error.message
    path = book(tmp_path, """\
        - hosts: all
          tasks:
            - name: unit
              template: {src: "{{ triton_user }}.j2", dest: /etc/x}
        """)
    assert load(path).plays[0].tasks[0].args["src"] == "{{ triton_user }}.j2"


BAD_WHEN = [  # (condition, words)
    ("triton_user is nosuchtest", "bad Jinja2 in 'triton_user is nosuchtest': no test named 'nosuchtest'"),
    ("triton_user | lenght > 0", "no filter named 'lenght' (did you mean length"),
    ("triton_user ==", "bad Jinja2 in 'triton_user =='"),
    ("triton_user == 'a' ) (", "bad Jinja2"),
    ("no_such_var == 1", "undefined variable(s) no_such_var"),
    ("'{{ a }}' == 'b' and {{ c }}", "mixes an expression with {{ }}"),
]


def test_a_when_that_cannot_evaluate_is_refused_at_load(tmp_path, fault_log):
    for when, words in BAD_WHEN:
        path = book(tmp_path, f"- hosts: all\n  tasks:\n    - name: x\n      smoke: {{}}\n      when: \"{when}\"\n")
        error = refused(path)
        assert (error.file, error.line) == (str(path), 3), str(error)
        assert words in error.message, str(error)
    error = refused(book(tmp_path, "- hosts: all\n  tasks:\n    - name: x\n      smoke: {}\n"
                                   f"      when: \"{BAD_WHEN[0][0]}\"\n"))
    fault_log(AREA, "a `when` with an unknown test or filter, or bad syntax",
              f"refused at load (it used to fail only once connected): {shown(error, tmp_path)}")


def test_a_when_in_braces_is_read_without_them_with_one_warning(tmp_path, fault_log):
    book(tmp_path, "- hosts: all\n  tasks:\n    - name: x\n      smoke: {}\n      when: \"{{ triton_user == 'a' }}\"\n",
         "inner.yml")
    outer = book(tmp_path, "- import_playbook: inner.yml\n- import_playbook: inner.yml\n", "outer.yml")
    warnings: list[str] = []
    loaded = load(outer, warnings)
    assert [t.when for p in loaded.plays for t in p.tasks] == [["triton_user == 'a'"], ["triton_user == 'a'"]]
    assert warnings == [f"{tmp_path / 'inner.yml'}:3: `when: {{{{ triton_user == 'a' }}}}`: a condition should "
                        "not include {{ }}; read as `triton_user == 'a'`"]
    fault_log(AREA, "`when: \"{{ x == 'a' }}\"` (a condition in braces, which Ansible accepts with a warning)",
              f"accepted as Ansible does, braces dropped, one warning however often the file is imported: "
              f"{shown(warnings[0], tmp_path)}")


def test_a_variable_tested_with_is_defined_or_given_a_default_need_not_exist(tmp_path):
    path = book(tmp_path, """\
        - hosts: all
          tasks:
            - name: x
              system_user: {name: "{{ service_user | default(triton_user) }}"}
              when: extra_flag is not defined or extra_flag | bool
        """)
    task = load(path).plays[0].tasks[0]
    assert render(task.args, {"triton_user": "triton"}) == {"name": "triton"}


UNSUPPORTED_IN_A_STEP = [  # (keyword, value, words of the hint)
    ("register", "out", "modules read what they need from the facts"),
    ("loop", "[1, 2]", "write one step per item"),
    ("with_items", "[1, 2]", "write one step per item"),
    ("become", "true", "ansible_become: true"),
    ("become_user", "root", "ansible_become: true"),
    ("ignore_errors", "true", "a step takes name, when, tags, notify and one module"),
    ("delegate_to", "localhost", "a step takes name, when, tags, notify and one module"),
]


def test_an_ansible_task_keyword_tritonfleet_does_not_take_is_named(tmp_path, fault_log):
    for key, value, words in UNSUPPORTED_IN_A_STEP:
        path = book(tmp_path, f"- hosts: all\n  tasks:\n    - name: x\n      smoke: {{}}\n      {key}: {value}\n")
        error = refused(path)
        assert (error.file, error.line) == (str(path), 5)
        assert error.message == f"`{key}` is not supported by tritonfleet playbooks"
        assert words in error.hint
    error = refused(book(tmp_path, "- hosts: all\n  tasks:\n    - name: x\n      smoke: {}\n      register: out\n"))
    fault_log(AREA, "an Ansible task keyword tritonfleet does not take (`register`, `loop`, `with_items`, "
                    "`become`, `ignore_errors`, ...)",
              f"refused at load by name (it used to read \"step has several modules\"): "
              f"{shown(error, tmp_path)}, with what to do instead")


@pytest.mark.parametrize("text, line, message", [
    ("- hosts: all\n  roles: [common]\n", 2, "`roles` is not supported by tritonfleet playbooks"),
    ("- hosts: all\n  serial: 2\n  tasks: []\n", 2, "`serial` is not supported by tritonfleet playbooks"),
    ("- hosts: all\n  tasks:\n    - include_tasks: other.yml\n", 3,
     "`include_tasks` is not supported by tritonfleet playbooks"),
    ("- hosts: all\n  handlers:\n    - name: h\n      smoke: {}\n      listen: restart\n", 5,
     "`listen` is not supported by tritonfleet playbooks"),
    ("- hosts: all\n  colour: red\n", 2, "play has unknown key(s) colour"),
])
def test_an_ansible_play_keyword_tritonfleet_does_not_take_is_named(tmp_path, text, line, message):
    path = book(tmp_path, text)
    error = refused(path)
    assert (error.file, error.line, error.message) == (str(path), line, message)


EMPTY_IMPORTS = [  # (playbook, line, message)
    ("- hosts: all\n  tasks: []\n- import_playbook:\n", 3, "import_playbook needs a file name"),
    ("- import_playbook: ''\n", 1, "import_playbook needs a file name"),
    ("- import_playbook: [a.yml]\n", 1, "import_playbook needs a file name"),
    ("- hosts: all\n  tasks:\n    - import_tasks:\n", 3, "import_tasks needs a file name"),
]


def test_an_empty_import_is_refused_naming_the_importing_line(tmp_path, fault_log):
    for text, line, message in EMPTY_IMPORTS:
        path = book(tmp_path, text)
        error = refused(path)
        assert (error.file, error.line, error.message) == (str(path), line, message)
        assert "None" not in str(error)
    error = refused(book(tmp_path, EMPTY_IMPORTS[0][0]))
    fault_log(AREA, "`- import_playbook:` with no file name",
              f"refused at load: {shown(error, tmp_path)} (it used to look for `playbooks/None`)")


def test_a_missing_import_names_the_importing_file_line_and_the_missing_path(tmp_path, fault_log):
    path = book(tmp_path, "- hosts: all\n  tasks: []\n- import_playbook: sync-modles.yml\n")
    error = refused(path)
    assert (error.file, error.line) == (str(path), 3)
    assert error.message == f"import_playbook: {tmp_path / 'sync-modles.yml'} not found"
    path = book(tmp_path, "- hosts: all\n  tasks:\n    - name: x\n      smoke: {}\n    - import_tasks: steps/a.yml\n")
    error = refused(path)
    assert (error.file, error.line) == (str(path), 5)
    assert error.message == f"import_tasks: {tmp_path / 'steps' / 'a.yml'} not found"
    fault_log(AREA, "`import_playbook` / `import_tasks` of a file that does not exist",
              f"refused at load naming the importing file:line and the missing path: {shown(error, tmp_path)}")


def test_a_keyword_on_an_import_is_refused_rather_than_ignored(tmp_path):
    book(tmp_path, "- hosts: all\n  tasks: []\n", "inner.yml")
    path = book(tmp_path, "- name: the inner play\n  import_playbook: inner.yml\n  when: false\n")
    error = refused(path)
    assert (error.file, error.line) == (str(path), 3)
    assert error.message == "`when` on import_playbook is not supported by tritonfleet playbooks"
