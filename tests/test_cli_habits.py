"""Ansible's command-line habits on every task: --limit, -e/--extra-vars, --list-hosts, --diff, --tags/--skip-tags,
and ansible.cfg's [defaults] inventory, forks and vault_password_file. Most tests call the Invoke tasks in-process
(tasks.py as Invoke calls it, without the 0.4 s start of a new `invoke`); a few run the real `invoke` for the flags
themselves (short flags, repeatable options). Every inventory is labkit's kind: hosts on 127.0.0.1, a closed port."""

from __future__ import annotations

import importlib.util
import io
import itertools
import json
import os
import textwrap
from types import SimpleNamespace

import pytest
import yaml
from invoke import Config, Context
from rich.console import Console

from labkit import closed_port, fault_log, invoke, show  # noqa: F401  (fixture)
from tritonfleet import options, secrets
from tritonfleet.engine import vault
from tritonfleet.engine.inventory import Host
from tritonfleet.engine.playbook import load_playbook
from tritonfleet.engine.report import Reporter
from tritonfleet.engine.runner import HostRun, run_plays, selected_by_tags
from tritonfleet.engine.spec import Arg, HostContext, Outcome, module
from tritonfleet.errors import TritonfleetError
from tritonfleet.paths import REPO_ROOT

AREA = "Bad input (control machine)"
VAULT = REPO_ROOT / "tests" / "fixtures" / "vault"
_spec = importlib.util.spec_from_file_location("tasks", REPO_ROOT / "tasks.py")
TASKS = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(TASKS)


