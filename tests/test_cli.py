"""The command line as a user types it: every option refused clearly before anything is read or touched (exit 2),
or read as Ansible reads its counterpart. Each test runs the real `invoke` command against an inventory of its
own (labkit.local_inventory: hosts on 127.0.0.1, a port nothing listens on), so a run that got through could
reach no lab host; `--check` wherever a playbook could start."""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import tarfile

import pytest

from labkit import fault_log, invoke_here as invoke, local_inventory, show  # noqa: F401  (fixture)
from tritonfleet.paths import REPO_ROOT

AREA = "Bad input (control machine)"
HOSTS = tuple(f"gpu{i:02d}" for i in range(1, 11))


def refused(proc, message: str) -> str:
    """The run was refused as bad input: exit 2, the message on stderr, no traceback. Its first line."""
    assert proc.returncode == 2, show(proc)
    assert message in proc.stderr, show(proc)
    assert "Traceback" not in proc.stderr + proc.stdout, show(proc)
    return proc.stderr.strip().splitlines()[0]


def fake_bundle(tmp_path) -> str:
    """A built bundle (tarball and sidecar) that is enough for a rollout to plan and start its batches; its
    hosts are unreachable, so nothing in it is ever pushed."""
    tar = tmp_path / "triton-2.51.0-test.tar.gz"
    with tarfile.open(tar, "w:gz") as tf:
        data = b"2.51.0\n"
        info = tarfile.TarInfo("TRITON_VERSION")
        info.size = len(data)
        tf.addfile(info, io.BytesIO(data))
    (tmp_path / "triton-2.51.0-test.json").write_text(json.dumps({
        "sha256": hashlib.sha256(tar.read_bytes()).hexdigest(), "size": tar.stat().st_size,
        "bundle_id": "triton-2.51.0-test", "triton_version": "2.51.0", "python_versions": ["3.11"],
        "backends": ["python"]}))
    return str(tar)


@pytest.mark.parametrize("option", ["--host", "--group"])
def test_empty_host_or_group_is_refused_not_read_as_every_host(tmp_path, fault_log, option):
    inv = local_inventory(tmp_path / "hosts.yml", names=("gpu07", "gpu08"))
    proc = invoke("deploy", option, "", "--inventory", inv, "--check")
    first = refused(proc, f"{option} is empty")
    assert "gpu07" not in proc.stderr, show(proc)
    fault_log(AREA, f"`{option} ''` (an unset shell variable)",
              f"exit 2, `{first}`; before, the whole inventory was deployed to")


@pytest.mark.parametrize("option, before", [
    pytest.param("--inventory", "`.: cannot read: Is a directory`", id="inventory"),
    pytest.param("--models", "the inventory's model_repository was used", id="models"),
    pytest.param("--bundle", "the current folder was read as an /opt/tritonserver tree", id="bundle"),
])
def test_empty_path_is_refused_not_read_as_another(tmp_path, fault_log, option, before):
    inv = local_inventory(tmp_path / "hosts.yml")
    args = ["--inventory", inv] if option != "--inventory" else []
    proc = invoke("deploy", "--host", "gpu08", *args, option, "", "--check")
    first = refused(proc, f"{option} is empty")
    fault_log(AREA, f"`{option} ''`", f"exit 2, `{first}`; before, {before}")


def test_empty_configured_inventory_is_refused(tmp_path, fault_log):
    env = {**os.environ, "INVOKE_TRITONFLEET_INVENTORY": ""}
    proc = invoke("deploy", "--host", "not-in-any-inventory", "--check", env=env)
    first = refused(proc, "--inventory is empty (from tritonfleet.inventory in Invoke's configuration)")
    fault_log(AREA, "`INVOKE_TRITONFLEET_INVENTORY=''`", f"exit 2, `{first}`")


def test_host_list_naming_no_host_is_refused(tmp_path, fault_log):
    inv = local_inventory(tmp_path / "hosts.yml", names=("gpu07", "gpu08"))
    proc = invoke("deploy", "--host", ",", "--inventory", inv, "--check")
    refused(proc, "--host ',' names no host")
    assert "known hosts: gpu07, gpu08" in proc.stderr, show(proc)
    fault_log(AREA, "`--host ','`", "exit 2, `--host ',' names no host` with the known hosts; "
                                     "before, a run on 0 hosts that exited 0")


def test_host_named_twice_is_one_host_in_the_order_given(tmp_path, fault_log):
    inv = local_inventory(tmp_path / "hosts.yml", names=("gpu07", "gpu08"))
    proc = invoke("smoke", "--host", "gpu08,gpu07,gpu08", "--inventory", inv, "--check", "--json")
    assert proc.returncode == 1, show(proc)  # the hosts are unreachable: each is tried once
    assert [h["host"] for h in json.loads(proc.stdout)["hosts"]] == ["gpu08", "gpu07"], show(proc)
    fault_log(AREA, "`--host gpu08,gpu07,gpu08`", "each host once, in the order first given (as Ansible's host "
                                                  "patterns); before, two runs at once on gpu08")


