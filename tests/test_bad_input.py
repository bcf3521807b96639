"""Bad input on the control machine: a clear error, a non-zero exit, no traceback, no host touched.

Every run uses an inventory of its own (tests/labkit.py `local_inventory`: hosts on 127.0.0.1, a port nothing
listens on), never the repository's, so a check that let a run through could not reach a lab host."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from labkit import closed_port, fault_log, invoke_here as invoke, local_inventory, show  # noqa: F401  (fixture)
from tritonfleet.paths import REPO_ROOT

EXAMPLES = REPO_ROOT / "examples" / "models"
NO_DAC = ["setpriv", "--inh-caps=-dac_override,-dac_read_search", "--bounding-set=-dac_override,-dac_read_search"]


def no_traceback(proc):
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout, show(proc)


def test_empty_inventory(tmp_path, fault_log):
    inv = tmp_path / "hosts.yml"
    inv.write_text("# nothing here\n")
    proc = invoke("deploy", "--host", "gpu08", "--inventory", str(inv))
    assert proc.returncode == 2, show(proc)
    no_traceback(proc)
    assert "inventory is empty" in proc.stderr and str(inv) in proc.stderr
    fault_log("Bad input (control machine)", "empty inventory file",
              f"exit 2, `{proc.stderr.strip().splitlines()[0].replace(str(inv), 'hosts.yml')}`, no host touched")


def test_missing_model_repository(tmp_path, fault_log):
    inv = local_inventory(tmp_path / "hosts.yml")
    proc = invoke("sync-models", "--host", "gpu08", "--inventory", inv, "--models", str(tmp_path / "nope"))
    assert proc.returncode == 2, show(proc)
    no_traceback(proc)
    assert "does not exist" in proc.stderr
    fault_log("Bad input (control machine)", "`--models` names a folder that does not exist",
              "exit 2 before any host is touched: `the model repository does not exist`")


@pytest.mark.skipif(shutil.which("setpriv") is None, reason="needs setpriv to drop root's read override")
def test_unreadable_model_repository(tmp_path, fault_log):
    repo = tmp_path / "models"
    shutil.copytree(EXAMPLES, repo)
    tmp_path.chmod(0o755)
    (repo / "add_sub" / "config.pbtxt").chmod(0o000)
    inv = local_inventory(tmp_path / "hosts.yml")
    # root reads anything; drop CAP_DAC_OVERRIDE/READ_SEARCH so the run sees the permissions a user would
    proc = subprocess.run([*NO_DAC, "invoke", "sync-models", "--host", "gpu08", "--inventory", inv,
                           "--models", str(repo)],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert proc.returncode == 2, show(proc)
    no_traceback(proc)
    assert "config.pbtxt cannot be read: Permission denied" in proc.stderr
    repo.chmod(0o000)
    proc = subprocess.run([*NO_DAC, "invoke", "sync-models", "--host", "gpu08", "--inventory", inv,
                           "--models", str(repo)],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    repo.chmod(0o755)
    assert proc.returncode == 2, show(proc)
    no_traceback(proc)
    assert "Permission denied" in proc.stderr and str(repo) in proc.stderr
    fault_log("Bad input (control machine)", "model repository unreadable (a config.pbtxt mode 000; "
              "the folder itself mode 000), run without root's read override",
              "exit 2 before any host is touched: `config.pbtxt cannot be read: Permission denied` / "
              "`Permission denied: <folder>`")


def test_unknown_task_option(fault_log):
    proc = invoke("deploy", "--hots", "gpu01")
    assert proc.returncode != 0, show(proc)
    no_traceback(proc)
    assert "--hots" in (proc.stderr + proc.stdout)
    fault_log("Bad input (control machine)", "unknown task option `invoke deploy --hots gpu01`",
              f"exit {proc.returncode}, invoke says `{(proc.stderr + proc.stdout).strip()}`; nothing runs")


def test_unknown_host_and_group(tmp_path, fault_log):
    inv = local_inventory(tmp_path / "hosts.yml", names=("gpu07", "gpu08"))
    proc = invoke("deploy", "--host", "gpu99", "--inventory", inv)
    assert proc.returncode == 2 and "unknown host 'gpu99'" in proc.stderr and "gpu08" in proc.stderr, show(proc)
    no_traceback(proc)
    proc = invoke("deploy", "--group", "nogroup", "--inventory", inv)
    assert proc.returncode == 2 and "unknown group 'nogroup'" in proc.stderr, show(proc)
    no_traceback(proc)
    fault_log("Bad input (control machine)", "`--host gpu99` / `--group nogroup` not in the inventory",
              "exit 2, the error names the hosts/groups that exist")


def refused_input(tmp_path, gpu08_vars: str, task: str):
    """Run `task` on gpu08 with these host vars; it must be refused as bad input (exit 2, no traceback)."""
    inv = tmp_path / "hosts.yml"
    inv.write_text(f"all:\n  hosts:\n    gpu08: {{ansible_host: 127.0.0.1, ansible_port: {closed_port()}, "
                   f"{gpu08_vars}}}\n")
    proc = invoke(task, "--host", "gpu08", "--inventory", str(inv))
    assert proc.returncode == 2, show(proc)
    no_traceback(proc)
    return proc


def test_error_text_with_brackets_is_printed_not_parsed_as_markup(tmp_path):
    refused_input(tmp_path, "x: '{{ [/bold] nope }}'", "deploy")


def test_non_numeric_forks(tmp_path):
    inv = local_inventory(tmp_path / "hosts.yml")
    proc = invoke("smoke", "--host", "gpu08", "--inventory", inv, "--forks", "abc", "--check")
    assert proc.returncode == 2
    assert "--forks must be a whole number, got 'abc'" in proc.stderr
    no_traceback(proc)


def test_doctor_refuses_a_bad_inventory_value_before_touching_a_host(tmp_path):
    # No lab key or known_hosts in this inventory: had the doctor tried the host, it would say UNREACHABLE.
    proc = refused_input(tmp_path, "triton_model_control_mode: sometimes", "doctor")
    assert "host gpu08: triton_model_control_mode is 'sometimes'" in proc.stderr, show(proc)
    assert "UNREACHABLE" not in proc.stderr + proc.stdout
