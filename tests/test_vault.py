"""Ansible Vault: values and files encrypted by ansible-vault itself (tests/fixtures/vault, README there) decrypt
in inventories and every YAML file tritonfleet loads; a wrong or missing password is refused before any host is
touched, naming the file and line; what a vault holds is redacted from every output."""

from __future__ import annotations

import getpass
import json
import shutil
import stat
import subprocess
import textwrap

import pytest

from labkit import fault_log, invoke, local_inventory, show  # noqa: F401  (fixture)
from test_cli_habits import TASKS, no_ansible_settings, run_task  # noqa: F401  (autouse fixture)
from tritonfleet import secrets
from tritonfleet.engine import vault
from tritonfleet.engine.inventory import load_inventory
from tritonfleet.engine.playbook import load_playbook
from tritonfleet.engine.report import redact
from tritonfleet.errors import TritonfleetError
from tritonfleet.paths import REPO_ROOT
from tritonfleet.yamlfile import load_yaml

AREA = "Bad input (control machine)"
FIXTURES = REPO_ROOT / "tests" / "fixtures" / "vault"
DEFAULT = ("default", str(FIXTURES / "default.pass"))
PROD = ("prod", str(FIXTURES / "prod.pass"))


def configure(*sources) -> None:
    vault.configure(vault.load_secrets(list(sources)))


def fixture_text(name: str) -> str:
    return (FIXTURES / name).read_text()


def inventory_with(tmp_path, **files: str) -> str:
    """A local inventory (host gpu08, unreachable) with `files` written beside it, e.g. group_vars/all/x.yml."""
    inv = local_inventory(tmp_path / "hosts.yml")
    for name, text in files.items():
        path = tmp_path / name.replace("__", "/")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return inv


def test_values_and_files_made_by_ansible_vault_decrypt_and_are_secret(tmp_path):
    inv = inventory_with(tmp_path, group_vars__all__db=fixture_text("db_password.yml"),
                         group_vars__all__token=fixture_text("api_token-prod.yml"),
                         group_vars__all__vault=fixture_text("vault-prod.yml"),
                         host_vars__gpu08=fixture_text("vault-default.yml"))
    configure(PROD, DEFAULT)
    hostvars = load_inventory(inv).host("gpu08").vars
    assert (hostvars["db_password"], hostvars["api_token"]) == ("S3cret-db-value", "tok-prod-9f2c")  # 1.1, 1.2
    assert (hostvars["license_key"], hostvars["triton_log_verbose"]) == ("LK-prod-77aa", 1)  # a 1.2 file
    assert hostvars["registry_token"] == "reg-tok-5150"  # a 1.1 file
    for value in ("S3cret-db-value", "tok-prod-9f2c", "LK-prod-77aa", "reg-tok-5150", "prod-pass-42"):
        assert redact(f"x {value} y") == f"x {secrets.REDACTED} y"
    assert "1" not in secrets.registered()  # a number in a vaulted file is not hidden everywhere


def test_every_password_is_tried_whatever_its_vault_id_as_ansible_does(tmp_path):
    configure(("prod", DEFAULT[1]))  # labelled prod, but the password of the 1.1 (default) value
    assert load_yaml(FIXTURES / "db_password.yml") == {"db_password": "S3cret-db-value"}


def test_a_playbook_value_decrypts_too(tmp_path):
    path = tmp_path / "play.yml"
    value = fixture_text("db_password.yml").replace("db_password:", "      token:")
    path.write_text(f"- hosts: all\n  vars:\n{value}  tasks: []\n")
    configure(DEFAULT)
    assert load_playbook(path, {}).plays[0].vars == {"token": "S3cret-db-value"}