@pytest.fixture(autouse=True)
def no_ansible_settings(monkeypatch, tmp_path):
    """No ansible.cfg or vault password of this machine's user reaches a test; none a test configures outlives it."""
    monkeypatch.setenv("ANSIBLE_CONFIG", str(tmp_path / "no-ansible.cfg"))
    monkeypatch.delenv("ANSIBLE_VAULT_PASSWORD_FILE", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    yield
    vault.configure([])


def fleet(tmp_path, **group_vars) -> str:
    """rack_a: gpu01-gpu03, fast: gpu02 and gpu04, every host unreachable; `group_vars` go in group_vars/all.yml."""
    known_hosts = tmp_path / "known_hosts"
    known_hosts.touch()
    host = {"ansible_host": "127.0.0.1", "ansible_port": closed_port()}
    data = {"all": {"vars": {"ansible_ssh_common_args": f"-o UserKnownHostsFile={known_hosts}"}, "children": {
        "rack_a": {"hosts": {"gpu01": host, "gpu02": host, "gpu03": host}},
        "fast": {"hosts": {"gpu02": None, "gpu04": host}}}}}
    path = tmp_path / "hosts.yml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    if group_vars:
        (tmp_path / "group_vars").mkdir()
        (tmp_path / "group_vars" / "all.yml").write_text(yaml.safe_dump(group_vars))
    return str(path)


def run_task(capsys, task, **given) -> tuple[int, str, str]:
    """An Invoke task called in-process, as Invoke calls it: (exit code, stdout, stderr)."""
    config = Config(overrides={"tritonfleet": dict(options.CONFIG_DEFAULTS)}, lazy=True)
    with pytest.raises(SystemExit) as exited:
        task(Context(config), **given)
    out = capsys.readouterr()
    return exited.value.code, out.out, out.err


def listed(stdout: str) -> list[str]:
    return [line.strip() for line in stdout.splitlines()[1:]]


# ---------------------------------------------------------------------------------------------- --limit, --list-hosts

def test_ansible_flags_end_to_end(tmp_path):
    """The real `invoke`: Ansible's short flags, repeatable -e/-t, a vaulted group_vars file, --list-hosts."""
    inv = fleet(tmp_path)
    (tmp_path / "group_vars").mkdir()
    (tmp_path / "group_vars" / "all.yml").write_text((VAULT / "db_password.yml").read_text())
    proc = invoke("smoke", "-i", inv, "-l", "rack_a:!gpu02", "-e", "a=1", "-e", '{"b": 2}', "-t", "x", "-t", "y",
                  "--skip-tags", "z", "-D", "--vault-password-file", str(VAULT / "default.pass"), "--list-hosts")
    assert proc.returncode == 0, show(proc)
    assert proc.stdout == "  hosts (2):\n    gpu01\n    gpu03\n", show(proc)
    assert "UNREACHABLE" not in proc.stderr, show(proc)


@pytest.mark.parametrize("task", ["deploy", "provision", "sync_models", "start", "smoke", "rollback", "rollout",
                                  "fleet_status", "doctor", "models_diff"])
def test_ansible_short_flags_on_every_host_task(task):
    flags = {arg.attr_name or arg.name: sorted(arg.names) for arg in getattr(TASKS, task).get_arguments()}
    assert (flags["limit"], flags["extra_vars"], flags["ask_vault_pass"]) == (["l", "limit"], ["e", "extra-vars"],
                                                                              ["J", "ask-vault-pass"])
    assert (flags["list_hosts"], flags["vault_id"]) == (["list-hosts"], ["vault-id"])
    if task not in ("fleet_status", "doctor", "models_diff"):
        assert flags["diff"] == ["D", "diff"]
    assert all(len(name) > 1 or name.isalpha() for names in flags.values() for name in names)  # never `--`


@pytest.mark.parametrize("given, hosts", [
    ({"limit": "gpu0*"}, ["gpu01", "gpu02", "gpu03", "gpu04"]),
    ({"group": "rack_a", "limit": "~gpu0[23]"}, ["gpu02", "gpu03"]),
    ({"group": "fast", "limit": "rack_a"}, ["gpu02"]),
    ({"host": "gpu03,gpu01,gpu04", "limit": "rack_a"}, ["gpu03", "gpu01"]),  # --host's order kept
    ({"limit": "rack_a:&fast"}, ["gpu02"]),
    ({"limit": "rack_a[1:]"}, ["gpu02", "gpu03"]),
    ({"host": "gpu04,gpu02"}, ["gpu04", "gpu02"]),
])
def test_limit_narrows_what_host_and_group_select(tmp_path, capsys, given, hosts):
    code, out, _ = run_task(capsys, TASKS.deploy, inventory=fleet(tmp_path), list_hosts=True, **given)
    assert (code, listed(out)) == (0, hosts)


@pytest.mark.parametrize("task", ["deploy", "rollout", "fleet_status", "doctor", "models_diff"])
def test_every_host_task_lists_its_hosts_as_json(tmp_path, capsys, task):
    code, out, _ = run_task(capsys, getattr(TASKS, task), inventory=fleet(tmp_path), limit="fast", list_hosts=True,
                            json=True)
    assert (code, json.loads(out)) == (0, {"ok": True, "hosts": ["gpu02", "gpu04"]})


@pytest.mark.parametrize("limit, message", [
    ("~gpu(", "invalid host pattern '~gpu(': missing ), unterminated subpattern at position 3"),
    ("rack_a[5]", "no hosts matched the subscripted pattern 'rack_a[5]': 'rack_a' matches 3 host(s)"),
    ("nothing*", "--limit 'nothing*' leaves no hosts to target among the hosts of group all"),
])
def test_a_bad_limit_is_refused_before_any_host_is_touched(tmp_path, capsys, fault_log, limit, message):
    code, out, err = run_task(capsys, TASKS.deploy, inventory=fleet(tmp_path), limit=limit, check=True)
    assert code == 2 and message in err and "UNREACHABLE" not in err, err
    fault_log(AREA, f"`deploy --limit '{limit}'`", f"exit 2 before any host is touched: `{message}`")


# ---------------------------------------------------------------------------------------------- -e / --extra-vars

def test_extra_vars_read_as_ansible_reads_them_and_win_over_models(tmp_path):
    (tmp_path / "vars.yml").write_text("from_file: yes\nb: [1, 2]\n")
    given = ["a=1 quoted='x y' escaped=\"tab\\there\"", '{"b": {"c": 3}, "n": 4}', f"@{tmp_path / 'vars.yml'}",
             "a=2", "model_repository=/srv/m2"]
    opts = options.parse_options(SimpleNamespace(tritonfleet=options.CONFIG_DEFAULTS), models="/srv/m1",
                                 extra_vars=given)
    assert options.command_line_vars(opts) == {
        "model_repository": "/srv/m2",  # -e wins over everything, --models included
        "a": "2", "quoted": "x y", "escaped": "tab\there", "b": [1, 2], "n": 4, "from_file": True}


def test_a_vaulted_extra_vars_file_is_decrypted(tmp_path):
    vault.configure(vault.load_secrets([("prod", str(VAULT / "prod.pass"))]))
    opts = options.Options(extra_vars=(f"@{VAULT / 'vault-prod.yml'}",))
    assert options.command_line_vars(opts) == {"license_key": "LK-prod-77aa", "triton_log_verbose": 1}


@pytest.mark.parametrize("item, message", [
    ("./vars.yml", "-e './vars.yml' looks like a file name"),
    ("debug", "-e 'debug': 'debug' is not key=value"),
    ("ansible_user=deploy", "ansible_user is read from the inventory only"),
    ("[1, 2]", "-e '[1, 2]' is not a mapping of vars"),
    ("k='open", "unbalanced quotes in \"k='open\""),
    ("{a: [", "-e '{a: [' is not valid JSON or YAML"),
    ("", "--extra-vars is empty"),
])
def test_bad_extra_vars_are_refused(capsys, tmp_path, fault_log, item, message):
    code, _, err = run_task(capsys, TASKS.smoke, inventory=fleet(tmp_path), extra_vars=[item], check=True)
    assert code == 2 and message in err and "Traceback" not in err, err
    fault_log(AREA, f"`smoke -e {item!r}`", f"exit 2 before any host is touched: `{message}`")


def test_extra_vars_reach_the_run_above_the_inventory_and_secrets_stay_hidden(tmp_path, capsys):
    inv = fleet(tmp_path, triton_http_port=8000, tritonfleet_secret_vars=["triton_model_control_mode"])
    code, _, err = run_task(capsys, TASKS.smoke, inventory=inv, host="gpu01", check=True,
                            extra_vars=["triton_http_port=8001"], diff=True)
    assert code == 1 and "UNREACHABLE" in err, err  # the vars were accepted: the run reached the (closed) host
    code, _, err = run_task(capsys, TASKS.smoke, inventory=inv, host="gpu01", check=True,
                            extra_vars=["triton_model_control_mode=S3cret-mode-x"])
    assert code == 2 and "triton_model_control_mode is '********'" in err and "S3cret-mode-x" not in err, err
    assert "S3cret-mode-x" in secrets.registered()


# ---------------------------------------------------------------------------------------------- --tags, --diff

@pytest.mark.parametrize("task_tags, only, skip, runs", [
    ((), (), (), True), (("never",), (), (), False), (("never", "a"), ("a",), (), True),
    (("a",), ("b",), (), False), (("always",), ("b",), (), True), ((), ("untagged",), (), True),
    (("a",), ("tagged",), (), True), (("a",), (), ("a",), False), (("always",), (), ("all",), True),
    (("always",), (), ("all", "always"), False), (("a",), (), ("tagged",), False), ((), (), ("tagged",), True),
])
def test_tags_select_steps_as_ansible_does(task_tags, only, skip, runs):
    assert selected_by_tags(task_tags, only, skip) is runs


@pytest.mark.ansible
def test_tags_select_the_same_steps_as_ansible():
    taggable = pytest.importorskip("ansible.playbook.taggable").Taggable
    tag_sets = [(), ("a",), ("a", "b"), ("always",), ("never",), ("never", "a"), ("always", "a"), ("untagged",)]
    selections = [(), ("a",), ("all",), ("tagged",), ("untagged",), ("never",), ("always",), ("a", "untagged")]
    for task_tags, only, skip in itertools.product(tag_sets, selections, selections):
        step = SimpleNamespace(tags=list(task_tags), untagged=taggable.untagged, _loader=None,
                               _get_all_taggable_objects=lambda: [])
        expected = taggable.evaluate_tags(step, list(only) or ["all"], list(skip), {})
        assert selected_by_tags(task_tags, only, skip) is expected, (task_tags, only, skip)


def test_tag_options_split_as_ansible_splits_them():
    opts = options.parse_options(SimpleNamespace(tritonfleet=options.CONFIG_DEFAULTS), tags=["models, smoke", "a"],
                                 skip_tags=[" b "])
    assert (opts.tags, opts.skip_tags) == (("models", "smoke", "a"), ("b",))
    with pytest.raises(TritonfleetError, match="--tags names no tag"):
        options.parse_options(SimpleNamespace(tritonfleet=options.CONFIG_DEFAULTS), tags=[" , "])


@module(args={"text": Arg("str", required=True)})
def write(ctx, args) -> Outcome:
    return Outcome(changed=True, msg=f"wrote {args['text']}", diff=f"-old\n+{args['text']}\n")


def run_tagged_book(tmp_path, tags: tuple, skip_tags: tuple, diff: bool) -> tuple[list, str]:
    """A play with untagged, tagged, `always` and `never` steps and a handler: (steps that ran, what was printed)."""
    path = tmp_path / "play.yml"
    path.write_text(textwrap.dedent("""\
        - hosts: all
          tasks:
            - {name: plain, write: {text: plain}}
            - {name: models, write: {text: models}, tags: [models], notify: restart}
            - {name: smoke, write: {text: smoke}, tags: smoke}
            - {name: facts, write: {text: facts}, tags: [always]}
            - {name: debug, write: {text: debug}, tags: [never, debug]}
          handlers:
            - {name: restart, write: {text: restart}, tags: [other]}
        """))
    host = Host("gpu01", {}, ())
    run = HostRun("gpu01")
    printed = io.StringIO()
    reporter = Reporter(console=Console(file=printed, width=200), diff=diff)
    ctx = HostContext(host, SimpleNamespace(host=host), {}, check=False)
    run_plays(load_playbook(path, {"write": write}, set()), ctx, run, tags, reporter, {"write": write},
              skip_tags=skip_tags)
    return run.steps, printed.getvalue()


@pytest.mark.parametrize("tags, skip_tags, ran", [
    ((), (), ["plain", "models", "smoke", "facts", "restart"]),
    (("models",), (), ["models", "facts", "restart"]),  # the handler runs, whatever its tags, as in Ansible
    ((), ("smoke", "models"), ["plain", "facts"]),
    (("debug",), (), ["facts", "debug"]),
    (("untagged", "smoke"), ("always",), ["plain", "smoke"]),
])
def test_tags_and_skip_tags_select_the_steps_that_run(tmp_path, tags, skip_tags, ran):
    steps, _ = run_tagged_book(tmp_path, tags, skip_tags, diff=False)
    assert [s["task"] for s in steps] == ran


def test_file_diffs_are_shown_only_with_diff_and_kept_in_the_json_report(tmp_path):
    steps, printed = run_tagged_book(tmp_path, ("smoke",), (), diff=False)
    assert "+smoke" not in printed and "wrote smoke" in printed
    assert steps[0]["diff"] == "-old\n+smoke\n"  # what --json reports
    _, printed = run_tagged_book(tmp_path, ("smoke",), (), diff=True)
    assert "-old\n+smoke" in printed


# ---------------------------------------------------------------------------------------------- ansible.cfg

def ansible_cfg(folder, text: str):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "ansible.cfg").write_text(textwrap.dedent(text))
    return folder / "ansible.cfg"


