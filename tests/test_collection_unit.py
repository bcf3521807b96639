"""The Ansible collection tritonfleet.triton without a host: built and installed as a user would, documented as its
action plugins validate, and run by the real ansible-playbook against a host on a closed loopback port (the engine
finds it unreachable at once); the adapter (tritonfleet/fleet/ansible.py) called directly for the mappings."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess

import pytest
import yaml

from labkit import closed_port
from test_cli import fake_bundle
from tritonfleet import secrets
from tritonfleet.engine.inventory import Host
from tritonfleet.engine.report import redact_data
from tritonfleet.engine.runner import HostRun
from tritonfleet.errors import TritonfleetError
from tritonfleet.fleet import ansible as adapter
from tritonfleet.paths import REPO_ROOT

COLLECTION = REPO_ROOT / "collection"
EXAMPLES = REPO_ROOT / "examples" / "models"


def install_collection(where) -> dict:
    """Build the collection from collection/ and install it into `where`, as a user or an execution environment
    would; the environment for ansible-playbook (and ansible-runner) to find it and this checkout's tritonfleet."""
    subprocess.run(["ansible-galaxy", "collection", "build", str(COLLECTION), "--output-path", str(where)],
                   check=True, capture_output=True, text=True, timeout=120)
    tarball = next(where.glob("tritonfleet-triton-*.tar.gz"))
    subprocess.run(["ansible-galaxy", "collection", "install", str(tarball), "-p", str(where / "collections")],
                   check=True, capture_output=True, text=True, timeout=120)
    return {**os.environ, "ANSIBLE_COLLECTIONS_PATH": str(where / "collections"), "PYTHONPATH": str(REPO_ROOT),
            "ANSIBLE_NOCOLOR": "1", "ANSIBLE_RETRY_FILES_ENABLED": "0", "ANSIBLE_LOCAL_TEMP": str(where / "tmp")}