def test_a_wrong_password_names_the_file_and_line_of_the_value(tmp_path):
    path = tmp_path / "vars.yml"
    path.write_text("a: 1\n" + fixture_text("api_token-prod.yml"))
    configure(DEFAULT)
    with pytest.raises(TritonfleetError) as err:
        load_yaml(path)
    assert (err.value.file, err.value.line) == (str(path), 2)
    assert err.value.message.startswith("cannot decrypt this !vault value: wrong vault password: no vault password "
                                        "given decrypts it (its vault id: prod; tried ")
    assert err.value.hint == "give the password it was encrypted with: --vault-id prod@FILE"


@pytest.mark.parametrize("content, message", [
    (None, "the vault password file was not found"),
    ("\n", "the vault password file gives an empty password"),
    ("dir", "the vault password file is a directory"),
    ("#!/bin/sh\necho oops >&2\nexit 3\n", "the vault password script exited 3"),
])
def test_a_password_file_that_gives_no_password_is_refused(tmp_path, fault_log, content, message):
    path = tmp_path / "pass"
    if content == "dir":
        path.mkdir()
    elif content is not None:
        path.write_text(content)
        if content.startswith("#!"):
            path.chmod(0o755)
    with pytest.raises(TritonfleetError) as err:
        vault.load_secrets([("default", str(path))])
    assert (err.value.message, err.value.file) == (message, str(path))
    if content is None:
        fault_log(AREA, "`--vault-password-file` naming a file that does not exist",
                  f"refused before anything is read (exit 2): `{err.value.message}`, naming the file")


def test_a_password_script_is_run_and_a_client_script_is_asked_for_its_vault_id(tmp_path):
    script = tmp_path / "pass.sh"
    script.write_text("#!/bin/sh\necho hunter2-default\n")
    client = tmp_path / "vault-client.sh"
    client.write_text('#!/bin/sh\n[ "$1 $2" = "--vault-id prod" ] && echo prod-pass-42\n')
    for path in (script, client):
        path.chmod(path.stat().st_mode | stat.S_IXUSR)
    loaded = vault.load_secrets([("default", str(script)), ("prod", str(client))])
    assert [(s.vault_id, s.password) for s in loaded] == [("default", b"hunter2-default"), ("prod", b"prod-pass-42")]
    with pytest.raises(TritonfleetError, match="the vault password script exited 1"):
        vault.load_secrets([("other", str(client))])


def test_ask_vault_pass_prompts_as_ansible_does(tmp_path):
    asked = []

    def prompt(text):
        asked.append(text)
        return "prod-pass-42\n"

    vault.configure(vault.load_secrets([("default", vault.PROMPT), ("prod", vault.PROMPT)], prompt=prompt))
    assert asked == ["Vault password: ", "Vault password (prod): "]
    assert load_yaml(FIXTURES / "vault-prod.yml")["license_key"] == "LK-prod-77aa"
    with pytest.raises(TritonfleetError, match="the vault password typed for vault id default is empty"):
        vault.load_secrets([("default", vault.PROMPT)], prompt=lambda text: "")