def test_ansible_cfg_sets_inventory_forks_and_vault_password_file_below_invoke(tmp_path, monkeypatch):
    cfg = ansible_cfg(tmp_path / "project", """\
        [defaults]
        inventory = inventory/hosts.yml ; the fleet
        forks = 7
        vault_password_file = ~/vault.pass
        """)
    monkeypatch.setenv("ANSIBLE_CONFIG", str(cfg))
    unset = SimpleNamespace(tritonfleet=options.CONFIG_DEFAULTS)
    opts = options.parse_options(unset, inventory=None, forks=None)
    assert (opts.inventory, opts.forks) == ((str(tmp_path / "project" / "inventory" / "hosts.yml"),), 7)
    assert options.vault_sources(opts) == [("default", str(tmp_path / "vault.pass"))]  # ~ is $HOME: tmp_path
    invoke_config = SimpleNamespace(tritonfleet={**options.CONFIG_DEFAULTS, "inventory": "/srv/inv.yml"})
    assert options.parse_options(invoke_config, inventory=None).inventory == (str(REPO_ROOT / "/srv/inv.yml"),)
    assert options.parse_options(invoke_config, inventory=["cli.yml"], forks="3") == options.Options(
        inventory=("cli.yml",), forks=3)
    monkeypatch.setenv("ANSIBLE_VAULT_PASSWORD_FILE", "/env/vault.pass")  # the environment wins, as in Ansible
    opts = options.Options(vault_id=("prod@/p", "/v"), vault_password_file=("/f",), ask_vault_pass=True)
    assert options.vault_sources(opts) == [("prod", "/p"), ("default", "/v"), ("default", "/f"),
                                           ("default", "/env/vault.pass"), ("default", vault.PROMPT)]