@pytest.mark.parametrize("option, value, message, before", [
    pytest.param("--batch", "abc", "--batch must be a number of hosts N or a percentage P% (0% to 100%), got 'abc'",
                 "; before, accepted and never read", id="batch-abc"),
    pytest.param("--batch", "12.5%", "got '12.5%'", "; before, accepted (Ansible's serial takes whole percentages)",
                 id="batch-fraction"),
    pytest.param("--max-fail", "150%", "--max-fail must be a number of hosts N or a percentage P% (0% to 100%), "
                 "got '150%'", "", id="max-fail-over-100"),
    pytest.param("--canary", "-1", "--canary must be a whole number, got '-1'", "", id="canary-negative"),
])
def test_rollout_counts_are_checked_whatever_the_host_count(tmp_path, fault_log, option, value, message, before):
    inv = local_inventory(tmp_path / "hosts.yml")  # one host, the canary: no batch after it
    proc = invoke("rollout", option, value, "--inventory", inv)
    first = refused(proc, message)
    fault_log(AREA, f"`rollout {option} {value}` on one host (no host left after the canary)",
              f"exit 2, `{first}`{before}")


@pytest.mark.parametrize("hosts, batch, batches", [
    pytest.param(10, "0", [1, 2, 2, 2, 2, 2, 2, 2, 2, 2], id="0-is-all-the-rest"),  # as serial: 0
    pytest.param(10, "25%", [1, 2, 2, 3, 3, 4, 4, 5, 5, 6], id="25%-of-10"),  # 2.5 rounds down, as serial: [1, "25%"]
    pytest.param(3, "10%", [1, 2, 3], id="10%-of-3"),  # 0.3: at least 1
])
def test_rollout_batches_are_ansible_serial(tmp_path, fault_log, hosts, batch, batches):
    inv = local_inventory(tmp_path / "hosts.yml", names=HOSTS[:hosts])
    proc = invoke("rollout", "--inventory", inv, "--bundle", fake_bundle(tmp_path), "--batch", batch,
                  "--max-fail", "100%", "--json")
    assert proc.returncode == 1, show(proc)  # every host unreachable, all tolerated
    assert [h["batch"] for h in json.loads(proc.stdout)["hosts"]] == batches, show(proc)
    if batch == "0":
        fault_log(AREA, "`rollout --batch 0`", "one batch of every host after the canary, as Ansible's "
                                               "`serial: 0`; before, batches of one host")


@pytest.mark.parametrize("args, message", [
    pytest.param(["--bogus"], "No idea what '--bogus' is!", id="unknown-option"),
    pytest.param(["--host"], "needed value and was not given one!", id="option-without-value"),
])
def test_invoke_parse_errors_exit_1_with_invokes_message(fault_log, args, message):
    """Invoke itself refuses these before any task runs, and its Program exits 1 on a parse error whatever
    tasks.py says (invoke/program.py, Program.run); only a command other than `invoke` could make it 2."""
    proc = invoke("deploy", *args)
    assert proc.returncode == 1 and message in proc.stderr, show(proc)
    assert "Traceback" not in proc.stderr + proc.stdout, show(proc)
    if args == ["--host"]:  # an unknown option is in test_bad_input's rows already
        fault_log(AREA, "`invoke deploy --host` (no value)",
                  f"exit 1 (Invoke's own parse error: Invoke exits 1 on every one), `{proc.stderr.strip()}`; "
                  "nothing runs")


@pytest.mark.parametrize("task", ["deploy", "rollout", "status", "doctor", "models.diff"])
def test_json_errors_are_a_json_object_on_stdout(tmp_path, task):
    inv = local_inventory(tmp_path / "hosts.yml")
    check = ["--check"] if task == "deploy" else []
    proc = invoke(task, "--host", "", "--inventory", inv, "--json", *check)
    refused(proc, "--host is empty")
    expected = {"ok": False, "error": "--host is empty", "hint": "give it a value, or leave it out",
                "file": None, "line": None}
    assert json.loads(proc.stdout) == expected, show(proc)


def test_json_error_lists_every_problem_of_a_refused_model_repository(tmp_path):
    repo = tmp_path / "models"
    shutil.copytree(REPO_ROOT / "examples" / "models", repo)
    (repo / "add_sub" / "config.pbtxt").write_text('name: "add_sub"\nbackend: "python"\nmax_batch_size: -5\n')
    proc = invoke("deploy", "--inventory", local_inventory(tmp_path / "hosts.yml"), "--models", str(repo), "--check",
                  "--json")
    refused(proc, "max_batch_size")
    problems = json.loads(proc.stdout)["problems"]
    assert [(p["model"], p["line"]) for p in problems] == [("add_sub", 3)], problems
    assert str(repo / "add_sub" / "config.pbtxt") in problems[0]["file"]


def test_json_error_names_the_file_and_the_fix(tmp_path, fault_log):
    inv = local_inventory(tmp_path / "hosts.yml")
    proc = invoke("models.diff", "--host", "gpu99", "--inventory", inv, "--json")
    refused(proc, "unknown host 'gpu99'")
    assert json.loads(proc.stdout) == {"ok": False, "error": "unknown host 'gpu99'", "hint": "known hosts: gpu08",
                                       "file": inv, "line": None}, show(proc)
    fault_log(AREA, "`models.diff --json` with bad input (an unknown host, `--host ''`)",
              "exit 2, the error also on stdout as one JSON object, `{\"ok\": false, \"error\", \"hint\", "
              "\"file\", \"line\"}`, in every task that takes --json; before, nothing on stdout")