def recap(stdout: str) -> dict[str, dict[str, int]]:
    """The PLAY RECAP lines: host -> {ok, changed, unreachable, failed, ...}."""
    found = {}
    for host, counts in re.findall(r"^(\S+)\s+:\s+(ok=.*)$", stdout, re.M):
        found[host] = {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", counts)}
    return found


@pytest.fixture(scope="module")
def ansible_env(tmp_path_factory):
    pytest.importorskip("ansible")
    return install_collection(tmp_path_factory.mktemp("collection"))


def playbook(tmp_path, env, tasks: list, *args, hosts_vars: dict | None = None, timeout=120):
    """ansible-playbook with the installed collection: one play, gather_facts off, its host gpu08 on 127.0.0.1 at a
    closed port, with the default (ssh) connection and its vars as a lab inventory has them."""
    known_hosts = tmp_path / "known_hosts"
    known_hosts.touch()
    inventory = tmp_path / "hosts.yml"
    inventory.write_text(yaml.safe_dump({"all": {
        "vars": {"ansible_ssh_common_args": f"-o UserKnownHostsFile={known_hosts} -o StrictHostKeyChecking=yes"},
        "hosts": {"gpu08": {"ansible_host": "127.0.0.1", "ansible_port": closed_port(), **(hosts_vars or {})}}}}))
    play = tmp_path / "play.yml"
    play.write_text(yaml.safe_dump([{"hosts": "all", "gather_facts": False, "tasks": tasks}], sort_keys=False))
    return subprocess.run(["ansible-playbook", "-i", str(inventory), str(play), *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def task_result(stdout: str) -> dict:
    """The JSON after `=>` of the first `fatal:`/`ok:`/`changed:` line (ansible-playbook's default callback)."""
    line = next(ln for ln in stdout.splitlines() if re.match(r"^(fatal|ok|changed): \[", ln) and "=>" in ln)
    return json.loads(line.split("=>", 1)[1])


# ---------------------------------------------------------------------------------------------------------------
# the built collection


@pytest.mark.ansible
def test_every_module_is_documented_with_the_options_its_action_validates(ansible_env):
    proc = subprocess.run(["ansible-doc", "--json", *(f"tritonfleet.triton.{action}" for action in adapter.ACTIONS)],
                          env=ansible_env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    docs = json.loads(proc.stdout)
    for action, spec in adapter.ACTIONS.items():
        doc = docs[f"tritonfleet.triton.{action}"]
        options = doc["doc"]["options"]
        assert {name: (o["type"], o.get("default"), o.get("elements")) for name, o in options.items()} == {
            name: (o["type"], o.get("default"), o.get("elements")) for name, o in spec.options.items()}, action
        assert doc["examples"] and doc["return"] and doc["doc"]["attributes"]["check_mode"]["support"] == "full"
        assert f"tritonfleet.triton.{action}" in doc["examples"]


@pytest.mark.ansible
def test_unreachable_host_is_unreachable_in_the_play_recap(ansible_env, tmp_path):
    """Ansible's default connection vars are present (ssh); only the engine connects, and finds the port closed."""
    proc = playbook(tmp_path, ansible_env, [{"tritonfleet.triton.deploy": {
        "models": str(EXAMPLES), "bundle": fake_bundle(tmp_path)}}])
    assert proc.returncode == 4, proc.stdout + proc.stderr  # ansible-playbook's exit code for unreachable hosts
    assert recap(proc.stdout)["gpu08"] == {"ok": 0, "changed": 0, "unreachable": 1, "failed": 0, "skipped": 0,
                                           "rescued": 0, "ignored": 0}
    result = task_result(proc.stdout)
    assert result["unreachable"] is True and "cannot reach 127.0.0.1" in result["msg"]


@pytest.mark.ansible
def test_bad_var_fails_the_host_with_the_engines_message(ansible_env, tmp_path):
    proc = playbook(tmp_path, ansible_env, [{"tritonfleet.triton.smoke": {"bundle": fake_bundle(tmp_path)}}],
                    "--check", "-e", "triton_http_port=abc")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    msg = task_result(proc.stdout)["msg"]
    assert "triton_http_port is 'abc'" in msg and "fix: triton_http_port must be a port number" in msg


@pytest.mark.ansible
def test_vaulted_values_are_decrypted_for_the_engine_and_redacted_from_its_result(ansible_env, tmp_path):
    (tmp_path / "vault-pass").write_text("a vault password\n")
    encrypted = subprocess.run(["ansible-vault", "encrypt_string", "--vault-password-file",
                                str(tmp_path / "vault-pass"), "port-from-vault", "--name", "triton_http_port"],
                               env=ansible_env, capture_output=True, text=True, check=True, timeout=60).stdout
    (tmp_path / "vaulted.yml").write_text(encrypted)
    proc = playbook(tmp_path, ansible_env, [{"tritonfleet.triton.smoke": {"bundle": fake_bundle(tmp_path)}}],
                    "-e", f"@{tmp_path / 'vaulted.yml'}", "--vault-password-file", str(tmp_path / "vault-pass"))
    assert "triton_http_port is '********': not a whole number" in task_result(proc.stdout)["msg"], proc.stdout
    assert "port-from-vault" not in proc.stdout + proc.stderr


@pytest.mark.ansible
def test_connection_settings_come_from_ansible_command_line_too(ansible_env, tmp_path):
    """`--private-key` reaches the engine as Ansible resolves it (below the inventory's vars, above ansible.cfg)."""
    proc = playbook(tmp_path, ansible_env, [{"tritonfleet.triton.deploy": {"bundle": fake_bundle(tmp_path)}}],
                    "--private-key", str(tmp_path / "no-such-key"), "-u", "deploy")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert f"private key {tmp_path / 'no-such-key'} (ansible_ssh_private_key_file) does not exist" in \
        task_result(proc.stdout)["msg"]


@pytest.mark.ansible
def test_relative_models_are_found_as_ansible_finds_files(ansible_env, tmp_path):
    """`models: repo` is the playbook folder's files/repo (the engine alone would read ./repo, which is not there):
    the repository validates and the run gets as far as connecting."""
    shutil.copytree(EXAMPLES, tmp_path / "files" / "repo")
    proc = playbook(tmp_path, ansible_env, [{"tritonfleet.triton.deploy": {
        "models": "repo", "bundle": fake_bundle(tmp_path)}}])
    assert recap(proc.stdout)["gpu08"]["unreachable"] == 1, proc.stdout


@pytest.mark.ansible
def test_unknown_option_is_refused_before_the_engine_runs(ansible_env, tmp_path):
    proc = playbook(tmp_path, ansible_env, [{"tritonfleet.triton.deploy": {"modles": "x"}}])
    assert proc.returncode == 2 and "Unsupported parameters" in proc.stdout and "modles" in proc.stdout, proc.stdout


@pytest.mark.ansible
def test_role_passes_its_vars_to_deploy(ansible_env, tmp_path):
    proc = playbook(tmp_path, ansible_env, [{"ansible.builtin.include_role": {"name": "tritonfleet.triton.server"},
                                             "vars": {"server_models": str(tmp_path / "no-models"),
                                                      "server_bundle": fake_bundle(tmp_path)}}])
    assert recap(proc.stdout)["gpu08"]["failed"] == 1, proc.stdout
    assert str(tmp_path / "no-models") in task_result(proc.stdout)["msg"]


# ---------------------------------------------------------------------------------------------------------------
# the adapter, without Ansible


def connection(**settings) -> adapter.Connection:
    return adapter.Connection({"ansible_host": "10.0.0.5", "ansible_port": 2222, **settings})


def test_engine_host_takes_the_vars_the_engine_reads_and_ansibles_connection_settings(tmp_path):
    key = tmp_path / "id"
    key.touch()
    play_vars = {"triton_http_port": "8100", "model_repository": "/m", "tritonfleet_host_key_policy": "accept-new",
                 "ansible_host": "ignored: the connection's wins", "playbook_dir": "/p", "hostvars": object(),
                 "my_app_setting": 1}
    host = adapter.engine_host("gpu05", play_vars, play_vars.__getitem__, connection(
        ansible_user="deploy", ansible_ssh_private_key_file=str(key),
        ansible_ssh_common_args="-o UserKnownHostsFile=/k/known_hosts", ansible_become=False),
        groups=["fleet"])
    assert (host.name, host.address, host.port, host.user, host.key_file, host.known_hosts_file) == (
        "gpu05", "10.0.0.5", 2222, "deploy", str(key), "/k/known_hosts")
    assert host.groups == ("fleet",)
    assert set(host.vars) == {"triton_http_port", "model_repository", "tritonfleet_host_key_policy", "ansible_host",
                              "ansible_port", "ansible_user", "ansible_ssh_private_key_file",
                              "ansible_ssh_common_args", "ansible_become"}
    assert host.vars["triton_http_port"] == "8100"  # typed later, by fleet.run.host_vars, as for the inventory


def test_unset_user_is_the_local_user_as_in_ansible():
    import getpass
    assert adapter.engine_host("gpu05", {}, {}.__getitem__, connection()).user == getpass.getuser()


@pytest.mark.parametrize("conn, message", [
    pytest.param(adapter.Connection(connection().settings, password=True), "tritonfleet connects with keys only",
                 id="ssh-password"),
    pytest.param(adapter.Connection({"ansible_become": True}, become_method="ansible.builtin.su"),
                 "become method ansible.builtin.su is not supported", id="become-su"),
    pytest.param(connection(ansible_port="ssh"), "ansible_port is 'ssh'", id="bad-port"),
])
def test_what_the_engine_cannot_take_is_refused_naming_it(conn, message):
    with pytest.raises(TritonfleetError, match=re.escape(message)):
        adapter.engine_host("gpu05", {}, {}.__getitem__, conn)


def test_become_with_sudo_is_the_engines_become():
    host = adapter.engine_host("gpu05", {}, {}.__getitem__, adapter.Connection(
        {"ansible_become": True, "ansible_become_user": "root", "ansible_become_password": "s3cret-pw"},
        become_method="sudo"))
    assert host.vars["ansible_become"] is True and host.vars["ansible_become_password"] == "s3cret-pw"
    assert redact_data({"msg": "sudo said s3cret-pw"}) == {"msg": f"sudo said {secrets.REDACTED}"}


def test_secret_vars_are_read_and_redacted_from_results():
    play_vars = {"tritonfleet_secret_vars": ["license_key"], "license_key": "LIC-123456", "hub_token": "tok-abcdef",
                 "unrelated": "not read"}
    read = []
    host = adapter.engine_host("gpu05", play_vars, lambda var: read.append(var) or play_vars[var], connection())
    assert sorted(read) == ["hub_token", "license_key", "tritonfleet_secret_vars"]
    assert host.vars["license_key"] == "LIC-123456"
    def refused():
        raise TritonfleetError("key LIC-123456 tok-abcdef")

    result = adapter.run_on_host("smoke", refused, {}, adapter.Mode())
    assert result == {"failed": True, "changed": False, "msg": f"key {secrets.REDACTED} {secrets.REDACTED}"}


def test_result_maps_steps_diff_and_failure_as_ansible_reads_them():
    run = HostRun("gpu05", counts={"ok": 3, "changed": 1, "failed": 1, "skipped": 0}, release_before="r1",
                  release_after="r1", notes=["took over a stale lock"],
                  steps=[{"task": "systemd unit", "module": "template", "status": "changed", "msg": "write",
                          "diff": "--- a\n+++ b\n"},
                         {"task": "Every model ready", "module": "wait_ready", "status": "failed",
                          "msg": "str_upper UNAVAILABLE"}])
    result = adapter._result_of(run, adapter.Mode(diff=True))
    assert result["changed"] is True and result["failed"] is True
    assert result["msg"] == "Every model ready: str_upper UNAVAILABLE"
    assert result["diff"] == [{"prepared": "# systemd unit\n--- a\n+++ b\n"}]
    assert result["warnings"] == ["took over a stale lock"] and result["steps"] == run.steps
    assert "diff" not in adapter._result_of(run, adapter.Mode())


def test_unreachable_host_through_the_adapter(tmp_path):
    known_hosts = tmp_path / "known_hosts"
    known_hosts.touch()
    host = Host("gpu08", {"ansible_host": "127.0.0.1", "ansible_port": closed_port(),
                          "ansible_ssh_common_args": f"-o UserKnownHostsFile={known_hosts}"}, ())
    lines = []
    result = adapter.run_on_host("deploy", lambda: host, {"models": str(EXAMPLES), "bundle": fake_bundle(tmp_path),
                                                          "rollback": True}, adapter.Mode(log=lines.append))
    assert result["unreachable"] is True and result["changed"] is False and result["steps"] == []
    assert any("UNREACHABLE" in line for line in lines)