def test_ansible_cfg_is_found_where_ansible_looks(tmp_path, monkeypatch):
    home = ansible_cfg(tmp_path, "[defaults]\n")
    (tmp_path / ".ansible.cfg").write_text(home.read_text())
    here = ansible_cfg(tmp_path / "here", "[defaults]\n")
    named = ansible_cfg(tmp_path / "named", "[defaults]\n")
    monkeypatch.chdir(here.parent)
    monkeypatch.setenv("ANSIBLE_CONFIG", str(named.parent))  # a folder: its ansible.cfg
    assert options.find_ansible_cfg() == named
    monkeypatch.delenv("ANSIBLE_CONFIG")
    assert options.find_ansible_cfg() == here
    here.parent.chmod(0o777)  # a world-writable current folder is skipped, as by Ansible
    try:
        assert options.find_ansible_cfg() == tmp_path / ".ansible.cfg"
    finally:
        here.parent.chmod(0o755)


@pytest.mark.parametrize("text, message", [
    ("[defaults]\nforks = many\n", "--forks must be a whole number, got 'many' (from forks in "),
    ("forks = 3\n", "ansible.cfg cannot be read: File contains no section headers"),
])
def test_a_bad_ansible_cfg_is_refused_naming_it(tmp_path, capsys, monkeypatch, fault_log, text, message):
    monkeypatch.setenv("ANSIBLE_CONFIG", str(ansible_cfg(tmp_path / "cfg", text)))
    code, _, err = run_task(capsys, TASKS.deploy, host="gpu01", check=True)
    assert code == 2 and message in err, err
    fault_log(AREA, f"ansible.cfg with `{text.strip().splitlines()[-1]}`",
              f"exit 2 before anything else is read: `{message}...`")


def test_ansible_cfg_end_to_end(tmp_path):
    """The real `invoke` with ANSIBLE_CONFIG: the inventory and the vault password come from ansible.cfg."""
    fleet(tmp_path)
    (tmp_path / "group_vars").mkdir()
    (tmp_path / "group_vars" / "fast.yml").write_text((VAULT / "vault-prod.yml").read_text())
    (tmp_path / "prod.pass").write_text((VAULT / "prod.pass").read_text())
    cfg = ansible_cfg(tmp_path, "[defaults]\ninventory = hosts.yml\nvault_password_file = prod.pass\n")
    env = {**os.environ, "ANSIBLE_CONFIG": str(cfg)}
    env.pop("ANSIBLE_VAULT_PASSWORD_FILE", None)
    proc = invoke("status", "-l", "fast", "--list-hosts", env=env)
    assert proc.returncode == 0 and proc.stdout == "  hosts (2):\n    gpu02\n    gpu04\n", show(proc)