def test_ask_vault_pass_asks_before_anything_is_read(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(getpass, "getpass", lambda text: "prod-pass-42")
    inv = inventory_with(tmp_path, group_vars__all=fixture_text("vault-prod.yml"))
    assert run_task(capsys, TASKS.smoke, inventory=inv, ask_vault_pass=True, list_hosts=True) == (
        0, "  hosts (1):\n    gpu08\n", "")


def test_the_derived_key_is_computed_once_per_password_and_salt():
    configure(DEFAULT)
    vault._keys.cache_clear()
    for _ in range(3):
        load_yaml(FIXTURES / "db_password.yml")
    assert (vault._keys.cache_info().misses, vault._keys.cache_info().hits) == (1, 2)


def test_damaged_vaulttext_is_named_as_such(tmp_path):
    path = tmp_path / "vars.yml"
    path.write_text("token: !vault |\n  $ANSIBLE_VAULT;1.1;AES256\n  3131zz\n")
    configure(DEFAULT)
    with pytest.raises(TritonfleetError, match="the vaulttext is damaged") as err:
        load_yaml(path)
    assert err.value.line == 1


def vaulted_inventory(tmp_path) -> str:
    """gpu08 whose triton_model_control_mode is a !vault value (not a valid mode: its error shows the value) and
    whose group_vars hold a file vaulted with vault id prod."""
    inv = inventory_with(tmp_path, group_vars__all__vault=fixture_text("vault-prod.yml"),
                         host_vars__gpu08=fixture_text("db_password.yml").replace("db_password:",
                                                                                  "triton_model_control_mode:"))
    return inv


def test_a_vaulted_value_is_decrypted_and_redacted_in_errors(tmp_path, capsys):
    inv = vaulted_inventory(tmp_path)
    code, out, err = run_task(capsys, TASKS.smoke, check=True, inventory=inv, vault_id=[f"prod@{PROD[1]}"],
                              vault_password_file=[DEFAULT[1]], json=True)
    assert code == 2 and "triton_model_control_mode is '********'" in err, err
    assert json.loads(out)["error"] == "host gpu08: triton_model_control_mode is '********'"
    assert "S3cret-db-value" not in out + err and "UNREACHABLE" not in err, err


def test_a_wrong_vault_password_is_refused_before_any_host_is_touched(tmp_path, fault_log):
    inv = vaulted_inventory(tmp_path)
    proc = invoke("smoke", "--check", "-i", inv, "--vault-password-file", DEFAULT[1])
    vaulted = tmp_path / "group_vars" / "all" / "vault"
    assert proc.returncode == 2 and f"error: {vaulted}:1: cannot decrypt this file: wrong vault password" in \
        proc.stderr, show(proc)
    assert "UNREACHABLE" not in proc.stderr and "Traceback" not in proc.stderr, show(proc)
    first = proc.stderr.strip().splitlines()[0].replace(f"{tmp_path}/", "").replace(str(FIXTURES), "fixtures")
    fault_log(AREA, "`--vault-password-file` with the wrong password for a vaulted group_vars file (vault id prod)",
              f"exit 2 before any host is touched: `{first}`")


def test_a_vault_without_a_password_is_refused_with_how_to_give_one(tmp_path, capsys, fault_log):
    code, _, err = run_task(capsys, TASKS.smoke, check=True, inventory=vaulted_inventory(tmp_path))
    assert code == 2 and "no vault password was given" in err and "fix: pass --vault-password-file FILE" in err, err
    first = err.strip().splitlines()[0].replace(f"{tmp_path}/", "")
    fault_log(AREA, "a vaulted group_vars file, no vault password given (was: `not supported yet`)",
              f"exit 2 before any host is touched: `{first}`, with how to give one")


@pytest.mark.ansible
@pytest.mark.skipif(shutil.which("ansible-vault") is None, reason="needs ansible-vault (pip install ansible-core)")
def test_ansible_vault_live(tmp_path):
    """Values and a file encrypted now by the installed ansible-vault, with a fresh password and salt."""
    password = tmp_path / "pw"
    password.write_text("live-password-3141\n")
    value = subprocess.run(["ansible-vault", "encrypt_string", "--vault-id", f"live@{password}", "v@lue ü ✓",
                            "--name", "live_token"], capture_output=True, text=True, check=True).stdout
    plain = tmp_path / "vars.yml"
    plain.write_text(textwrap.dedent("""\
        live_key: live-key-2718
        nested: {list: [a-text, 2]}
        """))
    subprocess.run(["ansible-vault", "encrypt", "--vault-password-file", str(password), str(plain)],
                   capture_output=True, check=True)
    (tmp_path / "value.yml").write_text(value)
    configure(("live", str(password)))
    assert load_yaml(tmp_path / "value.yml") == {"live_token": "v@lue ü ✓"}
    assert load_yaml(plain) == {"live_key": "live-key-2718", "nested": {"list": ["a-text", 2]}}
